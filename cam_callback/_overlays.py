"""The images of a run: the input grid and configuration (once per destination), each method's overlays, and
the attention timeline. This is an edge of the package: where maps become pixels for the loggers.

- ``cam/config``: the callback's configuration as a markdown table; ``cam/input``: the de-normalised fixed
  images (volumes: their slices through the centre);
- ``cam/<method>``: each method's maps over the de-normalised images, one grid (volumes: the three slices
  through each map's peak; a segmentation target: the explained mask's outline beside each overlay); a map that
  carries no information (:mod:`cam_callback._health`) is framed in red;
- ``cam/<method>/timeline``: this run's row added to the timeline (:mod:`cam_callback._timeline`);
- the callback's record (:mod:`cam_callback._record`): the configuration once per destination, then each run's
  title and predicted classes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._logging import BackgroundLog, CamLogWriter
from cam_callback._settings import CAMDisplay
from cam_callback._summary import config_markdown
from cam_callback._timeline import Timeline, log_timeline
from cam_callback._volumes import outline_panels, volume_input_panels, volume_panels
from cams.overlay import denormalize, overlay

__all__ = ["MARK", "ImageLog", "framed", "grid", "log_config_and_input", "log_overlays", "log_run_images", "note_run"]

Normalisation = tuple[float, ...] | None

MARK = (1.0, 0.0, 0.0)
"""The colour of the frame around a map that carries no information."""


def framed(tiles: Tensor, marked: Tensor | None) -> Tensor:
    """``tiles`` ``(N, 3, H, W)`` with a red frame (1/16 of the shorter side, at least 1 px) around the marked ones.

    Example:
        >>> out = framed(torch.zeros(2, 3, 16, 16), torch.tensor([True, False]))
        >>> out[0, 0, 0, 5].item(), out[0, 0, 8, 8].item(), out[1].abs().sum().item()
        (1.0, 0.0, 0.0)
    """
    if marked is None or not bool(marked.any()):
        return tiles
    out = tiles.clone()
    width = max(1, min(out.shape[-2:]) // 16)
    ring = torch.ones(out.shape[-2:], dtype=torch.bool)
    ring[width:-width, width:-width] = False
    colour = torch.tensor(MARK, dtype=out.dtype).view(3, 1)
    for i in marked.cpu().nonzero().flatten().tolist():
        if i < out.shape[0]:
            out[i][:, ring] = colour
    return out


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
    marked: dict[str, Tensor] | None = None,
) -> None:
    """``cam/<method>``: each method's maps ``(N, H, W)`` over the de-normalised images, as a grid.

    Volumes ``(N, C, D, H, W)``: the three slices through each map's peak. A fixed segmentation ``target``
    (:func:`cam_callback._volumes.fixed_target`) adds the outline of its mask beside each overlay. ``marked``
    (method -> ``(N,)`` bool): the maps that carry no information, framed in red (:func:`framed`).
    """
    alpha, colormap, marked = display.alpha, display.colormap, marked or {}
    if images.dim() == 5:
        for name, cam in maps.items():
            panels = framed(volume_panels(images, cam, mean, std, alpha, colormap), marked.get(name))
            writer.image(f"cam/{name}", grid(panels), step)
        return
    shown = denormalize(images, mean, std)
    for name, cam in maps.items():
        tiles = framed(overlay(shown, cam, alpha, colormap), marked.get(name))
        writer.image(f"cam/{name}", grid(outline_panels(shown, tiles, target)), step)


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
    marked: dict[str, Tensor] | None = None,
) -> None:
    """Log one run's images (global rank zero): the configuration and input when ``config`` is given (once per
    destination), the overlays and, with a ``timeline``, its new row; then flush the writer. The run's lines in the
    callback's record are :func:`note_run`'s.

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
        marked: method -> ``(N,)`` bool, the maps that carry no information (framed in red in the grid and
            the timeline).
    """
    if config is not None:
        log_config_and_input(writer, config_markdown(config), batch.images, mean, std, step)
    log_overlays(writer, batch.images, maps, step, mean, std, display, fixed, marked)
    if timeline is not None:
        log_timeline(timeline, writer, batch, maps, preds, step, title, mean, std, display, marked)
    writer.flush()


def note_run(writer: CamLogWriter, batch: FixedBatch, preds: Tensor | None, step: int, title: str,
             config: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    """Note one run in the callback's record: the configuration and the fixed images' labels when ``config`` is
    given (once per destination), then the run's title and predicted classes."""
    if config is not None:
        writer.record.config(step, config, None if batch.labels is None else batch.labels.tolist())
    writer.record.run(step, title, None if preds is None else preds.tolist())


class ImageLog:
    """Global rank zero's image logging for one ``fit``/``validate`` session: the writer and the background worker
    that draws and writes each run's images (:class:`~cam_callback._logging.BackgroundLog`), so no rank waits for it.

    Each run's job logs its images, then ``cam_cost/logging`` (the job's own seconds) at the run's step. On the
    other ranks (``trainer=None``) it logs nothing and every method does nothing.

    Args:
        trainer: the Trainer (its loggers; PNG files in the run's folder without an image logger), or ``None``.
        name: the callback's name in its tags, or ``None``.
    """

    def __init__(self, trainer: Trainer | None = None, name: str | None = None) -> None:
        self.writer = None if trainer is None else CamLogWriter.open(trainer, name)
        self._worker = BackgroundLog()

    @property
    def destination(self) -> str | None:
        """Where the images land (equal for two sessions of the same run); ``None`` on the other ranks."""
        return None if self.writer is None else self.writer.destination

    def submit(self, batch: FixedBatch, maps: dict[str, Tensor], preds: Tensor | None, fixed: Any, step: int,
               **options: Any) -> None:  # fmt: skip
        """Queue :func:`log_run_images` of one run (``options``: its keyword arguments) and its cost scalar."""
        writer = self.writer
        if writer is None:
            return
        writer.resolve()  # on the main thread: the worker must not create a logger's run a second time
        # the record on this thread, before the run's scalars are published: its lines stay in step order
        note_run(writer, batch, preds, step, options["title"], options.get("config"))

        def job() -> None:
            started = time.perf_counter()
            log_run_images(writer, batch, maps, preds, fixed, step, **options)
            writer.scalars({"cam_cost/logging": time.perf_counter() - started}, step)
            writer.flush()

        self._worker.submit(job)

    def check(self) -> None:
        """Raise a failure of an earlier run's job (once)."""
        self._worker.check()

    def flush(self) -> None:
        """Wait for every queued job, then :meth:`check`."""
        self._worker.flush()

    def wait(self) -> None:
        """Wait for every queued job; a failure is left for the next :meth:`check`."""
        self._worker.wait()

    def close(self, quiet: bool = False) -> None:
        """Flush and stop the worker; with ``quiet`` a failure is a warning (an exception is on its way already)."""
        try:
            self._worker.close()
        except RuntimeError as err:
            if not quiet:
                raise
            rank_zero_warn(str(err), category=RuntimeWarning)
