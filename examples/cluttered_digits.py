"""Attention forming on cluttered handwritten digits, watched in TensorBoard.

The real handwritten digits shipped with scikit-learn (``sklearn.datasets.load_digits``, 8×8,
upscaled ×3 to 24×24) are placed at random positions on 64×64 canvases among fragments of *other*
digits. The label is the class of the one whole digit; the fragments are strokes of the same kind
(loops, bars, hooks) but carry no information about the label, so the network must find the digit
to classify it. Each digit's box ``(x0, y0, x1, y1)`` is kept as ground truth, which lets the
pointing game measure whether the class activation maps point at the digit.

Run it (CPU, no download, a few minutes; Lightning's progress bar shows each epoch)::

    .venv/bin/python examples/cluttered_digits.py       # trains, logs to lightning_logs/version_<n>/
    .venv/bin/tensorboard --logdir lightning_logs        # IMAGES tab: cam/gradcam, cam/xgradcam, ...

The run saves ``lightning_logs/version_<n>/checkpoints/last.ckpt`` and four held-out test canvases as
PNGs in ``lightning_logs/version_<n>/test_canvases/``, and ends by printing the ``cam-callback explain``
command that explains them with the checkpoint (the checkpoint records this file, so ``explain`` loads
``DigitNet`` from it although it was ``__main__.DigitNet`` while training).

Everything is importable without side effects: ``ClutteredDigits`` (the datamodule), ``DigitNet``
(the model), ``make_trainer``, ``pointing_game_of`` and ``chance_level`` are used by the tests and
by ``scripts/make_docs_images.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "CANVAS",
    "DIGIT",
    "ClutteredDigits",
    "ClutteredDigitsDataset",
    "DigitNet",
    "EpochSummary",
    "chance_level",
    "evaluate",
    "main",
    "make_callbacks",
    "make_canvases",
    "make_trainer",
    "pointing_game_of",
    "save_canvases",
    "upscaled_digits",
]

CANVAS = 64
"""Side of the square canvas, in pixels."""
DIGIT = 24
"""Side of an upscaled digit (8×8 → 24×24), in pixels."""
METHODS = ("gradcam", "xgradcam", "scorecam")
"""The CAM methods the example logs."""
POINTING_TOLERANCE = 0
"""Pointing-game tolerance in pixels. The common 15 px is meant for 224×224 images; on a 64×64
canvas it would turn a 24-pixel box into a 54-pixel one (chance ≈ 0.7), so the example asks for a
hit inside the box itself (chance = box area / canvas area ≈ 0.1)."""


# --------------------------------------------------------------------------------------------- data
def upscaled_digits(scale: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 scikit-learn digits, bilinearly upscaled and scaled to ``[0, 1]``.

    Returns:
        ``(images, labels)``: float32 ``(N, 8 * scale, 8 * scale)`` in ``[0, 1]`` and int64 ``(N,)``.

    Example:
        >>> images, labels = upscaled_digits()
        >>> images.shape, labels.shape, float(images.max()) <= 1.0
        ((1797, 24, 24), (1797,), True)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(small, scale_factor=scale, mode="bilinear", align_corners=False)
    return big[:, 0].clamp(0, 1).numpy(), digits.target.astype(np.int64)


def _ink_box(digit: np.ndarray, threshold: float = 0.15) -> tuple[int, int, int, int]:
    """Tight ``(x0, y0, x1, y1)`` box (inclusive-exclusive) of the pixels above ``threshold``."""
    cols = np.flatnonzero((digit > threshold).any(axis=0))
    rows = np.flatnonzero((digit > threshold).any(axis=1))
    if cols.size == 0:
        return 0, 0, digit.shape[1], digit.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlaps(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def make_canvases(
    digits: np.ndarray,
    labels: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    canvas: int = CANVAS,
    fragments: tuple[int, int] = (5, 9),
    fragment_size: tuple[int, int] = (9, 15),
    noise: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Place one whole digit per canvas among fragments of other digits.

    Args:
        digits: source digits ``(N, D, D)`` float in ``[0, 1]`` (one split's pool only).
        labels: their classes ``(N,)``.
        count: number of canvases to make.
        rng: the generator that decides everything (the same seed gives the same canvases).
        canvas: side of the square canvas.
        fragments: ``[low, high)`` number of clutter fragments per canvas.
        fragment_size: ``[low, high)`` side of a fragment (a random crop of another digit).
        noise: standard deviation of the additive Gaussian pixel noise.

    Returns:
        ``(images, labels, boxes, sources)``: float32 ``(count, canvas, canvas)`` in ``[0, 1]``, int64
        ``(count,)``, int64 ``(count, 4)`` boxes ``x0, y0, x1, y1`` of the digit's ink
        (inclusive-exclusive) and int64 ``(count,)`` the index in ``digits`` of each canvas's digit.

    Example:
        >>> images, labels = upscaled_digits()
        >>> x, y, b, src = make_canvases(images[:50], labels[:50], 4, np.random.default_rng(0))
        >>> x.shape, y.shape, b.shape, bool((y == labels[src]).all())
        ((4, 64, 64), (4,), (4, 4), True)
    """
    n, side = len(digits), digits.shape[-1]
    if n < 2:
        raise ValueError(f"digits: need at least 2 source digits to make clutter, got {n}")
    images = np.zeros((count, canvas, canvas), np.float32)
    out_labels = np.empty(count, np.int64)
    boxes = np.empty((count, 4), np.int64)
    sources = np.empty(count, np.int64)
    for i in range(count):
        src = int(rng.integers(n))
        digit = digits[src]
        ix0, iy0, ix1, iy1 = _ink_box(digit)
        # Position the ink box uniformly on the canvas.
        x = int(rng.integers(-ix0, canvas - ix1 + 1))
        y = int(rng.integers(-iy0, canvas - iy1 + 1))
        box = (x + ix0, y + iy0, x + ix1, y + iy1)
        image = images[i]
        for _ in range(int(rng.integers(*fragments))):
            other = int(rng.integers(n - 1))
            other += other >= src  # any digit but this one
            for _attempt in range(20):
                h, w = (int(v) for v in rng.integers(*fragment_size, size=2))
                cy, cx = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
                piece = digits[other, cy : cy + h, cx : cx + w]
                if piece.sum() < 0.15 * h * w:  # mostly background: no stroke to confuse with
                    continue
                py, px = int(rng.integers(0, canvas - h + 1)), int(rng.integers(0, canvas - w + 1))
                if _overlaps((px, py, px + w, py + h), box):
                    continue
                region = image[py : py + h, px : px + w]
                np.maximum(region, piece, out=region)
                break
        region = image[y + iy0 : y + iy1, x + ix0 : x + ix1]
        np.maximum(region, digit[iy0:iy1, ix0:ix1], out=region)
        out_labels[i] = labels[src]
        boxes[i] = box
        sources[i] = src
    if noise > 0:
        images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
    return images, out_labels, boxes, sources


