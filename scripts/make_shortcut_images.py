"""Regenerate the images of the shortcut story (docs/shortcut.md) from one run of ``examples/shortcut.py``.

    python scripts/make_shortcut_images.py

trains the example's two runs (shortcut and clean; a few minutes on a CPU) in a temporary directory,
unless ``--root-dir DIR`` already holds them in ``DIR/lightning_logs/{shortcut,clean}``, then writes

- ``docs/shortcut_timelines.png``: the last ``cam/gradcam/timeline`` image each run's callback logged,
  side by side (read back from the TensorBoard event files);
- ``docs/tensorboard_timeline.png``: TensorBoard's IMAGES dashboard with the shortcut run's
  ``cam/gradcam/timeline`` card at its actual size, in headless Chromium (the server and browser of
  ``scripts/screenshot_tensorboard.py``; needs ``chromium``, ``chromium-driver`` and ``selenium``): the
  tags and runs are filtered by typing into the dashboard's own filter boxes, as a user would.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "scripts"))

__all__ = ["last_image", "main", "screenshot_timeline"]

RUNS = ("shortcut", "clean")
TITLES = ("shortcut run: the marker's place gives the class away", "clean run: the marker is placed at random")


def last_image(run_dir: str | Path, tag: str) -> torch.Tensor:
    """The last image logged under ``tag`` in a run's event files, ``(3, H, W)`` float in [0, 1]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    if tag not in events.Tags()["images"]:
        raise KeyError(f"no {tag!r} images in {run_dir}; logged: {sorted(events.Tags()['images'])}")
    event = max(events.Images(tag), key=lambda e: e.step)
    array = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


# Every element of one tag name in the page, through the shadow roots of TensorBoard's components.
_FIND_JS = """
const want = arguments[0], found = [];
function walk(node, depth) {
  if (depth > 60 || !node) return;
  if (node.tagName && node.tagName.toLowerCase() === want) found.push(node);
  if (node.shadowRoot) walk(node.shadowRoot, depth + 1);
  for (const child of (node.children || [])) walk(child, depth + 1);
}
walk(document.documentElement, 0);
return found;
"""


def screenshot_timeline(
    logdir: str | Path, out: str | Path, *, run: str = "shortcut", cwd: str | Path | None = None, timeout: float = 90
) -> list[dict]:
    """TensorBoard's IMAGES dashboard filtered to ``run``'s timeline tags, actual image size, saved as a PNG.

    Returns:
        The image cards shown (``tag``, ``run``, ``loaded``, ``width``, ``height``).

    Raises:
        TimeoutError: no timeline card rendered within ``timeout`` seconds (the screenshot is still saved).
    """
    import time

    import screenshot_tensorboard as shot

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with shot.tensorboard_server(logdir, timeout=timeout, cwd=cwd) as url, shot.chromium((1700, 1250)) as driver:
        driver.get(f"{url}/?darkMode=false#images")
        deadline = time.monotonic() + timeout
        while len(driver.execute_script(_FIND_JS, "input")) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        runs_filter, tags_filter = driver.execute_script(_FIND_JS, "input")[:2]  # sidebar first, then the tags
        runs_filter.send_keys(f"^{run}$")
        tags_filter.send_keys("timeline")
        for box in driver.execute_script(_FIND_JS, "paper-checkbox"):
            if "actual image size" in box.text.lower():
                box.click()
        cards: list[dict] = []
        while time.monotonic() < deadline:
            cards = [c for c in shot.rendered_image_cards(driver) if str(c["tag"]).endswith("/timeline")]
            if cards and all(c["loaded"] for c in cards):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        driver.save_screenshot(str(out))
    if not cards or not all(c["loaded"] for c in cards):
        raise TimeoutError(f"no timeline card rendered within {timeout:.0f} s; cards: {cards}; screenshot: {out}")
    return cards


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train (unless both runs exist), then write the two PNGs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root-dir", default=None, help="keep/reuse the runs in DIR/lightning_logs")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where to write the PNGs")
    parser.add_argument("--no-screenshot", action="store_true", help="only the side-by-side timelines")
    args, train_args = parser.parse_known_args(argv)

    import screenshot_tensorboard as shot
    import shortcut as sc

    root = Path(args.root_dir) if args.root_dir else Path(tempfile.mkdtemp(prefix="cam-shortcut-"))
    logdir = root / "lightning_logs"
    if not all(list((logdir / run).glob("events.out.tfevents.*")) for run in RUNS):
        sc.main([*train_args, "--root-dir", str(root)])
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    figure = sc.side_by_side([last_image(logdir / run, "cam/gradcam/timeline") for run in RUNS], TITLES)
    figure_path = docs / "shortcut_timelines.png"
    figure.save(figure_path, optimize=True)
    print(f"wrote {figure_path}")

    if args.no_screenshot:
        return 0
    if not shot.chromium_available():
        print("skipped docs/tensorboard_timeline.png: needs chromium, chromium-driver and selenium", file=sys.stderr)
        return 1
    screenshot_path = docs / "tensorboard_timeline.png"
    cards = screenshot_timeline("lightning_logs", screenshot_path, cwd=root)
    print(f"wrote {screenshot_path} ({len(cards)} timeline cards: {sorted({c['run'] for c in cards})})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
