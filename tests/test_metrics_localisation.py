"""Quantus' localisation family in ``cams.metrics``: top-k intersection, relevance rank accuracy, attribution
localisation, ROC AUC and Focus, beside the pointing game and its energy form.

Each is compared with Quantus 0.6.0 on the same maps and masks (its default options, ``disable_warnings=True``),
checked on a tiny case computed by hand in float64, and on its invariants: a map equal to the object scores 1,
a map without information (constant, or all zero) scores chance, an image without an object scores nan.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cams import metrics
from cams.metrics.ranking import sorted_rows

quantus = pytest.importorskip("quantus")
from quantus.functions.mosaic_func import mosaic_creation  # noqa: E402

PARITY_ATOL = 1e-5


def _cam_like(batch: int, size: int, seed: int) -> torch.Tensor:
    """Maps shaped like upsampled CAMs (7 x 7 noise, bilinear) in [0, 1], each value distinct."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 7, 7, generator=gen)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    maps = maps + torch.arange(size * size, dtype=torch.float32).view(size, size) * 1e-7
    return maps / maps.amax(dim=(1, 2), keepdim=True)


def _masks(batch: int, size: int, seed: int) -> torch.Tensor:
    """One random box per image, as a bool mask, covering 5-40 % of it."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(batch):
        h, w = torch.randint(size // 4, size * 2 // 3, (2,), generator=gen).tolist()
        y, x = (int(torch.randint(0, size - side, (1,), generator=gen)) for side in (h, w))
        masks[i, y : y + h, x : x + w] = True
    return masks


def _quantus(metric, maps: torch.Tensor, masks: torch.Tensor, **call) -> np.ndarray:
    """Quantus' scores of maps (B, H, W) against masks (B, H, W), images of noise beside them (unused)."""
    batch, size = maps.shape[0], maps.shape[-1]
    x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
    scores = metric(model=call.pop("model", None), x_batch=x, y_batch=np.zeros(batch, dtype=int),
                    a_batch=maps[:, None].numpy(), s_batch=masks[:, None].numpy().astype(np.float32),
                    channel_first=True, **call)  # fmt: skip
    return np.asarray(scores, dtype=np.float64)


MAPS, MASKS = _cam_like(8, 56, seed=0), _masks(8, 56, seed=1)

QUANTUS_PAIRS = [
    ("top_k_intersection", lambda: quantus.TopKIntersection(k=1000, disable_warnings=True), {}),
    ("top_k_intersection", lambda: quantus.TopKIntersection(k=200, concept_influence=True, disable_warnings=True),
     {"k": 200, "concept_influence": True}),
    ("relevance_rank_accuracy", lambda: quantus.RelevanceRankAccuracy(disable_warnings=True), {}),
    ("attribution_localisation", lambda: quantus.AttributionLocalisation(disable_warnings=True), {}),
    ("roc_auc", lambda: quantus.AUC(disable_warnings=True), {}),
    ("energy_pointing_game", lambda: quantus.RelevanceMassAccuracy(disable_warnings=True), {}),
    ("pointing_game", lambda: quantus.PointingGame(disable_warnings=True), {"tolerance": 0}),
]


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize(("name", "peer", "options"), QUANTUS_PAIRS, ids=[p[0] + str(p[2]) for p in QUANTUS_PAIRS])
def test_each_measure_equals_quantus_on_the_same_cam_like_maps_and_masks(name, peer, options) -> None:
    ours = getattr(metrics, name)(MAPS, masks=MASKS, **options).double().numpy()
    np.testing.assert_allclose(ours, _quantus(peer(), MAPS, MASKS), atol=PARITY_ATOL, rtol=0)


def test_the_auc_equals_quantus_sklearn_auc_where_many_values_tie() -> None:
    tied = (MAPS * 8).round() / 8  # nine distinct values: ties everywhere, counted half as sklearn's trapezoids
    ours = metrics.roc_auc(tied, masks=MASKS).double().numpy()
    np.testing.assert_allclose(ours, _quantus(quantus.AUC(disable_warnings=True), tied, MASKS), atol=PARITY_ATOL)


