"""Attention forming in 3-D: a small 3-D CNN finds an object planted in noisy, cluttered volumes.

Each volume is ``1 × 24 × 24 × 24`` voxels of Gaussian noise holding one object, a solid cube, a ball
or a cross (the three classes), at a random place, among short bright rods ("clutter") that carry no
information about the class. The network must find the object to name its shape. The object's box
``x0, y0, z0, x1, y1, z1`` (``z`` along the depth) is kept, so the 3-D pointing game measures whether
the class activation maps point at the object rather than at the clutter.

:class:`cam_callback.CAMCallback` explains a fixed batch of validation volumes before training and
after every epoch and logs, for TensorBoard, the three orthogonal slices through each map's peak over
the volume, the drift of the maps and the 3-D pointing game. This script also prints the pointing game
per epoch.

Run it (CPU, no download, about a minute or two)::

    .venv/bin/python examples/volumes.py                 # trains, logs to lightning_logs/
    tensorboard --logdir lightning_logs          # IMAGES: cam/gradcam ...; SCALARS: cam_localisation/...

Importable without side effects: ``make_volumes``, ``Volumes``, ``VolumeNet`` and ``train`` are used by
the tests.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["SHAPES", "SIZE", "VolumeNet", "Volumes", "main", "make_volumes", "train"]

SIZE = 24
"""Side of the cubic volumes, in voxels."""
SHAPES = ("cube", "ball", "cross")
"""The classes: the shape of the planted object."""
METHODS = ("gradcam", "layercam")
"""The CAM methods the example logs."""
POINTING_TOLERANCE = 1
"""Pointing-game tolerance in voxels: a peak within one voxel of the object counts."""
EXTENT = 7
"""Side of an object's bounding box, in voxels."""


# --------------------------------------------------------------------------------------------- data
def _object(shape: int) -> torch.Tensor:
    """The ``EXTENT³`` bool voxels of shape number ``shape`` (cube, ball, cross)."""
    r = torch.arange(EXTENT, dtype=torch.float32) - (EXTENT - 1) / 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    if shape == 0:
        return (z.abs() <= 2.5) & (y.abs() <= 2.5) & (x.abs() <= 2.5)
    if shape == 1:
        return z**2 + y**2 + x**2 <= 3.4**2
    rods = ((y.abs() <= 0.5) & (x.abs() <= 0.5)) | ((z.abs() <= 0.5) & (x.abs() <= 0.5))
    return rods | ((z.abs() <= 0.5) & (y.abs() <= 0.5))


def make_volumes(n: int, seed: int = 0, clutter: int = 5, noise: float = 0.35) -> dict[str, torch.Tensor]:
    """``n`` volumes with one object each among ``clutter`` short rods, from their own generator.

    Returns:
        ``{"image": (n, 1, SIZE, SIZE, SIZE) float32, "label": (n,) int64, "boxes": (n, 6) float32}``;
        boxes are ``x0, y0, z0, x1, y1, z1`` in voxels (upper bounds exclusive), ``z`` along the depth.

    Example:
        >>> data = make_volumes(4)
        >>> data["image"].shape, data["boxes"][0].tolist() == make_volumes(4)["boxes"][0].tolist()
        (torch.Size([4, 1, 24, 24, 24]), True)
    """
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, SIZE, SIZE, SIZE, generator=gen) * noise
    labels = torch.randint(0, len(SHAPES), (n,), generator=gen)
    boxes = torch.zeros(n, 6)
    for i in range(n):
        corner = torch.randint(1, SIZE - EXTENT - 1, (3,), generator=gen)  # (z, y, x)
        z0, y0, x0 = corner.tolist()
        for _ in range(clutter):  # rods of 3-4 voxels along a random axis, away from the object
            axis = int(torch.randint(0, 3, (1,), generator=gen))
            length = int(torch.randint(3, 5, (1,), generator=gen))
            while True:
                start = torch.randint(0, SIZE - length, (3,), generator=gen)
                stop = start.clone()
                stop[axis] += length - 1
                if any(int(stop[a]) < int(corner[a]) - 1 or int(start[a]) > int(corner[a]) + EXTENT for a in range(3)):
                    break
            a, b, c = start.tolist()
            d, e, f = (stop + 1).tolist()
            images[i, 0, a:d, b:e, c:f] = 1.0
        piece = _object(int(labels[i]))
        region = images[i, 0, z0 : z0 + EXTENT, y0 : y0 + EXTENT, x0 : x0 + EXTENT]
        region[piece] = 1.0
        filled = piece.nonzero()
        lo, hi = filled.min(dim=0).values, filled.max(dim=0).values + 1
        origin = torch.tensor([x0, y0, z0])
        boxes[i] = torch.cat([origin + lo.flip(0), origin + hi.flip(0)]).float()  # (z, y, x) → x, y, z
    return {"image": images, "label": labels, "boxes": boxes}


