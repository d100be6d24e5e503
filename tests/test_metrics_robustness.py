"""``cams.metrics`` robustness family: max- and average sensitivity and the local Lipschitz estimate, against
Quantus 0.6.0 fed the very same noise (its ``explain_func`` calls :class:`cams.CamEngine`), a hand-computed case
and the invariants."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import quantus
import torch
from torch import nn

from cams import CamEngine, metrics
from cams.metrics.robustness import explanation_changes

LAYER = "2"


def _net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
        ).eval()  # fmt: skip


def _explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    maps = CamEngine(model, LAYER)(x, methods="gradcam", targets=torch.as_tensor(np.asarray(targets)))
    return maps["gradcam"][:, None].numpy()


@pytest.fixture
def case() -> dict:
    model = _net()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    return {"model": model, "x": x, "y": y, "quantus": dict(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=_explain(model, x.numpy(), y.numpy()),
        explain_func=_explain, device="cpu")}  # fmt: skip


def _feed(monkeypatch: pytest.MonkeyPatch, name: str, noise: torch.Tensor) -> None:
    """Quantus draws ``np.random.<name>(size=(B, C H W))`` once per sample: hand it ``noise[n]`` instead."""
    calls: Iterator[int] = iter(range(len(noise)))
    monkeypatch.setattr(np.random, name, lambda *a, size=None, **k: noise[next(calls)].double().numpy().reshape(size))


SAMPLES = 6


def _uniform(shape: torch.Size, bound: float = 0.2) -> torch.Tensor:
    return torch.rand(SAMPLES, *shape, generator=torch.Generator().manual_seed(2)) * (2 * bound) - bound


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [(quantus.MaxSensitivity, metrics.max_sensitivity), (quantus.AvgSensitivity, metrics.avg_sensitivity)],
)
def test_sensitivity_equals_quantus_fed_the_same_uniform_noise(
    case: dict, monkeypatch: pytest.MonkeyPatch, theirs: type, ours: Callable
) -> None:
    noise = _uniform(case["x"].shape)
    _feed(monkeypatch, "uniform", noise)
    expected = theirs(nr_samples=SAMPLES, disable_warnings=True)(**case["quantus"])
    got = ours(case["model"], case["x"], LAYER, targets=case["y"], nr_samples=SAMPLES, noise=noise)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_local_lipschitz_equals_quantus_fed_the_same_gaussian_noise(
    case: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    noise = torch.randn(SAMPLES, *case["x"].shape, generator=torch.Generator().manual_seed(3)) * 0.1
    _feed(monkeypatch, "normal", noise)
    expected = quantus.LocalLipschitzEstimate(nr_samples=SAMPLES, disable_warnings=True)(**case["quantus"])
    got = metrics.local_lipschitz(case["model"], case["x"], LAYER, targets=case["y"], nr_samples=SAMPLES, noise=noise)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_an_image_whose_prediction_a_copy_changes_is_nan_as_in_quantus(
    case: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    noise = _uniform(case["x"].shape, bound=2.0)  # large enough to change some predictions
    _feed(monkeypatch, "uniform", noise)
    expected = quantus.MaxSensitivity(nr_samples=SAMPLES, lower_bound=2.0, return_nan_when_prediction_changes=True,
                                      disable_warnings=True)(**case["quantus"])  # fmt: skip
    assert np.isnan(expected).any() and not np.isnan(expected).all()  # the case has both kinds of images
    with pytest.warns(RuntimeWarning, match="no defined value for image"):
        got = metrics.max_sensitivity(case["model"], case["x"], LAYER, targets=case["y"], nr_samples=SAMPLES,
                                      noise=noise, nan_when_prediction_changes=True)  # fmt: skip
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_changes_of_a_map_that_is_the_image_itself_by_hand() -> None:
    x = torch.tensor([[[[3.0, 4.0]]]], dtype=torch.float64)  # (1, 1, 1, 2): the map is the image, norm 5

    def explain(images: torch.Tensor, targets: object = None) -> dict[str, torch.Tensor]:
        return {"identity": images[:, 0]}

    deltas = torch.tensor([[[[[0.0, 1.0]]]], [[[[2.0, 2.0]]]]], dtype=torch.float64)  # (N=2, B=1, 1, 1, 2)
    maps = {"identity": x[:, 0]}
    relative = explanation_changes(explain, x, maps, lambda: iter(deltas))["identity"]
    assert relative[:, 0].tolist() == pytest.approx([1 / 5, 8**0.5 / 5], abs=1e-15)
    absolute = explanation_changes(explain, x, maps, lambda: iter(deltas), relative=False)["identity"]
    assert absolute[:, 0].tolist() == pytest.approx([1.0, 8**0.5], abs=1e-15)  # Yeh et al.'s, without the norm
    lipschitz = explanation_changes(explain, x, maps, lambda: iter(deltas), lipschitz=True)["identity"]
    assert lipschitz[:, 0].tolist() == pytest.approx([1 / (1 + 1e-10), 1 / (1 + 1e-10 / 8**0.5)], abs=1e-12)


def test_the_draws_do_not_depend_on_how_many_copies_go_into_one_engine_call(case: dict) -> None:
    one = metrics.avg_sensitivity(case["model"], case["x"], LAYER, nr_samples=5, batch_size=4)
    all_at_once = metrics.avg_sensitivity(case["model"], case["x"], LAYER, nr_samples=5, batch_size=None)
    torch.testing.assert_close(one, all_at_once, atol=1e-6, rtol=0)
    again = metrics.avg_sensitivity(case["model"], case["x"], LAYER, nr_samples=5,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(one, again, atol=1e-6, rtol=0)  # the default generator is seeded with 0


def test_max_is_at_least_the_average_and_the_model_and_global_rng_are_left_alone(case: dict) -> None:
    rng, weights = torch.random.get_rng_state(), [p.clone() for p in case["model"].parameters()]
    most = metrics.max_sensitivity(case["model"], case["x"], LAYER, nr_samples=5)
    mean = metrics.avg_sensitivity(case["model"], case["x"], LAYER, nr_samples=5)
    assert bool((most >= mean - 1e-7).all())
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(weights, case["model"].parameters(), strict=True))


def test_no_noise_means_no_change(case: dict) -> None:
    zeros = torch.zeros(3, *case["x"].shape)
    assert metrics.max_sensitivity(case["model"], case["x"], LAYER, nr_samples=3, noise=zeros).abs().max() < 1e-6


def test_bad_arguments_are_refused_with_their_name(case: dict) -> None:
    with pytest.raises(ValueError, match="nr_samples must be a positive int"):
        metrics.max_sensitivity(case["model"], case["x"], LAYER, nr_samples=0)
    with pytest.raises(ValueError, match=r"noise must be \(nr_samples, \*x.shape\)"):
        metrics.max_sensitivity(case["model"], case["x"], LAYER, nr_samples=2, noise=torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"upper_bound=0\.1 must be larger than lower_bound=0\.2"):
        metrics.avg_sensitivity(case["model"], case["x"], LAYER, upper_bound=0.1)
