"""The callback as an early-warning system: the attention timeline, metrics Lightning can act on (same step as
its own, in ``callback_metrics``), baselines, ROAD and axioms scalars, the drift noise floor, the shortcut
warning and the cost budget, each with a real ``Trainer``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from _helpers import RecordingLogger, decode, read_events
from conftest import MEAN, STD, TRAINER_DEFAULTS, QuadrantData, TinyNet
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from cam_callback import CAMCallback, CAMDisplay, ShortcutWarning
from cam_callback._budget import CostBudget
from cam_callback._timeline import COLUMNS, Timeline, tile_size
from cam_callback.measures import Localisation, NoiseFloor, Shortcut
from cams import CamEngine, metrics
from cams.overlay import denormalize, overlay

QUIET = {"noise_floor": None, "baselines": False}  # the cheapest callback, where a test is about something else




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


# ------------------------------------------------------------------------- metrics Lightning can act on
def test_every_scalar_is_in_callback_metrics_at_the_step_of_lightnings_metrics(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=4, measures=["localisation", "noise_floor", "baselines", "faithfulness"])
    trainer = make_trainer([cam], logger=recorder, max_epochs=2)
    trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    cam_keys = {key for key in recorder.metrics if key.startswith("cam")} - {"cam_cost/logging"}  # the worker's
    assert {"cam_localisation/gradcam/pointing_game", "cam_faithfulness/baseline_random/deletion_auc",
            "cam_drift/gradcam/noise_floor", "cam_cost/overhead", "cam_cost/measure/faithfulness"} <= cam_keys
    assert cam_keys <= set(trainer.callback_metrics)
    for key in cam_keys:
        assert float(trainer.callback_metrics[key]) == pytest.approx(recorder.metrics[key][-1][1], nan_ok=True)
    val_steps = [step for step, _ in recorder.metrics["val_loss"]]
    assert val_steps == [3, 7]
    assert [step for step, _ in recorder.metrics["cam_drift/gradcam/vs_first"]] == val_steps
    assert [step for step, _ in recorder.metrics["cam_localisation/gradcam/energy"]] == [0, *val_steps]
    assert [step for key, step, _ in recorder.images if key == "cam/gradcam"] == [0, *val_steps]


def test_a_model_checkpoint_keeps_the_epoch_with_the_best_pointing_game(make_trainer, tmp_path: Path) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=6, target="label", measures=["localisation"])
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="cam_localisation/gradcam/pointing_game",
                           mode="max", save_top_k=1, filename="{epoch}")
    trainer = make_trainer([cam, best], logger=recorder, max_epochs=3, enable_checkpointing=True)
    trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    per_epoch = [value for step, value in recorder.metrics["cam_localisation/gradcam/pointing_game"] if step > 0]
    assert len(per_epoch) == 3
    assert float(best.best_model_score) == pytest.approx(max(per_epoch))
    assert Path(best.best_model_path).name == f"epoch={int(np.argmax(per_epoch))}.ckpt"


def test_early_stopping_acts_on_a_cam_scalar(make_trainer) -> None:
    cam = CAMCallback(num_images=4, target="label", measures=["localisation"])
    stop = EarlyStopping(monitor="cam_localisation/gradcam/energy", mode="max", stopping_threshold=0.0)
    trainer = make_trainer([cam, stop], max_epochs=5)
    trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    assert trainer.current_epoch == 1 and stop.stopped_epoch == 0  # the energy is > 0 after the first epoch


def test_runs_every_n_steps_share_the_step_of_the_training_loss(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=2, every_n_steps=3, measures=[])
    trainer = make_trainer([cam], logger=recorder, max_epochs=2)
    trainer.fit(TinyNet(), datamodule=QuadrantData())
    steps = [step for key, step, _ in recorder.images if key == "cam/gradcam"]
    assert steps == [0, 2, 5]  # after global steps 3 and 6: the step train_loss of that batch has
    assert set(steps[1:]) <= {step for step, _ in recorder.metrics["train_loss"]}
    assert "cam_drift/gradcam/vs_first" in trainer.callback_metrics


# ---------------------------------------------------------------------------------------------- baselines
def test_baselines_are_scored_like_the_methods_beside_them(make_trainer) -> None:
    recorder = RecordingLogger()
    data = QuadrantData(as_dict=True)
    cam = CAMCallback(num_images=6, target="label", measures=[Localisation(tolerance=0), "baselines", "faithfulness"])
    model = TinyNet()
    make_trainer([cam], logger=recorder, max_epochs=1).fit(model, datamodule=data)
    boxes = data.val_set.boxes[:6]
    centre = metrics.centre_map((6, 16, 16))
    random = metrics.random_map((6, 16, 16), generator=torch.Generator().manual_seed(0))
    for name, maps in (("baseline_centre", centre), ("baseline_random", random)):
        pointing = recorder.metrics[f"cam_localisation/{name}/pointing_game"]
        energy = recorder.metrics[f"cam_localisation/{name}/energy"]
        assert len(pointing) == 2 and pointing[0][1] == pointing[1][1]  # the same maps at every run
        assert pointing[-1][1] == pytest.approx(float(metrics.pointing_game(maps, boxes=boxes, tolerance=0).mean()))
        assert energy[-1][1] == pytest.approx(float(metrics.energy_pointing_game(maps, boxes=boxes).mean()))
        expected = metrics.faithfulness(model, cam.fixed_images, maps, targets=cam.fixed_labels)
        logged = recorder.metrics[f"cam_faithfulness/{name}/deletion_auc"][-1][1]
        assert logged == pytest.approx(float(expected["deletion_auc"].mean()), rel=1e-4, abs=1e-5)


def test_road_and_axioms_scalars_match_the_metric_functions(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(
        methods=["gradcam", "eigencam"],
        num_images=3,
        measures=["baselines", "road", "axioms"],
    )
    model = TinyNet()
    make_trainer([cam], logger=recorder, max_epochs=1).fit(model, datamodule=QuadrantData())
    with torch.no_grad():
        classes = model.eval()(cam.fixed_images).argmax(1)
    road = metrics.road(model, cam.fixed_images, cam.last_maps["gradcam"], targets=classes)
    for key in ("morf", "lerf", "combined"):
        logged = recorder.metrics[f"cam_faithfulness/gradcam/road_{key}"][-1][1]
        assert logged == pytest.approx(float(road[key].mean()), abs=1e-5)
    assert "cam_faithfulness/baseline_random/road_combined" in recorder.metrics
    errors = metrics.axioms(model, cam.fixed_images, cam.layer_names[0], method="gradcam", targets=classes)
    logged = recorder.metrics["cam_axioms/gradcam/conservation"][-1][1]
    assert logged == pytest.approx(float(torch.nanmean(errors["conservation"])), rel=1e-4)
    assert not any(key.startswith("cam_axioms/eigencam") for key in recorder.metrics)  # projects: no axioms


def test_axioms_need_one_layer_and_a_channel_sum_method() -> None:
    with pytest.raises(ValueError, match="one layer"):
        CAMCallback(
            target_layers=["features.0", "features.3"],
            measures=["axioms"],
        )
    with pytest.raises(ValueError, match="sum weighted channels"):
        CAMCallback(methods=["eigencam"], measures=["axioms"])


# ----------------------------------------------------------------------------------------- noise floor
def test_the_noise_floor_is_the_drift_under_a_seeded_perturbation_with_the_same_weights(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=4, measures=[NoiseFloor(0.05)])
    model = TinyNet()
    make_trainer([cam], logger=recorder, max_epochs=1).fit(model, datamodule=QuadrantData())
    x = cam.fixed_images
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    engine = CamEngine(model, cam.layer_names)
    maps = engine(x, methods="gradcam")
    again = engine(x + 0.05 * float(x.std()) * noise, methods="gradcam", targets=maps.classes)
    logged = recorder.metrics["cam_drift/gradcam/noise_floor"]
    assert [step for step, _ in logged] == [0, 3]
    assert logged[-1][1] == pytest.approx(float(metrics.drift(again["gradcam"], maps["gradcam"])), abs=1e-6)
    with pytest.raises(ValueError, match=r"NoiseFloor\(sigma=0.0\)"):
        NoiseFloor(0.0)


# ---------------------------------------------------------------------------------------------- shortcut
def _everywhere(n: int) -> torch.Tensor:
    return torch.ones(n, 16, 16, dtype=torch.bool)


def test_the_shortcut_warning_fires_once_per_method_after_the_baseline(make_trainer) -> None:
    # a spurious region covering the whole image holds all of every map's mass: more than any object box
    recorder = RecordingLogger()
    torch.manual_seed(0)  # an initialisation whose maps put some mass on the objects (the ratio is then finite)
    cam = CAMCallback(
        methods=["gradcam", "xgradcam"],
        num_images=4,
        images={"spurious_mask": _everywhere(4)},
        measures=["localisation", "shortcut"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([cam], logger=recorder, max_epochs=3).fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    said = [str(w.message) for w in caught if issubclass(w.category, ShortcutWarning)]
    assert len(said) == 2 and sorted(cam.shortcut_alerts) == ["gradcam", "xgradcam"]
    assert all("After epoch 1 (global step 4)" in message and "Shortcut(ratio=1)" in message for message in said)
    energy = recorder.metrics["cam_shortcut/gradcam/energy"]
    assert [step for step, _ in energy] == [0, 3, 7, 11] and all(value == pytest.approx(1.0) for _, value in energy)
    ratio = recorder.metrics["cam_shortcut/gradcam/vs_object"][-1][1]
    object_energy = recorder.metrics["cam_localisation/gradcam/energy"][-1][1]
    assert ratio == pytest.approx(1.0 / object_energy)


def test_early_stopping_on_the_shortcut_ratio_stops_a_run_that_learns_a_shortcut(make_trainer) -> None:
    cam = CAMCallback(num_images=4, images={"spurious_mask": _everywhere(4)}, measures=["localisation", "shortcut"])
    stop = EarlyStopping(monitor="cam_shortcut/gradcam/vs_object", mode="min", divergence_threshold=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortcutWarning)
        trainer = make_trainer([cam, stop], max_epochs=5)
        trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    assert trainer.current_epoch == 1 and float(trainer.callback_metrics["cam_shortcut/gradcam/vs_object"]) > 1


def test_no_shortcut_warning_below_the_ratio_and_spurious_regions_need_an_object(make_trainer) -> None:
    torch.manual_seed(0)  # an initialisation whose maps put some mass on the objects (the ratio is then finite)
    cam = CAMCallback(
        num_images=4,
        images={"spurious_mask": _everywhere(4)},
        measures=["localisation", Shortcut(ratio=1e6)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([cam], max_epochs=1).fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    assert not [w for w in caught if issubclass(w.category, ShortcutWarning)] and not cam.shortcut_alerts
    no_object = CAMCallback(
        num_images=4,
        images={"spurious_mask": _everywhere(4)},
        measures=["localisation", "shortcut"],
    )
    with pytest.raises(MisconfigurationException, match="no object to compare"):
        make_trainer([no_object], max_epochs=1).fit(TinyNet(), datamodule=QuadrantData())
    with pytest.raises(ValueError, match="'boxes' or 'masks'"):
        CAMCallback(images={"image": torch.zeros(4, 1, 16, 16), "spurious_mask": _everywhere(4)})
    with pytest.raises(ValueError, match=r"Shortcut\(ratio=0\)"):
        CAMCallback(measures=["localisation", Shortcut(ratio=0)])


def test_spurious_regions_come_from_a_batch_key(make_trainer) -> None:
    class WithMarker(QuadrantData):
        def val_dataloader(self) -> Any:
            def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
                batch = torch.utils.data.default_collate(items)
                region = torch.zeros(len(batch["label"]), 16, 16, dtype=torch.bool)
                region[:, :2, :2] = True  # the top-left corner
                return {**batch, "spurious_mask": region}

            return torch.utils.data.DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=collate)

    recorder = RecordingLogger()
    cam = CAMCallback(num_images=4, measures=["localisation", "shortcut"])
    make_trainer([cam], logger=recorder, max_epochs=1).fit(TinyNet(), datamodule=WithMarker(as_dict=True))
    corner = torch.zeros(4, 16, 16, dtype=torch.bool)
    corner[:, :2, :2] = True
    expected = metrics.energy_pointing_game(cam.last_maps["gradcam"], masks=corner)
    assert recorder.metrics["cam_shortcut/gradcam/energy"][-1][1] == pytest.approx(float(expected.mean()))


# ---------------------------------------------------------------------------------------------- budget
class WideNet(TinyNet):
    """TinyNet with 128 channels at the explained layer: Score-CAM costs 128 forwards per image there, while
    a training step is one forward and backward of 16 images (a run costs ~50 steps whatever the machine)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 128, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))


