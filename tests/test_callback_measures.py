"""The callback's measures in a real fit (`cam_callback/measures/`): the baselines scored like the methods,
ROAD and axioms equal to the metric functions, the drift noise floor, and the shortcut warning."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from _helpers import RecordingLogger
from conftest import QuadrantData, TinyNet
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from cam_callback import CAMCallback, ShortcutWarning
from cam_callback.measures import Localisation, NoiseFloor, Shortcut
from cams import CamEngine, metrics


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
