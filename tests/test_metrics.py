"""Specification of cams.metrics: each measure on cases whose answer is known by construction."""

from __future__ import annotations

import doctest
import importlib
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
    for subject in ("similarity", "localisation", "faithfulness", "sanity"):  # metrics.faithfulness is the function
        module = importlib.import_module(f"cams.metrics.{subject}")
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
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


# --------------------------------------------------------------------------------------------------
# faithfulness: tiny linear classifiers on known pixels
# --------------------------------------------------------------------------------------------------


def _linear_model(*class_weights: torch.Tensor, bias: tuple[float, ...] | None = None) -> torch.nn.Module:
    """``nn.Sequential(Flatten, Linear)`` whose class ``k`` score is ``<class_weights[k], x> + bias[k]``."""
    numel = class_weights[0].numel()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(numel, len(class_weights)))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w.flatten() for w in class_weights]))
        model[1].bias.copy_(torch.tensor(bias if bias is not None else [0.0] * len(class_weights)))
    return model


def _hot_pixel_model(index: int = 6, size: int = 4) -> torch.nn.Module:
    """One class whose score is the value of pixel ``index`` (raster order) of a 1-channel image."""
    return _linear_model(torch.eye(size * size)[index])


class _CountingModel(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls, self.rows = model, 0, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows.append(len(x))
        return self.model(x)


def _small_cnn(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, classes),
    )