class ClutteredDigitsDataset(Dataset):
    """In-memory canvases; each item is ``{"image": (1, H, W) float, "label": () long, "box": (4,) long}``.

    ``image`` is normalised with ``mean``/``std`` (the datamodule's attributes). ``sources`` ``(N,)``
    holds the ``load_digits`` index of each canvas's digit (to check that splits are disjoint).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray,
        sources: np.ndarray,
        mean: float,
        std: float,
    ) -> None:
        self.images = (torch.from_numpy(images)[:, None] - mean) / std
        self.labels = torch.from_numpy(labels)
        self.boxes = torch.from_numpy(boxes)
        self.sources = torch.from_numpy(sources)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index], "box": self.boxes[index]}


class ClutteredDigits(L.LightningDataModule):
    """Cluttered-digit canvases with boxes; train/val/test made from disjoint source digits.

    The 1,797 source digits are shuffled with ``seed`` and split 60/20/20 before any canvas is made,
    so a validation or test canvas never shows a digit (nor a fragment of one) seen in training.
    Everything comes from local ``numpy.random.Generator`` s: the global RNGs are not touched.

    Args:
        train_size / val_size / test_size: number of canvases per split.
        batch_size: dataloader batch size.
        seed: decides the split and every canvas.
        channels: 1, or 3 to repeat the grey canvas for standard RGB networks.
        canvas: canvas side in pixels.

    Batches are dicts ``{"image": (B, C, H, W) float, "label": (B,), "box": (B, 4)}``.

    Example:
        >>> dm = ClutteredDigits(train_size=8, val_size=8, test_size=8, batch_size=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.val_dataloader()))
        >>> tuple(batch["image"].shape), tuple(batch["box"].shape), dm.mean, dm.std
        ((4, 1, 64, 64), (4, 4), (0.14,), (0.26,))
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        train_size: int = 5000,
        val_size: int = 500,
        test_size: int = 500,
        batch_size: int = 32,
        seed: int = 0,
        channels: int = 1,
        canvas: int = CANVAS,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
        self.save_hyperparameters()
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size = batch_size
        self.seed = seed
        self.channels = channels
        self.canvas = canvas
        # Fixed, rounded pixel statistics of the canvases (measured on 3,000 training canvases).
        self.mean = (0.14,) * channels
        self.std = (0.26,) * channels
        self.datasets: dict[str, ClutteredDigitsDataset] = {}

    def _make_split(self, split: str) -> ClutteredDigitsDataset:
        images, labels = upscaled_digits()
        order = np.random.default_rng(self.seed).permutation(len(images))
        cut1, cut2 = int(0.6 * len(order)), int(0.8 * len(order))
        pool = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}[split]
        # One independent stream per split: the validation canvases do not depend on train_size.
        stream = {"train": 1, "val": 2, "test": 3}[split]
        rng = np.random.default_rng([self.seed, stream])
        x, y, b, src = make_canvases(images[pool], labels[pool], self.sizes[split], rng, canvas=self.canvas)
        return ClutteredDigitsDataset(x, y, b, pool[src], self.mean[0], self.std[0])

    def setup(self, stage: str | None = None) -> None:
        """Make the splits a stage needs (cached: calling twice costs nothing)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", ("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = self._make_split(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        collate = _repeat_channels if self.channels == 3 else None
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def tensors(self, split: str = "val", count: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``count`` items of a split as one batch dict (``images`` with ``channels`` channels)."""
        self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        count = len(dataset) if count is None else min(count, len(dataset))
        image = dataset.images[:count]
        if self.channels == 3:
            image = image.expand(-1, 3, -1, -1).contiguous()
        return {"image": image, "label": dataset.labels[:count], "box": dataset.boxes[:count]}


