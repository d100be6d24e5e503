"""Run folders for the report's tests and benchmark, written by the callback's own parts without training.

:func:`write_run` logs ``runs`` CAM runs of a fixed batch of synthetic images (a bright square, the object, and
a marker, the spurious region) through the writer the callback uses (:class:`cam_callback._logging.CamLogWriter`
with a TensorBoard logger, or its PNG fallback): the configuration, the overlays, the timeline, the record, the
scalars the measures compute from the maps (drift, localisation, shortcut), Lightning-like ``train_loss`` and
``val_acc``, and a shortcut warning where asked. The maps move from the object onto the marker when
``shortcut`` (or stay on the object), so the numbers tell a story a test can check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cam_callback import CAMCallback, CAMDisplay, ShortcutWarning
from cam_callback._batch import FixedBatch
from cam_callback._history import MapHistory
from cam_callback._logging import CamLogWriter
from cam_callback._overlays import log_run_images, note_run
from cam_callback._publish import warn
from cam_callback._summary import config
from cam_callback._timeline import Timeline
from cam_callback.measures import baseline_maps, resolve_measures
from cam_callback.measures.shortcut import shortcut_message, shortcut_scalars
from cams import metrics

__all__ = ["write_run"]


def _batch(images: int, size: int, generator: torch.Generator) -> FixedBatch:
    pictures = torch.rand(images, 1, size, size, generator=generator) * 0.3
    side = size // 4
    boxes = torch.zeros(images, 4)
    spurious = torch.zeros(images, size, size, dtype=torch.bool)
    for i in range(images):
        x0, y0 = (i % 2) * size // 2 + side // 2, (i // 2 % 2) * size // 2 + side // 2
        pictures[i, 0, y0 : y0 + side, x0 : x0 + side] = 1.0
        boxes[i] = torch.tensor([x0, y0, x0 + side, y0 + side], dtype=torch.float32)
        corner = size - side // 2 if i % 2 == 0 else 0
        pictures[i, 0, 0 : side // 2, corner : corner + side // 2] = 1.0
        spurious[i, 0 : side // 2, corner : corner + side // 2] = True
    return FixedBatch(pictures, labels=torch.arange(images) % 4, boxes=boxes, spurious=spurious)


def _maps(batch: FixedBatch, on_marker: float, generator: torch.Generator) -> torch.Tensor:
    """Maps ``(N, H, W)`` in [0, 1]: noise, a peak on the object and one on the marker, mixed by ``on_marker``."""
    count, _, height, width = batch.images.shape
    noise = torch.rand(count, height, width, generator=generator) * 0.2
    object_peak = torch.zeros(count, height, width)
    marker_peak = batch.spurious.float() if batch.spurious is not None else torch.zeros_like(object_peak)
    for i, (x0, y0, x1, y1) in enumerate(batch.boxes.long().tolist()):
        object_peak[i, y0:y1, x0:x1] = 1.0
    cam = noise + (1 - on_marker) * object_peak + on_marker * marker_peak * 2.0
    return cam / cam.amax(dim=(1, 2), keepdim=True)


def write_run(
    folder: str | Path,
    *,
    runs: int = 4,
    images: int = 8,
    methods: Sequence[str] = ("gradcam",),
    size: int = 32,
    shortcut: bool = False,
    logger: str = "tensorboard",
    seed: int = 0,
    steps_per_run: int = 10,
) -> Path:
    """Log a synthetic fit into ``folder``; return the run folder the report reads.

    Args:
        folder: where the logger's folder goes (``folder/run`` for TensorBoard and CSV, ``folder/cams`` for no
            logger at all).
        runs: CAM runs (the first is the baseline, ``"before training"``).
        images: fixed images.
        methods: the methods' names (their maps are the same synthetic maps, shifted a little).
        size: image side in pixels.
        shortcut: the maps move onto the marker over the runs, with a ``ShortcutWarning`` once they do.
        logger: ``"tensorboard"``, ``"csv"`` (a ``CSVLogger``: PNG fallback in its folder) or ``"none"``.
        seed: for the images and the maps' noise.
        steps_per_run: logging steps between runs.
    """
    generator = torch.Generator().manual_seed(seed)
    batch = _batch(images, size, generator)
    folder = Path(folder)
    run_dir = folder / "run" if logger in ("tensorboard", "csv") else folder / "cams"
    if logger == "tensorboard":
        loggers, png_dir = [TensorBoardLogger(str(folder), name="", version="run")], None
    elif logger == "csv":
        loggers, png_dir = [CSVLogger(str(folder), name="", version="run")], run_dir / "cams"
    else:
        loggers, png_dir = [], run_dir
    writer = CamLogWriter(loggers, png_dir)
    settings = CAMCallback(methods=list(methods), measures=["localisation", "shortcut"]).settings
    measures = resolve_measures(["localisation", "shortcut"])
    history, timeline, warned = MapHistory(), Timeline(8), False
    for k in range(runs):
        step = k * steps_per_run
        on_marker = (0.9 * k / max(runs - 1, 1)) if shortcut else 0.0
        maps = {m: _maps(batch, on_marker, generator) for m in methods}
        preds = torch.where(torch.rand(images, generator=generator) < 0.3 + 0.5 * k / max(runs, 1),
                            batch.labels, (batch.labels + 1) % 4) if k else torch.zeros(images, dtype=torch.long)
        title = "before training" if k == 0 else f"epoch {k}\nstep {step}"
        settings_now = config(settings, batch, ["features"], None, None, None, None, measures) if k == 0 else None
        note_run(writer, batch, preds, step, title, settings_now)
        log_run_images(writer, batch, maps, preds, None, step, mean=None, std=None, display=CAMDisplay(),
                       timeline=timeline, title=title, config=settings_now)
        scalars = history.drift(maps, preds)
        scored = {**maps, **baseline_maps(tuple(maps[methods[0]].shape), torch.device("cpu"))}
        for name, cam in scored.items():
            energy = metrics.energy_pointing_game(cam, boxes=batch.boxes)
            scalars[f"cam_localisation/{name}/energy"] = float(energy.mean())
        for name in maps:
            scalars[f"cam_drift/{name}/noise_floor"] = 1e-5 * (1 + k % 3)
        scalars.update(shortcut_scalars(scored, batch))
        scalars["cam_cost/overhead"] = 1.0 if k == 0 else 0.2 / math.sqrt(k)
        history.remember(maps, preds)
        writer.scalars(scalars, step)
        for lg in loggers:
            lg.log_metrics({"train_loss": 2.3 / (1 + k), "val_acc": 0.25 + 0.05 * k}, step=step)
        if shortcut and k and not warned and scalars[f"cam_shortcut/{methods[0]}/vs_object"] > 1.0:
            warn(writer, shortcut_message(methods[0], scalars, 1.0, f"After epoch {k}"), ShortcutWarning, step,
                 "shortcut")
            warned = True
    writer.flush()
    for lg in loggers:
        lg.finalize("success")
    return run_dir
