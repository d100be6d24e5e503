"""CAMCallback: arguments, setup checks, the fixed batch, the schedule, targets, errors, state and checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import MEAN, STD, QuadrantData, QuadrantDataset, TinyNet, make_quadrant_data
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

import cams
from cam_callback import CAMCallback
from cam_callback._module_class import source_of
from cams import CamEngine, metrics


class StepRecorder(L.Callback):
    """Records ``cam.runs`` and the global step after every hook the CAM callback may run in."""

    def __init__(self, cam: CAMCallback) -> None:
        self.cam = cam
        self.steps: list[int] = []
        self._runs = 0

    def _record(self, trainer: L.Trainer) -> None:
        if self.cam.runs != self._runs:
            self._runs = self.cam.runs
            self.steps.append(trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._record(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)


# ---------------------------------------------------------------------- __init__
def test_unknown_method_is_rejected_with_close_matches() -> None:
    with pytest.raises(ValueError, match=r"method='gradkam'.*did you mean 'gradcam'"):
        CAMCallback(method="gradkam")
    with pytest.raises(ValueError, match=r"methods='xgradcan'.*'xgradcam'"):
        CAMCallback(methods=["gradcam", "xgradcan"])


def test_method_aliases_resolve_to_registry_names_without_duplicates() -> None:
    assert CAMCallback(method="Grad-CAM++").methods == ("gradcam++",)
    assert CAMCallback(methods=["XGradCAM", "gradcam", "grad-cam"]).methods == ("xgradcam", "gradcam")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": 0}, r"every_n_epochs=0"),
        ({"every_n_steps": -2}, r"every_n_steps=-2"),
        ({"num_images": 0}, r"num_images=0"),
        ({"target": "prediction"}, r"target='prediction'.*'pred'"),
        ({"target": -1}, r"target=-1"),
        ({"on_error": "ignore"}, r"on_error='ignore'"),
        ({"mean": [0.5]}, r"mean and std"),
        ({"mean": [0.5, 0.5], "std": [0.2]}, r"differ in length"),
        ({"alpha": 1.5}, r"alpha=1.5"),
        ({"colormap": "rainbowz"}, r"rainbowz"),
        ({"method": "xgradcam", "methods": ["gradcam"]}, r"not both"),
        ({"target": "label", "images": torch.zeros(2, 1, 8, 8)}, r"target='label'.*labels"),
        ({"images": torch.zeros(2, 1, 8, 8), "boxes": torch.zeros(3, 4)}, r"boxes must be \(N, 4\)"),
    ],
)
def test_bad_argument_values_are_rejected_naming_the_argument(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CAMCallback(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"aug_smooth": "yes"}, {"images": [1, 2, 3]}, {"target_layers": 3}, {"batch_to_images": "image"}],
)
def test_arguments_of_the_wrong_type_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        CAMCallback(**kwargs)


def test_state_key_differs_between_configurations_so_two_callbacks_coexist() -> None:
    a = CAMCallback(methods=["gradcam", "xgradcam"])
    b = CAMCallback(method="gradcam++", aug_smooth=True)
    assert a.state_key != b.state_key
    assert a.state_key == CAMCallback(methods=["gradcam", "xgradcam"]).state_key


# ---------------------------------------------------------------------- setup
def test_setup_fails_without_validation_data_or_images(make_trainer) -> None:
    trainer = make_trainer([CAMCallback()], limit_val_batches=0)
    model = TinyNet()
    with pytest.raises(MisconfigurationException, match=r"no images to explain.*images="):
        trainer.fit(model, datamodule=QuadrantData())
    assert model.losses == []  # failed before the first training step


def test_setup_fails_on_unknown_layer_with_close_matches(make_trainer) -> None:
    trainer = make_trainer([CAMCallback(target_layers="features.44")])
    model = TinyNet()
    with pytest.raises(MisconfigurationException, match=r"target_layers='features.44'.*did you mean 'features.4'"):
        trainer.fit(model, datamodule=QuadrantData())
    assert model.losses == []


def test_setup_rejects_a_layer_module_that_is_not_in_the_model(make_trainer) -> None:
    trainer = make_trainer([CAMCallback(target_layers=torch.nn.Conv2d(1, 1, 1))])
    with pytest.raises(MisconfigurationException, match=r"not a submodule of TinyNet"):
        trainer.fit(TinyNet(), datamodule=QuadrantData())


class LateLayerNet(TinyNet):
    """Builds its last conv in ``configure_model``, after the callbacks' ``setup``."""

    def __init__(self) -> None:
        super().__init__()
        self.late: torch.nn.Module | None = None

    def configure_model(self) -> None:
        if self.late is None:
            self.late = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.late is not None
        return self.head(self.late(self.features(x)))