def _images(batch: int = 3, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_average_drop_of_raw_score_is_the_relative_loss():
    model = _linear_model(torch.ones(16))  # score = sum of pixels = 16 on an all-ones image
    x = torch.ones(4, 1, 4, 4)
    half = torch.zeros(4, 4)
    half[:2] = 1.0
    maps = torch.stack([torch.ones(4, 4), torch.full((4, 4), 0.5), torch.zeros(4, 4), half])
    result = metrics.average_drop(model, x, maps, softmax=False)
    torch.testing.assert_close(result, torch.tensor([0.0, 50.0, 100.0, 50.0]))


def test_average_drop_uses_softmax_probability_of_the_target_class_by_default():
    model = _linear_model(torch.ones(4), torch.zeros(4))  # logits (sum of pixels, 0)
    x = torch.ones(1, 1, 2, 2)
    y, o = torch.sigmoid(torch.tensor(4.0)), torch.sigmoid(torch.tensor(2.0))
    result = metrics.average_drop(model, x, torch.full((1, 2, 2), 0.5))
    torch.testing.assert_close(result, (100 * (y - o) / y)[None])


def test_average_drop_of_zero_score_is_zero_and_of_negative_raw_score_is_nan():
    model = _linear_model(torch.zeros(4), torch.zeros(4), bias=(0.0, -1000.0))  # p(class 1) == 0
    x, maps = torch.ones(1, 1, 2, 2), torch.zeros(1, 2, 2)
    assert metrics.average_drop(model, x, maps, targets=1).tolist() == [0.0]
    assert metrics.average_drop(model, x, maps, targets=0, softmax=False).tolist() == [0.0]
    assert math.isnan(metrics.average_drop(model, x, maps, targets=1, softmax=False).item())


def test_increase_in_confidence_counts_only_strict_increases():
    left = torch.zeros(4, 4)
    left[:, :2] = 1.0
    model = _linear_model(2 * left - 1)  # score = sum(left half) - sum(right half) = 0 on ones
    x = torch.ones(3, 1, 4, 4)
    maps = torch.stack([left, torch.ones(4, 4), 1 - left])  # scores 8, 0, -8 against 0
    assert metrics.increase_in_confidence(model, x, maps, softmax=False).tolist() == [100.0, 0.0, 0.0]


def test_deletion_of_the_hot_pixel_first_collapses_the_score():
    model, x = _hot_pixel_model(6), torch.ones(2, 1, 4, 4)
    hot_first = torch.zeros(4, 4)
    hot_first.view(-1)[6] = 1.0
    maps = torch.stack([hot_first, 1 - hot_first])
    # curves 1,0,0,0,0 and 1,1,1,1,0 over fractions 0, 1/4, .., 1
    torch.testing.assert_close(
        metrics.deletion_auc(model, x, maps, steps=4, softmax=False), torch.tensor([0.125, 0.875])
    )


def test_insertion_of_the_hot_pixel_first_restores_the_score():
    model, x = _hot_pixel_model(6), torch.ones(2, 1, 4, 4)
    hot_first = torch.zeros(4, 4)
    hot_first.view(-1)[6] = 1.0
    maps = torch.stack([hot_first, 1 - hot_first])
    result = metrics.insertion_auc(model, x, maps, steps=4, baseline="zeros", softmax=False)
    torch.testing.assert_close(result, torch.tensor([0.875, 0.125]))


def test_deletion_step_k_removes_floor_of_k_hw_over_steps_pixels():
    model, x = _hot_pixel_model(6), torch.ones(1, 1, 4, 4)
    maps = torch.zeros(1, 4, 4)
    ranks = [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # pixel 6 is 6th, rank 5
    maps.view(-1)[torch.tensor(ranks)] = torch.linspace(1, 0, 16)
    # 3 steps remove 0, 5, 10, 16 pixels: scores 1, 1, 0, 0
    result = metrics.deletion_auc(model, x, maps, steps=3, softmax=False)
    torch.testing.assert_close(result, torch.tensor([0.5]))


def test_deletion_of_constant_map_removes_pixels_in_raster_order():
    model, x = _hot_pixel_model(6), torch.ones(1, 1, 4, 4)
    # pixel 6 survives steps 0..6 of 16: area 6.5 / 16
    result = metrics.deletion_auc(model, x, torch.full((1, 4, 4), 0.3), steps=16, softmax=False)
    torch.testing.assert_close(result, torch.tensor([6.5 / 16]))


def test_insertion_starts_from_the_blurred_image_by_default():
    weights = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    model, x = _linear_model(weights), _images(batch=2)
    score = lambda images: (images * weights).flatten(1).sum(1)  # noqa: E731
    # one step: the trapezoid of (blurred image, image)
    expected = (score(metrics.gaussian_blur(x)) + score(x)) / 2
    result = metrics.insertion_auc(model, x, _random_maps(batch=2, size=8), steps=1, softmax=False)
    torch.testing.assert_close(result, expected)


def test_gaussian_blur_preserves_mass_away_from_the_border_and_keeps_shape():
    x = torch.zeros(2, 3, 31, 31)
    x[:, :, 15, 15] = 1.0
    blurred = metrics.gaussian_blur(x)
    assert blurred.shape == x.shape
    torch.testing.assert_close(blurred.sum(dim=(2, 3)), torch.ones(2, 3))
    assert blurred[0, 0, 15, 15] == blurred.max() < 0.02


def test_deletion_baseline_may_be_a_number_a_tensor_or_a_callable():
    model, x = _hot_pixel_model(6), torch.ones(1, 1, 4, 4)
    maps = _random_maps(batch=1, size=4)
    expected = torch.tensor([1.5])  # one step: (1 + 2) / 2
    for baseline in (2.0, torch.full((1, 1, 4, 4), 2.0), lambda images: 2 * images):
        result = metrics.deletion_auc(model, x, maps, steps=1, baseline=baseline, softmax=False)
        torch.testing.assert_close(result, expected)


def test_unknown_baseline_names_the_choices_and_a_close_match():
    model, x = _hot_pixel_model(6), torch.ones(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"baseline must be one of \('zeros', 'blur'\).*'blurr'.*'blur'\?"):
        metrics.insertion_auc(model, x, torch.ones(1, 4, 4), baseline="blurr")


def test_faithfulness_equals_the_four_separate_metrics():
    model, x = _small_cnn().eval(), _images()
    maps = _random_maps(batch=3, size=8)
    combined = metrics.faithfulness(model, x, maps, steps=5)
    assert set(combined) == {"average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"}
    torch.testing.assert_close(combined["average_drop"], metrics.average_drop(model, x, maps))
    increase = metrics.increase_in_confidence(model, x, maps)
    torch.testing.assert_close(combined["increase_in_confidence"], increase)
    torch.testing.assert_close(combined["deletion_auc"], metrics.deletion_auc(model, x, maps, steps=5))
    torch.testing.assert_close(combined["insertion_auc"], metrics.insertion_auc(model, x, maps, steps=5))


def test_faithfulness_batches_every_image_into_ceil_rows_over_batch_size_forwards():
    model = _CountingModel(_small_cnn())
    x, maps = _images(), _random_maps(batch=3, size=8)
    metrics.faithfulness(model, x, maps, steps=4, batch_size=7)  # 3 originals + 3 explanations + 2 * 3 * 4
    assert model.calls == 5 and model.rows == [7, 7, 7, 7, 2]
    model.calls, model.rows = 0, []
    metrics.deletion_auc(model, x, maps, steps=4, batch_size=64)  # 3 * (4 + 1) rows
    assert model.calls == 1 and model.rows == [15]


def test_faithfulness_does_not_depend_on_batch_size():
    model, x, maps = _small_cnn(), _images(), _random_maps(batch=3, size=8)
    one = metrics.faithfulness(model, x, maps, steps=3, batch_size=1)
    everything = metrics.faithfulness(model, x, maps, steps=3, batch_size=1000)
    for name in one:  # equal up to the float error of different batch sizes in conv kernels
        torch.testing.assert_close(one[name], everything[name], rtol=1e-4, atol=1e-4)


def test_faithfulness_leaves_the_model_as_found():
    model, x, maps = _small_cnn().train(), _images(), _random_maps(batch=3, size=8)
    model[3].eval()  # a mixed mode must survive too
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    x.requires_grad_(True)
    metrics.faithfulness(model, x, maps, steps=3, batch_size=5)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN buffers included
    assert all(p.grad is None for p in model.parameters()) and x.grad is None
    assert torch.equal(rng, torch.random.get_rng_state())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_default_target_is_the_predicted_class_and_targets_may_be_int_sequence_tensor_or_callable():
    model, x, maps = _small_cnn().eval(), _images(), _random_maps(batch=3, size=8)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    expected = metrics.deletion_auc(model, x, maps, steps=2)
    for targets in (predicted.tolist(), predicted, lambda probs: probs.gather(1, predicted[:, None])[:, 0]):
        result = metrics.deletion_auc(model, x, maps, targets, steps=2, batch_size=3)
        torch.testing.assert_close(result, expected)
    by_int = metrics.deletion_auc(model, x, maps, targets=1, steps=2)
    by_list = metrics.deletion_auc(model, x, maps, targets=[1, 1, 1], steps=2)
    torch.testing.assert_close(by_int, by_list)


def test_callable_targets_receive_probabilities_unless_softmax_is_false():
    model, x, maps = _small_cnn().eval(), _images(), _random_maps(batch=3, size=8)
    seen = []

    def first_class(output):
        seen.append(output.sum(1))
        return output[:, 0]

    metrics.average_drop(model, x, maps, targets=first_class)
    torch.testing.assert_close(seen[0], torch.ones(3))
    raw = metrics.average_drop(model, x, maps, targets=first_class, softmax=False)
    by_class = metrics.average_drop(model, x, maps, targets=0, softmax=False)
    torch.testing.assert_close(raw, by_class, equal_nan=True)


def test_callable_targets_work_on_tuple_outputs():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _hot_pixel_model(6)

        def forward(self, x):
            return self.body(x), -self.body(x)

    x, hot_first = torch.ones(1, 1, 4, 4), torch.zeros(1, 4, 4)
    hot_first.view(1, -1)[0, 6] = 1.0
    result = metrics.deletion_auc(TwoHeads(), x, hot_first, lambda out: out[0][:, 0], steps=4, softmax=False)
    torch.testing.assert_close(result, torch.tensor([0.125]))


def test_targets_errors_name_the_problem():
    model, x, maps = _small_cnn(), _images(), _random_maps(batch=3, size=8)
    with pytest.raises(ValueError, match=r"one class index per image \(3\)"):
        metrics.average_drop(model, x, maps, targets=[0, 1])
    with pytest.raises(ValueError, match=r"targets \[7\] out of range for a model with 3 classes"):
        metrics.average_drop(model, x, maps, targets=[0, 7, 1])
    with pytest.raises(ValueError, match="maps has 2 maps for 3 images"):
        metrics.average_drop(model, x, maps[:2])
    with pytest.raises(ValueError, match=r"steps must be a positive int.*0"):
        metrics.deletion_auc(model, x, maps, steps=0)


def test_non_tensor_output_with_class_targets_asks_for_a_callable():
    class Dict(torch.nn.Module):
        def forward(self, x):
            return {"embedding": x.flatten(1)}

    with pytest.raises(TypeError, match="callable output -> \\(B,\\)"):
        metrics.average_drop(Dict(), torch.ones(1, 1, 2, 2), torch.ones(1, 2, 2))


def test_maps_of_another_size_are_resized_bilinearly_to_the_images():
    model, x = _small_cnn().eval(), _images(size=8)
    small = _random_maps(batch=3, size=4)
    resized = torch.nn.functional.interpolate(small[:, None], size=(8, 8), mode="bilinear")[:, 0]
    torch.testing.assert_close(
        metrics.average_drop(model, x, small), metrics.average_drop(model, x, resized)
    )


# --------------------------------------------------------------------------------------------------
# sanity check (cascading randomisation)
# --------------------------------------------------------------------------------------------------


class _HeadFirstNet(torch.nn.Module):
    """Modules registered head first, run conv1 -> relu1 -> conv2 -> relu2 -> pool -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(6, 3)
        self.conv1 = torch.nn.Conv2d(3, 5, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(5, 6, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(6)
        self.relu2 = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def _head_first_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return _HeadFirstNet()


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    after_params = dict(after.named_parameters())
    return {name for name, p in before.named_parameters() if not torch.equal(p, after_params[name])}


def test_randomized_copy_reinitialises_the_target_layer_and_what_runs_after_it_in_forward_order():
    model = _head_first_net()
    copy = metrics.randomized_copy(model, _images(batch=1), "conv2")
    # bn2.weight/bias are reset to their initial 1/0, equal to a fresh BatchNorm's: not "changed"
    assert _changed(model, copy) == {"conv2.weight", "conv2.bias", "head.weight", "head.bias"}


def test_randomized_copy_of_resnet_block_spares_the_layers_before_it():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    changed = _changed(model, metrics.randomized_copy(model, torch.randn(1, 3, 32, 32), "layer4.1"))
    convs = {name for name in changed if "conv" in name or "downsample.0" in name}
    assert convs == {"layer4.1.conv1.weight", "layer4.1.conv2.weight"}
    assert {"fc.weight", "fc.bias"} <= changed


def test_randomized_copy_leaves_the_model_and_the_global_rng_untouched():
    model = _head_first_net().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    copy = metrics.randomized_copy(model, _images(batch=1), "conv2")
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert copy.training and all(m.training for m in copy.modules())


def test_randomized_copy_depends_only_on_seed():
    model, x = _head_first_net(), _images(batch=1)
    torch.manual_seed(1)
    first = metrics.randomized_copy(model, x, "conv2", seed=3)
    torch.manual_seed(2)
    again = metrics.randomized_copy(model, x, "conv2", seed=3)
    other = metrics.randomized_copy(model, x, "conv2", seed=4)
    assert not _changed(first, again)
    assert _changed(first, other) == {"conv2.weight", "conv2.bias", "head.weight", "head.bias"}


def test_randomized_copy_rejects_unknown_layer_with_close_match():
    with pytest.raises(ValueError, match=r"'conv3'.*did you mean"):
        metrics.randomized_copy(_head_first_net(), _images(batch=1), "conv3")


def test_sanity_check_is_one_for_maps_blind_to_the_randomised_layers():
    # eigencam at the parameter-free relu1 sees only conv1, which runs before and is kept
    model, x = _head_first_net(), _images(batch=2, size=12)
    similarity = metrics.sanity_check(model, x, "relu1", method="eigencam")
    torch.testing.assert_close(similarity, torch.ones(2))


def test_sanity_check_of_gradcam_drops_when_the_head_is_randomised():
    model, x = _head_first_net(), _images(batch=2, size=12)
    similarity = metrics.sanity_check(model, x, "relu1", method="gradcam")
    assert similarity.shape == (2,) and bool((similarity < 0.9).all())


def test_sanity_check_explains_the_original_prediction_in_the_randomised_copy(monkeypatch):
    from cams.engine import CamEngine

    calls = []
    real_call = CamEngine.__call__

    def spy(self, x, methods="gradcam", targets=None, **kwargs):
        maps = real_call(self, x, methods=methods, targets=targets, **kwargs)
        calls.append((targets, maps.classes))
        return maps

    monkeypatch.setattr(CamEngine, "__call__", spy)
    model, x = _head_first_net(), _images(batch=3, size=12)
    metrics.sanity_check(model, x, "conv2")
    (first_targets, predicted), (second_targets, second_classes) = calls
    assert first_targets is None
    assert torch.equal(predicted, model.eval()(x).argmax(1))
    assert torch.equal(second_targets, predicted) and torch.equal(second_classes, predicted)


def test_sanity_check_leaves_the_model_as_found():
    model, x = _head_first_net().train(), _images(batch=2, size=12)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    metrics.sanity_check(model, x, "conv2")
    assert all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.random.get_rng_state())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
