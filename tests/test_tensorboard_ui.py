"""TensorBoard really displays what the callback logs: its IMAGES dashboard in headless Chromium.

A short fit of the cluttered-digits example with ``CAMCallback`` writes a tiny log directory; the
test serves it with ``tensorboard`` on 127.0.0.1, opens the dashboard with ``selenium`` driving
Debian's ``chromium`` + ``chromium-driver``, and waits for the ``cam/`` image cards to decode.
Skipped when Chromium, its driver or selenium is missing (CI installs them: see ``.ci/run``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "examples", ROOT / "scripts"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import screenshot_tensorboard as shot  # noqa: E402

pytestmark = pytest.mark.skipif(
    not shot.chromium_available(),
    reason=f"needs {shot.CHROMIUM}, {shot.CHROMEDRIVER} (apt-get install chromium chromium-driver) and selenium",
)

NUM_IMAGES = 8
CANVAS = 64
#: ``make_grid(nrow=8, padding=2)`` of eight 64×64 images: one row of cells 66 px apart, 2 px border.
GRID_SIZE = (NUM_IMAGES * (CANVAS + 2) + 2, CANVAS + 4)
TIMELINES = ("cam/gradcam/timeline", "cam/xgradcam/timeline")
TAGS = ("cam/input", "cam/gradcam", "cam/xgradcam", *TIMELINES)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cluttered_digits as cd

    root = tmp_path_factory.mktemp("tb")
    cd.train(
        1,
        train_size=64,
        val_size=16,
        test_size=16,
        methods=("gradcam", "xgradcam"),
        num_images=NUM_IMAGES,
        root_dir=root,
        print_fn=lambda *args, **kwargs: None,
    )
    return root / "lightning_logs"


@pytest.fixture(scope="module")
def dashboard(logdir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("shot") / "tensorboard.png"
    cards = shot.screenshot_images_dashboard(logdir, out, expect_tags=TAGS, timeout=90)
    return cards, out


def test_images_dashboard_renders_a_card_for_every_cam_tag(dashboard: tuple[list[dict], Path]) -> None:
    cards, _ = dashboard
    loaded = {card["tag"] for card in cards if card["loaded"]}
    assert loaded == set(TAGS)


def test_dashboard_shows_the_grids_at_the_size_the_callback_logged(dashboard: tuple[list[dict], Path]) -> None:
    cards, _ = dashboard
    for card in cards:
        if card["tag"] in TIMELINES:  # two rows (before training, epoch 1) of eight 128-pixel tiles
            assert card["width"] == 150 + NUM_IMAGES * (128 + 6) and card["height"] == 28 + 2 * (128 + 20 + 6), card
        else:
            assert (card["width"], card["height"]) == GRID_SIZE, card


def test_screenshot_shows_colour_mapped_overlays(dashboard: tuple[list[dict], Path]) -> None:
    _, path = dashboard
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 1000
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # the low end of the "jet" colour map (dark blue) appears nowhere in TensorBoard's own chrome
    # (0 such pixels on an empty dashboard; ~1,500 with these two small overlay grids)
    jet_blue = (blue > 110) & (red < 60) & (green < 60)
    assert jet_blue.sum() > 300


def test_waiting_for_cards_that_never_come_times_out_with_a_screenshot(tmp_path: Path) -> None:
    empty = tmp_path / "empty_logs"
    empty.mkdir()
    out = tmp_path / "shot.png"
    with pytest.raises(TimeoutError, match="did not render image cards"):
        shot.screenshot_images_dashboard(empty, out, timeout=8, settle=0)
    assert out.is_file()
