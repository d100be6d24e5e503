"""How much does ``CAMCallback`` at its default settings add to a fit? Prints the wall-time ratio.

A small but realistic CNN (three conv-BN-ReLU blocks, ~25k parameters) is fitted on scikit-learn's
digits (1797 images, 8x8 upsampled to 32x32, normalised) with a TensorBoard logger, once without and
once with ``CAMCallback()`` (Grad-CAM of 8 validation images, baseline + every epoch). The fits
alternate and each is repeated; the fastest of each kind is compared (wall and process CPU time), and
the time spent inside the callback is measured directly, which a busy shared machine disturbs least.

Run: ``OMP_NUM_THREADS=1 python benchmarks/callback_overhead.py [--epochs 5] [--repeats 2]``.

The realistic setting: ``python benchmarks/callback_overhead.py --realistic [--device cuda]`` fits a
torchvision ResNet-18 (10 classes, random init) on random 128x128 images (a fixed pool of 256,
``--train-samples`` per epoch, batch 32) with ``CAMCallback(method="gradcam")`` at its defaults (8 fixed
images, every epoch, the noise floor); the floor is at most 1 % of the fit time. Its images are random, so
the maps say nothing: only the cost is measured. Besides the wall time inside the callback's hooks, the
time its background worker spent drawing and writing images (``cam_cost/logging``) is reported: it runs
beside training, off the run's path, but shares the CPU.
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
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

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


class ResNet18(L.LightningModule):
    """torchvision's ResNet-18 (random init) for the realistic setting."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class PoolImages(Dataset):
    """``length`` samples cycling over a fixed pool of random ``(3, size, size)`` images with random labels."""

    def __init__(self, length: int, size: int, pool: int = 256, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(pool, 3, size, size, generator=gen)
        self.labels = torch.randint(0, 10, (pool,), generator=gen)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i % len(self.images)], self.labels[i % len(self.labels)]


class RandomImagesData(L.LightningDataModule):
    """Random square images for the realistic setting: ``train_samples`` per epoch, 512 for validation."""

    def __init__(self, train_samples: int, size: int, batch_size: int, pin_memory: bool) -> None:
        super().__init__()
        self.train_set = PoolImages(train_samples, size, seed=0)
        self.val_set = PoolImages(512, size, seed=1)
        self.batch_size, self.pin_memory = batch_size, pin_memory

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, pin_memory=self.pin_memory)


class TimedCAMCallback(CAMCallback):
    """``CAMCallback(**options)`` that also adds up the wall time spent in its setup, batch choice and runs."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seconds = 0.0

    def _timed(self, work: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def _setup(self, *args: Any) -> None:
        self._timed(super()._setup, *args)

    def _prepare(self, *args: Any) -> None:  # the fixed batch and the fit-start probe
        self._timed(super()._prepare, *args)

    def _run(self, *args: Any) -> None:  # a run, its scalars published, its images handed to the worker
        self._timed(super()._run, *args)

    def on_fit_end(self, *args: Any) -> None:  # waiting for the background worker's last images
        self._timed(super().on_fit_end, *args)


@dataclass
class Fit:
    wall: float  # seconds of trainer.fit
    cpu: float  # process CPU seconds during trainer.fit (all threads; less sensitive to other users)
    inside: float = 0.0  # seconds spent inside the callback
    background: float = 0.0  # seconds its background worker spent drawing and writing images
    runs: int = 0


def timed_fit(with_callback: bool, epochs: int, data: L.LightningDataModule, args: argparse.Namespace) -> Fit:
    """One ``trainer.fit`` with or without the callback, timed."""
    L.seed_everything(0, verbose=False)
    callback = TimedCAMCallback(**args.callback) if with_callback else None
    callbacks = [callback] if callback is not None else []
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if args.device == "cuda" else args.device,
            devices=1,
            precision=args.precision,
            logger=TensorBoardLogger(log_dir),
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        start, cpu = time.perf_counter(), time.process_time()
        trainer.fit(ResNet18() if args.realistic else DigitsCNN(), datamodule=data)
        fit = Fit(time.perf_counter() - start, time.process_time() - cpu)
        if callback is not None:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            events = EventAccumulator(trainer.log_dir, size_guidance={"scalars": 0})
            events.Reload()
            fit.background = sum(e.value for e in events.Scalars("cam_cost/logging"))
            fit.inside, fit.runs = callback.seconds, callback.runs
    return fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--realistic", action="store_true",
                        help="ResNet-18, 128x128, batch 32, CAMCallback(method='gradcam') at its defaults")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="the Trainer's accelerator")
    parser.add_argument("--precision", default="32-true", help="the Trainer's precision, e.g. 16-mixed")
    parser.add_argument("--train-samples", type=int, default=2560, help="realistic setting: images per epoch")
    parser.add_argument("--size", type=int, default=128, help="realistic setting: image side")
    parser.add_argument("--batch-size", type=int, default=32, help="realistic setting: training batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.realistic:
        data: L.LightningDataModule = RandomImagesData(
            args.train_samples, args.size, args.batch_size, pin_memory=args.device == "cuda"
        )
        args.callback = {"method": "gradcam"}
    else:
        data = DigitsData()
        args.callback = {}
    where = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"device {where}, precision {args.precision}, "
          + (f"ResNet-18 realistic setting ({args.size}², batch {args.batch_size}, {args.train_samples} images per "
             f"epoch)" if args.realistic else "digits CNN") + f", callback {args.callback}, {args.threads} thread(s)")
    timed_fit(True, 1, data, args)  # warm-up: imports, cv2 colour maps, PNG encoder, CUDA kernels
    plain: list[Fit] = []
    watched: list[Fit] = []
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both kinds alike
        plain.append(timed_fit(False, args.epochs, data, args))
        watched.append(timed_fit(True, args.epochs, data, args))
    base, cam = min(f.wall for f in plain), min(f.wall for f in watched)
    base_cpu, cam_cpu = min(f.cpu for f in plain), min(f.cpu for f in watched)
    inside = min(f.inside for f in watched)
    background = min(f.background for f in watched)
    runs = watched[0].runs
    print(f"fit without callback: {base:.2f} s wall  (all: {', '.join(f'{f.wall:.2f}' for f in plain)})")
    print(f"fit with the callback: {cam:.2f} s wall  (all: {', '.join(f'{f.wall:.2f}' for f in watched)})")
    print(f"CAM runs per fit: {runs}; time inside the callback: {inside * 1000:.0f} ms "
          f"({inside / max(runs, 1) * 1000:.0f} ms per run) = {100 * inside / cam:.1f} % of the fit; its background "
          f"image worker: {background * 1000:.0f} ms ({100 * background / cam:.1f} %, beside training)")
    print(f"CPU-time ratio: {cam_cpu / base_cpu:.3f}  (overhead {100 * (cam_cpu / base_cpu - 1):+.1f} %)")
    print(f"wall-time ratio: {cam / base:.3f}  (overhead {100 * (cam / base - 1):+.1f} %)")


if __name__ == "__main__":
    main()
