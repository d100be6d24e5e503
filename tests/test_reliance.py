"""Reliance by intervention: models built by hand, so the truth is known.

On a 16 x 16 canvas the object is a bright 4 x 4 square in the middle and the marker a bright 5 x 5 square in the
top-left corner. One model reads only the marker (class 1 when the corner is bright), one reads only the object;
both show Grad-CAM the same bright pixels, so attention alone cannot tell them apart.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TRAINER_DEFAULTS
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cam_callback import CAMCallback, ShortcutWarning
from cam_callback._batch import FixedBatch
from cam_callback.measures import Shortcut, ShortcutWatch, Slice
from cam_callback.measures.reliance import box_masks, control_regions, reliance

SIZE = 16
OBJECT = (6, 6, 10, 10)  # x0, y0, x1, y1
MARKER = (0, 0, 5, 5)


def _canvases(n: int, marker: bool = True) -> dict[str, Tensor]:
    images = torch.zeros(n, 1, SIZE, SIZE)
    x0, y0, x1, y1 = OBJECT
    images[:, 0, y0:y1, x0:x1] = 1.0
    spurious = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    mx0, my0, mx1, my1 = MARKER
    if marker:
        images[:, 0, my0:my1, mx0:mx1] = 1.0
        spurious[:, my0:my1, mx0:mx1] = True
    boxes = torch.tensor([OBJECT] * n, dtype=torch.float32)
    return {"image": images, "label": torch.ones(n, dtype=torch.long), "boxes": boxes, "spurious_mask": spurious}


class Reads(L.LightningModule):
    """``logit_1 = -logit_0 = sum of relu(x) over a fixed window - half its area``: the window is the marker's or
    the object's place. Grad-CAM at ``features`` is ``relu(x)`` itself (one channel, a positive weight): the
    marker and the object are equally bright to it, whichever the model reads. Training changes nothing (only
    an unused parameter learns)."""

    def __init__(self, window: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.window = window
        self.features = nn.ReLU()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        x0, y0, x1, y1 = self.window
        evidence = self.features(x)[:, 0, y0:y1, x0:x1].sum(dim=(1, 2)) - (x1 - x0) * (y1 - y0) / 2
        return torch.stack([-evidence, evidence], dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return (self.unused**2).sum() + 0.0 * self(batch["image"]).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_acc", (self(batch["image"]).argmax(dim=1) == batch["label"]).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _regions(n: int) -> tuple[Tensor, Tensor, Tensor]:
    canvases = _canvases(n)
    return canvases["image"], canvases["spurious_mask"], box_masks(canvases["boxes"], SIZE, SIZE)


# ------------------------------------------------------------------------------------------ the measure
def test_a_model_that_reads_only_the_marker_relies_on_it_and_not_on_the_control() -> None:
    x, spurious, on_object = _regions(6)
    out = reliance(Reads(MARKER), x, spurious, on_object, torch.ones(6, dtype=torch.long))
    assert out["reliance"] == pytest.approx(torch.ones(6), abs=1e-3)
    assert out["control"] == pytest.approx(torch.zeros(6), abs=1e-6)
    assert out["vs_control"] == pytest.approx(torch.ones(6), abs=1e-3)
    assert out["flips"].tolist() == [1.0] * 6 and out["control_flips"].tolist() == [0.0] * 6


def test_a_model_that_ignores_the_marker_relies_on_neither_region() -> None:
    x, spurious, on_object = _regions(6)
    out = reliance(Reads(OBJECT), x, spurious, on_object, torch.ones(6, dtype=torch.long))
    for key in ("reliance", "control", "vs_control", "flips", "control_flips"):
        assert out[key] == pytest.approx(torch.zeros(6), abs=1e-6), key


def test_the_control_has_the_region_s_shape_away_from_the_object_and_the_region() -> None:
    regions = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    regions[0, 0:5, 0:5] = True
    regions[1, 2:4, 3:12] = True  # a bar
    regions[2, 12:16, 0:2] = regions[2, 15, 0:6] = True  # an L
    forbidden = regions | box_masks(torch.tensor([OBJECT] * 3), SIZE, SIZE)
    controls = control_regions(regions, forbidden, torch.tensor([0.0, 0.5, 0.99]))
    for region, control, banned in zip(regions, controls, forbidden, strict=True):
        assert int(control.sum()) == int(region.sum())
        assert not (control & banned).any()
        moved = control.nonzero() - control.nonzero().min(dim=0).values
        assert torch.equal(moved, region.nonzero() - region.nonzero().min(dim=0).values)  # the same shape


def test_the_control_s_place_is_drawn_from_the_given_draws() -> None:
    regions, forbidden = torch.zeros(2, SIZE, SIZE, dtype=torch.bool), torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    regions[:, :2, :2] = forbidden[:, :2, :2] = True
    first, last = control_regions(regions, forbidden, torch.tensor([0.0, 0.999]))
    assert first.nonzero()[0].tolist() == [0, 2]  # the first free place in raster order
    assert last.nonzero()[-1].tolist() == [SIZE - 1, SIZE - 1]  # the last one


def test_reliance_is_undefined_without_a_region_or_with_one_that_covers_everything() -> None:
    x, spurious, on_object = _regions(3)
    spurious[1] = False
    spurious[2] = True
    out = reliance(Reads(MARKER), x, spurious, on_object, torch.ones(3, dtype=torch.long))
    assert torch.isfinite(out["reliance"][0])
    assert torch.isnan(out["reliance"][1:]).all() and torch.isnan(out["vs_control"][1:]).all()


def test_reliance_runs_one_forward_and_leaves_the_model_and_the_global_rng_as_found() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).train()  # fmt: skip
    forwards: list[int] = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    x, spurious, on_object = _regions(4)
    reliance(model, x, spurious, on_object, torch.zeros(4, dtype=torch.long))
    assert forwards == [12]  # originals, without the region, without the control: one batch
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert torch.equal(torch.random.get_rng_state(), rng)


def _slice(model: nn.Module, batch: FixedBatch, rows: Tensor) -> Slice:
    part = FixedBatch(batch.images[rows], batch.labels[rows], batch.boxes[rows], None, batch.spurious[rows])
    return Slice(model=model, x=part.images, batch=part, rows=rows, images=batch.images, maps={},
                 classes=part.labels, engine_classes=part.labels, targets=None, explain=lambda *a: None,
                 layers=[])  # fmt: skip


def test_each_image_s_values_do_not_depend_on_how_the_batch_is_split_between_processes() -> None:
    canvases = _canvases(6)
    noise = torch.rand(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    canvases["image"] = canvases["image"] + 0.1 * noise
    batch = FixedBatch(canvases["image"], canvases["label"], canvases["boxes"], None, canvases["spurious_mask"])
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))  # fmt: skip
    whole = Shortcut().per_image(_slice(model, batch, torch.arange(6)))
    halves = [Shortcut().per_image(_slice(model, batch, torch.arange(start, 6, 2))) for start in (0, 1)]
    names = ("reliance", "reliance_control", "reliance_vs_control", "reliance_flips", "reliance_control_flips")
    assert sorted(whole) == sorted(f"cam_shortcut/{name}" for name in names)
    for tag, values in whole.items():
        split = torch.empty(6)
        split[0::2], split[1::2] = halves[0][tag], halves[1][tag]
        assert torch.equal(values, split), tag
    assert Shortcut(reliance=None).per_image(_slice(model, batch, torch.arange(6))) == {}


# ------------------------------------------------------------------------------------------ the decision
ATTENTION = {"cam_shortcut/gradcam/energy": 0.6, "cam_shortcut/gradcam/vs_object": 3.0}


def _reliance(drop: float, control: float = 0.0) -> dict[str, float]:
    return {"cam_shortcut/reliance": drop, "cam_shortcut/reliance_control": control,
            "cam_shortcut/reliance_vs_control": drop - control, "cam_shortcut/reliance_flips": 0.5,
            "cam_shortcut/reliance_control_flips": 0.0}  # fmt: skip


def test_the_warning_needs_attention_and_reliance_and_gives_both_numbers() -> None:
    scalars = {**ATTENTION, **_reliance(0.45, 0.02)}
    verdict, message = ShortcutWatch(1.0, 0.1).decide(scalars, "gradcam", "After epoch 1")
    assert verdict == "shortcut"
    assert "3.0x its attention on the object (Shortcut(ratio=1))" in message
    assert "takes 45% of the explained class's probability away" in message and "against 2%" in message
    assert "Shortcut(reliance=0.1)" in message


def test_attention_on_a_region_the_model_does_not_use_is_salient_not_a_shortcut() -> None:
    scalars = {**ATTENTION, **_reliance(0.05, 0.02)}
    verdict, message = ShortcutWatch(1.0, 0.1).decide(scalars, "gradcam", "After epoch 1")
    assert verdict == "salient" and "salient but not used" in message and "no ShortcutWarning" in message


def test_reliance_without_attention_is_clear() -> None:
    low = {"cam_shortcut/gradcam/energy": 0.1, "cam_shortcut/gradcam/vs_object": 0.5, **_reliance(0.9)}
    assert ShortcutWatch(1.0, 0.1).decide(low, "gradcam", "After epoch 1") == ("clear", "")


def test_where_reliance_is_not_measured_the_warning_rests_on_attention_and_says_so() -> None:
    unmeasured = {**ATTENTION, "cam_shortcut/reliance_vs_control": float("nan")}
    verdict, message = ShortcutWatch(1.0, 0.1).decide(unmeasured, "gradcam", "After epoch 1")
    assert verdict == "shortcut" and "could not be measured" in message and "attention alone" in message
    verdict, message = ShortcutWatch(1.0, None).decide(ATTENTION, "gradcam", "After epoch 1")
    assert verdict == "shortcut" and "Shortcut(reliance=None)" in message


def test_each_method_gets_one_note_and_a_later_warning_still_comes() -> None:
    watch = ShortcutWatch(1.0, 0.1)
    assert [v for v, _ in watch.check({**ATTENTION, **_reliance(0.0)}, ["gradcam"], "epoch 1")] == ["salient"]
    assert watch.check({**ATTENTION, **_reliance(0.0)}, ["gradcam"], "epoch 2") == []
    assert [v for v, _ in watch.check({**ATTENTION, **_reliance(0.5)}, ["gradcam"], "epoch 3")] == ["shortcut"]
    assert watch.notes == {"gradcam": "epoch 1"} and watch.alerts == {"gradcam": "epoch 3"}


def test_shortcut_thresholds_are_checked() -> None:
    assert Shortcut() == Shortcut(ratio=1.0, reliance=0.1)
    with pytest.raises(ValueError, match=r"Shortcut\(reliance=1.5\)"):
        Shortcut(reliance=1.5)
    with pytest.raises(ValueError, match=r"Shortcut\(reliance=True\)"):
        Shortcut(reliance=True)


# ------------------------------------------------------------------------------------------ in a fit
def _fit(
    window: tuple[int, int, int, int], caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> tuple[CAMCallback, L.Trainer, list[str]]:
    canvases = _canvases(8)
    items = [{key: value[i] for key, value in canvases.items()} for i in range(8)]
    cam = CAMCallback(num_images=4, target_layers="features", measures=["localisation", "shortcut", "baselines"])
    options = dict(TRAINER_DEFAULTS, max_epochs=1, logger=False, default_root_dir=str(tmp_path))
    trainer = L.Trainer(callbacks=[cam], **options)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        trainer.fit(Reads(window), DataLoader(items, batch_size=4), DataLoader(items, batch_size=4))
    return cam, trainer, [str(w.message) for w in caught if issubclass(w.category, ShortcutWarning)]


def test_the_callback_warns_about_a_model_that_reads_the_marker(caplog, tmp_path) -> None:
    cam, trainer, said = _fit(MARKER, caplog, tmp_path)
    metrics = trainer.callback_metrics
    assert float(metrics["cam_shortcut/gradcam/vs_object"]) > 1  # the marker is the brighter square
    assert float(metrics["cam_shortcut/reliance"]) == pytest.approx(1.0, abs=1e-3)
    assert float(metrics["cam_shortcut/reliance_vs_control"]) == pytest.approx(1.0, abs=1e-3)
    assert "cam_shortcut/baseline_random/energy" in metrics  # beside the attention numbers and the baselines
    assert len(said) == 1 and "The model relies on it" in said[0] and list(cam.shortcut_alerts) == ["gradcam"]
    assert cam.shortcut_notes == {}


def test_the_callback_notes_once_that_the_marker_is_salient_but_not_used(caplog, tmp_path) -> None:
    cam, trainer, said = _fit(OBJECT, caplog, tmp_path)
    metrics = trainer.callback_metrics
    assert float(metrics["cam_shortcut/gradcam/vs_object"]) > 1  # the same attention as the marker reader's
    assert float(metrics["cam_shortcut/reliance_vs_control"]) == pytest.approx(0.0, abs=1e-6)
    assert said == [] and cam.shortcut_alerts == {}
    assert list(cam.shortcut_notes) == ["gradcam"]
    notes = [r.getMessage() for r in caplog.records if "salient but not used" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("CAMCallback: salient but not used. After epoch 1")
