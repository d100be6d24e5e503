"""``CAMCallback``'s and ``explain``'s arguments: a short signature, grouped options, and every 0.2 spelling
answered (it keeps working with a ``DeprecationWarning`` naming the new one); LightningCLI YAML reaches every
argument that YAML can write."""

from __future__ import annotations

import inspect
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuadrantData, TinyNet
from lightning.pytorch.cli import LightningCLI

from cam_callback import CAMCallback, CAMDisplay, Preprocess, explain
from cam_callback._legacy import CALLBACK_RENAMES, EXPLAIN_RENAMES
from cam_callback.measures import Faithfulness, Localisation, NoiseFloor, Shortcut

ROOT = Path(__file__).resolve().parents[1]


def test_the_constructor_and_explain_fit_in_a_head() -> None:
    callback = [p for p in inspect.signature(CAMCallback.__init__).parameters if p != "self"]
    assert len(callback) <= 20, callback
    assert len(inspect.signature(explain).parameters) <= 14
    assert callback[:2] == ["method", "methods"]  # CAMCallback(method="xgradcam") and methods=[...] as they were


def test_display_options_are_one_dataclass_checked_when_built() -> None:
    assert CAMCallback(display=CAMDisplay(alpha=0.3, colormap="viridis")).settings.display.alpha == 0.3
    for bad, message in (({"alpha": 1.5}, r"alpha=1.5"), ({"colormap": "rainbowz"}, "rainbowz"),
                         ({"timeline_rows": 0}, r"timeline_rows=0")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            CAMDisplay(**bad)
    with pytest.raises(TypeError, match=r"display=.*CAMDisplay"):
        CAMCallback(display={"alpha": 0.3})  # type: ignore[arg-type]


def test_measures_are_names_or_measure_objects_and_none_means_the_defaults() -> None:
    defaults = CAMCallback().settings
    assert [m.name for m in defaults.measures] == ["localisation", "shortcut", "noise_floor", "baselines"]
    assert defaults.required == frozenset()  # automatic: each where the fixed batch allows it
    chosen = CAMCallback(measures=["faithfulness", NoiseFloor(0.02)]).settings
    assert chosen.measures == (Faithfulness(), NoiseFloor(0.02)) and chosen.required == {"faithfulness", "noise_floor"}
    with pytest.raises(ValueError, match=r"'faithfullness'.*did you mean 'faithfulness'"):
        CAMCallback(measures=["faithfullness"])
    with pytest.raises(ValueError, match="given twice"):
        CAMCallback(measures=["noise_floor", NoiseFloor(0.5)])
    with pytest.raises(TypeError, match="list of measure names"):
        CAMCallback(measures="faithfulness")  # type: ignore[arg-type]


def test_images_take_the_keys_of_dict_batches() -> None:
    images = torch.zeros(2, 1, 8, 8)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8]])
    settings = CAMCallback(images={"image": images, "label": torch.tensor([0, 1]), "boxes": boxes}).settings
    assert settings.user_batch is not None and torch.equal(settings.user_batch.boxes, boxes.float())
    regions = CAMCallback(images={"boxes": boxes}).settings  # no image: regions of the validation images
    assert regions.user_batch is None and torch.equal(regions.regions["boxes"], boxes)
    with pytest.raises(TypeError, match=r"unknown key\(s\) \['picture'\]"):
        CAMCallback(images={"picture": images})


# (old keyword, value, what the new settings hold)
CALLBACK_CASES: list[tuple[str, Any, Any]] = [
    ("target_layer", "features.3", lambda s: s.target_layers == ["features.3"]),
    ("boxes", torch.zeros(3, 4), lambda s: s.regions["boxes"].shape == (3, 4)),
    ("masks", torch.zeros(3, 16, 16), lambda s: s.regions["masks"].shape == (3, 16, 16)),
    ("spurious_masks", torch.zeros(3, 16, 16), lambda s: s.regions["spurious"].shape == (3, 16, 16)),
    ("pointing_tolerance", 3, lambda s: s.measure("localisation") == Localisation(tolerance=3)),
    ("shortcut_ratio", 2.0, lambda s: s.measure("shortcut") == Shortcut(ratio=2.0)),
    ("noise_floor", 0.05, lambda s: s.measure("noise_floor") == NoiseFloor(0.05)),
    ("noise_floor", None, lambda s: s.measure("noise_floor") is None),
    ("baselines", False, lambda s: s.measure("baselines") is None),
    ("faithfulness", True, lambda s: s.measure("faithfulness") is not None and "faithfulness" in s.required),
    ("road", True, lambda s: s.measure("road") is not None),
    ("axioms", True, lambda s: s.measure("axioms") is not None),
    ("sanity_check", True, lambda s: s.measure("sanity") is not None),
    ("alpha", 0.25, lambda s: s.display.alpha == 0.25),
    ("colormap", "turbo", lambda s: s.display.colormap == "turbo"),
    ("timeline_rows", None, lambda s: s.display.timeline_rows is None),
]


