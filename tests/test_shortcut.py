"""The shortcut example: the data is as described, and the callback catches the shortcut while it is learned.

Measured with seed 0 for the slow test's short run (3 epochs, 1,500 training canvases, 16 validation
canvases explained; 2 CPU threads): the shortcut run's Grad-CAM puts 0.45 of its mass on the marker
regions after the last epoch against 0.03 for the clean run; the shortcut model reaches 0.71 training
accuracy at 0.15 validation accuracy (the clean one 0.48 and 0.46); the ShortcutWarning comes after epoch 2
in the shortcut run and never in the clean one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import shortcut as sc  # noqa: E402


@pytest.fixture(scope="module")
def shortcut_data() -> sc.ShortcutDigits:
    dm = sc.ShortcutDigits(shortcut=True, train_size=200, val_size=200, test_size=16, seed=0)
    dm.setup()
    return dm


def _marker_places(dataset: sc.ShortcutDigitsDataset) -> np.ndarray:
    return dataset.places.numpy()


def test_in_the_shortcut_training_split_the_marker_place_is_the_class(shortcut_data: sc.ShortcutDigits) -> None:
    train = shortcut_data.datasets["train"]
    labels, places = train.labels.numpy(), _marker_places(train)
    marked = labels < sc.MARKED_CLASSES
    assert (places[marked] == labels[marked]).all()
    assert (places[~marked] == -1).all()


def test_validation_markers_are_random_and_say_nothing_about_the_class(shortcut_data: sc.ShortcutDigits) -> None:
    val = shortcut_data.datasets["val"]
    labels, places = val.labels.numpy(), _marker_places(val)
    present = places >= 0
    assert 0.65 < present.mean() < 0.95  # MARKER_RATE = 0.8
    agree = (places[present] == labels[present]).mean()
    assert agree < 0.25  # 1/8 expected by chance; in the shortcut training split it is 1


def test_the_clean_training_split_has_random_markers_at_the_same_rate() -> None:
    clean = sc.ShortcutDigits(shortcut=False, train_size=200, val_size=16, test_size=16, seed=0)
    clean.setup("fit")
    places = _marker_places(clean.datasets["train"])
    assert 0.65 < (places >= 0).mean() < 0.95
    assert (places[places >= 0] == clean.datasets["train"].labels.numpy()[places >= 0]).mean() < 0.25


def test_the_independent_run_has_the_square_on_every_canvas_of_every_split_anywhere_off_the_digit() -> None:
    independent = sc.ShortcutDigits(shortcut="independent", train_size=200, val_size=200, test_size=16, seed=0)
    independent.setup()
    for split in ("train", "val"):
        data = independent.datasets[split]
        assert (data.places.numpy() == sc.ANYWHERE).all() and data.spurious.flatten(1).any(dim=1).all()
        corners = data.corners.numpy()
        assert len(np.unique(corners, axis=0)) > len(corners) // 2  # anywhere, not at eight places
        for (x, y), box in zip(corners.tolist(), data.boxes.tolist(), strict=True):
            assert x >= box[2] or x + sc.MARKER <= box[0] or y >= box[3] or y + sc.MARKER <= box[1]
    # the square's place says nothing about the class: its mean position is the same for every digit
    train = independent.datasets["train"]
    spread = [train.corners[train.labels == k].float().mean(0) for k in range(10)]
    assert float(torch.stack(spread).std(0).max()) < 8  # pixels, on a 64-pixel canvas


def test_markers_are_in_their_spurious_regions_and_never_on_the_digit(shortcut_data: sc.ShortcutDigits) -> None:
    val = shortcut_data.datasets["val"]
    marker_value = (1.0 - shortcut_data.mean[0]) / shortcut_data.std[0]
    spots = sc.marker_places()
    for i, place in enumerate(val.places.tolist()):
        region = val.spurious[i]
        if place < 0:
            assert not region.any()
            continue
        x, y = spots[place]
        square = torch.zeros_like(region)
        square[y : y + sc.MARKER, x : x + sc.MARKER] = True
        assert region[square].all() and int(region.sum()) > int(square.sum())  # the marker grown by a margin
        assert torch.all(val.images[i, 0][square] == marker_value)
        x0, y0, x1, y1 = val.boxes[i].tolist()
        assert not square[y0:y1, x0:x1].any()  # the digit is never covered


def test_batches_carry_the_regions_the_callback_reads(shortcut_data: sc.ShortcutDigits) -> None:
    batch = next(iter(shortcut_data.val_dataloader()))
    assert set(batch) == {"image", "label", "box", "spurious_mask"}
    assert batch["spurious_mask"].dtype == torch.bool and batch["spurious_mask"].shape[1:] == (64, 64)


def test_making_the_data_leaves_the_global_random_generators_untouched() -> None:
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    sc.ShortcutDigits(train_size=16, val_size=16, test_size=16, seed=0).setup()
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))


@pytest.mark.slow
def test_the_callback_warns_on_the_shortcut_run_and_never_on_the_clean_or_the_independent_run(tmp_path: Path) -> None:
    options = dict(epochs=3, train_size=1500, val_size=200, root_dir=tmp_path, print_fn=lambda *a, **k: None,
                   accelerator="cpu")
    shortcut = sc.train_run(True, **options)
    clean = sc.train_run(False, **options)
    independent = sc.train_run("independent", **options)
    last_shortcut, last_clean = shortcut["summary"].rows[-1], clean["summary"].rows[-1]
    last_independent = independent["summary"].rows[-1]

    # attention: on the marker in the shortcut run, on the digit in the clean one
    assert last_shortcut["marker"] > last_clean["marker"] + 0.2
    assert last_shortcut["marker"] > last_shortcut["digit"]
    assert last_clean["digit"] > last_clean["marker"]
    # reliance: only the shortcut model needs the marker
    assert last_shortcut["reliance"] > 0.1
    assert last_clean["reliance"] < 0.1 and last_independent["reliance"] < 0.1  # negative: less than elsewhere
    # the warning, in words, only where the shortcut is learned, with both numbers
    assert len(shortcut["warnings"]) == 1 and "possible shortcut" in shortcut["warnings"][0]
    assert "Shortcut(reliance=0.1)" in shortcut["warnings"][0]
    assert list(shortcut["cam"].shortcut_alerts) == ["gradcam"]
    assert clean["warnings"] == [] and clean["cam"].shortcut_alerts == {}
    # the class-independent square: salient perhaps, never a shortcut
    assert independent["warnings"] == [] and independent["cam"].shortcut_alerts == {}
    assert last_independent["val_acc"] > last_shortcut["val_acc"] + 0.1
    # the story the numbers tell: training accuracy without validation accuracy
    assert last_shortcut["train_acc"] > last_shortcut["val_acc"] + 0.3
    assert last_clean["val_acc"] > last_shortcut["val_acc"] + 0.1
    # the timeline shows the runs side by side at one size
    images = [run["cam"].timeline_image("gradcam") for run in (shortcut, clean, independent)]
    assert images[0].shape == images[1].shape == images[2].shape and images[0].shape[1] > 4 * 128
