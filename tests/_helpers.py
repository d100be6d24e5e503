"""What many tests read back, in one place: TensorBoard event files, logged PNGs, and a logger that records.

- :func:`read_events`: a run folder's TensorBoard events, every image, scalar and tensor kept (not sampled);
- :func:`decode`: one logged image event as an ``(H, W, 3)`` uint8 array;
- :class:`RecordingLogger`: a non-TensorBoard Lightning logger with W&B's ``log_image`` signature that keeps
  every metric and image it gets.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

__all__ = ["RecordingLogger", "decode", "read_events"]


def read_events(log_dir: str | Path) -> EventAccumulator:
    """The TensorBoard events under ``log_dir``, loaded, with nothing dropped."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def decode(event: Any) -> np.ndarray:
    """A TensorBoard image event as ``(H, W, 3)`` uint8 RGB."""
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


class RecordingLogger(Logger):
    """A non-TensorBoard logger with ``log_image`` (the W&B signature) that keeps what it gets.

    Attributes:
        metrics: tag -> ``[(step, value), ...]`` in the order logged.
        calls: every ``log_metrics`` call's ``(step, {tag: value})`` with the callback's tags (``cam...``) only.
        images: every ``log_image`` call's ``(tag, step, images)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, list[tuple[int | None, float]]] = {}
        self.calls: list[tuple[int, dict[str, float]]] = []
        self.images: list[tuple[str, int | None, list[Any]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, float(value)))
        cam = {k: float(v) for k, v in metrics.items() if k.startswith("cam")}
        if cam:
            self.calls.append((int(step or 0), cam))

    def run_calls(self) -> list[tuple[int, dict[str, float]]]:
        """:attr:`calls` without the image worker's own ``cam_cost/logging`` calls: one per CAM run."""
        return [(step, values) for step, values in self.calls if values.keys() != {"cam_cost/logging"}]

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self.images.append((key, step, images))

    def images_by_tag(self) -> dict[str, list[torch.Tensor]]:
        """tag -> the first image of each call as a tensor, in order."""
        by_tag: dict[str, list[torch.Tensor]] = {}
        for tag, _, images in self.images:
            by_tag.setdefault(tag, []).append(torch.as_tensor(np.asarray(images[0])))
        return by_tag
