"""The attention timeline: one image per method whose rows are the CAM runs so far and whose columns are
the fixed images, logged as ``cam/<method>/timeline``.

Each row is one run (``before training``, ``epoch 1``, ``epoch 2``, ...), each tile the method's overlay of
one fixed image, with the object's box or mask outlined in green, a spurious region (``spurious_masks``)
in magenta, and under the tile the class the model predicted (and the true one, red when they differ).
The image stays bounded: the first run and the last ``rows`` runs are kept, in a buffer allocated at the
first run, so memory does not grow with training.

This module is an edge of the package: it is where the rows become pixels (Pillow draws the text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._logging import CamLogWriter
from cams.overlay import denormalize, overlay

__all__ = ["COLUMNS", "TILE", "Timeline", "log_timeline", "render_timeline", "run_title"]

COLUMNS = 8
"""Fixed images shown per row (the first ``COLUMNS`` of the fixed batch), like the overlay grids."""
TILE = 128
"""Longest side of a tile in pixels: small images are enlarged by an integer factor (pixels stay
sharp), large ones reduced."""

_OBJECT = (0, 230, 0)
_SPURIOUS = (255, 0, 255)
_RIGHT = (0, 110, 0)
_WRONG = (200, 0, 0)
_LABEL_WIDTH = 150
_CAPTION = 20
_GAP = 6
_HEADER = 28


def tile_size(height: int, width: int) -> tuple[int, int]:
    """The tile ``(h, w)`` for images of ``height`` x ``width``: integer enlargement up to :data:`TILE`, else reduced.

    Example:
        >>> tile_size(64, 64), tile_size(28, 28), tile_size(224, 112), tile_size(200, 200)
        ((128, 128), (112, 112), (128, 64), (128, 128))
    """
    side = max(height, width)
    if side <= TILE:
        factor = max(1, TILE // side)
        return height * factor, width * factor
    return max(1, round(height * TILE / side)), max(1, round(width * TILE / side))


def _to_tiles(overlays: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, 3, H, W)`` float in [0, 1] → ``(N, 3, h, w)`` uint8 at the tile size."""
    images = overlays.detach().float().cpu()
    if tuple(images.shape[-2:]) != size:
        enlarge = size[0] >= images.shape[-2] and size[1] >= images.shape[-1]
        mode = "nearest" if enlarge else "area"
        images = F.interpolate(images, size=size, mode=mode)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass
class _Rows:
    """One method's rows: slot 0 the first run, slots 1.. a ring of the latest runs."""

    tiles: Tensor  # (rows + 1, N, 3, h, w) uint8
    preds: Tensor  # (rows + 1, N) long, -1 where unknown
    titles: list[str] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # slots in chronological order
    runs: int = 0

    def state(self) -> dict[str, Any]:
        return {"tiles": self.tiles, "preds": self.preds, "titles": list(self.titles), "order": list(self.order),
                "runs": self.runs}