def test_layers_built_in_configure_model_are_checked_once_they_exist(make_trainer) -> None:
    cam = CAMCallback(target_layers="late", num_images=2)
    make_trainer([cam], max_epochs=1).fit(LateLayerNet(), datamodule=QuadrantData())
    assert cam.layer_names == ["late"]
    model = LateLayerNet()
    with pytest.raises(MisconfigurationException, match=r"target_layers='lat'.*'late'"):
        make_trainer([CAMCallback(target_layers="lat")]).fit(model, datamodule=QuadrantData())
    assert model.losses == []


# ---------------------------------------------------------------------- the fixed batch
def test_fixed_batch_is_the_first_samples_of_the_first_val_dataset_even_when_shuffled(make_trainer) -> None:
    cam = CAMCallback(num_images=5)
    data = QuadrantData(shuffle_val=True)
    make_trainer([cam], max_epochs=1).fit(TinyNet(), datamodule=data)
    assert torch.equal(cam.fixed_images, data.val_set.images[:5])
    assert torch.equal(cam.fixed_labels, data.val_set.labels[:5])
    assert cam.fixed_images.device.type == "cpu"


def test_choosing_the_fixed_batch_does_not_draw_on_the_global_rng() -> None:
    from cam_callback._batch import take_first

    loader = DataLoader(QuadrantDataset(16), batch_size=4, shuffle=True)
    before = torch.random.get_rng_state()
    take_first(loader, 6)

    def batches() -> Any:  # a plain iterable is iterated; the DataLoader iterator it opens draws a seed
        yield from loader

    take_first(batches(), 6)
    assert torch.equal(before, torch.random.get_rng_state())


def test_dict_batches_give_images_labels_and_boxes(make_trainer) -> None:
    cam = CAMCallback(num_images=6, target="label")
    data = QuadrantData(as_dict=True)
    make_trainer([cam], max_epochs=1).fit(TinyNet(), datamodule=data)
    assert torch.equal(cam.fixed_images, data.val_set.images[:6])
    assert torch.equal(cam.fixed_labels, data.val_set.labels[:6])
    assert torch.equal(cam._batch.boxes, data.val_set.boxes[:6])


