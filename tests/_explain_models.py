"""A tiny LightningModule and a real training run with CAMCallback, for the explain and CLI tests.

The module lives here (not in a test file) so that ``checkpoint["cam_callback"]["module_class"]``
(``_explain_models.TinyNet``) is importable in a subprocess with ``PYTHONPATH=tests``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SIZE = 32
MEAN = (0.5, 0.45, 0.4)
STD = (0.25, 0.25, 0.25)
METHODS = ("gradcam", "xgradcam")
LAYER = "features.3"


class TinyNet(LightningModule):
    """Two conv blocks and a linear head: (B, C, 32, 32) → (B, num_classes) logits."""

    def __init__(self, num_classes: int = 3, channels: int = 3, width: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class NeedsArgs(TinyNet):
    """A module whose constructor argument has no default (and which saves no hyperparameters)."""

    def __init__(self, depth: int) -> None:
        super().__init__()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] → normalised with MEAN/STD."""
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def crops_dataset(n_per_class: int = 16, seed: int = 0) -> TensorDataset:
    """32×32 crops of three skimage pictures, labelled by picture: a tiny real classification task."""
    import skimage.data

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, picture in enumerate((skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea())):
        for _ in range(n_per_class):
            top = rng.integers(0, picture.shape[0] - 4 * SIZE)
            left = rng.integers(0, picture.shape[1] - 4 * SIZE)
            crop = torch.from_numpy(picture[top : top + 4 * SIZE, left : left + 4 * SIZE].copy())
            crop = crop.permute(2, 0, 1).float().div(255).unsqueeze(0)
            xs.append(nn.functional.interpolate(crop, size=(SIZE, SIZE), mode="area"))
            ys.append(label)
    return TensorDataset(normalize(torch.cat(xs)), torch.tensor(ys))


def train_checkpoint(directory: Path) -> Path:
    """Fit TinyNet for two short epochs with a CAMCallback and save ``directory/tiny.ckpt`` via the Trainer."""
    from cam_callback import CAMCallback

    path = directory / "tiny.ckpt"
    if path.exists():
        return path
    torch.manual_seed(0)
    data = crops_dataset()
    callback = CAMCallback(methods=list(METHODS), target_layers=LAYER, num_images=4, mean=MEAN, std=STD)
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=directory,
        callbacks=[callback],
        deterministic=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no logger (PNG fallback), few dataloader workers
        trainer.fit(
            TinyNet(),
            DataLoader(data, batch_size=16, shuffle=True),
            DataLoader(data, batch_size=16),
        )
    trainer.save_checkpoint(path)
    return path
