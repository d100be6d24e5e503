"""Where the callback's images, scalars and configuration text go.

- TensorBoard loggers: ``logger.experiment.add_image`` / ``add_text`` (no separate writer).
- Other loggers with a ``log_image(key, images, step)`` method (W&B, ...): the grids through it.
- Scalars: every logger's ``log_metrics``.
- No logger that can take images: PNGs (and, without any logger, a ``scalars.csv``) under
  ``<log_dir>/cams/``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.tensorboard import TensorBoardLogger as _FabricTensorBoardLogger
from lightning.pytorch.loggers import Logger

from cams.overlay import save_png, to_uint8

__all__ = ["CamLogWriter"]


def _is_tensorboard(logger: Logger) -> bool:
    return isinstance(logger, _FabricTensorBoardLogger)


def _png_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", tag)


class CamLogWriter:
    """Send one run's outputs to the Trainer's loggers (call on global rank zero only).

    Args:
        loggers: ``trainer.loggers``.
        log_dir: ``trainer.log_dir``; PNGs go to ``<log_dir>/cams/`` when no logger takes images.

    Example:
        >>> import tempfile
        >>> writer = CamLogWriter([], tempfile.mkdtemp())
        >>> writer.png_dir is not None
        True
    """

    def __init__(self, loggers: Sequence[Logger], log_dir: str | Path | None) -> None:
        self.loggers = list(loggers)
        self.tensorboard = [lg for lg in self.loggers if _is_tensorboard(lg)]
        self.image_loggers = [
            lg for lg in self.loggers if not _is_tensorboard(lg) and callable(getattr(lg, "log_image", None))
        ]
        takes_images = bool(self.tensorboard or self.image_loggers)
        self.png_dir: Path | None = None if takes_images else Path(log_dir or ".") / "cams"

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        """Log one ``(3, H, W)`` float image in ``[0, 1]`` under ``tag``."""
        grid = grid.detach().float().clamp(0, 1).cpu()
        for logger in self.tensorboard:
            logger.experiment.add_image(tag, grid, global_step=step, dataformats="CHW")
        if self.image_loggers:
            array = to_uint8(grid[None])[0]
            for logger in self.image_loggers:
                logger.log_image(key=tag, images=[array], step=step)  # type: ignore[attr-defined]
        if self.png_dir is not None:
            name = "input.png" if tag.endswith("/input") else f"step_{step:07d}.png"
            save_png(self.png_dir / _png_name(tag.split("/", 1)[-1]) / name, to_uint8(grid[None])[0])

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log scalars to every logger (a CSV under ``<log_dir>/cams/`` when there is none)."""
        if not values:
            return
        for logger in self.loggers:
            logger.log_metrics(dict(values), step=step)
        if not self.loggers and self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            path = self.png_dir / "scalars.csv"
            new = not path.exists()
            with path.open("a", newline="") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(["step", "tag", "value"])
                writer.writerows([step, tag, value] for tag, value in values.items())

    def text(self, tag: str, text: str, step: int) -> None:
        """Log a markdown text once (TensorBoard ``add_text``; ``config.md`` beside the PNGs)."""
        for logger in self.tensorboard:
            logger.experiment.add_text(tag, text, global_step=step)
        if self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            (self.png_dir / "config.md").write_text(text + "\n")

    def flush(self) -> None:
        """Flush TensorBoard writers so the run is visible at once."""
        for logger in self.tensorboard:
            experiment: Any = logger.experiment
            if callable(getattr(experiment, "flush", None)):
                experiment.flush()