def test_batch_to_images_reads_unusual_batches(make_trainer) -> None:
    images, labels, _ = make_quadrant_data(8, seed=3)
    nested = [((images[i], {"cls": labels[i]})) for i in range(8)]  # ((x, {"cls": y}), ...) samples

    def batch_to_images(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, meta = batch
        return x, meta["cls"]

    class Net(TinyNet):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch_to_images(batch), batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            super().validation_step(batch_to_images(batch), batch_idx)

    cam = CAMCallback(num_images=3, target="label", batch_to_images=batch_to_images)
    loader = DataLoader(nested, batch_size=4)
    make_trainer([cam], max_epochs=1).fit(Net(), train_dataloaders=loader, val_dataloaders=loader)
    assert torch.equal(cam.fixed_images, images[:3])
    assert torch.equal(cam.fixed_labels, labels[:3])


def test_an_unreadable_batch_fails_before_training_suggesting_batch_to_images(make_trainer) -> None:
    loader = DataLoader(TensorDataset(torch.zeros(4, 16)), batch_size=2)  # no (B, C, H, W) tensor
    with pytest.raises(TypeError, match=r"batch_to_images"):
        make_trainer([CAMCallback()], max_epochs=1).fit(
            TinyNet(), train_dataloaders=DataLoader(QuadrantDataset(8), batch_size=4), val_dataloaders=loader
        )


def test_images_argument_replaces_validation_data(make_trainer) -> None:
    images, labels, _ = make_quadrant_data(3, seed=5)
    cam = CAMCallback(images=(images, labels), target="label")
    train = DataLoader(QuadrantDataset(32), batch_size=8, shuffle=True)
    make_trainer([cam], max_epochs=2).fit(TinyNet(), train_dataloaders=train)  # no validation at all
    assert torch.equal(cam.fixed_images, images)
    assert cam.runs == 3  # baseline + at the end of each training epoch


# ---------------------------------------------------------------------- schedule
def test_baseline_before_first_step_then_every_n_epochs_after_validation(make_trainer) -> None:
    cam = CAMCallback(every_n_epochs=2, num_images=2)
    recorder = StepRecorder(cam)
    make_trainer([cam, recorder], max_epochs=5).fit(TinyNet(), datamodule=QuadrantData())
    assert recorder.steps == [0, 8, 16]  # 4 steps per epoch: baseline, end of epochs 2 and 4


def test_every_n_steps_replaces_the_epoch_schedule(make_trainer) -> None:
    cam = CAMCallback(every_n_steps=3, num_images=2)
    recorder = StepRecorder(cam)
    make_trainer([cam, recorder], max_epochs=2).fit(TinyNet(), datamodule=QuadrantData())
    assert recorder.steps == [0, 3, 6]


def test_every_n_steps_counts_optimizer_steps_under_gradient_accumulation(make_trainer) -> None:
    cam = CAMCallback(every_n_steps=1, num_images=2)
    recorder = StepRecorder(cam)
    make_trainer([cam, recorder], max_epochs=1, accumulate_grad_batches=2).fit(
        TinyNet(), datamodule=QuadrantData()
    )
    assert recorder.steps == [0, 1, 2]


def test_trainer_validate_explains_the_batch_under_inference_mode(make_trainer) -> None:
    cam = CAMCallback(num_images=4)
    make_trainer([cam], inference_mode=True).validate(TinyNet(), datamodule=QuadrantData())
    assert cam.runs == 1
    assert set(cam.last_maps) == {"gradcam"}
    assert cam.last_maps["gradcam"].shape == (4, 16, 16)
    assert not cam.last_maps["gradcam"].is_inference()


# ---------------------------------------------------------------------- targets
@pytest.mark.parametrize("target", ["pred", "label", 2])
def test_maps_explain_the_requested_target_on_the_final_model(make_trainer, target: Any) -> None:
    cam = CAMCallback(methods=["gradcam", "layercam"], num_images=6, target=target, target_layers="features.5")
    model = TinyNet()
    make_trainer([cam], max_epochs=1).fit(model, datamodule=QuadrantData())
    targets = {"pred": None, "label": cam.fixed_labels, 2: 2}[target]
    expected = CamEngine(model, "features.5")(cam.fixed_images, methods=["gradcam", "layercam"], targets=targets)
    for name in ("gradcam", "layercam"):
        torch.testing.assert_close(cam.last_maps[name], expected[name])


# ---------------------------------------------------------------------- failures
def _fail_after_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CAM run fails, but the fit-start probe (the first engine call) passes: a failure that appears later."""
    real = cams.CamEngine.__call__
    calls: list[int] = []

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            return real(self, *args, **kwargs)
        raise RuntimeError("CAM exploded")

    monkeypatch.setattr(cams.CamEngine, "__call__", call)


def test_a_failing_cam_run_warns_once_with_traceback_and_training_continues(make_trainer, monkeypatch) -> None:
    _fail_after_the_probe(monkeypatch)
    model = TinyNet()
    cam = CAMCallback(num_images=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([cam], max_epochs=3).fit(model, datamodule=QuadrantData())
    reports = [w for w in caught if "CAMCallback: the CAM run" in str(w.message)]
    assert len(reports) == 1
    assert "Traceback" in str(reports[0].message) and "CAM exploded" in str(reports[0].message)
    assert len(model.losses) == 12  # all 3 epochs trained
    assert cam.runs == 0


def test_on_error_raise_stops_training_with_the_error(make_trainer, monkeypatch) -> None:
    _fail_after_the_probe(monkeypatch)
    with pytest.raises(RuntimeError, match="CAM exploded"):
        make_trainer([CAMCallback(on_error="raise")]).fit(TinyNet(), datamodule=QuadrantData())


# ---------------------------------------------------------------------- state and checkpoints
def _fit_with_checkpoint(make_trainer, tmp_path: Path, cam: CAMCallback, epochs: int, **fit: Any) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer([cam, ckpt], max_epochs=epochs, enable_checkpointing=True)
    trainer.fit(TinyNet(), **fit)
    return trainer


def test_checkpoint_holds_the_cam_callback_dict_for_explain(make_trainer, tmp_path: Path) -> None:
    cam = CAMCallback(methods=["xgradcam", "gradcam"], target_layers="features.3", num_images=4)
    _fit_with_checkpoint(make_trainer, tmp_path, cam, 1, datamodule=QuadrantData())
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["cam_callback"] == {
        "version": 1,
        "module_class": f"{TinyNet.__module__}.TinyNet",
        **source_of(TinyNet),  # the file that defines it: tests/conftest.py
        "target_layers": ["features.3"],
        "methods": ["xgradcam", "gradcam"],
        "input_size": [1, 16, 16],
        "mean": list(MEAN),
        "std": list(STD),
        "target": "pred",
        "aug_smooth": False,
        "eigen_smooth": False,
    }


def test_checkpoint_names_the_automatically_chosen_layer(make_trainer, tmp_path: Path) -> None:
    cam = CAMCallback(num_images=2)
    _fit_with_checkpoint(make_trainer, tmp_path, cam, 1, datamodule=QuadrantData())
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["cam_callback"]["target_layers"] == cam.layer_names
    assert cam.layer_names and all(isinstance(name, str) for name in cam.layer_names)


def test_resume_keeps_the_fixed_batch_and_the_first_maps(make_trainer, tmp_path: Path) -> None:
    first = CAMCallback(methods=["gradcam", "xgradcam"], num_images=4)
    _fit_with_checkpoint(make_trainer, tmp_path, first, 2, datamodule=QuadrantData())
    resumed = CAMCallback(methods=["gradcam", "xgradcam"], num_images=4)
    other_val_data = QuadrantData(val_seed=99)  # a fresh choice would pick different images
    _fit_with_checkpoint(
        make_trainer, tmp_path, resumed, 3, datamodule=other_val_data, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert not torch.equal(other_val_data.val_set.images[:4], first.fixed_images)
    assert torch.equal(resumed.fixed_images, first.fixed_images)
    for name in ("gradcam", "xgradcam"):
        assert torch.equal(resumed.first_maps[name], first.first_maps[name])
    assert resumed.runs == first.runs + 1  # no second baseline: one run for the one new epoch


def test_drift_after_resume_is_measured_against_the_original_first_maps(make_trainer, tmp_path: Path) -> None:
    first = CAMCallback(num_images=4)
    _fit_with_checkpoint(make_trainer, tmp_path, first, 1, datamodule=QuadrantData())
    resumed = CAMCallback(num_images=4)
    seen: dict[str, float] = {}
    drift = resumed._history.drift

    def spy(maps: dict[str, torch.Tensor], preds: Any, blank: Any = None) -> dict[str, float]:
        values = drift(maps, preds, blank)
        seen.update(values)
        return values

    resumed._history.drift = spy  # type: ignore[method-assign]
    _fit_with_checkpoint(
        make_trainer, tmp_path, resumed, 2, datamodule=QuadrantData(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    expected = float(metrics.drift(resumed.last_maps["gradcam"], first.first_maps["gradcam"]))
    assert seen["cam_drift/gradcam/vs_first"] == pytest.approx(expected)


def test_state_dict_round_trips_into_a_new_callback() -> None:
    images, labels, boxes = make_quadrant_data(3)
    source = CAMCallback(images={"image": images, "label": labels, "boxes": boxes})
    source._batch = source.settings.user_batch
    source._history.first = {"gradcam": torch.rand(3, 16, 16)}
    source._history.previous = {"gradcam": torch.rand(3, 16, 16)}
    source._history.runs = 4
    target = CAMCallback()
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.fixed_images, images)
    assert torch.equal(target._batch.boxes, boxes)
    assert torch.equal(target.first_maps["gradcam"], source.first_maps["gradcam"])
    assert torch.equal(target.last_maps["gradcam"], source.last_maps["gradcam"])
    assert target.runs == 4


def test_target_layers_is_the_engines_name_and_target_layer_a_deprecated_alias() -> None:
    assert CAMCallback(target_layers="features.3").settings.target_layers == ["features.3"]
    with pytest.warns(DeprecationWarning, match=r"target_layer=.*pass target_layers="):
        alias = CAMCallback(**{"target_layer": ["features.0", "features.3"]})
    assert alias.settings.target_layers == ["features.0", "features.3"]
    with pytest.raises(ValueError, match=r"target_layers='a', target_layer='b'.*one argument under two names"):
        CAMCallback(target_layers="a", **{"target_layer": "b"})
