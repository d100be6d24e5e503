"""Compiled models explain exactly like eager ones: ``torch.compile(model)``, compiled submodules and
``trainer.fit(torch.compile(model))``; a layer no gradient reaches is an error, never a silent zero map.

Hooks added to a compiled model make Dynamo recompile, and inside an AOTAutograd graph the tensor a hook
records is not the one gradients flow through (before this was handled, Grad-CAM of a compiled model was
all zeros). The engine runs the original forward (``torch.compiler.set_stance("force_eager")``) while it
explains, so the maps are those of the eager model, bitwise. ``CompileCounterWithBackend("aot_eager")``
(AOTAutograd with eager kernels, counting compilations) shows the compiled code is not recompiled by a CAM
call; the default inductor backend is exercised end to end by the slow Lightning test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from _helpers import read_events
from conftest import TRAINER_DEFAULTS, QuadrantData, split_batch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from cam_callback import CAMCallback
from cams import CamEngine

METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "scorecam", "ablationcam")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_a_compiled_model_gives_the_eager_maps_and_is_not_recompiled(x):
    model = _cnn()
    eager = CamEngine(model)(x, methods=METHODS)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    compiled(x)  # compiled now: the graph would not call hooks registered from here on
    assert counter.frame_count == 1
    engine = CamEngine(compiled)
    maps = engine(x, methods=METHODS)
    assert engine.layer_names == ["4"]  # the same name as eager, without `_orig_mod`
    for method in METHODS:
        assert torch.equal(maps[method], eager[method]), method
    compiled(x)
    assert counter.frame_count == 1, "the CAM call must not invalidate the compiled code"


def test_a_compiled_submodule_gives_the_eager_maps(x):
    model = _cnn()
    eager = CamEngine(model, "3")(x, methods=METHODS)
    wrapped = nn.Sequential(torch.compile(model[:5], backend=CompileCounterWithBackend("aot_eager")), model[5:])
    wrapped(x)
    engine = CamEngine(wrapped, "0.3")  # the layer's name without `_orig_mod`
    maps = engine(x, methods=METHODS)
    assert engine.layer_names == ["0.3"]
    for method in METHODS:
        assert torch.equal(maps[method], eager[method]), method


def test_a_layer_the_score_does_not_depend_on_is_an_error_naming_it(x):
    class SideBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.probe = nn.Conv2d(4, 4, 1)  # computed, never used by the output
            self.head = nn.Linear(4, 3)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            h = self.body(t)
            self.probe(h)
            return self.head(h.mean(dim=(2, 3)))

    with pytest.raises(RuntimeError, match=r"target layer\(s\) \['probe'\].*does not depend on their output"):
        CamEngine(SideBranch(), ["body", "probe"])(x, methods="gradcam")


def test_a_score_that_ignores_every_input_gives_a_loud_warning_not_a_silent_zero_map(x):
    model = _cnn()
    nn.init.zeros_(model[7].weight)  # a zero-initialised head: the logits are the bias, whatever the image
    with pytest.warns(RuntimeWarning, match=r"target layer '4'.*zero at every position.*initialised to zero"):
        maps = CamEngine(model)(x, methods="gradcam")
    assert float(maps["gradcam"].abs().max()) == 0


def test_a_class_token_models_final_norm_is_refused_with_the_layer_to_use():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2, num_classes=3).eval()  # fmt: skip
    with pytest.raises(RuntimeError, match=r"'norm'.*only its 1 prefix token\(s\).*last block's first norm"):
        CamEngine(model, "norm")(torch.randn(1, 3, 32, 32), methods="gradcam")


# ---------------------------------------------------------------------- Lightning: trainer.fit(torch.compile(model))
class TimmViT(L.LightningModule):
    """A timm ViT fine-tuned on the quadrant images (one channel, 16×16, patches of 4: a 4×4 grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, in_chans=1, depth=2,
            embed_dim=32, num_heads=2, num_classes=4,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = split_batch(batch)
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = split_batch(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _fit(root: Path, backend: str | None) -> tuple[CAMCallback, Path]:
    """One short fit (2 epochs of 4 steps) with ``CAMCallback()``, eager or ``torch.compile``d."""
    L.seed_everything(0)
    model = TimmViT()
    callback = CAMCallback(on_error="raise")
    logger = TensorBoardLogger(str(root), name="tb")
    trainer = L.Trainer(callbacks=[callback], **{**TRAINER_DEFAULTS, "logger": logger, "default_root_dir": str(root)})
    options = {} if backend in (None, "inductor") else {"backend": backend}
    compiled = model if backend is None else torch.compile(model, **options)
    trainer.fit(compiled, datamodule=QuadrantData(n_train=64, n_val=16, batch_size=16))
    return callback, Path(logger.log_dir)


@pytest.fixture(scope="module")
def eager_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[CAMCallback, Path]:
    return _fit(tmp_path_factory.mktemp("eager"), None)


def test_the_callback_with_no_arguments_logs_overlays_and_drift_on_a_timm_vit(eager_fit):
    callback, log_dir = eager_fit
    assert callback.layer_names == ["model.blocks.1.norm1"] and callback.runs == 3
    events = read_events(log_dir)
    assert len(events.Images("cam/gradcam")) == 3
    config = events.Tensors("cam/config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| layout | tokens (B, 17, 32): 1 prefix token dropped, grid 4×4 from model.patch_embed |" in config
    drift = [e.value for e in events.Scalars("cam_drift/gradcam/vs_first")]
    assert len(drift) == 2 and all(0 < d < 1 for d in drift), drift  # the maps move while the model learns
    for cam in callback.last_maps.values():
        assert cam.shape == (8, 16, 16) and bool(torch.isfinite(cam).all()) and float(cam.std()) > 0


def test_a_fit_of_the_compiled_model_logs_the_eager_maps(eager_fit, tmp_path):
    """``aot_eager`` traces and runs the same kernels as eager: training and maps agree bitwise."""
    eager, _ = eager_fit
    compiled, _ = _fit(tmp_path, "aot_eager")
    assert compiled.layer_names == eager.layer_names and compiled.runs == eager.runs
    for method in eager.first_maps:
        assert torch.equal(compiled.first_maps[method], eager.first_maps[method])
        assert torch.equal(compiled.last_maps[method], eager.last_maps[method])


@pytest.mark.slow
def test_a_fit_of_the_default_torch_compile_logs_the_eager_maps(eager_fit, tmp_path):
    """The default inductor backend (C++ kernels on the CPU). The baseline maps are bitwise equal (same
    weights, explained eagerly); after training they differ only by the float32 rounding of inductor's
    fused kernels in the 8 SGD steps (measured 8e-7; maps in [0, 1], tolerance 1e-4)."""
    eager, _ = eager_fit
    compiled, log_dir = _fit(tmp_path, "inductor")
    assert compiled.layer_names == eager.layer_names and compiled.runs == eager.runs
    for method in eager.first_maps:
        assert torch.equal(compiled.first_maps[method], eager.first_maps[method])
        torch.testing.assert_close(compiled.last_maps[method], eager.last_maps[method], atol=1e-4, rtol=0)
    events = read_events(log_dir)
    assert all(e.value > 0 for e in events.Scalars("cam_drift/gradcam/vs_first"))
