"""Quantus' complexity family in ``cams.metrics``: sparseness (Gini index), complexity (entropy), effective
complexity. Each against Quantus 0.6.0 on the same maps, on a case computed by hand in float64, and on the values
a constant, an all-zero and a one-pixel map are documented to score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cams import metrics

quantus = pytest.importorskip("quantus")

PARITY_ATOL = 1e-5


def _cam_like(batch: int, size: int, seed: int, relu: bool = True) -> torch.Tensor:
    """Maps like upsampled CAMs, each peaking at exactly 1; with ``relu`` a third of each is exactly zero."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, 7, 7, generator=gen)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    if relu:
        maps = (maps - maps.flatten(1).quantile(0.33, dim=1).view(-1, 1, 1)).clamp_min(0)
    return maps / maps.abs().amax(dim=(1, 2), keepdim=True)


def _quantus(metric, maps: torch.Tensor) -> np.ndarray:
    batch, size = maps.shape[0], maps.shape[-1]
    x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
    scores = metric(model=None, x_batch=x, y_batch=np.zeros(batch, dtype=int), a_batch=maps[:, None].numpy(),
                    channel_first=True)  # fmt: skip
    return np.asarray(scores, dtype=np.float64)


MAPS = _cam_like(8, 56, seed=0)
PER_MAP = {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}}  # Quantus normalising each map by its own peak


# ------------------------------------------------------------------------------------------ parity
def test_sparseness_with_quantus_offset_equals_quantus_sparseness() -> None:
    ours = metrics.sparseness(MAPS, epsilon=1e-7).double().numpy()
    np.testing.assert_allclose(ours, _quantus(quantus.Sparseness(disable_warnings=True), MAPS), atol=PARITY_ATOL)


def test_sparseness_follows_the_paper_and_differs_from_quantus_only_by_its_offset() -> None:
    sparse = torch.zeros(2, 56, 56)
    sparse[:, 20:24, 30:34] = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1)) + 0.5
    sparse = sparse / sparse.amax(dim=(1, 2), keepdim=True)
    paper = metrics.sparseness(sparse).double().numpy()
    reference = _quantus(quantus.Sparseness(disable_warnings=True), sparse)
    # 16 non-zero pixels of 3136: Quantus' 1e-7 on every pixel lowers the index by about n 1e-7 / sum(a)
    shift = 56 * 56 * 1e-7 / sparse.sum(dim=(1, 2)).double().numpy()
    np.testing.assert_allclose(paper - reference, paper * shift, rtol=0.05)
    assert (paper - reference > PARITY_ATOL).all()


def test_complexity_equals_quantus_complexity() -> None:
    ours = metrics.complexity(MAPS).double().numpy()
    np.testing.assert_allclose(ours, _quantus(quantus.Complexity(disable_warnings=True), MAPS), atol=PARITY_ATOL)


def test_effective_complexity_equals_quantus_where_every_map_peaks_alike_or_each_is_normalised_alone() -> None:
    ours = metrics.effective_complexity(MAPS).double().numpy()
    np.testing.assert_array_equal(ours, _quantus(quantus.EffectiveComplexity(disable_warnings=True), MAPS))
    scaled = MAPS * torch.linspace(0.01, 1, len(MAPS)).view(-1, 1, 1)  # peaks differ: Quantus' batch max differs
    ours = metrics.effective_complexity(scaled, eps=1e-3).double().numpy()
    per_map = quantus.EffectiveComplexity(eps=1e-3, disable_warnings=True, **PER_MAP)
    np.testing.assert_array_equal(ours, _quantus(per_map, scaled))
    batch_max = _quantus(quantus.EffectiveComplexity(eps=1e-3, disable_warnings=True), scaled)
    assert (batch_max[:3] < ours[:3]).all()  # divided by the batch's peak, small maps lose their faint pixels


def test_signed_maps_are_scored_by_their_magnitudes_as_quantus_abs_true() -> None:
    signed = _cam_like(4, 32, seed=5, relu=False)
    for name, peer in (("sparseness", quantus.Sparseness), ("complexity", quantus.Complexity)):
        options = {"epsilon": 1e-7} if name == "sparseness" else {}
        ours = getattr(metrics, name)(signed, **options).double().numpy()
        np.testing.assert_allclose(ours, _quantus(peer(disable_warnings=True, **PER_MAP), signed), atol=PARITY_ATOL)


# ------------------------------------------------------------------------------- by hand, in float64
def test_the_gini_index_of_four_values_computed_by_hand() -> None:
    maps = torch.tensor([[[3.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    # sorted 0, 0, 1, 3 with weights 2i - n - 1 = -3, -1, 1, 3: (1 + 9) / (4 * 4)
    assert metrics.sparseness(maps).item() == pytest.approx(10 / 16)


def test_the_entropy_of_three_values_computed_by_hand() -> None:
    maps = torch.tensor([[[1.0, 1.0, 2.0, 0.0]]], dtype=torch.float64)
    assert metrics.complexity(maps).item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.5)))


def test_effective_complexity_counts_the_pixels_above_eps_of_the_peak() -> None:
    maps = torch.tensor([[[4.0, -2.0], [4e-5, 3e-5]]], dtype=torch.float64)  # |-2| counts; 4e-5 / 4 = 1e-5 does not
    assert metrics.effective_complexity(maps).item() == 2.0
    assert metrics.effective_complexity(maps, eps=0.0).item() == 4.0


# ------------------------------------------------------------------------------------------ invariants
def test_a_constant_map_scores_zero_sparseness_ln_n_complexity_and_n_effective_complexity() -> None:
    for constant in (0.4, -2.0):
        maps = torch.full((1, 8, 8), constant)
        assert metrics.sparseness(maps).item() == 0.0
        assert metrics.complexity(maps).item() == pytest.approx(math.log(64))
        assert metrics.effective_complexity(maps).item() == 64.0


def test_an_all_zero_map_scores_as_a_constant_one_except_effective_complexity_zero() -> None:
    maps = torch.zeros(1, 8, 8)
    assert metrics.sparseness(maps).item() == 0.0
    assert metrics.complexity(maps).item() == pytest.approx(math.log(64))  # Quantus: nan
    assert metrics.effective_complexity(maps).item() == 0.0


def test_a_one_pixel_map_is_the_sparsest_and_least_complex() -> None:
    maps = torch.zeros(1, 8, 8)
    maps[0, 3, 5] = 0.2
    assert metrics.sparseness(maps).item() == pytest.approx(1 - 1 / 64)
    assert metrics.complexity(maps).item() == 0.0
    assert metrics.effective_complexity(maps).item() == 1.0


def test_each_map_is_scored_alone_whatever_the_batch_beside_it_and_volumes_too() -> None:
    for name in ("sparseness", "complexity", "effective_complexity"):
        function = getattr(metrics, name)
        alone = torch.cat([function(MAPS[i : i + 1]) for i in range(len(MAPS))])
        scaled = MAPS * torch.linspace(0.1, 3, len(MAPS)).view(-1, 1, 1)  # each map by its own factor
        assert torch.allclose(function(scaled), alone, rtol=1e-6)
        assert function(MAPS.view(2, 4, 56, 56)).shape == (2,)  # volumes (B, D, H, W)


def test_bad_options_and_nan_maps_are_errors() -> None:
    with pytest.raises(ValueError, match="eps must be"):
        metrics.effective_complexity(MAPS, eps=1.5)
    with pytest.raises(ValueError, match="epsilon must be"):
        metrics.sparseness(MAPS, epsilon=-1.0)
    with pytest.raises(ValueError, match="nan"):
        metrics.complexity(torch.full((1, 2, 2), math.nan))