def test_rank_measures_read_boxes_as_the_equivalent_masks_and_volumes_too() -> None:
    boxes = torch.tensor([[3, 5, 20, 30], [0, 0, 56, 10]])
    masks = torch.zeros(2, 56, 56, dtype=torch.bool)
    masks[0, 5:30, 3:20], masks[1, 0:10, :] = True, True
    for name in ("top_k_intersection", "relevance_rank_accuracy", "roc_auc", "attribution_localisation"):
        function = getattr(metrics, name)
        options = {"k": 100} if name == "top_k_intersection" else {}
        assert torch.equal(function(MAPS[:2], boxes=boxes, **options), function(MAPS[:2], masks=masks, **options))
    volume = torch.zeros(1, 4, 4, 4)
    volume[0, 3, 0, 0] = 1.0  # z = 3, y = 0, x = 0
    box = torch.tensor([[0, 0, 3, 1, 1, 4]])  # x0, y0, z0, x1, y1, z1
    assert metrics.relevance_rank_accuracy(volume, boxes=box).item() == 1.0
    assert metrics.roc_auc(volume, boxes=box).item() == 1.0


# ------------------------------------------------------------------------------- by hand, in float64
def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    maps = torch.tensor([[[0.9, 0.8, 0.1], [0.7, 0.2, 0.3], [0.6, 0.5, 0.4]]], dtype=torch.float64)
    masks = torch.tensor([[[True, False, False], [True, False, False], [True, False, True]]])
    return maps, masks


def test_top_k_intersection_of_a_3_by_3_case_computed_by_hand() -> None:
    maps, masks = _hand_case()
    # top 3: 0.9 (on), 0.8 (off), 0.7 (on) -> 2/3; concept influence x 9/4
    assert metrics.top_k_intersection(maps, masks=masks, k=3).item() == pytest.approx(2 / 3)
    assert metrics.top_k_intersection(maps, masks=masks, k=3, concept_influence=True).item() == pytest.approx(1.5)


def test_relevance_rank_accuracy_of_a_3_by_3_case_computed_by_hand() -> None:
    maps, masks = _hand_case()
    # |O| = 4, top 4: 0.9 on, 0.8 off, 0.7 on, 0.6 on -> 3/4
    assert metrics.relevance_rank_accuracy(maps, masks=masks).item() == pytest.approx(0.75)


def test_roc_auc_of_a_3_by_3_case_computed_by_hand() -> None:
    maps, masks = _hand_case()
    # positives 0.9, 0.7, 0.6, 0.4 against negatives 0.8, 0.1, 0.2, 0.3, 0.5: wins 5 + 4 + 4 + 3 = 16 of 20
    assert metrics.roc_auc(maps, masks=masks).item() == pytest.approx(16 / 20)


def test_attribution_localisation_of_a_3_by_3_case_computed_by_hand() -> None:
    maps, masks = _hand_case()
    maps[0, 2, 2] = -0.4  # its magnitude counts
    assert metrics.attribution_localisation(maps, masks=masks).item() == pytest.approx(2.6 / 4.5)


def test_ties_at_the_cut_count_at_their_expected_value() -> None:
    maps = torch.tensor([[[1.0, 0.5, 0.5, 0.5]]], dtype=torch.float64)
    masks = torch.tensor([[[False, True, False, False]]])
    # top 2: 1.0 (off), then one of three tied 0.5, on the object with probability 1/3
    assert metrics.top_k_intersection(maps, masks=masks, k=2).item() == pytest.approx(1 / 6)
    assert metrics.relevance_rank_accuracy(maps, masks=masks).item() == 0.0  # k = 1: the 1.0, off the object


# ------------------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("name", ["top_k_intersection", "relevance_rank_accuracy", "attribution_localisation",
                                  "roc_auc", "energy_pointing_game", "pointing_game"])  # fmt: skip
