"""The attention timeline (`cam_callback/_timeline.py`) in a real fit: which runs it keeps, its tiles,
its state through a checkpoint, and `CAMDisplay(timeline_rows=...)`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import decode, read_events
from conftest import MEAN, STD, QuadrantData, TinyNet

from cam_callback import CAMCallback, CAMDisplay
from cam_callback._timeline import COLUMNS, Timeline, tile_size
from cams.overlay import denormalize, overlay


def _green(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 1] > 200) & (pixels[..., 0] < 40) & (pixels[..., 2] < 40)


# --------------------------------------------------------------------------------------------- timeline
def test_the_timeline_keeps_the_first_run_and_the_last_k_and_stops_growing(make_trainer) -> None:
    cam = CAMCallback(num_images=4, measures=["localisation"], display=CAMDisplay(timeline_rows=2))
    trainer = make_trainer([cam], max_epochs=5)
    trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    images = read_events(trainer.log_dir).Images("cam/gradcam/timeline")
    assert [image.step for image in images] == [0, 3, 7, 11, 15, 19]  # with the overlays and val_loss
    heights = [image.height for image in images]
    # 1, 2, 3 rows, then 3 rows and a line saying how many runs are not shown: bounded from there on
    assert heights[0] < heights[1] < heights[2] < heights[3] == heights[4] == heights[5]
    assert len({image.width for image in images}) == 1
    assert cam._timeline is not None
    assert cam._timeline.titles("gradcam") == ["before training", "epoch 4\nstep 15", "epoch 5\nstep 19"]


def test_timeline_tiles_are_the_overlays_with_boxes_outlined_and_classes_written(make_trainer) -> None:
    cam = CAMCallback(num_images=6, target="label", measures=["localisation"])
    model = TinyNet()
    trainer = make_trainer([cam], max_epochs=1)
    trainer.fit(model, datamodule=QuadrantData(as_dict=True))
    last = decode(read_events(trainer.log_dir).Images("cam/gradcam/timeline")[-1])
    assert np.allclose(last, (cam.timeline_image("gradcam").permute(1, 2, 0).numpy() * 255), atol=1)

    # where the last row's tiles are: under the header, after one row (label column 150 px, 6 px gaps)
    tile_h, tile_w = tile_size(16, 16)
    top, left = 28 + tile_h + 20 + 6, 150
    shown = denormalize(cam.fixed_images[:COLUMNS], MEAN, STD)
    expected = overlay(shown, cam.last_maps["gradcam"], 0.5, "jet")
    boxes = cam._batch.boxes
    with torch.no_grad():
        preds = model.eval()(cam.fixed_images).argmax(1)
    for i in range(6):
        x = left + i * (tile_w + 6)
        tile = last[top : top + tile_h, x : x + tile_w].astype(np.float32) / 255
        scale = tile_h // 16
        want = expected[i].permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)
        ring = _green((tile * 255).astype(np.uint8))
        x0, y0, x1, y1 = (int(v) * scale for v in boxes[i])
        assert ring[y0, x0:x1].all() and ring[y1 - 1, x0:x1].all() and ring[y0:y1, x0].all()  # the box's edges
        assert not ring[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3].any()  # only the outline
        np.testing.assert_allclose(tile[~ring], want[~ring], atol=1.5 / 255)  # elsewhere: the overlay itself
        caption = last[top + tile_h + 2 : top + tile_h + 18, x : x + tile_w].astype(int)
        right = int(preds[i]) == int(cam.fixed_labels[i])
        ink = (caption[..., 0] > caption[..., 1] + 60) if not right else (caption[..., 1] > caption[..., 0] + 40)
        assert ink.sum() > 20  # "pred k (true j)" written, green when right, red when wrong


def test_timeline_state_survives_a_checkpoint_round_trip() -> None:
    timeline = Timeline(rows=2)
    for run in range(4):
        timeline.add("gradcam", torch.full((2, 3, 8, 8), run / 4), f"run {run}", torch.tensor([run, 1]))
    again = Timeline(rows=2)
    again.load_state_dict(timeline.state_dict())
    assert again.titles("gradcam") == ["run 0", "run 2", "run 3"]
    assert torch.equal(again.render("gradcam"), timeline.render("gradcam"))
    size = timeline.render("gradcam").shape
    timeline.add("gradcam", torch.zeros(2, 3, 8, 8), "run 4", None)
    assert timeline.render("gradcam").shape == size  # bounded: first + last two


def test_timeline_rows_none_logs_no_timeline_and_bad_values_are_rejected(make_trainer) -> None:
    cam = CAMCallback(num_images=2, measures=[], display=CAMDisplay(timeline_rows=None))
    trainer = make_trainer([cam], max_epochs=1)
    trainer.fit(TinyNet(), datamodule=QuadrantData())
    assert "cam/gradcam/timeline" not in read_events(trainer.log_dir).Tags()["images"]
    assert cam.timeline_image("gradcam") is None
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="timeline_rows"):
            CAMCallback(display=CAMDisplay(timeline_rows=bad))