class Timeline:
    """The rows of every method's timeline, bounded to the first run and the last ``rows`` runs.

    Args:
        rows: how many of the latest runs to keep beside the first one.

    Example:
        >>> timeline = Timeline(rows=2)
        >>> for run in range(5):
        ...     timeline.add("gradcam", torch.rand(3, 3, 16, 16), f"run {run}", torch.tensor([0, 1, 2]))
        >>> timeline.titles("gradcam")
        ['run 0', 'run 3', 'run 4']
        >>> tuple(timeline.render("gradcam").shape)[0]
        3
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._methods: dict[str, _Rows] = {}

    def add(self, method: str, overlays: Tensor, title: str, preds: Tensor | None) -> None:
        """Append one run: ``overlays`` ``(N, 3, H, W)`` in [0, 1] (the first :data:`COLUMNS` are kept)."""
        overlays = overlays[:COLUMNS]
        size = tile_size(*overlays.shape[-2:])
        rows = self._methods.get(method)
        count = overlays.shape[0]
        if rows is None or rows.tiles.shape[1:] != (count, 3, *size):
            rows = _Rows(
                tiles=torch.zeros(self.rows + 1, count, 3, *size, dtype=torch.uint8),
                preds=torch.full((self.rows + 1, count), -1, dtype=torch.long),
            )
            rows.titles = [""] * (self.rows + 1)
            self._methods[method] = rows
        if rows.runs == 0:
            slot = 0
        else:
            slot = 1 + (rows.runs - 1) % self.rows
            if len(rows.order) == self.rows + 1:
                rows.order.pop(1)  # the oldest row after the first
        rows.tiles[slot] = _to_tiles(overlays, size)
        rows.preds[slot] = -1 if preds is None else preds[:count].long().cpu()
        rows.titles[slot] = title
        rows.order.append(slot)
        rows.runs += 1

    def titles(self, method: str) -> list[str]:
        """The row titles shown for ``method``, oldest first."""
        rows = self._methods.get(method)
        return [] if rows is None else [rows.titles[slot] for slot in rows.order]

    def runs(self, method: str) -> int:
        """How many runs were added for ``method`` (shown or not)."""
        rows = self._methods.get(method)
        return 0 if rows is None else rows.runs

    def render(
        self,
        method: str,
        labels: Tensor | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        spurious: Tensor | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """The timeline image of ``method``, ``(3, H, W)`` float in [0, 1] (see :func:`render_timeline`)."""
        rows = self._methods[method]
        return render_timeline(
            rows.tiles[rows.order],
            [rows.titles[slot] for slot in rows.order],
            rows.preds[rows.order],
            method=method,
            labels=labels,
            boxes=boxes,
            masks=masks,
            spurious=spurious,
            image_size=image_size,
            skipped=rows.runs - len(rows.order),
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and ints (``weights_only`` loadable)."""
        return {"rows": self.rows, "methods": {name: rows.state() for name, rows in self._methods.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rows of :meth:`state_dict` (kept only if they fit this timeline's ``rows``)."""
        if int(state.get("rows", -1)) != self.rows:
            return
        self._methods = {
            name: _Rows(value["tiles"], value["preds"], list(value["titles"]), list(value["order"]), int(value["runs"]))
            for name, value in state.get("methods", {}).items()
        }


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _outline(region: Tensor, size: tuple[int, int]) -> Tensor:
    """The boundary pixels ``(h, w)`` bool of a ``(H, W)`` region drawn at tile ``size`` (2 px wide)."""
    inside = F.interpolate(region[None, None].float(), size=size, mode="nearest")[0, 0]
    eroded = -F.max_pool2d(-inside[None, None], 5, stride=1, padding=2)[0, 0]
    return (inside > 0.5) & (eroded < 0.5)


def _box_region(box: Tensor, image_size: tuple[int, int]) -> Tensor:
    """The pixels of an ``x0, y0, x1, y1`` box (``x1, y1`` exclusive), as the pointing game counts them."""
    height, width = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    return (xs >= math.floor(x0)) & (xs < math.ceil(x1)) & (ys >= math.floor(y0)) & (ys < math.ceil(y1))


def render_timeline(
    tiles: Tensor,
    titles: list[str],
    preds: Tensor,
    *,
    method: str = "",
    labels: Tensor | None = None,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
    spurious: Tensor | None = None,
    image_size: tuple[int, int] | None = None,
    skipped: int = 0,
) -> Tensor:
    """Compose the rows into one image with outlines and captions.

    Args:
        tiles: ``(R, N, 3, h, w)`` uint8 overlay tiles, one row per run, oldest first.
        titles: one title per row (``"before training"``, ``"epoch 3"``, ...); a second line after ``"\n"``
            is written smaller (``"epoch 3\nstep 120"``).
        preds: ``(R, N)`` predicted class per tile (``-1``: not known).
        method: the method's name, for the header.
        labels: ``(N', )`` true classes of the fixed images (``N' >= N``), or ``None``.
        boxes: ``(N', 4)`` object boxes ``x0, y0, x1, y1`` in image pixels, or ``None``.
        masks: ``(N', H, W)`` object masks, or ``None``.
        spurious: ``(N', H, W)`` spurious-region masks, or ``None``.
        image_size: ``(H, W)`` of the fixed images (needed for boxes when there are no masks).
        skipped: runs between the first row and the second that are no longer shown.

    Returns:
        ``(3, H, W)`` float32 in [0, 1].
    """
    from PIL import Image, ImageDraw

    count_rows, count, _, tile_h, tile_w = tiles.shape
    tiles = tiles.clone()
    size = (tile_h, tile_w)
    if image_size is None:
        regions = masks if masks is not None else spurious
        image_size = size if regions is None else (int(regions.shape[-2]), int(regions.shape[-1]))
    outlines: list[Tensor | None] = []
    for i in range(count):
        ring = torch.zeros(size, dtype=torch.bool)
        magenta = torch.zeros(size, dtype=torch.bool)
        if masks is not None:
            ring |= _outline(masks[i].bool().cpu(), size)
        elif boxes is not None:
            ring |= _outline(_box_region(boxes[i].cpu(), image_size), size)  # type: ignore[arg-type]
        if spurious is not None and bool(spurious[i].any()):
            magenta = _outline(spurious[i].bool().cpu(), size)
        outlines.append(torch.stack([ring, magenta]))
    colours = torch.tensor([_OBJECT, _SPURIOUS], dtype=torch.uint8)
    for i, both in enumerate(outlines):
        assert both is not None
        for which in range(2):
            where = both[which]
            if bool(where.any()):
                tiles[:, i, :, where] = colours[which].view(1, 3, 1)

    gap_rows = 1 if skipped > 0 and count_rows > 1 else 0
    cell_h = tile_h + _CAPTION + _GAP
    width = _LABEL_WIDTH + count * (tile_w + _GAP)
    height = _HEADER + count_rows * cell_h + gap_rows * 18
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(12)
    header = f"{method}: one row per CAM run" if method else "one row per CAM run"
    if labels is not None:
        header += " · under each image: predicted class (true class)"
    draw.text((8, 6), header, fill="black", font=font)
    y = _HEADER
    for r in range(count_rows):
        if r == 1 and gap_rows:
            draw.text((8, y), f"… {skipped} run{'s' if skipped > 1 else ''} not shown …", fill="dimgray", font=small)
            y += 18
        title, _, detail = titles[r].partition("\n")
        draw.text((8, y + tile_h // 2 - 18), title, fill="black", font=font)
        if detail:
            draw.text((8, y + tile_h // 2 + 2), detail, fill="dimgray", font=small)
        for i in range(count):
            x = _LABEL_WIDTH + i * (tile_w + _GAP)
            canvas.paste(Image.fromarray(tiles[r, i].permute(1, 2, 0).numpy()), (x, y))
            pred = int(preds[r, i])
            if pred < 0:
                continue
            true = None if labels is None else int(labels[i])
            text = f"pred {pred}" if true is None else f"pred {pred} (true {true})"
            colour = "black" if true is None else _RIGHT if pred == true else _WRONG
            draw.text((x + 2, y + tile_h + 3), text, fill=colour, font=small)
        y += cell_h
    array = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return array.permute(2, 0, 1).float() / 255


def run_title(trainer: Trainer, hook: str, step: int) -> str:
    """How a run's row is named: ``before training``, ``epoch 3\nstep 119`` (``step``: the logging step, the
    one TensorBoard's slider shows), ``validate\nstep 0``, ``step 120`` (runs every ``n`` steps)."""
    if hook == "on_train_start":
        return "before training"
    if trainer.state.fn == TrainerFn.VALIDATING:
        return f"validate\nstep {step}"
    if hook == "on_train_batch_end":
        return f"step {step}"
    return f"epoch {trainer.current_epoch + 1}\nstep {step}"


def render_for(timeline: Timeline, method: str, batch: FixedBatch) -> Tensor | None:
    """``method``'s timeline for the fixed ``batch`` (its labels, boxes, masks, spurious regions), or ``None``."""
    if timeline.runs(method) == 0:
        return None
    size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
    return timeline.render(method, batch.labels, batch.boxes, batch.masks, batch.spurious, size)


def log_timeline(
    timeline: Timeline,
    writer: CamLogWriter,
    batch: FixedBatch,
    maps: dict[str, Tensor],
    preds: Tensor | None,
    step: int,
    title: str,
    display: dict[str, Any],
) -> None:
    """Add this run's row to every method's timeline and log ``cam/<method>/timeline`` at ``step``.

    Args:
        timeline: the callback's timeline.
        writer: where the images go.
        batch: the fixed batch.
        maps: this run's maps per method, ``(N, H, W)``.
        preds: this run's predicted classes ``(N,)``, or ``None``.
        step: the logging step.
        title: the row's title (:func:`run_title`).
        display: ``mean``, ``std``, ``alpha``, ``colormap`` of the overlays.
    """
    shown = denormalize(batch.images[:COLUMNS], display["mean"], display["std"])
    for name, cam in maps.items():
        timeline.add(name, overlay(shown, cam[: len(shown)], display["alpha"], display["colormap"]), title, preds)
        image = render_for(timeline, name, batch)
        if image is not None:
            writer.image(f"cam/{name}/timeline", image, step)
