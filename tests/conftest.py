"""Shared test fixtures: a tiny CNN LightningModule and a synthetic image datamodule (CPU, seconds).

The data: ``size x size`` one-channel images of noise with a bright square in one of four quadrants;
the class is the quadrant, so a few steps teach the model where to look and each sample has a known
object box (``x0, y0, x1, y1`` in pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

NUM_CLASSES = 4
MEAN = (0.5,)
STD = (0.25,)


def make_quadrant_data(n: int, size: int = 16, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` images (n, 1, size, size) normalised with MEAN/STD, labels (n,), boxes (n, 4)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    labels = labels[torch.randperm(n, generator=gen)]
    images = torch.rand(n, 1, size, size, generator=gen) * 0.3
    half, side = size // 2, size // 4
    boxes = torch.zeros(n, 4)
    for i, label in enumerate(labels.tolist()):
        x0 = (label % 2) * half + side // 2
        y0 = (label // 2) * half + side // 2
        images[i, 0, y0 : y0 + side, x0 : x0 + side] = 1.0
        boxes[i] = torch.tensor([x0, y0, x0 + side, y0 + side], dtype=torch.float32)
    images = (images - MEAN[0]) / STD[0]
    return images, labels, boxes


class QuadrantDataset(Dataset):
    """Map-style dataset yielding ``(x, y)`` tuples or ``{"image", "label", "boxes"}`` dicts."""

    def __init__(self, n: int, size: int = 16, seed: int = 0, as_dict: bool = False) -> None:
        self.images, self.labels, self.boxes = make_quadrant_data(n, size, seed)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Any:
        if self.as_dict:
            return {"image": self.images[i], "label": self.labels[i], "boxes": self.boxes[i]}
        return self.images[i], self.labels[i]


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """(x, y) from a tuple or dict batch."""
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


class TinyNet(L.LightningModule):
    """Conv-BN-ReLU x2, global pooling, dropout, linear: BatchNorm buffers and dropout RNG both matter."""

    def __init__(self, num_classes: int = NUM_CLASSES, channels: int = 1, lr: float = 0.05, dropout: float = 0.25):
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(8, num_classes))
        self.losses: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = split_batch(batch)
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        self.losses.append(loss.detach().clone())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = split_batch(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class QuadrantData(L.LightningDataModule):
    """Train/val dataloaders over :class:`QuadrantDataset`; exposes ``mean``/``std`` like torchvision datasets."""

    mean = MEAN
    std = STD

    def __init__(
        self,
        n_train: int = 64,
        n_val: int = 16,
        size: int = 16,
        batch_size: int = 16,
        as_dict: bool = False,
        val_seed: int = 1,
        shuffle_val: bool = False,
    ) -> None:
        super().__init__()
        self.train_set = QuadrantDataset(n_train, size, seed=0, as_dict=as_dict)
        self.val_set = QuadrantDataset(n_val, size, seed=val_seed, as_dict=as_dict)
        self.batch_size = batch_size
        self.shuffle_val = shuffle_val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=self.shuffle_val)


TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 2,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
    "deterministic": True,
    "log_every_n_steps": 1,
}


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., L.Trainer]:
    """``make_trainer(callbacks=[...], **overrides)``: a small CPU Trainer logging to TensorBoard in tmp_path."""

    def make(callbacks: list[L.Callback] | None = None, **overrides: Any) -> L.Trainer:
        options = dict(TRAINER_DEFAULTS)
        options["logger"] = TensorBoardLogger(str(tmp_path), name="tb")
        options["default_root_dir"] = str(tmp_path)
        options.update(overrides)
        return L.Trainer(callbacks=callbacks or [], **options)

    return make


# --------------------------------------------------------------------------- the fast default and --full
# ``pytest`` skips the tests marked ``slow``; ``pytest --full`` runs them (CI does, see .ci/run); asking for a
# marker explicitly (``pytest -m slow``) runs what it selects.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="also run the tests marked slow: the full suite, as CI runs it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--full") or config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: the full suite runs it (pytest --full)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
