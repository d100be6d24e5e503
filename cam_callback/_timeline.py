"""The attention timeline: one image per method whose rows are the CAM runs so far and whose columns are
the fixed images, logged as ``cam/<method>/timeline``.

Each row is one run (``before training``, ``epoch 1``, ``epoch 2``, ...), each tile the method's overlay of
one fixed image, with the object's box or mask outlined in green, a spurious region (``spurious_masks``)
in magenta, and under the tile the class the model predicted (and the true one, red when they differ). A map
that carries no information (:mod:`cam_callback._health`) is framed in red and marked ``no information``.
The image stays bounded: the first run and the last ``rows`` runs are kept, in a buffer allocated at the
first run, so memory does not grow with training.

This module is an edge of the package: it is where the rows become pixels (Pillow draws the text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._logging import CamLogWriter
from cam_callback._settings import CAMDisplay
from cam_callback._volumes import volume_panels
from cams.overlay import denormalize, overlay

__all__ = ["COLUMNS", "TILE", "Regions", "Timeline", "draw_row", "log_timeline", "render_for", "run_title", "tile_size"]

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
_SKIPPED = 18
_MARK = (255, 0, 0)
_MARK_COLOUR = torch.tensor(_MARK, dtype=torch.uint8).view(3, 1, 1)


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
    """One method's rows, each drawn once when added: slot 0 the first run, slots 1.. a ring of the latest."""

    strips: Tensor  # (rows + 1, 3, row height, width) uint8: tiles, outlines, captions, title
    header: str
    titles: list[str] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # slots in chronological order
    runs: int = 0
    header_strip: Tensor | None = field(default=None, repr=False)  # drawn once

    def state(self) -> dict[str, Any]:
        return {"strips": self.strips, "header": self.header, "titles": list(self.titles),
                "order": list(self.order), "runs": self.runs}  # fmt: skip


