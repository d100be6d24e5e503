"""ROAD against pytorch-grad-cam's ROAD, XGrad-CAM's axioms where they hold by construction, baseline maps.

Parity tolerances:

- Imputation: both sides solve the same linear system in float64 (pytorch-grad-cam with SciPy's sparse
  LU, we with conjugate gradient to a relative residual of 1e-10; the systems here have condition numbers
  below 1e3, so the two solutions agree to ~1e-7 relative before rounding) and return float32; the
  measured difference is one float32 rounding step of the values (|x| < 5: 2.4e-7 at most,
  measured 1.2e-7), so the bound is 5e-7.
- ROAD scores: the imputed images differ by that much, and the models below change their logits by at
  most ~1e-5 for such a change (their weights are O(1), a few hundred inputs), measured 3e-8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cams import metrics
from cams.metrics.road import _keep_masks

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer  # noqa: E402
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

IMPUTATION_ATOL = 5e-7
SCORE_ATOL = 1e-5


def _small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes),
        ).eval()


def _smooth_maps(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Distinct-valued maps shaped like CAMs: coarse noise upsampled, plus a tiny tie-breaking ramp."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 4, 4, generator=gen)
    maps = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    ramp = torch.arange(height * width, dtype=torch.float32).view(height, width) * 1e-6
    return maps + ramp


# ------------------------------------------------------------------------------------------ imputation
@pytest.mark.parametrize(("height", "width", "removed"), [(8, 8, 0.5), (16, 13, 0.9), (32, 32, 0.3), (24, 24, 0.9)])
def test_imputation_matches_pytorch_grad_cams_sparse_solve(height: int, width: int, removed: float) -> None:
    gen = torch.Generator().manual_seed(height * width)
    x = torch.randn(2, 3, height, width, generator=gen)
    maps = _smooth_maps(2, height, width, seed=height)
    keep = maps < torch.quantile(maps.flatten(1), 1 - removed, dim=1).view(2, 1, 1)  # contiguous holes
    ours = metrics.noisy_linear_imputation(x, keep, noise=0.0)
    for i in range(2):
        reference = NoisyLinearImputer(noise=0.0)(x[i], keep[i].float())
        assert (ours[i] - reference).abs().max() <= IMPUTATION_ATOL


def test_kept_pixels_are_untouched_and_a_lone_hole_is_its_neighbours_weighted_mean() -> None:
    x = torch.randn(1, 2, 5, 5)
    keep = torch.ones(1, 5, 5, dtype=torch.bool)
    keep[0, 2, 2] = False
    out = metrics.noisy_linear_imputation(x, keep, noise=0.0)
    assert torch.equal(out[keep[:, None].expand_as(x)], x[keep[:, None].expand_as(x)])
    edge, diagonal = 1 / 6, 1 / 12
    window = x[0, :, 1:4, 1:4]
    weights = torch.tensor([[diagonal, edge, diagonal], [edge, 0.0, edge], [diagonal, edge, diagonal]])
    torch.testing.assert_close(out[0, :, 2, 2], (window * weights).sum(dim=(1, 2)))  # the weights sum to 1


def test_imputation_noise_is_seeded_on_its_own_generator() -> None:
    x, keep = torch.randn(1, 1, 6, 6), torch.rand(1, 6, 6) > 0.5
    state = torch.random.get_rng_state()
    a = metrics.noisy_linear_imputation(x, keep)
    b = metrics.noisy_linear_imputation(x, keep, generator=torch.Generator().manual_seed(0))
    c = metrics.noisy_linear_imputation(x, keep, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    quiet = metrics.noisy_linear_imputation(x, keep, noise=0.0)
    assert 0.003 < float((a - quiet)[~keep[:, None]].std()) < 0.03  # noise 0.01 on the imputed pixels only


def test_an_image_that_keeps_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="keeps no pixel"):
        metrics.noisy_linear_imputation(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ ROAD
def _reference_road(model, x, maps, targets, percentiles):
    def average(remove):
        scores = [
            PerturbationConfidenceMetric(remove(p, NoisyLinearImputer(noise=0.0)))(x, maps.numpy(), targets, model)
            for p in percentiles
        ]
        return np.mean(np.float32(scores), axis=0)

    morf, lerf = average(RemoveMostRelevantFirst), average(RemoveLeastRelevantFirst)
    return {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}


@pytest.mark.parametrize("softmax", [False, True])
def test_road_matches_pytorch_grad_cams_road_on_distinct_valued_maps(softmax: bool) -> None:
    model = _small_cnn()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    maps = _smooth_maps(3, 16, 16, seed=2)
    classes = [1, 3, 4]
    target = ClassifierOutputSoftmaxTarget if softmax else ClassifierOutputTarget
    percentiles = [10, 30, 50, 70, 90]
    reference = _reference_road(model, x, maps, [target(c) for c in classes], percentiles)
    ours = metrics.road(model, x, maps, targets=classes, percentiles=percentiles, noise=0.0, softmax=softmax)
    for key in ("morf", "lerf", "combined"):
        np.testing.assert_allclose(ours[key].numpy(), reference[key], atol=SCORE_ATOL, rtol=0)


def test_road_keeps_the_asked_share_of_pixels_where_the_reference_threshold_keeps_none() -> None:
    maps = torch.zeros(1, 10, 10)
    maps[0, :3] = torch.linspace(0.1, 1.0, 30).view(3, 10)  # 70 % of the map is exactly zero
    kept = _keep_masks(maps, [10, 50, 70, 90], most_relevant_first=True).flatten(2).sum(dim=2)[:, 0]
    assert kept.tolist() == [10, 50, 70, 90]  # ceil(p / 100 * 99)
    assert not bool((maps < np.percentile(maps.numpy(), 50)).any())  # the reference's threshold: none kept
    lerf = _keep_masks(maps, [20], most_relevant_first=False)[0, 0]
    assert bool(lerf[1:3].all()) and int(lerf.sum()) == 20  # the 20 largest values


def test_road_scores_a_map_on_the_evidence_above_a_map_beside_it() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Flatten(), nn.Linear(64, 2, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.zero_()
        evidence = torch.zeros(8, 8)
        evidence[1:4, 1:4] = 1.0
        model[2].weight[0] = evidence.flatten()  # class 0 = the ink in the top-left square
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1:4, 1:4] = 1.0
    on = evidence[None] + torch.linspace(0, 1e-3, 64).view(1, 8, 8)
    beside = torch.flip(on, dims=(1, 2))
    good = metrics.road(model, x, on, targets=0, noise=0.0, softmax=False)
    bad = metrics.road(model, x, beside, targets=0, noise=0.0, softmax=False)
    assert good["morf"] < bad["morf"] and good["lerf"] > bad["lerf"] and good["combined"] > bad["combined"]


def test_road_leaves_the_model_and_the_global_rng_as_found() -> None:
    model = _small_cnn().train()
    x, maps = torch.randn(2, 3, 12, 12), torch.rand(2, 12, 12)
    state = torch.random.get_rng_state()  # after drawing x and maps
    first = metrics.road(model, x, maps, percentiles=[50])
    again = metrics.road(model, x, maps, percentiles=[50])
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("bad", [[], [0], [100], [50, 120]])
def test_road_rejects_percentiles_outside_0_100(bad) -> None:
    with pytest.raises(ValueError, match="percentiles"):
        metrics.road(_small_cnn(), torch.zeros(1, 3, 8, 8), torch.rand(1, 8, 8), percentiles=bad)


# ---------------------------------------------------------------------------------------------- axioms
class GapNet(nn.Module):
    """ReLU convolutions, global average pooling, a linear classifier: linear in the last feature map."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(3)
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU()
            )
            self.classifier = nn.Linear(6, 4, bias=bias)
        if bias:
            with torch.no_grad():
                self.classifier.bias.copy_(torch.tensor([0.5, -0.25, 1.0, 0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "xgradcam"])
def test_gradcam_and_xgradcam_satisfy_both_axioms_on_a_relu_gap_net_without_bias(method: str) -> None:
    # S = sum_k w_k mean(A_k): dS/dA_k = w_k / hw everywhere, so both weigh channel k by w_k / hw and the map
    # sums to S; removing channel k loses w_k mean(A_k), its contribution. Float32 sums of ~400 terms: ~1e-6.
    model = GapNet(bias=False)
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    errors = metrics.axioms(model, x, "features", method=method)
    assert errors["conservation"].max() < 1e-5
    assert errors["sensitivity"].max() < 1e-5


def test_a_classifier_bias_breaks_conservation_by_the_bias_over_the_score() -> None:
    model = GapNet(bias=True)
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    classes = logits.argmax(dim=1)
    scores = logits[torch.arange(4), classes]
    expected = model.classifier.bias[classes].detach().abs() / scores.abs()
    errors = metrics.axioms(model, x, "features", method="xgradcam")
    torch.testing.assert_close(errors["conservation"], expected, atol=1e-5, rtol=1e-4)
    assert errors["sensitivity"].max() < 1e-5  # the bias does not depend on any channel


def test_gradcam_plus_plus_weights_do_not_conserve_the_score() -> None:
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    errors = metrics.axioms(GapNet(bias=False), x, "features", method="gradcam++")
    assert errors["conservation"].min() > 0.05


def test_axioms_leave_the_model_as_found_and_refuse_projecting_methods() -> None:
    model, x = GapNet(bias=False).train(), torch.randn(2, 3, 8, 8)
    state = torch.random.get_rng_state()
    metrics.axioms(model, x, model.features, method="gradcam")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match="principal component"):
        metrics.axioms(model, x, "features", method="eigencam")


