"""How much does ``CAMCallback`` at its default settings add to a fit? Prints the wall-time ratio.

A small but realistic CNN (three conv-BN-ReLU blocks, ~25k parameters) is fitted on scikit-learn's
digits (1797 images, 8x8 upsampled to 32x32, normalised) with a TensorBoard logger, once without and
once with ``CAMCallback()`` (Grad-CAM of 8 validation images, baseline + every epoch). The fits
alternate and each is repeated; the fastest of each kind is compared (wall and process CPU time), and
the time spent inside the callback is measured directly, which a busy shared machine disturbs least.

Run: ``OMP_NUM_THREADS=1 python benchmarks/callback_overhead.py [--epochs 5] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from cam_callback import CAMCallback


class DigitsCNN(L.LightningModule):
    """Three conv-BN-ReLU blocks, global average pooling, linear head."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

        self.features = nn.Sequential(block(1, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class DigitsData(L.LightningDataModule):
    """sklearn digits as (N, 1, 32, 32) float tensors, normalised; 1500 train / 297 validation images."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        self.mean, self.std = (float(x.mean()),), (float(x.std()),)
        x = (x - self.mean[0]) / self.std[0]
        y = torch.tensor(digits.target, dtype=torch.long)
        self.train_set = TensorDataset(x[:1500], y[:1500])
        self.val_set = TensorDataset(x[1500:], y[1500:])
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class TimedCAMCallback(CAMCallback):
    """``CAMCallback()`` that also adds up the wall time spent in its setup, batch choice and runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def _timed(self, work: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def _setup(self, *args: Any) -> None:
        self._timed(super()._setup, *args)

    def _choose_batch(self, *args: Any) -> Any:
        return self._timed(super()._choose_batch, *args)

    def _explain_and_log(self, *args: Any) -> None:
        self._timed(super()._explain_and_log, *args)


@dataclass
class Fit:
    wall: float  # seconds of trainer.fit
    cpu: float  # process CPU seconds during trainer.fit (all threads; less sensitive to other users)
    inside: float = 0.0  # seconds spent inside the callback
    runs: int = 0


def timed_fit(with_callback: bool, epochs: int, data: DigitsData) -> Fit:
    """One ``trainer.fit`` with or without ``CAMCallback()``, timed."""
    L.seed_everything(0, verbose=False)
    callback = TimedCAMCallback() if with_callback else None
    callbacks = [callback] if callback is not None else []
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=TensorBoardLogger(log_dir),
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        start, cpu = time.perf_counter(), time.process_time()
        trainer.fit(DigitsCNN(), datamodule=data)
        fit = Fit(time.perf_counter() - start, time.process_time() - cpu)
    if callback is not None:
        fit.inside, fit.runs = callback.seconds, callback.runs
    return fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    data = DigitsData()
    timed_fit(True, 1, data)  # warm-up: imports, cv2 colour maps, PNG encoder
    plain: list[Fit] = []
    watched: list[Fit] = []
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both kinds alike
        plain.append(timed_fit(False, args.epochs, data))
        watched.append(timed_fit(True, args.epochs, data))
    base, cam = min(f.wall for f in plain), min(f.wall for f in watched)
    base_cpu, cam_cpu = min(f.cpu for f in plain), min(f.cpu for f in watched)
    inside = min(f.inside for f in watched)
    runs = watched[0].runs
    print(f"fit without callback: {base:.2f} s wall  (all: {', '.join(f'{f.wall:.2f}' for f in plain)})")
    print(f"fit with CAMCallback(): {cam:.2f} s wall  (all: {', '.join(f'{f.wall:.2f}' for f in watched)})")
    print(f"CAM runs per fit: {runs}; time inside the callback: {inside * 1000:.0f} ms "
          f"({inside / max(runs, 1) * 1000:.0f} ms per run) = {100 * inside / cam:.1f} % of the fit")
    print(f"CPU-time ratio: {cam_cpu / base_cpu:.3f}  (overhead {100 * (cam_cpu / base_cpu - 1):+.1f} %)")
    print(f"wall-time ratio: {cam / base:.3f}  (overhead {100 * (cam / base - 1):+.1f} %)")


if __name__ == "__main__":
    main()
