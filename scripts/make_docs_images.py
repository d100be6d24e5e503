"""Regenerate the README's images (docs/attention_strip.png, docs/tensorboard.png) from one cluttered-digits run.

    python scripts/make_docs_images.py

trains ``examples/cluttered_digits.py`` with its default settings (a few minutes on a CPU) in a
temporary directory, then writes

- ``docs/attention_strip.png``: rows = the callback's CAM runs (before training, then after each
  epoch), columns = the first few validation canvases; the top row shows the inputs with the digit's
  ground-truth box, the others the Grad-CAM overlays the callback logged. Built from the TensorBoard
  event files alone (the ``cam/input`` and ``cam/gradcam`` image grids and the ``val_acc`` scalars).
- ``docs/tensorboard.png``: TensorBoard's IMAGES dashboard for that run in headless Chromium
  (``scripts/screenshot_tensorboard.py``; needs ``chromium``, ``chromium-driver`` and ``selenium``).

``--root-dir DIR`` keeps the run in ``DIR/lightning_logs`` (or reuses it when it already holds one:
nothing is trained then); ``--method`` picks the overlays of the strip; ``--epochs`` and the other
training options are passed to the example.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "scripts"))

__all__ = ["attention_strip", "grid_tiles", "latest_run", "main", "read_run"]

GRID_COLUMNS = 8
"""Images per row in the callback's grids (``torchvision.utils.make_grid(nrow=min(8, N))``)."""
GRID_PADDING = 2
"""Padding between grid cells in pixels (the callback's ``make_grid(padding=2)``)."""


def latest_run(logdir: str | Path) -> Path:
    """The newest ``version_<n>`` folder with event files under ``logdir`` (or ``logdir`` itself)."""
    logdir = Path(logdir)
    runs = sorted(
        {p.parent for p in logdir.rglob("events.out.tfevents.*")},
        key=lambda p: max(f.stat().st_mtime for f in p.glob("events.out.tfevents.*")),
    )
    if not runs:
        raise FileNotFoundError(f"no TensorBoard event files under {str(logdir)!r}; train first")
    return runs[-1]