def test_every_old_callback_spelling_is_covered() -> None:
    assert {case[0] for case in CALLBACK_CASES} == set(CALLBACK_RENAMES)


@pytest.mark.parametrize(("old", "value", "holds"), CALLBACK_CASES, ids=[c[0] for c in CALLBACK_CASES])
def test_an_old_callback_spelling_works_and_names_the_new_one(old: str, value: Any, holds: Any) -> None:
    expected = rf"CAMCallback\({old}=.*deprecated.*pass {re.escape(CALLBACK_RENAMES[old])}"
    with pytest.warns(DeprecationWarning, match=expected):
        callback = CAMCallback(**{old: value})
    assert holds(callback.settings)


def test_old_measure_flags_keep_the_defaults_automatic() -> None:
    with pytest.warns(DeprecationWarning):
        settings = CAMCallback(faithfulness=True, noise_floor=None).settings  # type: ignore[call-arg]
    assert [m.name for m in settings.measures] == ["localisation", "shortcut", "baselines", "faithfulness"]
    assert settings.required == {"faithfulness"}  # localisation and the shortcut watch: where the batch allows


def test_an_unknown_keyword_is_still_a_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        CAMCallback(colour="red")  # type: ignore[call-arg]


EXPLAIN_CASES: list[tuple[str, Any, Any]] = [
    ("methods", ["xgradcam"], lambda e: e.methods == ["gradcam", "xgradcam"]),
    ("target_layer", "features.3", lambda e: e.target_layers == ["features.3"]),
    ("input_size", (1, 12, 12), lambda e: tuple(e.maps["gradcam"].shape) == (1, 12, 12)),
    ("mean", (0.4,), lambda e: e.maps["gradcam"].shape[0] == 1),
    ("std", (0.3,), lambda e: e.maps["gradcam"].shape[0] == 1),
    ("device", "cpu", lambda e: e.maps["gradcam"].device.type == "cpu"),
    ("alpha", 0.0, lambda e: e.overlays["gradcam"].shape[-1] == 3),
    ("colormap", "turbo", lambda e: e.colormap == "turbo"),
]


def test_every_old_explain_spelling_is_covered() -> None:
    assert {case[0] for case in EXPLAIN_CASES} == set(EXPLAIN_RENAMES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import lightning as L

    folder = tmp_path_factory.mktemp("explain")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[CAMCallback(num_images=2, measures=[])],
                        default_root_dir=str(folder), limit_train_batches=1, limit_val_batches=1)  # fmt: skip
    trainer.fit(TinyNet(), datamodule=QuadrantData())
    path = folder / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize(("old", "value", "holds"), EXPLAIN_CASES, ids=[c[0] for c in EXPLAIN_CASES])
def test_an_old_explain_spelling_works_and_names_the_new_one(checkpoint: Path, old: str, value: Any, holds: Any):
    x = torch.randn(1, 1, 16, 16)
    with pytest.warns(DeprecationWarning, match=rf"explain\({old}=.*pass {re.escape(EXPLAIN_RENAMES[old])}"):
        result = explain(checkpoint, x, "gradcam", **{old: value})
    assert holds(result)
    new = explain(checkpoint, x, "gradcam", preprocess=Preprocess(device="cpu"), display=CAMDisplay(alpha=0.0))
    assert new.methods == ["gradcam"]


def test_lightning_cli_yaml_reaches_every_argument_yaml_can_write(tmp_path: Path) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text(
        f"""
trainer:
  accelerator: cpu
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: cam_callback.CAMCallback
      init_args:
        methods: [gradcam, xgradcam]
        target_layers: features.3
        target: label
        reshape_transform: null
        aug_smooth: false
        eigen_smooth: true
        num_images: 4
        batch_to_images: null
        mean: [0.5]
        std: [0.25]
        every_n_epochs: 1
        every_n_steps: null
        max_overhead: 1.0
        measures:
          - localisation
          - class_path: cam_callback.measures.NoiseFloor
            init_args:
              sigma: 0.02
        display:
          alpha: 0.4
          colormap: turbo
          timeline_rows: 4
        on_error: raise
        name: val
data:
  as_dict: true
"""
    )
    sys.argv = ["fit"]  # LightningCLI reads no other argument
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cli = LightningCLI(TinyNet, QuadrantData, run=False, args=["--config", str(config)])
    (cam,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, CAMCallback)]
    s = cam.settings
    assert (s.methods, s.target_layers, s.target, s.eigen_smooth, s.num_images) == (
        ("gradcam", "xgradcam"), ["features.3"], "label", True, 4)  # fmt: skip
    assert (s.mean, s.std, s.max_overhead, s.on_error, s.name) == ((0.5,), (0.25,), 1.0, "raise", "val")
    assert s.measures == (Localisation(), NoiseFloor(0.02))
    assert s.display == CAMDisplay(alpha=0.4, colormap="turbo", timeline_rows=4)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cam.runs == 2 and "cam_localisation/val/gradcam/pointing_game" in cli.trainer.callback_metrics
