"""``cams.metrics`` randomisation family: MPRT, Smooth MPRT, Efficient MPRT and the random logit test, each against
Quantus 0.6.0 on the same maps (its ``explain_func`` calls :class:`cams.CamEngine`), a hand-computed case and the
invariants (the model and the global RNG left as found)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import quantus
import torch
from quantus.functions.complexity_func import discrete_entropy as quantus_entropy
from quantus.helpers.model.pytorch_model import PyTorchModel
from skimage.metrics import structural_similarity
from torch import nn

from cams import CamEngine, metrics
from cams.metrics.randomisation import blocks, randomised_models

LAYER = "3"


def _net() -> nn.Module:
    """A small CNN with BatchNorm, randomly initialised from its own seed (the global RNG is left alone)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
        ).eval()  # fmt: skip


def _images(n: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
    """Quantus' explain_func: the engine's Grad-CAM at LAYER, (B, 1, H, W)."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    maps = CamEngine(model, LAYER)(x, methods="gradcam", targets=torch.as_tensor(np.asarray(targets)))
    return maps["gradcam"][:, None].numpy()


@pytest.fixture
def case() -> dict:
    model, x = _net(), _images()
    y = model(x).argmax(1)
    return {"model": model, "x": x, "y": y, "quantus": dict(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=_explain(model, x.numpy(), y.numpy()),
        explain_func=_explain, device="cpu")}  # fmt: skip


@pytest.fixture(autouse=True)
def _quantus_global_rng() -> Iterator[None]:
    with torch.random.fork_rng():  # Quantus seeds torch's and numpy's global generators; ours never do
        state = np.random.get_state()
        yield
        np.random.set_state(state)


# ------------------------------------------------------------------------------------------------------ MPRT
@pytest.mark.parametrize("order", ["top_down", "bottom_up", "independent"])
def test_mprt_equals_quantus_mprt_layer_by_layer(case: dict, order: str) -> None:
    theirs = quantus.MPRT(layer_order=order, disable_warnings=True)(**case["quantus"])
    ours = metrics.mprt(case["model"], case["x"], LAYER, targets=case["y"], order=order)
    assert list(theirs) == ["original", *ours]
    for layer, values in ours.items():
        np.testing.assert_allclose(values.numpy(), theirs[layer], atol=1e-5)


def test_mprt_mean_follows_the_paper_not_quantus_which_averages_its_original_entry_in(case: dict) -> None:
    theirs = quantus.MPRT(return_average_correlation=True, disable_warnings=True)(**case["quantus"])
    ours = metrics.mprt(case["model"], case["x"], LAYER, targets=case["y"])
    steps = torch.stack(list(ours.values())).double()
    quantus_way = (1.0 + steps.sum(dim=0)) / (len(steps) + 1)  # Quantus skips a key "orig" that does not exist
    np.testing.assert_allclose(theirs, quantus_way.numpy(), atol=1e-5)
    assert not np.allclose(theirs, steps.mean(dim=0).numpy(), atol=1e-3)


def test_randomised_models_reinitialise_every_layer_as_quantus_random_layer_generator() -> None:
    model = _net()
    with torch.random.fork_rng():
        theirs = [(name, copy.deepcopy(m.state_dict()))
                  for name, m in PyTorchModel(model).get_random_layer_generator(order="top_down", seed=42)]  # fmt: skip
    ours = [(name, copy.deepcopy(m.state_dict())) for name, m in randomised_models(model, "top_down", 42)]
    assert [n for n, _ in ours] == [n for n, _ in theirs] == ["7", "3", "1", "0"]
    for (_, a), (_, b) in zip(ours, theirs, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


class _WithSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net, self.spare = _net(), nn.Linear(3, 3)  # the spare layer is never run by the forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_randomising_a_module_the_forward_never_runs_leaves_every_map_as_it_was() -> None:
    scores = metrics.mprt(_WithSpare(), _images(), f"net.{LAYER}", modules=["spare"])
    assert scores["spare"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_mprt_by_blocks_ends_on_the_model_every_layer_randomises(case: dict) -> None:
    assert blocks(case["model"]) == ["0", "1", "3", "7"]
    fine = metrics.mprt(case["model"], case["x"], LAYER, targets=case["y"])
    coarse = metrics.mprt(case["model"], case["x"], LAYER, targets=case["y"], modules="blocks")
    torch.testing.assert_close(list(coarse.values())[-1], list(fine.values())[-1])  # all layers random in both


def test_mprt_leaves_the_model_and_the_global_rng_as_found(case: dict) -> None:
    model, before = case["model"], copy.deepcopy(case["model"].state_dict())
    rng = torch.random.get_rng_state()
    metrics.mprt(model, case["x"], LAYER, order="independent")
    metrics.smooth_mprt(model, case["x"], LAYER, nr_samples=3)
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_an_order_that_does_not_exist_is_refused_with_the_choices(case: dict) -> None:
    with pytest.raises(ValueError, match=r"order must be one of .*'top_down'.*did you mean 'top_down'"):
        metrics.mprt(case["model"], case["x"], LAYER, order="top-down")


# ------------------------------------------------------------------------------------------------ Smooth MPRT
def test_smooth_mprt_equals_quantus_fed_the_same_noise(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = 4
    noise = torch.randn(samples - 1, *case["x"].shape, generator=torch.Generator().manual_seed(5))
    calls = iter(range(10**6))
    # Quantus draws np.random.randn per copy for every model; hand it ours, in order, for each model
    monkeypatch.setattr(np.random, "randn", lambda *shape: noise[next(calls) % (samples - 1)].double().numpy())
    # and it calls quantus.explain, not its explain_func (a known defect): make that the engine too
    monkeypatch.setattr(quantus, "explain", _explain)
    theirs = quantus.SmoothMPRT(nr_samples=samples, disable_warnings=True)(**dict(case["quantus"], a_batch=None))
    ours = metrics.smooth_mprt(case["model"], case["x"], LAYER, targets=case["y"], nr_samples=samples, noise=noise)
    assert list(theirs) == ["original", *ours]
    for layer, values in ours.items():
        np.testing.assert_allclose(values.numpy(), theirs[layer], atol=1e-5)


def test_smooth_mprt_of_one_sample_is_mprt(case: dict) -> None:
    plain = metrics.mprt(case["model"], case["x"], LAYER, order="bottom_up")
    smooth = metrics.smooth_mprt(case["model"], case["x"], LAYER, nr_samples=1)
    assert all(torch.equal(plain[k], smooth[k]) for k in plain)


def test_smooth_mprt_noise_comes_from_its_generator_whatever_the_batch_size(case: dict) -> None:
    a = metrics.smooth_mprt(case["model"], case["x"], LAYER, nr_samples=5, batch_size=4, modules="blocks")
    b = metrics.smooth_mprt(case["model"], case["x"], LAYER, nr_samples=5, batch_size=64, modules="blocks")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------- Efficient MPRT
def test_efficient_mprt_equals_quantus(case: dict) -> None:
    theirs = quantus.EfficientMPRT(disable_warnings=True)(**case["quantus"])
    ours = metrics.efficient_mprt(case["model"], case["x"], LAYER, targets=case["y"])
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_discrete_entropy_bins_as_numpy_histogram_with_ties_and_constant_maps() -> None:
    generator = torch.Generator().manual_seed(3)
    maps = torch.cat([
        torch.rand(3, 20, 20, generator=generator),
        (torch.rand(2, 20, 20, generator=generator) * 7).floor() / 7,  # many values exactly on bin edges
        torch.full((1, 20, 20), 0.25),
    ])  # fmt: skip
    for bins in (2, 10, 100):
        expected = [quantus_entropy(a=m[None].numpy(), x=m[None].numpy(), n_bins=bins) for m in maps]
        np.testing.assert_allclose(metrics.discrete_entropy(maps, bins).numpy(), expected, atol=1e-12)


def test_discrete_entropy_of_a_map_split_evenly_over_four_bins_is_log_four() -> None:
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]], dtype=torch.float64)
    assert metrics.discrete_entropy(maps, n_bins=4).item() == pytest.approx(np.log(4), abs=1e-15)
    assert metrics.discrete_entropy(maps, n_bins=1).item() == 0.0


# ------------------------------------------------------------------------------------------------ random logit
def _off_classes(y: torch.Tensor, classes: int, seed: int = 42) -> torch.Tensor:
    """The other classes Quantus' RandomLogit draws: np.random.seed(seed), randint(0, K - 1), the others in order."""
    state = np.random.get_state()
    np.random.seed(seed)
    draw = torch.from_numpy(np.random.randint(0, classes - 1, len(y)))
    np.random.set_state(state)
    return draw + (draw >= y).long()


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """scikit-image's 2-D SSIM of each pair, the data range that of both maps together (as Quantus' ssim)."""
    ranges = [float(torch.cat([p, q]).max() - torch.cat([p, q]).min()) for p, q in zip(a, b, strict=True)]
    return [structural_similarity(p.numpy(), q.numpy(), data_range=r) for p, q, r in zip(a, b, ranges, strict=True)]


def test_random_logit_with_flattened_ssim_equals_quantus(case: dict) -> None:
    theirs = quantus.RandomLogit(num_classes=5, disable_warnings=True)(**case["quantus"])
    off = _off_classes(case["y"], 5)
    ours = metrics.random_logit(case["model"], case["x"], LAYER, targets=case["y"], off_classes=off, flat=True)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
    given = metrics.random_logit(case["model"], case["x"], LAYER, targets=case["y"], off_classes=off, flat=True,
                                 maps=torch.from_numpy(case["quantus"]["a_batch"][:, 0]))  # Quantus' a_batch
    torch.testing.assert_close(given, ours)


def test_random_logit_follows_the_paper_with_the_ssim_of_the_2d_maps(case: dict) -> None:
    off = _off_classes(case["y"], 5)
    ours = metrics.random_logit(case["model"], case["x"], LAYER, targets=case["y"], off_classes=off)
    engine = CamEngine(case["model"], LAYER)
    a, b = engine(case["x"], targets=case["y"])["gradcam"], engine(case["x"], targets=off)["gradcam"]
    np.testing.assert_allclose(ours.numpy(), _skimage_ssim(a.double(), b.double()), atol=1e-5)
    flat = metrics.random_logit(case["model"], case["x"], LAYER, targets=case["y"], off_classes=off, flat=True)
    assert not torch.allclose(ours, flat, atol=1e-3)  # Quantus' windows run across rows: another number


def test_random_logit_draws_another_class_for_every_image_from_its_generator(case: dict) -> None:
    first = metrics.random_logit(case["model"], case["x"], LAYER, generator=torch.Generator().manual_seed(9))
    again = metrics.random_logit(case["model"], case["x"], LAYER, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, again)
    with pytest.raises(ValueError, match="must differ from the explained class"):
        metrics.random_logit(case["model"], case["x"], LAYER, targets=case["y"], off_classes=case["y"])


def test_ssim_equals_skimage_and_a_shifted_window_by_hand() -> None:
    generator = torch.Generator().manual_seed(4)
    a, b = (torch.rand(3, 12, 10, generator=generator, dtype=torch.float64) for _ in range(2))
    np.testing.assert_allclose(metrics.ssim(a, b).numpy(), _skimage_ssim(a, b), atol=1e-12)
    # one 7 x 7 window, b = a + d: the variances and the covariance are alike, so SSIM = (2 mu_a mu_b + C1) /
    # (mu_a^2 + mu_b^2 + C1), C1 = (0.01 L)^2 with L the range of both maps together
    window = torch.arange(49, dtype=torch.float64).view(1, 7, 7) / 48
    d = 0.5
    mu_a, mu_b, c1 = 0.5, 1.0, (0.01 * (1.0 + d)) ** 2
    assert metrics.ssim(window, window + d).item() == pytest.approx((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1),
                                                                     abs=1e-12)  # fmt: skip
    assert metrics.ssim(torch.ones(1, 7, 7), torch.ones(1, 7, 7)).item() == 1.0  # skimage: nan
