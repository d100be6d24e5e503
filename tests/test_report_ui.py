"""The report of a real fit, as a browser shows it: the shortcut story's two runs opened in headless Chromium.

A short fit of ``examples/shortcut.py``'s shortcut run and clean run (3 epochs of 1,000 canvases, 16 fixed
images: the shortcut warning comes after epoch 2, as in ``tests/test_shortcut.py``'s longer fit), their report
with ``cam-callback report``, and the page opened from disk with ``selenium`` driving Debian's ``chromium`` +
``chromium-driver`` (``scripts/make_report_screenshot.py``'s :func:`open_report`). Skipped when Chromium, its
driver or selenium is missing (CI installs them: see ``.ci/run``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import read_events
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "examples", ROOT / "scripts"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import make_report_screenshot as shot  # noqa: E402
import screenshot_tensorboard  # noqa: E402

from cam_callback.cli import main  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not screenshot_tensorboard.chromium_available(),
        reason="needs chromium, chromedriver (apt-get install chromium chromium-driver) and selenium",
    ),
]

RUNS = ("shortcut", "clean")
CAM_RUNS = 4  # before training and after each of the 3 epochs
CHECKED = (
    ("drift", "cam_drift/gradcam/vs_previous"),
    ("drift", "cam_drift/gradcam/noise_floor"),
    ("shortcut", "cam_shortcut/gradcam/energy"),
    ("shortcut", "cam_shortcut/baseline_centre/energy"),
    ("energy", "cam_localisation/gradcam/energy"),
    ("accuracy", "val_acc"),
    ("loss", "train_loss"),
)
"""(chart, series) pairs whose points are counted against the event files."""


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fits")
    shot.train_shortcut_runs(root, epochs=3, train_size=1000, val_size=64)
    return root / "lightning_logs"


@pytest.fixture(scope="module")
def seen(logs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(logs / "shortcut"), str(logs / "clean"), "-o", str(out / "report.html")]) == 0
    return shot.open_report(out / "report.html", out / "report.png", timeout=90), out / "report.png"


def test_the_page_loads_with_no_console_error_and_no_network_request(seen: tuple[dict[str, Any], Path]) -> None:
    found, _ = seen
    assert found["console"] == []
    assert found["requests"] == []
    assert found["drawn"]["broken"] == 0


def test_the_page_shows_one_decoded_timeline_per_method_and_run(seen: tuple[dict[str, Any], Path]) -> None:
    timelines = seen[0]["drawn"]["timelines"]
    assert sorted((t["run"], t["method"]) for t in timelines) == [("clean", "gradcam"), ("shortcut", "gradcam")]
    assert all(t["loaded"] for t in timelines)
    assert seen[0]["drawn"]["tiles"] == len(RUNS) * 16 * CAM_RUNS  # every fixed image at every CAM run


def test_each_plot_has_a_point_per_value_the_run_logged(seen: tuple[dict[str, Any], Path], logs: Path) -> None:
    series = seen[0]["drawn"]["series"]
    for run in RUNS:
        events = read_events(logs / run)
        drawn = {(s["chart"], s["series"]): s for s in series if s["run"] == run}
        for chart, tag in CHECKED:
            logged = len(events.Scalars(tag))
            assert drawn[chart, tag]["count"] == drawn[chart, tag]["points"] == logged, (run, tag)
        assert drawn["drift", "cam_drift/gradcam/vs_previous"]["points"] == CAM_RUNS - 1
        assert drawn["shortcut", "cam_shortcut/gradcam/energy"]["points"] == CAM_RUNS


def test_the_warnings_list_the_shortcut_for_the_shortcut_run_and_nothing_for_the_clean_run(
    seen: tuple[dict[str, Any], Path],
) -> None:
    warnings = {w["run"]: w["kinds"] for w in seen[0]["drawn"]["warnings"]}
    assert warnings == {"shortcut": ["shortcut"], "clean": []}


def test_the_screenshot_shows_the_overlays(seen: tuple[dict[str, Any], Path]) -> None:
    _, path = seen
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert pixels.std() > 30  # not a blank page
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    jet_blue = (blue > 110) & (red < 60) & (green < 60)  # the low end of the overlays' "jet" colour map
    assert jet_blue.sum() > 2000
