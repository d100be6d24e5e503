"""The composite measures in ``cams.metrics``: ARCC (against pytorch-grad-cam 1.5.7's ``ARCC`` and its three terms,
with the same explainer and noise-free ROAD on both sides) and ADCC (Poppi et al. 2021, computed by hand), with
their shared terms, coherency and Poppi's complexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cams import metrics

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
import pytorch_grad_cam.metrics.road as reference_road  # noqa: E402
from pytorch_grad_cam.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency  # noqa: E402
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADCombined  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

PARITY_ATOL = 1e-5


def _evidence_model() -> nn.Module:
    """Class 0 scores the images' mean brightness, class 1 its opposite, classes 2 and 3 nothing."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0], model[0].weight[1] = 4 / 3, -4 / 3
    return model


def _explain(images: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a CAM method: each image's channel mean, min-max scaled, values distinct."""
    mean = images.detach().mean(dim=1)
    flat = mean.flatten(1)
    low, high = flat.min(dim=1).values.view(-1, 1, 1), flat.max(dim=1).values.view(-1, 1, 1)
    return (mean - low) / (high - low)


def _base_method(input_tensor: torch.Tensor, targets: object) -> np.ndarray:
    """The same explainer as pytorch-grad-cam's ``base_method``: numpy maps (B, H, W)."""
    return _explain(input_tensor).numpy()


@pytest.fixture
def noise_free_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytorch-grad-cam's ROAD with its imputation noise (drawn from the global RNG) set to 0."""
    class NoiseFree(NoisyLinearImputer):
        def __init__(self, noise: float = 0.0) -> None:
            super().__init__(noise=0.0)

    monkeypatch.setattr(reference_road, "NoisyLinearImputer", NoiseFree)


def _inputs() -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[int]]:
    """Maps of bright pixels: the evidence for class 0 (images 0 and 1), against class 1 (image 2)."""
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return _evidence_model(), x, _explain(x), [0, 0, 1]


# ------------------------------------------------------------------------------------------- ARCC
def test_arcc_and_its_terms_equal_pytorch_grad_cams_arcc(noise_free_reference: None) -> None:
    model, x, maps, classes = _inputs()
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    ours = metrics.arcc(model, x, maps, _explain, targets=classes, noise=0.0)
    reference = ARCC(base_method=_base_method)(x, maps.numpy(), targets, model)
    np.testing.assert_allclose(ours["arcc"].numpy(), reference, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(ours["complexity"].numpy(), Complexity()(maps.numpy()), atol=PARITY_ATOL)
    coherency = Coherency()(x, maps.numpy(), targets, model, _base_method)
    np.testing.assert_allclose(ours["coherency"].numpy(), coherency, atol=PARITY_ATOL)
    road = (ROADCombined(percentiles=[20, 40, 60, 80])(x, maps.numpy(), targets, model) * 2).clip(0, 1)
    np.testing.assert_allclose(ours["road"].numpy(), road, atol=PARITY_ATOL)
    assert (ours["arcc"][:2] > 0.5).all() and ours["arcc"][2] == 0  # a map on the counter-evidence scores 0


def test_arcc_is_the_harmonic_mean_of_its_three_terms() -> None:
    model, x, maps, classes = _inputs()
    scores = metrics.arcc(model, x, maps, _explain, targets=classes, noise=0.0)
    terms = torch.stack([scores["coherency"], 1 - scores["complexity"], scores["road"]]).double()
    assert torch.allclose(scores["arcc"].double(), 3 / (1 / terms).sum(dim=0), atol=1e-6, equal_nan=True)


def test_arcc_noise_is_drawn_from_its_own_generator_and_the_model_is_left_as_found() -> None:
    model, x, maps, classes = _inputs()
    state = torch.random.get_rng_state()
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    first = metrics.arcc(model, x, maps, _explain, targets=classes, generator=torch.Generator().manual_seed(5))
    again = metrics.arcc(model, x, maps, _explain, targets=classes, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first["arcc"], again["arcc"])
    assert torch.equal(torch.random.get_rng_state(), state) and model.training
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, model.parameters(), strict=True))


# ------------------------------------------------------------------------------------------- ADCC
def _linear_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logits (sum of the image, 0) of a 1 x 2 x 2 image of ones; a map on its left column."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    maps = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    return model, torch.ones(1, 1, 2, 2, dtype=torch.float64), maps


def test_adcc_of_a_linear_model_computed_by_hand() -> None:
    model, x, maps = _linear_case()
    scores = metrics.adcc(model, x, maps, lambda images: maps.expand(len(images), -1, -1))  # the same map again
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731 -- softmax of (z, 0)
    drop = (sigmoid(4) - sigmoid(2)) / sigmoid(4)  # the image sums to 4, its left column to 2
    assert scores["average_drop"].item() == pytest.approx(drop, abs=1e-6)
    assert scores["complexity"].item() == 0.5 and scores["coherency"].item() == 1.0
    assert scores["adcc"].item() == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / (1 - drop)), abs=1e-6)


def test_adcc_and_arcc_are_zero_when_a_term_is_zero() -> None:
    model, x, _ = _linear_case()
    everywhere = torch.ones(1, 2, 2, dtype=torch.float64)  # complexity 1: nothing left out
    explain = lambda images: everywhere.expand(len(images), -1, -1)  # noqa: E731
    assert metrics.adcc(model, x, everywhere, explain)["adcc"].item() == 0.0
    assert metrics.arcc(model, x, everywhere, explain, noise=0.0, percentiles=[50])["arcc"].item() == 0.0


# ------------------------------------------------------------------------------------------ terms
def test_coherency_is_one_for_a_rescaled_map_zero_for_an_inverted_one_and_half_for_a_constant_one() -> None:
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(metrics.coherency(maps, 0.5 * maps + 0.1), torch.ones(2))
    assert torch.allclose(metrics.coherency(maps, 1 - maps), torch.zeros(2), atol=1e-7)
    constant = torch.full((2, 8, 8), 0.3)
    assert torch.equal(metrics.coherency(maps, constant), torch.full((2,), 0.5))
    reference = (batch_pearson_coherency(constant.numpy(), maps.numpy()) + 1) / 2  # its 1e-8: the same 0.5
    np.testing.assert_allclose(reference, 0.5)


def test_poppi_complexity_is_the_mean_magnitude() -> None:
    maps = torch.tensor([[[1.0, 0.0], [0.25, 0.75]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    assert metrics.l1_complexity(maps).tolist() == [0.5, 0.0]


def test_explain_must_give_one_map_per_image() -> None:
    model, x, maps, classes = _inputs()
    with pytest.raises(ValueError, match="one map"):
        metrics.adcc(model, x, maps, lambda images: maps[:1], targets=classes)