def test_a_slow_method_over_the_budget_skips_runs_and_says_so_once(tmp_path: Path) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(method="scorecam", num_images=8, every_n_steps=1, max_overhead=0.05, measures=[])
    options = dict(TRAINER_DEFAULTS, max_epochs=2, logger=recorder, default_root_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.Trainer(callbacks=[cam], **options).fit(WideNet(), datamodule=QuadrantData())
    said = [str(w.message) for w in caught if "max_overhead" in str(w.message)]
    assert len(said) == 1 and "skipped the CAM run" in said[0]
    assert cam.skipped_runs >= 4 and cam.runs + cam.skipped_runs == 1 + 8  # baseline + 8 steps scheduled
    shares = [value for _, value in recorder.metrics["cam_cost/overhead"]]
    assert len(shares) == cam.runs and all(0 < share <= 1 for share in shares)


def test_without_a_budget_nothing_is_skipped(tmp_path: Path) -> None:
    cam = CAMCallback(num_images=2, every_n_steps=1, measures=[])
    options = dict(TRAINER_DEFAULTS, max_epochs=1, logger=CSVLogger(str(tmp_path)))
    L.Trainer(callbacks=[cam], **options).fit(TinyNet(), datamodule=QuadrantData())
    assert cam.skipped_runs == 0 and cam.runs == 1 + 4


def test_the_budget_allows_a_run_only_when_the_projected_share_fits() -> None:
    now = [0.0]
    budget = CostBudget(0.1, clock=lambda: now[0])
    assert budget.allows()  # not started: the baseline always runs
    budget.start()
    budget.record(1.0)
    for t, allowed in ((5.0, False), (18.0, False), (19.0, True)):  # (1 + 1) / (t + 1) <= 0.1 from t = 19
        now[0] = t
        assert budget.allows() is allowed, t
    assert budget.share() == pytest.approx(1.0 / 19.0)
    assert CostBudget(None, clock=lambda: now[0]).allows()
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="max_overhead"):
            CAMCallback(max_overhead=bad)
