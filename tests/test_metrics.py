"""Specification of cams.metrics: each measure on cases whose answer is known by construction."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from scipy import stats

from cams import metrics

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _random_maps(batch: int = 3, size: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, size, size, generator=torch.Generator().manual_seed(seed))


def _box_mask(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_docstring_examples_run():
    result = doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------------------------------
# cosine similarity, spearman, drift
# --------------------------------------------------------------------------------------------------


def test_cosine_similarity_matches_torch_per_image():
    a, b = _random_maps(seed=1), _random_maps(seed=2)
    expected = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    torch.testing.assert_close(metrics.cosine_similarity(a, b), expected)


def test_cosine_similarity_is_one_for_a_rescaled_map():
    a = _random_maps()
    torch.testing.assert_close(metrics.cosine_similarity(a, 3 * a), torch.ones(3))


def test_cosine_similarity_of_disjoint_supports_is_zero():
    a, b = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    a[0, :2], b[0, 2:] = 1.0, 1.0
    assert metrics.cosine_similarity(a, b).tolist() == [0.0]


def test_cosine_similarity_of_all_zero_maps_follows_documented_convention():
    zero, hot = torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)
    hot[:, 1, 1] = 1.0
    assert metrics.cosine_similarity(zero, zero).tolist() == [1.0, 1.0]
    assert metrics.cosine_similarity(zero, hot).tolist() == [0.0, 0.0]


def test_spearman_matches_scipy_with_ties():
    a = torch.randint(0, 4, (3, 5, 5), generator=torch.Generator().manual_seed(0)).float()
    b = torch.randint(0, 4, (3, 5, 5), generator=torch.Generator().manual_seed(1)).float()
    expected = [stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(3)]
    torch.testing.assert_close(metrics.spearman(a, b), torch.tensor(expected, dtype=torch.float32))


def test_spearman_matches_scipy_at_224_squared():
    a, b = _random_maps(batch=1, size=224, seed=3), _random_maps(batch=1, size=224, seed=4)
    b = 0.5 * b + 0.5 * a
    expected = stats.spearmanr(a.flatten().numpy(), b.flatten().numpy())[0]
    assert metrics.spearman(a, b).item() == pytest.approx(expected, abs=1e-6)


def test_spearman_is_invariant_to_monotone_transforms():
    a = _random_maps()
    assert metrics.spearman(a, torch.exp(5 * a)).tolist() == [1.0, 1.0, 1.0]


def test_spearman_of_inverted_map_is_minus_one():
    a = _random_maps()
    assert metrics.spearman(a, 1 - a).tolist() == [-1.0, -1.0, -1.0]


def test_spearman_of_constant_maps_follows_documented_convention():
    constant, varied = torch.full((1, 4, 4), 0.3), _random_maps(batch=1, size=4)
    assert metrics.spearman(constant, 2 * constant).tolist() == [1.0]
    assert metrics.spearman(constant, varied).tolist() == [0.0]


def test_similarities_accept_a_channel_dimension():
    a = _random_maps()
    torch.testing.assert_close(metrics.spearman(a[:, None], a[:, None]), torch.ones(3))


def test_similarities_reject_shape_mismatch_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 6, 6\) and \(3, 5, 5\)"):
        metrics.cosine_similarity(_random_maps(), _random_maps(size=5))


def test_drift_is_zero_for_identical_maps_and_one_minus_mean_similarity_otherwise():
    a, b = _random_maps(seed=5), _random_maps(seed=6)
    assert metrics.drift(a, a).item() == 0.0
    assert metrics.drift(a, a, measure="spearman").item() == 0.0
    expected = 1 - metrics.spearman(a, b).mean()
    torch.testing.assert_close(metrics.drift(a, b, measure="spearman"), expected)
    assert metrics.drift(a, b).dim() == 0


def test_drift_rejects_unknown_measure_with_suggestion():
    with pytest.raises(ValueError, match=r"measure.*'spearmann'.*did you mean 'spearman'"):
        metrics.drift(_random_maps(), _random_maps(), measure="spearmann")


# --------------------------------------------------------------------------------------------------
# pointing game
# --------------------------------------------------------------------------------------------------


def test_pointing_game_of_map_equal_to_mask_is_a_hit():
    mask = _box_mask(16, 16, 3, 4, 9, 12)[None]
    assert metrics.pointing_game(mask.float(), masks=mask, tolerance=0).tolist() == [1.0]


def test_pointing_game_of_inverted_map_misses_without_tolerance():
    mask = _box_mask(16, 16, 3, 4, 9, 12)[None]
    assert metrics.pointing_game(1 - mask.float(), masks=mask, tolerance=0).tolist() == [0.0]


def test_pointing_game_single_hot_pixel_inside_outside_and_within_tolerance():
    maps = torch.zeros(3, 32, 32)
    maps[0, 5, 5] = 1.0  # inside the box
    maps[1, 5, 25] = 1.0  # 6 pixels right of the last box column (19)
    maps[2, 31, 31] = 1.0  # 12 * sqrt(2) ~ 16.97 pixels from the box corner pixel (19, 19)
    boxes = torch.tensor([[0, 0, 20, 20]] * 3)
    assert metrics.pointing_game(maps, boxes=boxes, tolerance=0).tolist() == [1.0, 0.0, 0.0]
    assert metrics.pointing_game(maps, boxes=boxes, tolerance=6).tolist() == [1.0, 1.0, 0.0]
    assert metrics.pointing_game(maps, boxes=boxes, tolerance=15).tolist() == [1.0, 1.0, 0.0]
    assert metrics.pointing_game(maps, boxes=boxes, tolerance=17).tolist() == [1.0, 1.0, 1.0]


def test_pointing_game_boxes_and_equivalent_masks_agree():
    maps = _random_maps(batch=4, size=12, seed=7)
    boxes = torch.tensor([[0, 0, 6, 6], [6, 6, 12, 12], [2, 3, 5, 11], [0, 0, 12, 1]])
    masks = torch.stack([_box_mask(12, 12, *box.tolist()) for box in boxes])
    for tolerance in (0, 2):
        torch.testing.assert_close(
            metrics.pointing_game(maps, boxes=boxes, tolerance=tolerance),
            metrics.pointing_game(maps, masks=masks, tolerance=tolerance),
        )


def test_pointing_game_box_end_is_exclusive():
    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 4] = 1.0  # column 4 == x1
    assert metrics.pointing_game(maps, boxes=torch.tensor([[0, 0, 4, 8]]), tolerance=0).tolist() == [0.0]
    assert metrics.pointing_game(maps, boxes=torch.tensor([[0, 0, 5, 8]]), tolerance=0).tolist() == [1.0]


def test_pointing_game_constant_map_points_at_the_image_centre():
    constant = torch.full((2, 9, 9), 0.5)
    centre, corner = _box_mask(9, 9, 4, 4, 5, 5), _box_mask(9, 9, 0, 0, 1, 1)
    result = metrics.pointing_game(constant, masks=torch.stack([centre, corner]), tolerance=0)
    assert result.tolist() == [1.0, 0.0]


def test_pointing_game_tied_maxima_break_toward_the_centre():
    maps = torch.zeros(1, 9, 9)
    maps[0, 0, 0] = maps[0, 4, 5] = 1.0  # (4, 5) is nearer the centre (4, 4)
    near_centre = _box_mask(9, 9, 5, 4, 6, 5)[None]
    assert metrics.pointing_game(maps, masks=near_centre, tolerance=0).tolist() == [1.0]


def test_pointing_game_empty_object_is_nan():
    maps = _random_maps(batch=2)
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[1, 0, 0] = True
    result = metrics.pointing_game(maps, masks=masks)
    assert math.isnan(result[0].item()) and not math.isnan(result[1].item())
    zero_area = metrics.pointing_game(maps, boxes=torch.tensor([[2, 2, 2, 5], [0, 0, 6, 6]]))
    assert math.isnan(zero_area[0].item()) and zero_area[1].item() == 1.0


def test_pointing_game_needs_exactly_one_of_boxes_and_masks():
    maps = _random_maps()
    with pytest.raises(ValueError, match="exactly one of boxes"):
        metrics.pointing_game(maps)
    with pytest.raises(ValueError, match="exactly one of boxes"):
        metrics.pointing_game(maps, boxes=torch.zeros(3, 4), masks=torch.ones(3, 6, 6, dtype=torch.bool))


def test_pointing_game_rejects_negative_tolerance():
    with pytest.raises(ValueError, match=r"tolerance.*-1"):
        metrics.pointing_game(_random_maps(), boxes=torch.zeros(3, 4), tolerance=-1)


def test_localisation_rejects_mismatched_mask_shape():
    with pytest.raises(ValueError, match=r"masks must have the maps' shape \(3, 6, 6\)"):
        metrics.energy_pointing_game(_random_maps(), masks=torch.ones(3, 5, 5, dtype=torch.bool))


# --------------------------------------------------------------------------------------------------
# energy-based pointing game
# --------------------------------------------------------------------------------------------------


def test_energy_of_map_equal_to_mask_is_one():
    mask = _box_mask(10, 10, 1, 2, 6, 9)[None]
    assert metrics.energy_pointing_game(mask.float(), masks=mask).tolist() == [1.0]


def test_energy_of_inverted_map_is_zero():
    mask = _box_mask(10, 10, 1, 2, 6, 9)[None]
    assert metrics.energy_pointing_game(1 - mask.float(), masks=mask).tolist() == [0.0]


def test_energy_of_constant_and_all_zero_maps_is_the_area_fraction():
    boxes = torch.tensor([[0, 0, 4, 2], [0, 0, 4, 2]])  # 8 of 64 pixels
    maps = torch.stack([torch.full((8, 8), 0.7), torch.zeros(8, 8)])
    torch.testing.assert_close(metrics.energy_pointing_game(maps, boxes=boxes), torch.full((2,), 0.125))


def test_energy_is_the_share_of_mass_inside():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0
    torch.testing.assert_close(
        metrics.energy_pointing_game(maps, boxes=torch.tensor([[0, 0, 2, 2]])), torch.tensor([0.75])
    )


def test_energy_single_hot_pixel_is_one_inside_zero_outside():
    maps = torch.zeros(2, 6, 6)
    maps[0, 1, 1], maps[1, 5, 5] = 1.0, 1.0
    boxes = torch.tensor([[0, 0, 3, 3]] * 2)
    assert metrics.energy_pointing_game(maps, boxes=boxes).tolist() == [1.0, 0.0]


def test_energy_empty_object_is_nan():
    result = metrics.energy_pointing_game(_random_maps(batch=1), masks=torch.zeros(1, 6, 6, dtype=torch.bool))
    assert math.isnan(result.item())
