"""CAMCallback in real training set-ups: fail at fit start, never silently; schedules as Lightning runs them;
several callbacks in one Trainer; grayscale normalisation; Hugging Face style batches."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from _helpers import RecordingLogger, read_events
from conftest import QuadrantData, QuadrantDataset, TinyNet, make_quadrant_data
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from test_callback import StepRecorder
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cam_callback import CAMCallback
from cam_callback._batch import parse_batch
from cam_callback.explain import InputError, explain


# ---------------------------------------------------------------------- 1. the fit-start probe
class MLP(TinyNet):
    """No layer with a feature map: nothing a CAM can explain."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.ReLU())
        self.head = nn.Linear(8, 4)


class EmbeddingOutput(TinyNet):
    """A forward that returns a dict with no logits in it: an output no class target can read."""

    def forward(self, x: Tensor) -> Any:
        return {"embedding": self.features(x).mean(dim=(2, 3))}


UNEXPLAINABLE = {
    "an MLP": (MLP, {}, r"no layer of MLP produced a 4-D feature map"),
    "a (B, C) target layer": (TinyNet, {"target_layers": "head.3"}, r"target_layers=head.3.*shape \(1, 4\)"),
    "an unreadable output": (EmbeddingOutput, {}, r"returned a dict with keys \['embedding'\]"),
    "a class out of range": (TinyNet, {"target": 12}, r"target=12.*targets \[12\] out of range.*4 classes"),
    "images with 3 channels for a 1-channel model": (
        TinyNet,
        {"images": torch.randn(4, 3, 16, 16)},
        r"expected input\[1, 3, 16, 16\] to have 1 channels.*from images=",
    ),
    "volumes for a 2-D model": (
        TinyNet,
        {"images": torch.randn(4, 1, 4, 16, 16)},
        r"conv2d.*\[1, 1, 4, 16, 16\].*from images=",
    ),
}


@pytest.mark.parametrize("case", list(UNEXPLAINABLE))
def test_a_model_the_callback_cannot_explain_fails_at_fit_start_with_the_engine_message(make_trainer, case) -> None:
    model_class, kwargs, message = UNEXPLAINABLE[case]
    model = model_class()
    cam = CAMCallback(num_images=4, on_error="warn", **kwargs)
    with pytest.raises(MisconfigurationException, match=rf"(?s)CAMCallback cannot explain .*{message}"):
        make_trainer([cam], max_epochs=1).fit(model, datamodule=QuadrantData(n_train=16))
    assert model.losses == []  # not one training step
    assert cam.runs == 0


