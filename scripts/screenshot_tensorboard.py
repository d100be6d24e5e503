"""See what a user sees: TensorBoard's IMAGES dashboard in headless Chromium, saved as a PNG.

Starts ``tensorboard --logdir <dir>`` bound to 127.0.0.1 on a free port, opens the images
dashboard in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven with
``selenium``), waits until an image card for every wanted tag (default: the ``cam/`` tags the
callback logs) has a decoded image, and saves a screenshot::

    python scripts/screenshot_tensorboard.py --logdir lightning_logs --out docs/tensorboard.png

Exit status 0 when the cards rendered, 1 otherwise (the screenshot is saved either way, to debug).
Importable: ``screenshot_images_dashboard`` is what ``tests/test_tensorboard_ui.py`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "CHROMIUM_FLAGS",
    "chromium",
    "chromium_available",
    "free_port",
    "rendered_image_cards",
    "screenshot_images_dashboard",
    "tensorboard_server",
]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
"""The browser binary (Debian package ``chromium``); override with ``$CHROMIUM``."""
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
"""The matching driver (Debian package ``chromium-driver``); override with ``$CHROMEDRIVER``."""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
"""Headless, offline, quiet: no sandbox (containers), no network beyond 127.0.0.1, no first-run UI."""

# Walks the document and every shadow root (TensorBoard's dashboards are Polymer/Angular components)
# and returns one record per image card: its tag, run and whether its <img> holds a decoded image.
_CARDS_JS = """
const cards = [];
function walk(node, depth) {
  if (depth > 60 || !node) return;
  if (node.tagName && node.tagName.toLowerCase() === 'tf-image-loader') {
    const root = node.shadowRoot || node;
    const img = root.querySelector('img');
    cards.push({tag: node.tag || '', run: node.run || '',
                loaded: !!(img && img.complete && img.naturalWidth > 0),
                width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0});
  }
  if (node.shadowRoot) walk(node.shadowRoot, depth + 1);
  for (const child of (node.children || [])) walk(child, depth + 1);
}
walk(document.documentElement, 0);
return cards;
"""


def chromium_available() -> bool:
    """``True`` when the Chromium binary, its driver and ``selenium`` are all installed.

    Example:
        >>> isinstance(chromium_available(), bool)
        True
    """
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return False
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def tensorboard_server(
    logdir: str | Path, port: int | None = None, timeout: float = 60.0, cwd: str | Path | None = None
) -> Iterator[str]:
    """Run ``tensorboard --logdir logdir`` on ``127.0.0.1`` and yield its base URL; stop it on exit.

    ``cwd`` is the working directory of the server (a relative ``logdir`` is read from there and shown
    as given in the dashboard).

    Raises:
        RuntimeError: TensorBoard exited or did not answer within ``timeout`` seconds (its output is
            included in the message).
    """
    port = free_port() if port is None else port
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            _wait_until_serving(url, process, log, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(url: str, process: subprocess.Popen, log: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            output = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"tensorboard did not start on {url} (exit code {process.poll()}):\n{output}")
        try:
            with urllib.request.urlopen(f"{url}/data/plugins_listing", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)


@contextlib.contextmanager
def chromium(window_size: tuple[int, int] = (1400, 1000)) -> Iterator[Any]:
    """A headless Chromium ``selenium`` driver with a fresh profile; quit and cleaned up on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cam-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    size = f"--window-size={window_size[0]},{window_size[1]}"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", size):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def rendered_image_cards(driver: Any) -> list[dict[str, Any]]:
    """The image cards on the current page: ``[{"tag", "run", "loaded", "width", "height"}, ...]``."""
    return list(driver.execute_script(_CARDS_JS))


def screenshot_images_dashboard(
    logdir: str | Path,
    out: str | Path,
    *,
    tag_prefix: str = "cam/",
    expect_tags: Sequence[str] = (),
    tag_filter: str | None = None,
    timeout: float = 90.0,
    window_size: tuple[int, int] = (1400, 1000),
    settle: float = 1.0,
    cwd: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Open TensorBoard's IMAGES dashboard for ``logdir``, wait for the image cards, save a PNG.

    Waits until every tag in ``expect_tags`` (or, when empty, at least one tag starting with
    ``tag_prefix``) shows a card whose image has decoded, then saves the screenshot to ``out``.

    Args:
        logdir: the directory TensorBoard reads (e.g. ``lightning_logs``).
        out: PNG path (parent folders created).
        tag_prefix: the tags that count as "the callback's cards".
        expect_tags: tags that must all render, e.g. ``("cam/input", "cam/gradcam")``.
        tag_filter: regular expression typed into the dashboard's tag filter (``None``: none).
        timeout: seconds to wait for TensorBoard and for the cards.
        window_size: browser window ``(width, height)`` in pixels.
        settle: seconds to wait after the cards loaded, so the layout is final in the screenshot.
        cwd: working directory of the TensorBoard server (for a relative ``logdir``).

    Returns:
        The rendered cards whose tag starts with ``tag_prefix`` (``tag``, ``run``, ``loaded``,
        ``width``, ``height`` of the decoded image).

    Raises:
        TimeoutError: the cards did not render in time (the screenshot is still saved).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tensorboard_server(logdir, timeout=timeout, cwd=cwd) as url, chromium(window_size) as driver:
        query = "" if tag_filter is None else f"&tagFilter={urllib.request.quote(tag_filter)}"
        driver.get(f"{url}/?darkMode=false{query}#images")
        deadline = time.monotonic() + timeout
        while True:
            cards = [c for c in rendered_image_cards(driver) if str(c["tag"]).startswith(tag_prefix)]
            loaded = {c["tag"] for c in cards if c["loaded"]}
            done = set(expect_tags) <= loaded if expect_tags else bool(loaded)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(settle)
        cards = [c for c in rendered_image_cards(driver) if str(c["tag"]).startswith(tag_prefix)]
        driver.save_screenshot(str(out))
    if not done:
        missing = sorted(set(expect_tags) - loaded) if expect_tags else [f"{tag_prefix}*"]
        raise TimeoutError(
            f"TensorBoard at {logdir} did not render image cards for {missing} within {timeout:.0f} s; "
            f"cards seen: {cards}; screenshot saved to {out}"
        )
    return cards


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python scripts/screenshot_tensorboard.py --logdir DIR --out PNG``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="lightning_logs", help="TensorBoard log directory")
    parser.add_argument("--out", default="docs/tensorboard.png", help="screenshot path (PNG)")
    parser.add_argument("--tag-prefix", default="cam/", help="tags that must render (prefix)")
    parser.add_argument("--expect", nargs="*", default=[], help="exact tags that must all render")
    parser.add_argument("--filter", default=None, help="regex for the dashboard's tag filter, e.g. '^cam/'")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    if not chromium_available():
        print(
            f"need {CHROMIUM} and {CHROMEDRIVER} (apt-get install -y chromium chromium-driver) "
            "and selenium (pip install selenium)",
            file=sys.stderr,
        )
        return 1
    try:
        cards = screenshot_images_dashboard(
            args.logdir,
            args.out,
            tag_prefix=args.tag_prefix,
            expect_tags=args.expect,
            tag_filter=args.filter,
            timeout=args.timeout,
            window_size=(args.width, args.height),
        )
    except TimeoutError as error:
        print(error, file=sys.stderr)
        return 1
    tags = sorted({c["tag"] for c in cards if c["loaded"]})
    print(f"{args.out}: {len(tags)} image cards rendered: {', '.join(tags)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
