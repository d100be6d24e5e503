"""Regenerate ``docs/report.png``: the report of the shortcut story's two runs, as headless Chromium shows it.

Trains the shortcut run and the clean run of ``examples/shortcut.py`` (or reads the logs of an earlier
``examples/shortcut.py`` run with ``--logdir``), writes their report with ``cam-callback report`` (the page is
kept beside the screenshot as ``--html``), opens it from disk in headless Chromium (Debian's ``chromium`` +
``chromium-driver``, driven with ``selenium``) and saves the top of the page::

    python scripts/make_report_screenshot.py                              # trains both runs (minutes on a CPU)
    python scripts/make_report_screenshot.py --logdir lightning_logs      # after examples/shortcut.py

Importable: :func:`open_report` is what ``tests/test_report_ui.py`` calls (the console messages, the network
requests and what the page drew).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "examples", ROOT / "scripts"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from screenshot_tensorboard import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, chromium_available  # noqa: E402

__all__ = ["open_report", "train_shortcut_runs"]

# What the page drew, read in the browser: the timelines (decoded?), every chart series with its points, the
# warnings per run, the tiles, and any image that failed to decode.
_DRAWN_JS = """
const run = (el) => (el.closest('[data-run]') || {dataset: {}}).dataset.run;
const method = (el) => (el.closest('[data-method]') || {dataset: {}}).dataset.method || null;
return {
  timelines: Array.from(document.querySelectorAll('figure.timeline')).map(f => {
    const img = f.querySelector('img');
    return {run: f.dataset.run, method: f.dataset.method, loaded: !!(img && img.complete && img.naturalWidth > 0)};
  }),
  series: Array.from(document.querySelectorAll('svg.chart g.series')).map(g => ({
    run: run(g), method: method(g), chart: g.closest('svg').dataset.chart, series: g.dataset.series,
    count: Number(g.dataset.count), points: g.querySelectorAll('circle').length})),
  warnings: Array.from(document.querySelectorAll('div.warnings')).map(d => ({
    run: d.dataset.run, kinds: Array.from(d.querySelectorAll('tr.warning')).map(r => r.dataset.kind)})),
  tiles: document.querySelectorAll('span.tile').length,
  broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length,
};
"""


def open_report(
    page: str | Path, out: str | Path, *, window_size: tuple[int, int] = (1400, 1800), timeout: float = 60.0
) -> dict[str, Any]:
    """Open a report from disk in headless Chromium, wait until its images decoded, save a screenshot.

    Returns:
        ``{"console": [messages at level SEVERE], "requests": [URLs asked for other than the page and data:],
        "drawn": what the page drew (see ``_DRAWN_JS``)}``.

    Raises:
        TimeoutError: the page's images did not decode within ``timeout`` seconds (the screenshot is saved).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page, out = Path(page).absolute(), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="cam-report-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window_size[0]},{window_size[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get_log("performance")  # what the browser loaded before the page (its own new-tab page) is not asked
        driver.get(page.as_uri())
        deadline = time.monotonic() + timeout
        ready = "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        while not driver.execute_script(ready):
            if time.monotonic() > deadline:
                driver.save_screenshot(str(out))
                raise TimeoutError(f"{page}: the images did not load within {timeout:.0f} s; screenshot in {out}")
            time.sleep(0.2)
        drawn = driver.execute_script(_DRAWN_JS)
        driver.save_screenshot(str(out))
        console = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if url != page.as_uri() and not url.startswith(("data:", "chrome:", "chrome-untrusted:")):
                    requests.append(url)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {"console": console, "requests": requests, "drawn": drawn}


def train_shortcut_runs(root: str | Path, *, epochs: int, train_size: int, val_size: int = 500) -> list[Path]:
    """Train ``examples/shortcut.py``'s shortcut and clean runs into ``root/lightning_logs/{shortcut,clean}``."""
    import shortcut as sc

    for flag in (True, False):
        sc.train_run(flag, epochs=epochs, train_size=train_size, val_size=val_size, root_dir=root,
                     print_fn=lambda *args, **kwargs: None, accelerator="cpu")  # fmt: skip
    return [Path(root) / "lightning_logs" / name for name in ("shortcut", "clean")]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python scripts/make_report_screenshot.py [--logdir DIR] [--out docs/report.png]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", help="an examples/shortcut.py run's lightning_logs (default: train both runs)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs when training (default 4)")
    parser.add_argument("--train-size", type=int, default=3000, help="training canvases when training (default 3000)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "report.png"), help="the screenshot (PNG)")
    parser.add_argument("--html", default=None, help="also keep the report here (default: a temporary file)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1700)
    args = parser.parse_args(argv)
    if not chromium_available():
        print(f"need {CHROMIUM} and {CHROMEDRIVER} (apt-get install -y chromium chromium-driver) and selenium",
              file=sys.stderr)  # fmt: skip
        return 1
    import warnings

    from cam_callback.report import build_report

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        if args.logdir:
            runs = [Path(args.logdir) / name for name in ("shortcut", "clean")]
        else:
            runs = train_shortcut_runs(tmp, epochs=args.epochs, train_size=args.train_size)
        page = build_report(runs, args.html or Path(tmp) / "report.html", "The shortcut story: shortcut and clean runs")
        seen = open_report(page, args.out, window_size=(args.width, args.height))
    _optimise(Path(args.out))
    problems = seen["console"] + seen["requests"]
    print(f"{args.out}: the report of {', '.join(r.name for r in runs)}"
          + (f"; problems: {problems}" if problems else ""))  # fmt: skip
    return 1 if problems else 0


def _optimise(path: Path) -> None:
    """Re-save the screenshot with a 256-colour palette (a README image: a third of the size, same look)."""
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