def _repeat_channels(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    batch = torch.utils.data.default_collate(items)
    batch["image"] = batch["image"].expand(-1, 3, -1, -1).contiguous()
    return batch


def chance_level(boxes: torch.Tensor, size: int = CANVAS) -> float:
    """Pointing-game score of a uniformly random point: the mean box area over the canvas area.

    Example:
        >>> chance_level(torch.tensor([[0, 0, 32, 32], [0, 0, 64, 64]]))
        0.625
    """
    boxes = boxes.double()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return float(area.mean() / size**2)


# -------------------------------------------------------------------------------------------- model
def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DigitNet(L.LightningModule):
    """A small CNN for 64×64 canvases whose last feature map is 16×16 (a CAM cell covers 4×4 pixels).

    ``features`` (conv blocks, two 2× poolings) → ``(B, width * 2, 16, 16)`` → global average
    pooling → ``classifier``. The CAM target layer is ``"features"``.

    Example:
        >>> net = DigitNet()
        >>> tuple(net.features(torch.zeros(2, 1, 64, 64)).shape), tuple(net(torch.zeros(2, 1, 64, 64)).shape)
        ((2, 64, 16, 16), (2, 10))
    """

    def __init__(self, in_channels: int = 1, width: int = 32, num_classes: int = 10, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        w = width
        self.features = nn.Sequential(
            *_block(in_channels, w // 2),
            nn.MaxPool2d(2),  # 32×32
            *_block(w // 2, w),
            nn.MaxPool2d(2),  # 16×16
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        on_epoch = stage != "train"
        self.log(f"{stage}_loss", loss, prog_bar=stage == "train", on_epoch=on_epoch)
        self.log(f"{stage}_acc", acc, prog_bar=True, on_epoch=on_epoch, on_step=not on_epoch)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        steps = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# --------------------------------------------------------------------------------------- evaluation
def ink_maps(images: torch.Tensor, kernel: int = 9) -> torch.Tensor:
    """A "where is the most ink" baseline map: the input blurred by a ``kernel``-pixel box filter.

    A CAM that only found bright strokes would score like this map, not better; fragments are strokes
    too, so the trained network's maps should beat it by a wide margin.

    Args:
        images: ``(B, C, H, W)`` (normalised or not: only the ranking of pixels matters).

    Returns:
        ``(B, H, W)`` float32.

    Example:
        >>> tuple(ink_maps(torch.zeros(2, 1, 64, 64)).shape)
        (2, 64, 64)
    """
    grey = images.float().mean(dim=1, keepdim=True)
    return F.avg_pool2d(grey, kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]


def pointing_game_of(maps: torch.Tensor, boxes: torch.Tensor) -> float:
    """Mean pointing game of ``maps`` ``(B, H, W)`` against ``boxes`` ``(B, 4)`` (tolerance 0 px).

    Example:
        >>> maps = torch.zeros(1, 64, 64)
        >>> maps[0, 10, 20] = 1.0
        >>> pointing_game_of(maps, torch.tensor([[16, 4, 30, 28]]))
        1.0
    """
    from cams import metrics

    hits = metrics.pointing_game(maps, boxes=boxes, tolerance=POINTING_TOLERANCE)
    return float(hits.float().mean())


def cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str] = ("gradcam",),
    target_layer: str = "features",
    chunk: int = 250,
) -> dict[str, torch.Tensor]:
    """Maps ``{method: (B, H, W)}`` of the predicted class, computed in chunks of ``chunk`` images."""
    from cams import CamEngine

    engine = CamEngine(model, target_layers=target_layer)
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for start in range(0, len(images), chunk):
        maps = engine(images[start : start + chunk], methods=tuple(methods))
        for m in methods:
            parts[m].append(maps[m].cpu())
    return {m: torch.cat(p) for m, p in parts.items()}


@torch.no_grad()
def accuracy_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 250) -> float:
    """Top-1 accuracy of ``model`` (evaluated in ``eval`` mode, modes restored) on ``(B, C, H, W)`` images."""
    from cams.state import frozen_model

    with frozen_model(model):
        preds = torch.cat([model(images[i : i + chunk]).argmax(1) for i in range(0, len(images), chunk)])
    return float((preds.cpu() == labels).float().mean())


def evaluate(
    model: nn.Module,
    datamodule: ClutteredDigits,
    split: str = "test",
    methods: Sequence[str] = ("gradcam", "xgradcam"),
    count: int | None = None,
    target_layer: str = "features",
) -> dict[str, float]:
    """Accuracy and pointing game per method on the first ``count`` canvases of a split.

    Returns:
        ``{"accuracy", "chance", "ink_baseline", "pointing_game/<method>" ...}``.
    """
    data = datamodule.tensors(split, count)
    images, boxes = data["image"], data["box"]
    result = {
        "accuracy": accuracy_of(model, images, data["label"]),
        "chance": chance_level(boxes, images.shape[-1]),
        "ink_baseline": pointing_game_of(ink_maps(images), boxes),
    }
    for method, maps in cam_maps(model, images, methods, target_layer).items():
        result[f"pointing_game/{method}"] = pointing_game_of(maps, boxes)
    return result


# ------------------------------------------------------------------------------------------ training
class EpochSummary(L.Callback):
    """Print one line per epoch: validation accuracy, pointing game per method and drift.

    Reads the maps the :class:`cam_callback.CAMCallback` just computed on its fixed batch (no extra
    CAM work) and scores them against that batch's ``boxes`` (tolerance 0 px); drift is
    ``1 - mean cosine similarity`` with the previous run's maps (:func:`cams.metrics.drift`).
    Must come after the ``CAMCallback`` in the Trainer's callback list.
    """

    def __init__(self, cam_callback: Any, boxes: torch.Tensor, print_fn: Any = print) -> None:
        super().__init__()
        self.cam_callback = cam_callback
        self.boxes = boxes
        self.print_fn = print_fn
        self.previous: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []

    def _line(self, label: str, accuracy: float | None, trainer: L.Trainer) -> None:
        from cams import metrics

        maps = self.cam_callback.last_maps
        if not maps:
            return
        row: dict[str, float] = {} if accuracy is None else {"accuracy": accuracy}
        parts = [f"{label:<8}", "acc   -  " if accuracy is None else f"acc {accuracy:.3f}"]
        pointing = []
        for method, cam in maps.items():
            row[f"pointing_game/{method}"] = pointing_game_of(cam, self.boxes)
            pointing.append(f"{method} {row[f'pointing_game/{method}']:.2f}")
        parts.append(f"pointing game ({len(self.boxes)} val images, chance {chance_level(self.boxes):.2f}): ")
        line = " | ".join(parts[:2]) + " | " + parts[2] + " ".join(pointing)
        first = next(iter(maps))
        if first in self.previous:
            row[f"drift/{first}"] = float(metrics.drift(maps[first], self.previous[first]))
            line += f" | drift({first}) {row[f'drift/{first}']:.3f}"
        self.previous = maps
        self.history.append(row)
        from lightning.pytorch.callbacks import TQDMProgressBar

        bar = trainer.progress_bar_callback
        if self.print_fn is print and isinstance(bar, TQDMProgressBar) and bar.is_enabled:
            bar.print(line)  # above tqdm's bar, not through it (Rich's bar keeps printed lines above itself)
        else:
            self.print_fn(line, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._line("init", None, trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        acc = trainer.callback_metrics.get("val_acc")
        self._line(f"epoch {trainer.current_epoch + 1}", None if acc is None else float(acc), trainer)


def make_callbacks(
    datamodule: ClutteredDigits,
    methods: Sequence[str] = METHODS,
    num_images: int = 32,
    summary: bool = True,
    print_fn: Any = print,
    target_layer: str = "features",
) -> list[L.Callback]:
    """``[CAMCallback(...), EpochSummary(...)]`` explaining the first ``num_images`` validation canvases."""
    from cam_callback import CAMCallback
    from cam_callback.measures import Localisation

    boxes = datamodule.tensors("val", num_images)["box"]
    cam = CAMCallback(
        methods=list(methods),
        num_images=num_images,
        target_layers=target_layer,
        images={"boxes": boxes},
        measures=[Localisation(tolerance=POINTING_TOLERANCE), "noise_floor", "baselines"],
    )
    return [cam, EpochSummary(cam, boxes, print_fn)] if summary else [cam]


def make_trainer(
    max_epochs: int,
    callbacks: Sequence[L.Callback],
    root_dir: str | Path = ".",
    **kwargs: Any,
) -> L.Trainer:
    """A CPU-friendly ``Trainer`` logging to ``<root_dir>/lightning_logs/version_<n>`` (TensorBoard).

    It keeps the checkpoint of the last epoch as ``checkpoints/last.ckpt`` in the run's folder.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "callbacks": list(callbacks),
        "logger": TensorBoardLogger(save_dir=str(root_dir), name="lightning_logs"),
        "default_root_dir": str(root_dir),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "deterministic": True,
        "log_every_n_steps": 10,
    }
    options.update(kwargs)
    if options.get("enable_checkpointing", True):
        options["callbacks"].append(ModelCheckpoint(save_last=True))
    return L.Trainer(**options)


def train(
    epochs: int = 4,
    *,
    train_size: int = 5000,
    val_size: int = 500,
    test_size: int = 500,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    methods: Sequence[str] = METHODS,
    num_images: int = 32,
    root_dir: str | Path = ".",
    print_fn: Any = print,
    **trainer_kwargs: Any,
) -> tuple[DigitNet, ClutteredDigits, L.Trainer]:
    """Fit :class:`DigitNet` on :class:`ClutteredDigits` with the CAM callback; return model, data, trainer."""
    L.seed_everything(seed, verbose=False)
    datamodule = ClutteredDigits(train_size, val_size, test_size, batch_size=batch_size, seed=seed)
    model = DigitNet(lr=lr)
    callbacks = make_callbacks(datamodule, methods, num_images, print_fn=print_fn)
    trainer = make_trainer(epochs, callbacks, root_dir, **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule)
    return model, datamodule, trainer


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: train, print one line per epoch, then score the held-out test split."""
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--train-size", type=int, default=5000, help="training canvases (default 5000)")
    parser.add_argument("--val-size", type=int, default=500, help="validation canvases (default 500)")
    parser.add_argument("--test-size", type=int, default=500, help="test canvases (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--seed", type=int, default=0, help="decides the data split, canvases and init")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="CAM methods to log")
    parser.add_argument("--num-images", type=int, default=32, help="validation canvases the callback explains")
    parser.add_argument("--root-dir", default=".", help="logs go to <root-dir>/lightning_logs/version_<n>")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Lightning's progress bar on stderr (default on)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")

    start = time.perf_counter()
    logdir = Path(args.root_dir) / "lightning_logs"
    print(f"Training DigitNet on cluttered digits; CAMs are logged for TensorBoard under {logdir}/")
    print(f"    {_command('tensorboard')} --logdir {logdir}      (then open the IMAGES and SCALARS tabs)")
    print(f"Making {args.train_size:,} training and {args.val_size:,} validation canvases...", flush=True)
    model, datamodule, trainer = train(
        args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        methods=args.methods,
        num_images=args.num_images,
        root_dir=args.root_dir,
        accelerator=args.accelerator,
        enable_progress_bar=args.progress_bar,
    )
    cam_methods = [m for m in args.methods if m in ("gradcam", "xgradcam")] or ["gradcam"]
    result = evaluate(model.cpu(), datamodule, "test", cam_methods)
    pointing = " ".join(f"{m} {result[f'pointing_game/{m}']:.3f}" for m in cam_methods)
    print(
        f"held-out test ({args.test_size} canvases of unseen digits): acc {result['accuracy']:.3f} | "
        f"pointing game {pointing} (chance {result['chance']:.3f}, brightest-ink baseline "
        f"{result['ink_baseline']:.3f})"
    )
    run_dir = Path(trainer.logger.log_dir)
    canvases = save_canvases(datamodule, run_dir / "test_canvases")
    print(f"done in {time.perf_counter() - start:.0f} s; logs: {run_dir}")
    print(f"    {_command('tensorboard')} --logdir {logdir}")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        print(f"Explain {len(canvases)} held-out test canvases (in {canvases[0].parent}) with the saved checkpoint:")
        print(
            f"    {_command('cam-callback')} explain {checkpoint} {canvases[0].parent}/*.png "
            "--methods gradcam xgradcam --output-dir explanations"
        )
    return 0


def save_canvases(datamodule: ClutteredDigits, folder: str | Path, count: int = 4) -> list[Path]:
    """Write the first ``count`` test canvases as 8-bit grey PNGs ``canvas<i>-digit<label>.png`` → the paths.

    Example:
        >>> import tempfile
        >>> dm = ClutteredDigits(train_size=4, val_size=4, test_size=4)
        >>> [p.name for p in save_canvases(dm, tempfile.mkdtemp(), count=2)]  # doctest: +ELLIPSIS
        ['canvas0-digit...png', 'canvas1-digit...png']
    """
    from PIL import Image

    data = datamodule.tensors("test", count)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (data["image"][:, 0] * datamodule.std[0] + datamodule.mean[0]).clamp(0, 1)
    paths = []
    for i, (image, label) in enumerate(zip(pixels, data["label"], strict=True)):
        path = folder / f"canvas{i}-digit{int(label)}.png"
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _command(name: str) -> str:
    """``name`` as this interpreter's environment has it (``.venv/bin/name``), else the bare name."""
    import os
    import sys

    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