class SqueezesItsOutput(TinyNet):
    """``squeeze()`` in the forward: (4,) logits for one image, (B, 4) for a batch; the engine explains batches."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).squeeze()


def test_the_probe_fails_only_where_the_engine_cannot_explain(make_trainer) -> None:
    cam = CAMCallback(num_images=4)
    make_trainer([cam], max_epochs=1).fit(SqueezesItsOutput(), datamodule=QuadrantData(n_train=16))
    assert cam.runs == 2 and cam.last_maps["gradcam"].shape == (4, 16, 16)


# ---------------------------------------------------------------------- 2. schedules
def _data() -> QuadrantData:
    return QuadrantData(n_train=32, n_val=8)  # 2 optimizer steps per epoch


def test_every_n_epochs_counts_training_epochs_whatever_check_val_every_n_epoch(make_trainer) -> None:
    cam = CAMCallback(every_n_epochs=2, num_images=2)
    recorder = StepRecorder(cam)
    make_trainer([cam, recorder], max_epochs=4, check_val_every_n_epoch=3).fit(TinyNet(), datamodule=_data())
    assert recorder.steps == [0, 4, 8]  # baseline, after epochs 2 (no validation) and 4


def test_mid_epoch_validations_do_not_count_for_the_epoch_schedule(make_trainer) -> None:
    cam = CAMCallback(num_images=2)
    recorder = StepRecorder(cam)
    make_trainer([cam, recorder], max_epochs=2, val_check_interval=0.5).fit(TinyNet(), datamodule=_data())
    assert recorder.steps == [0, 2, 4]  # validations at steps 1, 2, 3, 4: only those ending an epoch


@pytest.mark.parametrize(
    ("schedule", "limits", "message"),
    [
        ({"every_n_epochs": 3}, {"max_epochs": 2}, r"every_n_epochs=3\) will log nothing after the baseline"),
        ({"every_n_epochs": 2}, {"max_epochs": 5, "max_steps": 2}, r"every_n_epochs=2\).*at most 1 training epoch"),
        ({"every_n_steps": 10}, {"max_epochs": 2}, r"every_n_steps=10\).*at most 4 optimizer steps"),
    ],
)
def test_a_schedule_that_can_never_fire_warns_at_fit_start(make_trainer, schedule, limits, message) -> None:
    cam = CAMCallback(num_images=2, **schedule)
    with pytest.warns(UserWarning, match=message):
        make_trainer([cam], **limits).fit(TinyNet(), datamodule=_data())
    assert cam.runs == 1  # the baseline only, as the warning said


def test_a_schedule_that_fires_does_not_warn(make_trainer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([CAMCallback(num_images=2, every_n_epochs=2)], max_epochs=2).fit(TinyNet(), datamodule=_data())
    assert not [w for w in caught if "will log nothing" in str(w.message)]



def test_validate_after_fit_appends_a_new_point_and_never_repeats_one(make_trainer) -> None:
    cam = CAMCallback(every_n_epochs=2, num_images=2)
    trainer = make_trainer([cam], max_epochs=3)
    model, data = TinyNet(), QuadrantData()
    trainer.fit(model, datamodule=data)  # runs at global steps 0 and 8 (logged at 7, with val_loss); ends at 12
    trainer.validate(model, datamodule=data)  # new weights since step 8: a point at 12 (validate's val_loss step)
    trainer.validate(model, datamodule=data)  # the same weights, the same logger: nothing new
    assert cam.runs == 3
    events = read_events(trainer.logger.log_dir)
    assert [image.step for image in events.Images("cam/gradcam")] == [0, 7, 12]
    assert len(events.Images("cam/input")) == 1
    assert len(events.Tensors("cam/config/text_summary")) == 1
    previous = events.Scalars("cam_drift/gradcam/vs_previous")
    assert [s.step for s in previous] == [7, 12]
    assert all(s.value > 0 for s in previous)  # no false 0.0 from explaining the same weights twice


# ---------------------------------------------------------------------- 4. two CAMCallbacks in one Trainer
def test_two_callbacks_in_one_trainer_log_apart_and_checkpoint_both(make_trainer, tmp_path: Path) -> None:
    images, labels, _ = make_quadrant_data(3, seed=5)
    plain = CAMCallback(num_images=2)
    fixed = CAMCallback(images=(images, labels), every_n_epochs=2, target_layers="features.2")  # same method
    named = CAMCallback(method="xgradcam", num_images=2, name="ood")
    assert len({plain.state_key, fixed.state_key, named.state_key}) == 3
    recorder = RecordingLogger()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer([plain, fixed, named, ckpt], logger=recorder, max_epochs=2, enable_checkpointing=True)
    trainer.fit(TinyNet(), datamodule=QuadrantData())

    names = ("gradcam", "gradcam-features.2-every2epochs-images", "ood")
    assert [cam.tag_name for cam in (plain, fixed, named)] == list(names)
    assert (plain.runs, fixed.runs, named.runs) == (3, 2, 3)
    keys = {key for key, _, _ in recorder.images}
    for name in names:
        assert f"cam/{name}/input" in keys
    assert {"cam/gradcam/gradcam", f"cam/{names[1]}/gradcam", "cam/ood/xgradcam"} <= keys
    assert not any(key in keys for key in ("cam/input", "cam/gradcam", "cam/xgradcam"))
    drift = {f"cam_drift/{name}/pred_changed" for name in names}
    assert drift <= set(recorder.metrics)

    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert "cam_callback" not in checkpoint
    assert sorted(checkpoint["cam_callbacks"]) == sorted(names)
    assert checkpoint["cam_callbacks"][names[1]]["target_layers"] == ["features.2"]
    chosen = explain(tmp_path / "ckpt" / "last.ckpt", images, callback=names[1])
    assert chosen.target_layers == ["features.2"]
    assert explain(tmp_path / "ckpt" / "last.ckpt", images, callback="ood").methods == ["xgradcam"]
    with pytest.raises(InputError, match=r"3 CAMCallbacks.*'ood'.*callback="):
        explain(tmp_path / "ckpt" / "last.ckpt", images)


def test_two_callbacks_given_the_same_name_are_refused_at_setup(make_trainer) -> None:
    callbacks = [CAMCallback(name="a"), CAMCallback(method="xgradcam", name="a")]
    with pytest.raises(MisconfigurationException, match=r"name='a'"):
        make_trainer(callbacks).fit(TinyNet(), datamodule=QuadrantData())


# ---------------------------------------------------------------------- 5. grayscale data, RGB normalisation
class RGBStatsData(QuadrantData):
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("kwargs", "data", "source"),
    [
        ({"mean": RGBStatsData.mean, "std": RGBStatsData.std}, QuadrantData, r"mean=/std="),
        ({}, RGBStatsData, r"datamodule\.mean/\.std"),
    ],
)
def test_grayscale_images_with_a_three_value_mean_fail_at_fit_start(make_trainer, kwargs, data, source) -> None:
    model = TinyNet()
    with pytest.raises(MisconfigurationException, match=rf"1 channel \(shape \(2, 1, 16, 16\)\) but {source} give 3"):
        make_trainer([CAMCallback(num_images=2, **kwargs)]).fit(model, datamodule=data())
    assert model.losses == []


# ---------------------------------------------------------------------- 6. Hugging Face style batches
class PixelValues(QuadrantDataset):
    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


class PixelValuesNet(TinyNet):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return super().training_step((batch["pixel_values"], batch["labels"]), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step((batch["pixel_values"], batch["labels"]), batch_idx)


def test_hugging_face_batches_with_pixel_values_and_labels_are_read(make_trainer) -> None:
    cam = CAMCallback(num_images=3, target="label")
    train, val = DataLoader(PixelValues(16), batch_size=8), DataLoader(PixelValues(8, seed=1), batch_size=4)
    make_trainer([cam], max_epochs=1).fit(PixelValuesNet(), train_dataloaders=train, val_dataloaders=val)
    assert torch.equal(cam.fixed_images, val.dataset.images[:3])
    assert torch.equal(cam.fixed_labels, val.dataset.labels[:3])
    assert cam.runs == 2


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"pixel_values": torch.zeros(4, 256)}, r"batch\['pixel_values'\] is a tensor of shape \(4, 256\)"),
        ({"img": torch.zeros(4, 16, 16)}, r"batch\['img'\] is a tensor of shape \(4, 16, 16\).*unsqueeze\(1\)"),
        ({"text": torch.zeros(4, 7)}, r"no image tensor in the dict batch \(keys \['text'\]\).*pixel_values"),
    ],
)
def test_a_batch_that_is_not_images_is_named_with_its_key_and_shape(batch, message) -> None:
    with pytest.raises(TypeError, match=rf"{message}.*batch_to_images"):
        parse_batch(batch)


def test_five_dimensional_batches_are_volumes_not_an_error() -> None:
    found = parse_batch({"image": torch.zeros(2, 1, 4, 8, 8), "y": torch.tensor([0, 1])})
    assert found["images"].shape == (2, 1, 4, 8, 8) and found["labels"].tolist() == [0, 1]


# ---------------------------------------------------------------------- the probe never changes training
def test_the_probe_explains_one_image_and_keeps_the_model_as_found() -> None:
    from cam_callback._probe import probe
    from cams import CamEngine

    L.seed_everything(0)
    model = TinyNet(dropout=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    sizes: list[int] = []
    engine = CamEngine(model)

    def run(x: Tensor, targets: Any) -> Any:
        sizes.append(x.shape[0])
        return engine(x, ["gradcam", "scorecam"], targets)

    probe(run, make_quadrant_data(4)[0], None, "TinyNet", "", "test")
    assert sizes == [1]
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm buffers too
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)