def test_conservation_and_sensitivity_are_nan_where_undefined() -> None:
    weighted = torch.ones(2, 2, 1, 1)
    assert torch.isnan(metrics.conservation(weighted, torch.tensor([0.0, 2.0]))).tolist() == [True, False]
    assert torch.isnan(metrics.sensitivity(weighted, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))).tolist() == [True, False]


# -------------------------------------------------------------------------------------------- baselines
def test_the_centre_map_wins_the_pointing_game_on_centred_objects_only() -> None:
    maps = metrics.centre_map((2, 32, 32))
    assert torch.equal(maps[0], maps[1]) and float(maps.max()) == 1.0 and float(maps.min()) > 0
    assert torch.equal(maps[0], maps[0].flip(0)) and torch.equal(maps[0], maps[0].flip(1))
    boxes = torch.tensor([[12, 12, 20, 20], [0, 0, 8, 8]])
    assert metrics.pointing_game(maps, boxes=boxes, tolerance=0).tolist() == [1.0, 0.0]


def test_the_random_map_is_seeded_smooth_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = metrics.random_map((3, 28, 28), generator=torch.Generator().manual_seed(5))
    b = metrics.random_map((3, 28, 28), generator=torch.Generator().manual_seed(5))
    c = metrics.random_map((3, 28, 28), generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.flatten(1).min(1).values.eq(0).all() and a.flatten(1).max(1).values.eq(1).all()
    assert (a[:, 1:] - a[:, :-1]).abs().max() < 0.3  # 7 x 7 noise upsampled: no pixel-to-pixel jumps