def read_run(run_dir: str | Path, method: str = "gradcam") -> dict[str, object]:
    """Read a run's event files: ``{"input": image, "maps": [(step, image), ...], "acc": {step: value}}``.

    Images are ``(H, W, 3)`` uint8 arrays of the logged grids, in step order.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    wanted = f"cam/{method}"
    if wanted not in tags["images"]:
        raise KeyError(f"method={method!r}: no {wanted!r} images in {run_dir}; logged: {sorted(tags['images'])}")

    def decode(event: object) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))  # type: ignore[attr-defined]

    maps = sorted(((e.step, decode(e)) for e in events.Images(wanted)), key=lambda item: item[0])
    acc = {e.step: e.value for e in events.Scalars("val_acc")} if "val_acc" in tags["scalars"] else {}
    return {"input": decode(events.Images("cam/input")[0]), "maps": maps, "acc": acc}


def grid_tiles(grid: np.ndarray, count: int, tile: int) -> list[np.ndarray]:
    """The first ``count`` cells (``tile`` × ``tile`` pixels) of a ``make_grid`` image, row-major.

    Example:
        >>> grid = np.zeros((2 + 66 * 2, 2 + 66 * 8, 3), np.uint8)
        >>> [t.shape for t in grid_tiles(grid, 2, 64)]
        [(64, 64, 3), (64, 64, 3)]
    """
    step = tile + GRID_PADDING
    tiles = []
    for i in range(count):
        row, col = divmod(i, GRID_COLUMNS)
        y, x = GRID_PADDING + row * step, GRID_PADDING + col * step
        tiles.append(grid[y : y + tile, x : x + tile])
    return tiles


def attention_strip(
    run: dict[str, object],
    boxes: np.ndarray,
    *,
    columns: int = 6,
    tile: int = 64,
    scale: int = 2,
    method: str = "gradcam",
) -> Image.Image:
    """Compose the strip: an input row with ground-truth boxes, then one overlay row per CAM run.

    Args:
        run: what :func:`read_run` returns.
        boxes: ``(N, 4)`` ``x0, y0, x1, y1`` boxes of the fixed batch, in canvas pixels.
        columns: how many samples to show.
        tile: side of one canvas in the grids, in pixels.
        scale: upscaling of every tile in the strip.
        method: the method name for the row labels.
    """
    maps: list[tuple[int, np.ndarray]] = run["maps"]  # type: ignore[assignment]
    acc: dict[int, float] = run["acc"]  # type: ignore[assignment]
    side = tile * scale
    gap, label_width, header = 6, 170, 34
    rows = 1 + len(maps)
    width = label_width + columns * (side + gap)
    height = header + rows * (side + gap)
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=15)
    draw.text((8, 8), f"{method} over training, {columns} held-out validation canvases", fill="black", font=font)

    def paste_row(r: int, grid: np.ndarray, label: str, sub: str = "", box_colour: str = "white") -> None:
        y = header + r * (side + gap)
        draw.text((8, y + side // 2 - 18), label, fill="black", font=font)
        if sub:
            draw.text((8, y + side // 2 + 4), sub, fill="dimgray", font=small)
        for c, cell in enumerate(grid_tiles(grid, columns, tile)):
            x = label_width + c * (side + gap)
            strip.paste(Image.fromarray(cell).resize((side, side), Image.Resampling.NEAREST), (x, y))
            x0, y0, x1, y1 = (int(v) * scale for v in boxes[c])
            draw.rectangle((x + x0, y + y0, x + x1 - 1, y + y1 - 1), outline=box_colour, width=2)

    paste_row(0, run["input"], "input", "box: the digit", box_colour="lime")  # type: ignore[arg-type]
    for r, (step, grid) in enumerate(maps, start=1):
        label = "before training" if r == 1 else f"after epoch {r - 1}"
        value = acc.get(step, acc.get(step - 1))  # Lightning logs epoch metrics at global_step - 1
        paste_row(r, grid, label, "" if value is None else f"val acc {value:.2f}")
    return strip


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train (unless a run exists), then write the strip and the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root-dir", default=None, help="keep/reuse the run in DIR/lightning_logs")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where to write the PNGs")
    parser.add_argument("--method", default="gradcam", help="method of the strip's overlays")
    parser.add_argument("--columns", type=int, default=6, help="samples in the strip")
    parser.add_argument("--no-screenshot", action="store_true", help="only the strip")
    args, train_args = parser.parse_known_args(argv)

    import cluttered_digits as cd
    import screenshot_tensorboard as shot

    root = Path(args.root_dir) if args.root_dir else Path(tempfile.mkdtemp(prefix="cam-docs-"))
    logdir = root / "lightning_logs"
    if not list(logdir.rglob("events.out.tfevents.*")):
        cd.main([*train_args, "--root-dir", str(root)])
    run_dir = latest_run(logdir)
    run = read_run(run_dir, args.method)
    seed = int(train_args[train_args.index("--seed") + 1]) if "--seed" in train_args else 0
    boxes = cd.ClutteredDigits(train_size=1, val_size=args.columns, test_size=1, seed=seed).tensors("val")["box"]

    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    strip_path = docs / "attention_strip.png"
    attention_strip(run, boxes.numpy(), columns=args.columns, method=args.method).save(strip_path, optimize=True)
    print(f"wrote {strip_path} ({len(run['maps'])} CAM runs from {run_dir})")  # type: ignore[arg-type]

    if args.no_screenshot:
        return 0
    if not shot.chromium_available():
        print("skipped docs/tensorboard.png: needs chromium, chromium-driver and selenium", file=sys.stderr)
        return 1
    screenshot_path = docs / "tensorboard.png"
    methods = sorted(tag for tag in _image_tags(run_dir) if tag.startswith("cam/"))
    cards = shot.screenshot_images_dashboard(
        "lightning_logs",
        screenshot_path,
        expect_tags=methods,
        tag_filter="^cam/",
        window_size=(1200, 1000),
        cwd=root,
    )
    print(f"wrote {screenshot_path} ({len({c['tag'] for c in cards})} image cards: {', '.join(methods)})")
    return 0


def _image_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 1})
    events.Reload()
    return list(events.Tags()["images"])


if __name__ == "__main__":
    raise SystemExit(main())