def test_a_map_equal_to_the_mask_scores_one(name: str) -> None:
    options = {"k": int(MASKS.sum(dim=(1, 2)).min())} if name == "top_k_intersection" else {}
    scores = getattr(metrics, name)(MASKS.float(), masks=MASKS, **options)
    assert torch.equal(scores, torch.ones(len(MASKS)))


@pytest.mark.parametrize("constant", [0.0, 0.7])
def test_a_constant_or_all_zero_map_scores_chance(constant: float) -> None:
    maps = torch.full(MASKS.shape, constant)
    area = MASKS.float().mean(dim=(1, 2))
    assert torch.allclose(metrics.top_k_intersection(maps, masks=MASKS, k=100), area)
    assert torch.allclose(metrics.relevance_rank_accuracy(maps, masks=MASKS), area)
    assert torch.allclose(metrics.attribution_localisation(maps, masks=MASKS), area)
    assert torch.equal(metrics.roc_auc(maps, masks=MASKS), torch.full((len(MASKS),), 0.5))


def test_an_empty_object_is_nan_and_an_object_covering_the_map_has_no_auc() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1] = True
    maps = _cam_like(2, 8, seed=3)
    for name in ("top_k_intersection", "relevance_rank_accuracy", "attribution_localisation"):
        options = {"k": 4} if name == "top_k_intersection" else {}
        scores = getattr(metrics, name)(maps, masks=masks, **options)
        assert math.isnan(scores[0]) and scores[1] == 1.0
    assert metrics.roc_auc(maps, masks=masks).isnan().all()


def test_top_k_outside_the_maps_pixels_and_nan_maps_are_errors() -> None:
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 64\]"):
        metrics.top_k_intersection(torch.rand(1, 8, 8), masks=torch.ones(1, 8, 8, dtype=torch.bool), k=65)
    with pytest.raises(ValueError, match="nan"):
        metrics.roc_auc(torch.full((1, 4, 4), math.nan), masks=torch.ones(1, 4, 4, dtype=torch.bool))


def test_rows_sort_as_int32_keys_in_the_order_of_the_floats_signed_zeros_subnormals_and_infinities_too() -> None:
    x = torch.tensor([[3.0, -0.0, 0.0, -1e-40, 1e-40, -math.inf, math.inf, -2.5, 1.0, -2.5]])
    values, indices = sorted_rows(x)
    assert torch.equal(values, torch.sort(x, dim=1).values) and torch.equal(x.gather(1, indices), values)
    assert torch.equal(sorted_rows(x.double())[0], torch.sort(x.double(), dim=1).values)  # float64: torch's sort
    non_negative = torch.tensor([[3.0, 0.0, -0.0, 1e-40, math.inf, 1.0, 0.0]])  # the keys as they are
    values, indices = sorted_rows(non_negative)
    assert torch.equal(values, torch.sort(non_negative, dim=1).values) and indices[0, 0] == 2  # -0.0 first


