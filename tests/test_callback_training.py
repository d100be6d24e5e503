"""CAMCallback never changes training, leaks nothing over many runs, and works under mixed precision."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TRAINER_DEFAULTS, QuadrantData, QuadrantDataset, TinyNet, make_quadrant_data
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

import cams
from cam_callback import CAMCallback


def _fit(tmp_path: Path, callbacks: list[L.Callback], epochs: int = 3) -> tuple[L.Trainer, TinyNet]:
    L.seed_everything(7, workers=True)
    model = TinyNet(dropout=0.5)  # dropout: any draw on the global RNG would change the losses
    options = dict(TRAINER_DEFAULTS, max_epochs=epochs, logger=CSVLogger(str(tmp_path)))
    trainer = L.Trainer(callbacks=callbacks, **options)
    trainer.fit(model, datamodule=QuadrantData(n_train=48, n_val=16))
    return trainer, model


def test_training_is_bitwise_identical_with_and_without_the_callback(tmp_path: Path, monkeypatch) -> None:
    plain_trainer, plain = _fit(tmp_path / "plain", [])
    plain_rng = torch.random.get_rng_state()
    pair = CAMCallback(methods=["gradcam", "xgradcam"], num_images=4)
    smoothed = CAMCallback(method="gradcam++", aug_smooth=True, num_images=4)
    measured = CAMCallback(
        method="scorecam",
        num_images=4,
        target="label",
        measures=["noise_floor", "baselines", "faithfulness", "sanity"],
    )
    corner = torch.zeros(4, 16, 16, dtype=torch.bool)
    corner[:, :4, :4] = True
    boxes = make_quadrant_data(16, seed=1)[2][:4]  # the validation set's (QuadrantData's val_seed)
    relied = CAMCallback(num_images=4, images={"boxes": boxes, "spurious_mask": corner},
                         measures=["localisation", "shortcut"])  # reliance: imputation noise and a forward
    batch_sizes: list[int] = []
    engine_call = cams.CamEngine.__call__

    def spy(self: cams.CamEngine, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        batch_sizes.append(x.shape[0])
        return engine_call(self, x, *args, **kwargs)

    monkeypatch.setattr(cams.CamEngine, "__call__", spy)
    cam_trainer, watched = _fit(tmp_path / "cam", [pair, smoothed, measured, relied])

    assert pair.runs == smoothed.runs == measured.runs == relied.runs == 4  # baseline + every epoch: they ran
    assert any(k.startswith("cam_shortcut/") and k.endswith("/reliance") for k in cam_trainer.callback_metrics)
    assert batch_sizes.count(1) == 4  # and each probed one image at fit start
    for name, tensor in plain.state_dict().items():  # parameters and BatchNorm buffers
        assert torch.equal(tensor, watched.state_dict()[name]), name
    plain_opt, cam_opt = plain_trainer.optimizers[0].state_dict(), cam_trainer.optimizers[0].state_dict()
    assert plain_opt["state"].keys() == cam_opt["state"].keys()
    for key, state in plain_opt["state"].items():
        assert torch.equal(state["momentum_buffer"], cam_opt["state"][key]["momentum_buffer"])
    assert len(plain.losses) == len(watched.losses) == 9
    assert all(torch.equal(a, b) for a, b in zip(plain.losses, watched.losses, strict=True))
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):  # no .grad writes either
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
    logged = {k: v for k, v in cam_trainer.logged_metrics.items() if not k.startswith("cam")}
    assert logged.keys() == plain_trainer.logged_metrics.keys()
    assert all(torch.equal(plain_trainer.logged_metrics[k], v) for k, v in logged.items())
    assert torch.equal(torch.random.get_rng_state(), plain_rng)  # not one draw more or less


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


SAMPLED_STEPS = (5, 10, 20, 30)


class LeakProbe(L.Callback):
    """After every CAM run: hook counts of every module, live tensors, resident memory."""

    def __init__(self, cam: CAMCallback) -> None:
        self.cam = cam
        self.hooks_before = -1
        self.hooks: list[int] = []
        self.tensors: list[int] = []
        self.rss: list[int] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hooks_before = _hook_count(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.hooks.append(_hook_count(pl_module))
        if trainer.global_step in SAMPLED_STEPS:  # a full gc scan takes a second: sample it
            self.cam._images.wait()  # what a queued image job holds is freed when it has run
            self.tensors.append(_live_tensors() - len(pl_module.losses))  # TinyNet keeps every loss
            self.rss.append(_rss_bytes())


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc for resident memory")
def test_hook_counts_and_memory_stay_flat_over_30_runs(tmp_path: Path) -> None:
    images, labels, _ = make_quadrant_data(8, size=32)
    cam = CAMCallback(methods=["gradcam", "scorecam"], every_n_steps=1, images=(images, labels), target="label")
    probe = LeakProbe(cam)
    train = DataLoader(QuadrantDataset(64, size=32), batch_size=8, shuffle=True)
    options = dict(TRAINER_DEFAULTS, max_steps=30, max_epochs=-1, logger=CSVLogger(str(tmp_path)))
    L.Trainer(callbacks=[cam, probe], **options).fit(TinyNet(), train_dataloaders=train)

    assert cam.runs == 31  # baseline + 30 steps
    assert probe.hooks == [probe.hooks_before] * 30
    assert len(probe.tensors) == len(SAMPLED_STEPS)
    assert max(probe.tensors) - min(probe.tensors) <= 2, probe.tensors  # from step 5: optimizer state exists
    assert probe.rss[-1] - probe.rss[0] < 30 * 2**20, [r // 2**20 for r in probe.rss]


def _precision_supported(precision: str) -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
    except (RuntimeError, AssertionError):
        return False
    return True


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_training_gives_float32_maps(tmp_path: Path, precision: str) -> None:
    if not _precision_supported(precision):
        pytest.skip(f"autocast {precision} is not supported on this CPU")
    cam = CAMCallback(methods=["gradcam", "eigencam"], num_images=4)
    options = dict(TRAINER_DEFAULTS, max_epochs=1, logger=CSVLogger(str(tmp_path)), precision=precision)
    trainer = L.Trainer(callbacks=[cam], **options)
    if trainer.precision != precision:  # Lightning replaces 16-mixed by bf16-mixed on CPU
        pytest.skip(f"Trainer(precision={precision!r}) runs as {trainer.precision!r} on CPU")
    model = TinyNet()
    trainer.fit(model, datamodule=QuadrantData())
    assert cam.runs == 2
    for name, maps in cam.last_maps.items():
        assert maps.dtype == torch.float32, name
        assert maps.shape == (4, 16, 16)
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(p.dtype == torch.float32 for p in model.parameters())
