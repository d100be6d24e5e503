"""What CAMCallback writes: real TensorBoard event files, other loggers, PNG fallback, metric scalars."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from _helpers import RecordingLogger, decode, read_events
from conftest import MEAN, STD, QuadrantData, TinyNet
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from cam_callback import CAMCallback
from cam_callback.measures import Localisation
from cams import metrics
from cams.overlay import denormalize


class MapsHistory(L.Callback):
    """A copy of ``cam.last_maps`` after each run (placed after the CAM callback)."""

    def __init__(self, cam: CAMCallback) -> None:
        self.cam = cam
        self.history: list[dict[str, torch.Tensor]] = []

    def _snapshot(self) -> None:
        if self.cam.runs > len(self.history):
            self.history.append(self.cam.last_maps)

    def on_train_start(self, *args: Any) -> None:
        self._snapshot()

    def on_validation_epoch_end(self, *args: Any) -> None:
        self._snapshot()


def test_tensorboard_event_files_hold_grids_drift_scalars_and_config(make_trainer) -> None:
    cam = CAMCallback(methods=["gradcam", "xgradcam"], num_images=4)
    history = MapsHistory(cam)
    trainer = make_trainer([cam, history], max_epochs=3)
    trainer.fit(TinyNet(), datamodule=QuadrantData())
    events = read_events(trainer.log_dir)
    tags = events.Tags()

    assert {"cam/input", "cam/gradcam", "cam/xgradcam"} <= set(tags["images"])
    width, height = 4 * (16 + 2) + 2, 16 + 2 + 2  # make_grid: one row of four 16x16 tiles, padding 2
    for tag in ("cam/gradcam", "cam/xgradcam"):
        images = events.Images(tag)
        assert [image.step for image in images] == [0, 3, 7, 11]  # baseline, then with each epoch's val_loss
        assert all((image.width, image.height) == (width, height) for image in images)
    (shown,) = events.Images("cam/input")  # once
    expected = denormalize(cam.fixed_images, MEAN, STD)  # datamodule.mean/std undone for display
    tile = decode(shown)[2:18, 2:18].astype(np.float32) / 255
    np.testing.assert_allclose(tile, expected[0].permute(1, 2, 0).numpy(), atol=1.5 / 255)

    assert len(history.history) == 4
    for name in ("gradcam", "xgradcam"):
        previous = events.Scalars(f"cam_drift/{name}/vs_previous")
        first = events.Scalars(f"cam_drift/{name}/vs_first")
        assert [s.step for s in previous] == [s.step for s in first] == [3, 7, 11]
        for k, (p, f) in enumerate(zip(previous, first, strict=True), start=1):
            now = history.history[k][name]
            assert p.value == pytest.approx(float(metrics.drift(now, history.history[k - 1][name])), abs=1e-6)
            assert f.value == pytest.approx(float(metrics.drift(now, history.history[0][name])), abs=1e-6)
    changed = events.Scalars("cam_drift/pred_changed")
    assert [s.step for s in changed] == [3, 7, 11]
    assert [s.step for s in events.Scalars("val_loss")] == [3, 7, 11]  # Lightning's own, at the same steps
    assert all(s.value in (0.0, 0.25, 0.5, 0.75, 1.0) for s in changed)
    assert "cam/config/text_summary" in tags["tensors"]
    text = events.Tensors("cam/config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| methods | gradcam, xgradcam |" in text and f"| target_layers | {cam.layer_names[0]} |" in text


def test_a_logger_with_log_image_gets_uint8_grids_and_scalars(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=3)
    make_trainer([cam], logger=recorder, max_epochs=2).fit(TinyNet(), datamodule=QuadrantData())
    keys = [(key, step) for key, step, _ in recorder.images if not key.endswith("/timeline")]
    assert keys == [("cam/input", 0), ("cam/gradcam", 0), ("cam/gradcam", 3), ("cam/gradcam", 7)]
    for key, _, images in recorder.images:
        if key.endswith("/timeline"):
            continue
        (array,) = images
        assert array.dtype == np.uint8 and array.shape == (20, 3 * 18 + 2, 3)
    assert [step for step, _ in recorder.metrics["cam_drift/gradcam/vs_first"]] == [3, 7]


def test_without_an_image_logger_pngs_go_under_log_dir_with_a_warning(make_trainer, tmp_path: Path) -> None:
    cam = CAMCallback(num_images=2)
    trainer = make_trainer([cam], logger=CSVLogger(str(tmp_path)), max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyNet(), datamodule=QuadrantData())
    out = Path(trainer.log_dir) / "cams"
    assert any(str(out) in str(w.message) and "PNG" in str(w.message) for w in caught)
    assert (out / "input" / "input.png").exists()
    assert sorted(p.name for p in (out / "gradcam").iterdir()) == ["step_0000000.png", "step_0000003.png"]
    assert Image.open(out / "gradcam" / "step_0000003.png").size == (2 * 18 + 2, 20)
    assert "gradcam" in (out / "config.md").read_text()
    with open(Path(trainer.log_dir) / "metrics.csv") as handle:  # scalars still go through the logger
        rows = [r for r in csv.DictReader(handle) if r.get("cam_drift/gradcam/vs_first")]
    assert [int(r["step"]) for r in rows] == [3]


def test_without_any_logger_scalars_go_to_a_csv_beside_the_pngs(make_trainer, tmp_path: Path) -> None:
    cam = CAMCallback(num_images=2)
    with pytest.warns(UserWarning, match="PNG"):
        make_trainer([cam], logger=False, max_epochs=2).fit(TinyNet(), datamodule=QuadrantData())
    out = tmp_path / "lightning_logs" / "version_0" / "cams"  # this run's own folder
    with open(out / "scalars.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["tag"] for r in rows} == {"cam_drift/gradcam/vs_previous", "cam_drift/gradcam/vs_first",
                                        "cam_drift/pred_changed", "cam_drift/gradcam/noise_floor",
                                        "cam_health/gradcam/degenerate", "cam_cost/overhead",
                                        "cam_cost/explain/shared", "cam_cost/explain/gradcam",
                                        "cam_cost/measure/noise_floor", "cam_cost/logging"}
    assert (out / "gradcam" / "step_0000007.png").exists()


def test_boxes_in_dict_batches_give_localisation_scalars(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(methods=["gradcam", "xgradcam"], num_images=6, target="label")
    model = TinyNet()
    data = QuadrantData(as_dict=True)
    make_trainer([cam], logger=recorder, max_epochs=2).fit(model, datamodule=data)
    boxes = data.val_set.boxes[:6]
    for name in ("gradcam", "xgradcam"):
        pointing = recorder.metrics[f"cam_localisation/{name}/pointing_game"]
        energy = recorder.metrics[f"cam_localisation/{name}/energy"]
        assert [step for step, _ in pointing] == [step for step, _ in energy] == [0, 3, 7]
        maps = cam.last_maps[name]
        assert pointing[-1][1] == pytest.approx(float(metrics.pointing_game(maps, boxes=boxes).mean()))
        assert energy[-1][1] == pytest.approx(float(metrics.energy_pointing_game(maps, boxes=boxes).mean()))


def test_masks_argument_gives_localisation_scalars(make_trainer) -> None:
    data = QuadrantData()
    boxes = data.val_set.boxes[:4].long()
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        masks[i, y0:y1, x0:x1] = True
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=4, images={"masks": masks})
    make_trainer([cam], logger=recorder, max_epochs=1).fit(TinyNet(), datamodule=data)
    (_, energy), *_ = recorder.metrics["cam_localisation/gradcam/energy"][-1:]
    assert energy == pytest.approx(float(metrics.energy_pointing_game(cam.last_maps["gradcam"], masks=masks).mean()))


def test_faithfulness_scalars_are_logged_per_method_on_the_schedule(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(
        methods=["gradcam", "eigencam"],
        num_images=4,
        measures=["noise_floor", "baselines", "faithfulness"],
    )
    model = TinyNet()
    make_trainer([cam], logger=recorder, max_epochs=1).fit(model, datamodule=QuadrantData())
    for name in ("gradcam", "eigencam"):
        for key in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"):
            values = recorder.metrics[f"cam_faithfulness/{name}/{key}"]
            assert [step for step, _ in values] == [0, 3]
    model.eval()
    with torch.no_grad():
        classes = model(cam.fixed_images).argmax(1)
    expected = metrics.faithfulness(model, cam.fixed_images, cam.last_maps["gradcam"], targets=classes)
    logged = recorder.metrics["cam_faithfulness/gradcam/average_drop"][-1][1]
    assert logged == pytest.approx(float(expected["average_drop"].mean()), rel=1e-4, abs=1e-4)


@pytest.mark.skipif(not hasattr(metrics, "sanity_check"), reason="cams.metrics.sanity_check has not landed yet")
def test_sanity_check_similarity_is_logged_per_method(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(
        methods=["gradcam", "xgradcam"],
        num_images=4,
        measures=["noise_floor", "sanity"],
    )
    make_trainer([cam], logger=recorder, max_epochs=1).fit(TinyNet(), datamodule=QuadrantData())
    for name in ("gradcam", "xgradcam"):
        values = recorder.metrics[f"cam_sanity/{name}/spearman"]
        assert [step for step, _ in values] == [0, 3]
        assert all(-1.0 <= v <= 1.0 for _, v in values)


def test_pointing_tolerance_reaches_the_pointing_game(make_trainer) -> None:
    data = QuadrantData(as_dict=True)
    boxes = data.val_set.boxes[:6]
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=6, target="label", measures=[Localisation(tolerance=0), "noise_floor", "baselines"])
    make_trainer([cam], logger=recorder, max_epochs=1).fit(TinyNet(), datamodule=data)
    (_, pointing), *_ = recorder.metrics["cam_localisation/gradcam/pointing_game"][-1:]
    strict = metrics.pointing_game(cam.last_maps["gradcam"], boxes=boxes, tolerance=0)
    assert pointing == pytest.approx(float(torch.nanmean(strict)))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_pointing_tolerance_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match=r"Localisation\(tolerance="):
        CAMCallback(measures=[Localisation(tolerance=bad)])