# ---------------------------------------------------------------------------------------------- Focus
class _Pool(nn.Module):
    """A model Quantus' Focus can be handed (it asserts one; with maps given it never runs it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 2)


def _quantus_focus(maps: torch.Tensor, mosaics: torch.Tensor, targets, positions) -> np.ndarray:
    scores = quantus.Focus(disable_warnings=True)(
        model=_Pool(), x_batch=mosaics.numpy(), y_batch=np.asarray(targets), a_batch=maps[:, None].numpy(),
        custom_batch=[tuple(int(v) for v in p) for p in positions], channel_first=True,
    )
    return np.asarray(scores, dtype=np.float64)


def test_focus_follows_the_paper_quadrant_order_on_mosaics_that_are_not_square() -> None:
    maps = torch.zeros(1, 4, 6, dtype=torch.float64)  # a mosaic of 2 x 3 tiles
    maps[0, :2, 3:] = 3.0  # top-right tile
    maps[0, 2:, :3] = 1.0  # bottom-left tile
    positions = torch.tensor([[False, True, False, False]])  # the class is in the top-right tile only
    assert metrics.focus(maps, positions).item() == pytest.approx(0.75)
    # Quantus 0.5.x sliced the top-right quadrant as [H/2:, :W/2]: it would have scored the bottom-left, 0.25
    assert maps[0, 2:, :3].sum() / maps.sum() == pytest.approx(0.25)
    mosaics = torch.zeros(1, 1, 4, 6)
    np.testing.assert_allclose(_quantus_focus(maps.float(), mosaics, [0], positions), [0.75], atol=PARITY_ATOL)


def test_focus_equals_quantus_focus_on_quantus_own_mosaics() -> None:
    images = torch.rand(8, 1, 10, 12, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    built, indices, _, p_batch, targets = mosaic_creation(images.numpy(), labels.numpy(), 2, seed=7)
    ours = metrics.focus_mosaics(images, labels, indices=torch.tensor(indices), targets=torch.tensor(targets))
    assert torch.equal(ours.images, torch.from_numpy(built))
    assert ours.positions.int().tolist() == [list(p) for p in p_batch]
    maps = torch.rand(len(built), 20, 24, generator=torch.Generator().manual_seed(4))
    reference = _quantus_focus(maps, ours.images, targets, ours.positions)
    np.testing.assert_allclose(metrics.focus(maps, ours.positions).double().numpy(), reference, atol=PARITY_ATOL)


def test_focus_of_a_map_on_the_class_tiles_is_one_and_of_a_map_without_information_is_chance() -> None:
    positions = torch.tensor([[True, False, False, True], [False, True, True, False]])
    quadrants = torch.zeros(2, 8, 8)
    quadrants[0, :4, :4], quadrants[0, 4:, 4:] = 1.0, 1.0
    quadrants[1, :4, 4:], quadrants[1, 4:, :4] = 1.0, 1.0
    assert torch.equal(metrics.focus(quadrants, positions), torch.ones(2))
    assert torch.equal(metrics.focus(torch.zeros(2, 8, 8), positions), torch.full((2,), 0.5))
    assert torch.equal(metrics.focus(torch.full((2, 8, 8), 0.3), positions), torch.full((2,), 0.5))
    assert torch.equal(metrics.focus(-quadrants, positions), torch.full((2,), 0.5))  # no positive relevance


def test_drawn_mosaics_show_their_image_a_partner_of_its_class_and_two_others_seeded() -> None:
    images = torch.arange(6.0).view(6, 1, 1, 1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    state = torch.random.get_rng_state()
    mosaics = metrics.focus_mosaics(images, labels, torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not drawn from
    again = metrics.focus_mosaics(images, labels, torch.Generator().manual_seed(3))
    assert torch.equal(mosaics.indices, again.indices)
    assert torch.equal(mosaics.targets, labels)
    for i, (tiles, on) in enumerate(zip(mosaics.indices, mosaics.positions, strict=True)):
        assert on.sum() == 2 and i in tiles[on].tolist()
        assert (labels[tiles[on]] == labels[i]).all() and (labels[tiles[~on]] != labels[i]).all()
        assert len(set(tiles[on].tolist())) == (2 if (labels == labels[i]).sum() > 1 else 1)
        assert mosaics.images[i].flatten().tolist() == tiles.float().tolist()  # reading order: TL, TR, BL, BR
    assert mosaics.indices[5, mosaics.positions[5]].tolist() == [5, 5]  # class 2 has one image: it shows twice


def test_focus_mosaics_need_two_classes_and_given_tiles_need_their_classes() -> None:
    images = torch.zeros(3, 1, 2, 2)
    with pytest.raises(ValueError, match="at least two classes"):
        metrics.focus_mosaics(images, torch.tensor([4, 4, 4]))
    with pytest.raises(ValueError, match="need targets"):
        metrics.focus_mosaics(images, torch.tensor([0, 1, 1]), indices=torch.tensor([[0, 1, 2, 0]]))