class Volumes(L.LightningDataModule):
    """Training and validation volumes (:func:`make_volumes` with seeds ``seed`` and ``seed + 1``)."""

    def __init__(self, train_size: int = 1200, val_size: int = 200, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.train_size, self.val_size, self.batch_size, self.seed = train_size, val_size, batch_size, seed
        self.val = make_volumes(val_size, seed + 1)

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train"):
            self.train = make_volumes(self.train_size, self.seed)

    def _loader(self, data: dict[str, torch.Tensor], shuffle: bool) -> DataLoader:
        dataset = TensorDataset(data["image"], data["label"])
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)


class VolumeNet(L.LightningModule):
    """A small 3-D CNN: three Conv3d-BN-ReLU blocks (one max-pool), global average pooling, a linear layer.

    ``features`` (12³ voxels, 32 channels) is the layer the CAMs explain.
    """

    def __init__(self, width: int = 16, num_classes: int = len(SHAPES), lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width // 2), nn.MaxPool3d(2), *block(width // 2, width), *block(width, 2 * width)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=False)
        self.log(f"{stage}_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=False)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class PointingSummary(L.Callback):
    """Prints, after each CAM run, the 3-D pointing game of the callback's maps (put it after the CAMCallback)."""

    def __init__(self, cam_callback: Any, boxes: torch.Tensor, print_fn: Any = print) -> None:
        super().__init__()
        self.cam_callback, self.boxes, self.print_fn = cam_callback, boxes, print_fn
        self.history: list[dict[str, float]] = []

    def _line(self, label: str, accuracy: float | None) -> None:
        from cams import metrics

        row: dict[str, float] = {}
        for method, maps in self.cam_callback.last_maps.items():
            hits = metrics.pointing_game(maps, boxes=self.boxes, tolerance=POINTING_TOLERANCE)
            row[method] = float(hits.mean())
        self.history.append(row)
        acc = "   -  " if accuracy is None else f"{accuracy:.3f}"
        games = " ".join(f"{m} {v:.2f}" for m, v in row.items())
        line = f"{label:<8} | val acc {acc} | 3-D pointing game ({len(self.boxes)} volumes): {games}"
        self.print_fn(line, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._line("init", None)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        acc = trainer.callback_metrics.get("val_acc")
        self._line(f"epoch {trainer.current_epoch + 1}", None if acc is None else float(acc))


def train(
    epochs: int = 4,
    *,
    train_size: int = 1200,
    val_size: int = 200,
    num_images: int = 32,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    root_dir: str | Path = ".",
    print_fn: Any = print,
    **trainer_kwargs: Any,
) -> tuple[VolumeNet, PointingSummary, L.Trainer]:
    """Fit :class:`VolumeNet` with a :class:`~cam_callback.CAMCallback` → model, pointing-game history, trainer."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from cam_callback import CAMCallback
    from cam_callback.measures import Localisation

    L.seed_everything(seed, verbose=False)
    data = Volumes(train_size, val_size, batch_size, seed)
    boxes = data.val["boxes"][:num_images]
    cam = CAMCallback(
        methods=list(METHODS),
        num_images=num_images,
        target_layers="features",
        images={"boxes": boxes},
        measures=[Localisation(tolerance=POINTING_TOLERANCE), "noise_floor", "baselines"],
    )
    summary = PointingSummary(cam, boxes, print_fn)
    options: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "callbacks": [cam, summary],
        "logger": TensorBoardLogger(save_dir=str(root_dir), name="lightning_logs"),
        "default_root_dir": str(root_dir),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "deterministic": True,
        "log_every_n_steps": 10,
    }
    options.update(trainer_kwargs)
    trainer = L.Trainer(**options)
    model = VolumeNet(lr=lr)
    trainer.fit(model, datamodule=data)
    return model, summary, trainer


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train, printing the 3-D pointing game before training and after every epoch."""
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--train-size", type=int, default=1200, help="training volumes (default 1200)")
    parser.add_argument("--val-size", type=int, default=200, help="validation volumes (default 200)")
    parser.add_argument("--num-images", type=int, default=32, help="validation volumes the callback explains")
    parser.add_argument("--seed", type=int, default=0, help="decides the volumes and the initialisation")
    parser.add_argument("--root-dir", default=".", help="logs go to <root-dir>/lightning_logs/version_<n>")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    start = time.perf_counter()
    logdir = Path(args.root_dir) / "lightning_logs"
    print(f"Training VolumeNet on {args.train_size} cluttered 24³ volumes; CAMs logged under {logdir}/")
    print(f"    tensorboard --logdir {logdir}      (IMAGES: slices through each map's peak)", flush=True)
    _, summary, trainer = train(
        args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        num_images=args.num_images,
        seed=args.seed,
        root_dir=args.root_dir,
    )
    first, last = summary.history[0], summary.history[-1]
    change = ", ".join(f"{m} {first[m]:.2f} -> {last[m]:.2f}" for m in first)
    print(f"3-D pointing game (tolerance {POINTING_TOLERANCE} voxel): {change}")
    print(f"done in {time.perf_counter() - start:.0f} s; logs: {trainer.logger.log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