class Timeline:
    """The rows of every method's timeline, bounded to the first run and the last ``rows`` runs.

    Each row is drawn once, when its run is added (tiles, outlines, captions, title), into a buffer
    allocated at the first run; :meth:`render` stacks the rows kept, so a run costs one row whatever the
    number of rows shown.

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

    def add(
        self, method: str, overlays: Tensor, title: str, preds: Tensor | None, regions: Regions | None = None
    ) -> None:
        """Append one run's row: ``overlays`` ``(N, 3, H, W)`` in [0, 1] (the first :data:`COLUMNS` are kept).

        Args:
            method: the method's name.
            overlays: the run's overlays.
            title: the row's title (:func:`run_title`).
            preds: the run's predicted classes ``(N,)``, or ``None``.
            regions: what is outlined and written on the tiles (:class:`Regions`).
        """
        regions = regions or Regions()
        overlays = overlays[:COLUMNS]
        strip = draw_row(overlays, title, preds, regions)
        rows = self._methods.get(method)
        if rows is None or rows.strips.shape[1:] != strip.shape:
            header = f"{method}: one row per CAM run"
            if regions.labels is not None:
                header += " · under each image: predicted class (true class)"
            rows = _Rows(strips=torch.zeros(self.rows + 1, *strip.shape, dtype=torch.uint8), header=header)
            rows.titles = [""] * (self.rows + 1)
            self._methods[method] = rows
        if rows.runs == 0:
            slot = 0
        else:
            slot = 1 + (rows.runs - 1) % self.rows
            if len(rows.order) == self.rows + 1:
                rows.order.pop(1)  # the oldest row after the first
        rows.strips[slot] = strip
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

    def render(self, method: str) -> Tensor:
        """The timeline image of ``method``: header, the first row, a line saying how many runs are not
        shown (when some are not), the latest rows; ``(3, H, W)`` float in [0, 1]."""
        return self.render_uint8(method).float() / 255

    def render_uint8(self, method: str) -> Tensor:
        """:meth:`render` as ``(3, H, W)`` uint8 (what loggers encode: no float round trip)."""
        rows = self._methods[method]
        width = rows.strips.shape[-1]
        if rows.header_strip is None:
            rows.header_strip = _text_strip(rows.header, width, _HEADER, 15, "black")
        parts = [rows.header_strip]
        skipped = rows.runs - len(rows.order)
        for i, slot in enumerate(rows.order):
            if i == 1 and skipped > 0:
                note = f"… {skipped} run{'s' if skipped > 1 else ''} not shown …"
                parts.append(_text_strip(note, width, _SKIPPED, 12, "dimgray"))
            parts.append(rows.strips[slot])
        return torch.cat(parts, dim=1)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists, strings and ints (``weights_only`` loadable)."""
        return {"rows": self.rows, "methods": {name: rows.state() for name, rows in self._methods.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rows of :meth:`state_dict` (kept only if they fit this timeline's ``rows``)."""
        if int(state.get("rows", -1)) != self.rows:
            return
        methods = {name: value for name, value in state.get("methods", {}).items() if "strips" in value}
        self._methods = {
            name: _Rows(v["strips"], str(v["header"]), list(v["titles"]), list(v["order"]), int(v["runs"]))
            for name, v in methods.items()
        }


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _to_tensor(image: Any) -> Tensor:
    """A PIL RGB image → ``(3, H, W)`` uint8."""
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    return array.permute(2, 0, 1).contiguous()


def _text_strip(text: str, width: int, height: int, size: int, colour: str) -> Tensor:
    """A white ``(3, height, width)`` uint8 strip with ``text`` on it."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((8, (height - size) // 2 - 1), text, fill=colour, font=_font(size))
    return _to_tensor(strip)


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


@dataclass(frozen=True)
class Regions:
    """What the timeline draws on the tiles of the fixed images, besides the overlays.

    Attributes:
        labels: ``(N', )`` true classes of the fixed images (``N' >= N`` tiles), or ``None``.
        boxes: ``(N', 4)`` object boxes ``x0, y0, x1, y1`` in image pixels (outlined in green), or ``None``.
        masks: ``(N', H, W)`` object masks (outlined in green, instead of the boxes), or ``None``.
        spurious: ``(N', H, W)`` spurious-region masks (outlined in magenta), or ``None``.
        image_size: ``(H, W)`` of the fixed images (default: the overlays').
        marked: ``(N',)`` bool, the tiles whose map carries no information (framed in red, marked
            ``no information``), or ``None``.
    """

    labels: Tensor | None = None
    boxes: Tensor | None = None
    masks: Tensor | None = None
    spurious: Tensor | None = None
    image_size: tuple[int, int] | None = None
    marked: Tensor | None = None


def draw_row(overlays: Tensor, title: str, preds: Tensor | None, regions: Regions | None = None) -> Tensor:
    """One run's row of the timeline: its title, the tiles with outlines, a caption under each.

    Args:
        overlays: ``(N, 3, H, W)`` float in [0, 1], one tile each, enlarged or reduced to :func:`tile_size`.
        title: the row's title; a second line after a newline is written smaller (``"epoch 3\\nstep 119"``).
        preds: ``(N,)`` predicted classes (``-1`` or ``None``: not known).
        regions: the labels and the regions outlined on the tiles (:class:`Regions`).

    Returns:
        ``(3, tile height + caption + gap, label column + N (tile width + gap))`` uint8.
    """
    from PIL import Image, ImageDraw

    regions = regions or Regions()
    labels, boxes, masks, spurious = regions.labels, regions.boxes, regions.masks, regions.spurious
    count = overlays.shape[0]
    size = tile_size(*overlays.shape[-2:])
    tiles = _to_tiles(overlays, size)
    image_size = tuple(overlays.shape[-2:]) if regions.image_size is None else regions.image_size
    colours = torch.tensor([_OBJECT, _SPURIOUS], dtype=torch.uint8).view(2, 3, 1)
    for i in range(count):
        ring = None
        if masks is not None:
            ring = _outline(masks[i].bool().cpu(), size)
        elif boxes is not None:
            ring = _outline(_box_region(boxes[i].cpu(), image_size), size)  # type: ignore[arg-type]
        if ring is not None and bool(ring.any()):
            tiles[i][:, ring] = colours[0]
        if spurious is not None and bool(spurious[i].any()):
            tiles[i][:, _outline(spurious[i].bool().cpu(), size)] = colours[1]
        if regions.marked is not None and bool(regions.marked[i]):
            tiles[i][:, :3], tiles[i][:, -3:], tiles[i][:, :, :3], tiles[i][:, :, -3:] = (_MARK_COLOUR,) * 4

    tile_h, tile_w = size
    width = _LABEL_WIDTH + count * (tile_w + _GAP)
    row = Image.new("RGB", (width, tile_h + _CAPTION + _GAP), "white")
    draw = ImageDraw.Draw(row)
    font, small = _font(15), _font(12)
    heading, _, detail = title.partition("\n")
    draw.text((8, tile_h // 2 - 18), heading, fill="black", font=font)
    if detail:
        draw.text((8, tile_h // 2 + 2), detail, fill="dimgray", font=small)
    for i in range(count):
        x = _LABEL_WIDTH + i * (tile_w + _GAP)
        row.paste(Image.fromarray(tiles[i].permute(1, 2, 0).numpy()), (x, 0))
        if regions.marked is not None and bool(regions.marked[i]):
            draw.rectangle((x + 3, 3, x + 3 + 86, 17), fill="white")
            draw.text((x + 5, 4), "no information", fill=_MARK, font=small)
        pred = -1 if preds is None else int(preds[i])
        if pred < 0:
            continue
        true = None if labels is None else int(labels[i])
        text = f"pred {pred}" if true is None else f"pred {pred} (true {true})"
        colour = "black" if true is None else _RIGHT if pred == true else _WRONG
        draw.text((x + 2, tile_h + 3), text, fill=colour, font=small)
    return _to_tensor(row)


def run_title(trainer: Trainer, hook: str, step: int) -> str:
    """How a run's row is named: ``before training``, ``epoch 3\\nstep 119`` (``step``: the logging step, the
    one TensorBoard's slider shows), ``validate\\nstep 0``, ``step 120`` (runs every ``n`` steps)."""
    if hook == "on_train_start":
        return "before training"
    if trainer.state.fn == TrainerFn.VALIDATING:
        return f"validate\nstep {step}"
    if hook == "on_train_batch_end":
        return f"step {step}"
    return f"epoch {trainer.current_epoch + 1}\nstep {step}"


def render_for(timeline: Timeline, method: str) -> Tensor | None:
    """``method``'s timeline image, or ``None`` before its first run."""
    return timeline.render(method) if timeline.runs(method) else None


def log_timeline(
    timeline: Timeline,
    writer: CamLogWriter,
    batch: FixedBatch,
    maps: dict[str, Tensor],
    preds: Tensor | None,
    step: int,
    title: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    display: CAMDisplay,
    marked: dict[str, Tensor] | None = None,
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
        mean, std: the normalisation to undo for display.
        display: the overlays' colour map and weight.
        marked: method -> ``(N,)`` bool, the maps that carry no information (framed in red).
    """
    images = batch.images[:COLUMNS]
    volumes = images.dim() == 5
    shown = None if volumes else denormalize(images, mean, std)
    regions = Regions(labels=batch.labels)
    if not volumes:  # outlines on 2-D tiles only (volumes show slices through each map's peak)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        regions = Regions(batch.labels, batch.boxes, batch.masks, batch.spurious, size)
    for name, cam in maps.items():
        if shown is None:
            tiles = volume_panels(images, cam[: len(images)], mean, std, display.alpha, display.colormap)
        else:
            tiles = overlay(shown, cam[: len(shown)], display.alpha, display.colormap)
        mine = (marked or {}).get(name)
        timeline.add(name, tiles, title, preds, regions if mine is None else replace(regions, marked=mine.cpu()))
        writer.image(f"cam/{name}/timeline", timeline.render_uint8(name), step)
