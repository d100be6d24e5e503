"""The images of a run: the input grid and configuration (once per destination), each method's overlays, and
the attention timeline. This is an edge of the package: where maps become pixels for the loggers.

- ``cam/config``: the callback's configuration as a markdown table; ``cam/input``: the de-normalised fixed
  images (volumes: their slices through the centre);
- ``cam/<method>``: each method's maps over the de-normalised images, one grid (volumes: the three slices
  through each map's peak; a segmentation target: the explained mask's outline beside each overlay);
- ``cam/<method>/timeline``: this run's row added to the timeline (:mod:`cam_callback._timeline`);
- the callback's record (:mod:`cam_callback._record`): the configuration once per destination, then each run's
  title and predicted classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torchvision
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._logging import CamLogWriter
from cam_callback._settings import CAMDisplay
from cam_callback._summary import config_markdown
from cam_callback._timeline import Timeline, log_timeline
from cam_callback._volumes import outline_panels, volume_input_panels, volume_panels
from cams.overlay import denormalize, overlay

__all__ = ["grid", "log_config_and_input", "log_overlays", "log_run_images"]

Normalisation = tuple[float, ...] | None


def grid(images: Tensor) -> Tensor:
    """``(N, 3, H, W)`` images as one ``(3, H', W')`` grid, at most 8 per row, on the CPU."""
    return torchvision.utils.make_grid(images.cpu(), nrow=min(8, images.shape[0]), padding=2, pad_value=1.0)


def log_config_and_input(
    writer: CamLogWriter, config_text: str, images: Tensor, mean: Normalisation, std: Normalisation, step: int
) -> None:
    """``cam/config`` and ``cam/input`` (the de-normalised images ``(N, C, H, W)``; volumes: their slices
    through the centre)."""
    writer.text("cam/config", config_text, step)
    shown = volume_input_panels(images, mean, std) if images.dim() == 5 else denormalize(images, mean, std)
    writer.image("cam/input", grid(shown), step)


def log_overlays(
    writer: CamLogWriter,
    images: Tensor,
    maps: dict[str, Tensor],
    step: int,
    mean: Normalisation,
    std: Normalisation,
    display: CAMDisplay,
    target: Any = None,
) -> None:
    """``cam/<method>``: each method's maps ``(N, H, W)`` over the de-normalised images, as a grid.

    Volumes ``(N, C, D, H, W)``: the three slices through each map's peak. A fixed segmentation ``target``
    (:func:`cam_callback._volumes.fixed_target`) adds the outline of its mask beside each overlay.
    """
    alpha, colormap = display.alpha, display.colormap
    if images.dim() == 5:
        for name, cam in maps.items():
            writer.image(f"cam/{name}", grid(volume_panels(images, cam, mean, std, alpha, colormap)), step)
        return
    shown = denormalize(images, mean, std)
    for name, cam in maps.items():
        writer.image(f"cam/{name}", grid(outline_panels(shown, overlay(shown, cam, alpha, colormap), target)), step)


def log_run_images(
    writer: CamLogWriter,
    batch: FixedBatch,
    maps: dict[str, Tensor],
    preds: Tensor | None,
    fixed: Any,
    step: int,
    *,
    mean: Normalisation,
    std: Normalisation,
    display: CAMDisplay,
    timeline: Timeline | None,
    title: str,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Log one run's images (global rank zero): the configuration and input when ``config`` is given (once per
    destination), the overlays and, with a ``timeline``, its new row, and note the run in the callback's record;
    then flush the writer.

    Args:
        writer: where the images go.
        batch: the fixed batch.
        maps: the run's maps per method, ``(N, H, W)`` on the CPU.
        preds: the run's predicted classes ``(N,)``, or ``None``.
        fixed: the target with its choices made explicit (a segmentation target's mask is outlined).
        step: the logging step.
        mean, std: the normalisation to undo for display.
        display: the overlays' colour map and weight.
        timeline: the callback's timeline, or ``None`` (``display.timeline_rows=None``).
        title: the timeline row's title (:func:`cam_callback._timeline.run_title`).
        config: the ``cam/config`` values (:func:`cam_callback._summary.config`), or ``None`` when this destination
            has them already.
    """
    if config is not None:
        writer.record.config(step, config, None if batch.labels is None else batch.labels.tolist())
        log_config_and_input(writer, config_markdown(config), batch.images, mean, std, step)
    writer.record.run(step, title, None if preds is None else preds.tolist())
    log_overlays(writer, batch.images, maps, step, mean, std, display, fixed)
    if timeline is not None:
        log_timeline(timeline, writer, batch, maps, preds, step, title, mean, std, display)
    writer.flush()
