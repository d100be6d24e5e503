"""``cams.metrics``' Quantus-family faithfulness measures: pixel flipping, region perturbation, selectivity, IROF,
faithfulness and monotonicity correlation, sensitivity-n, each against Quantus 0.6.0 on the same maps (and the same
random draws), a hand-computed case, and where Quantus departs from the paper, both numbers."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest
import quantus
import torch
from quantus.helpers import utils
from torch import nn

from cams import CamEngine, metrics


@pytest.fixture(autouse=True)
def _numpy_2_4(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Quantus 0.6.0's AUCs call ``np.trapz``, which numpy 2.4 removed: give it ``np.trapezoid`` back."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def _net(channels: int = 3) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
        ).eval()


def _case(channels: int = 3, size: int = 12, batch: int = 4) -> dict:
    """Images and maps with distinct values (float64), the model's classes, and Quantus' keyword arguments."""
    generator = torch.Generator().manual_seed(1)
    model = _net(channels)
    x = torch.randn(batch, channels, size, size, generator=generator)
    maps = torch.rand(batch, size, size, generator=generator, dtype=torch.float64)
    maps = maps / maps.amax(dim=(1, 2), keepdim=True)  # a maximum of 1, as CAM maps: Quantus' normalise is a no-op
    y = model(x).argmax(1)
    kwargs = dict(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy()[:, None], device="cpu")
    return {"model": model, "x": x, "maps": maps, "y": y, "quantus": kwargs}


def _cam_case(size: int = 12) -> dict:
    """One channel, Grad-CAM maps from the engine (ReLU'd: many tied zeros)."""
    case = _case(channels=1, size=size)
    maps = CamEngine(case["model"], "1")(case["x"], methods="gradcam", targets=case["y"])["gradcam"]
    assert len(maps.unique()) < maps.numel()  # ties
    case["maps"] = maps
    case["quantus"]["a_batch"] = maps.numpy()[:, None]
    return case


def _stable_argsort(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantus sorts with numpy's default (unstable) argsort; ties then have no defined order. Ours is stable."""
    monkeypatch.setattr(np, "argsort", functools.partial(np.argsort, kind="stable"))


# ------------------------------------------------------------------------------------------ pixel flipping
def test_pixel_flipping_equals_quantus_with_c_times_the_elements_per_step() -> None:
    case = _case()
    theirs = quantus.PixelFlipping(features_in_step=3 * 16, disable_warnings=True)(**case["quantus"])
    ours = metrics.pixel_flipping(case["model"], case["x"], case["maps"], case["y"], features_in_step=16)
    np.testing.assert_allclose(ours["curve"].numpy(), theirs, atol=1e-6)
    auc = quantus.PixelFlipping(features_in_step=3 * 16, return_auc_per_sample=True,
                                disable_warnings=True)(**case["quantus"])  # fmt: skip
    np.testing.assert_allclose(ours["auc"].numpy(), auc, atol=1e-5)


def test_pixel_flipping_on_cam_maps_with_ties_equals_quantus_sorted_stably(monkeypatch: pytest.MonkeyPatch) -> None:
    case = _cam_case()
    _stable_argsort(monkeypatch)
    theirs = quantus.PixelFlipping(features_in_step=8, disable_warnings=True)(**case["quantus"])
    ours = metrics.pixel_flipping(case["model"], case["x"], case["maps"], case["y"], features_in_step=8)
    np.testing.assert_allclose(ours["curve"].numpy(), theirs, atol=1e-6)


def test_pixel_flipping_by_hand_on_a_linear_score() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    maps = torch.tensor([[[0.4, 0.3], [0.2, 0.1]]], dtype=torch.float64)  # the first weight first: 9, 7, 4, 0
    result = metrics.pixel_flipping(model, x, maps, baseline=0.0, softmax=False, features_in_step=1)
    assert result["curve"].tolist() == [[9.0, 7.0, 4.0, 0.0]]
    assert result["auc"].tolist() == [(9 + 7) / 2 + (7 + 4) / 2 + (4 + 0) / 2]


# ------------------------------------------------------------------------------- region perturbation, selectivity
@pytest.mark.parametrize(("order", "size"), [("morf", 12), ("lerf", 12), ("morf", 14)])
def test_region_perturbation_curve_equals_quantus(order: str, size: int) -> None:
    case = _case(size=size)  # 14: padded to 16 for patches of 4, one row and column each side
    theirs = quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=6,
                                        disable_warnings=True)(**case["quantus"])  # fmt: skip
    ours = metrics.region_perturbation(case["model"], case["x"], case["maps"], case["y"], patch_size=4, order=order,
                                       regions_evaluation=6)  # fmt: skip
    np.testing.assert_allclose(ours["curve"].numpy(), theirs, atol=1e-6)


def test_region_perturbation_on_cam_maps_with_tied_patches_equals_quantus_sorted_stably(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = _cam_case()
    _stable_argsort(monkeypatch)
    theirs = quantus.RegionPerturbation(patch_size=3, regions_evaluation=16, disable_warnings=True)(**case["quantus"])
    ours = metrics.region_perturbation(case["model"], case["x"], case["maps"], case["y"], patch_size=3,
                                       regions_evaluation=16)  # fmt: skip
    np.testing.assert_allclose(ours["curve"].numpy(), theirs, atol=1e-6)


def test_region_perturbation_aopc_is_the_mean_drop_over_the_steps_and_the_unperturbed_image() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False)).double()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    maps = torch.zeros(1, 4, 4, dtype=torch.float64)
    maps[0, :2, :2], maps[0, 2:, 2:] = 1.0, 0.5  # the top-left patch first, then the bottom-right one
    result = metrics.region_perturbation(model, x, maps, patch_size=2, regions_evaluation=2, baseline=0.0,
                                         softmax=False)  # fmt: skip
    assert result["curve"].tolist() == [[4.0, 8.0]]  # 16 - 12, 16 - 8
    assert result["aopc"].tolist() == [(0 + 4 + 8) / 3]
    lerf = metrics.region_perturbation(model, x, maps, patch_size=2, regions_evaluation=2, baseline=0.0,
                                       softmax=False, order="lerf")  # fmt: skip
    assert lerf["curve"].tolist() == [[4.0, 8.0]]  # a linear score does not care which patch goes first


def test_selectivity_equals_quantus_and_its_area() -> None:
    case = _case()
    metric = quantus.Selectivity(patch_size=4, disable_warnings=True)
    theirs = metric(**case["quantus"])
    ours = metrics.selectivity(case["model"], case["x"], case["maps"], case["y"], patch_size=4)
    np.testing.assert_allclose(ours["curve"].numpy(), theirs, atol=1e-6)
    np.testing.assert_allclose(float(ours["auc"].mean()), metric.get_auc_score, atol=1e-5)


def test_random_region_order_comes_from_its_generator() -> None:
    case = _case()
    run = functools.partial(metrics.region_perturbation, case["model"], case["x"], case["maps"], case["y"],
                            patch_size=4, order="random", regions_evaluation=9)  # fmt: skip
    first, again = run(generator=torch.Generator().manual_seed(3)), run(generator=torch.Generator().manual_seed(3))
    assert torch.equal(first["curve"], again["curve"])
    everything = metrics.region_perturbation(case["model"], case["x"], case["maps"], case["y"], patch_size=4,
                                             regions_evaluation=9)  # fmt: skip
    torch.testing.assert_close(first["curve"][:, -1], everything["curve"][:, -1])  # all 9 patches gone in both


# --------------------------------------------------------------------------------------------------- IROF
def _irof_case(batch: int = 4) -> tuple[dict, torch.Tensor]:
    case = _case(channels=1, size=32, batch=batch)  # Quantus' IROF breaks on C > 1 (a (B, 1) mask for (B, C) images)
    segments = np.stack([utils.get_superpixel_segments(np.moveaxis(x, 0, -1).astype("double"), "slic")
                         for x in case["x"].numpy()])  # fmt: skip
    assert len({len(np.unique(s)) for s in segments}) == 1  # Quantus pads shorter curves with zeros otherwise
    return case, torch.from_numpy(segments)


def _quantus_area(curve: torch.Tensor) -> torch.Tensor:
    """Quantus' area over the curve from ours: L - trapz(p_1 .. p_L), unit steps."""
    p = curve.double()
    return (p.shape[1] - 1) - ((p[:, 2:] + p[:, 1:-1]) / 2).sum(dim=1)


def test_irof_curve_equals_quantus_on_a_fixed_baseline_and_its_area_lacks_the_first_step() -> None:
    case, segments = _irof_case()
    theirs = quantus.IROF(perturb_baseline=0.0, return_aggregate=False, disable_warnings=True)(**case["quantus"])
    ours = metrics.irof(case["model"], case["x"], case["maps"], case["y"], segments=segments, baseline=0.0)
    np.testing.assert_allclose(_quantus_area(ours["curve"]).numpy(), theirs, atol=1e-5)
    # the paper's area over p_0 .. p_L on [0, 1]: L IROF = Quantus - (1 + p_1) / 2
    count, p1 = ours["curve"].shape[1] - 1, ours["curve"][:, 1].double()
    np.testing.assert_allclose((count * ours["irof"].double()).numpy(), theirs - ((1 + p1) / 2).numpy(), atol=1e-4)


def test_irof_black_baseline_is_the_image_own_minimum_not_the_batch_one() -> None:
    case, segments = _irof_case()
    i = int(case["x"].flatten(1).min(dim=1).values.argmax())  # an image whose minimum is above the batch's
    one = {**case["quantus"], **{k: case["quantus"][k][i : i + 1] for k in ("x_batch", "y_batch", "a_batch")}}
    alone = quantus.IROF(perturb_baseline="black", return_aggregate=False, disable_warnings=True)(**one)
    together = quantus.IROF(perturb_baseline="black", return_aggregate=False, disable_warnings=True)(**case["quantus"])
    ours = metrics.irof(case["model"], case["x"], case["maps"], case["y"], segments=segments, baseline="black")
    np.testing.assert_allclose(_quantus_area(ours["curve"][i : i + 1]).numpy(), alone, atol=1e-5)
    assert abs(together[i] - alone[0]) > 1e-3  # Quantus: the smallest value of the whole batch
    single = metrics.irof(case["model"], case["x"][i : i + 1], case["maps"][i : i + 1], case["y"][i : i + 1],
                          segments=segments[i : i + 1], baseline="black")  # fmt: skip
    torch.testing.assert_close(single["irof"], ours["irof"][i : i + 1])


def test_irof_is_zero_when_the_score_ignores_the_image() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 2.0]))
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    segments = (torch.arange(16) // 4).view(1, 4, 4).expand(2, 4, 4)  # four rows
    result = metrics.irof(model, x, torch.rand(2, 4, 4, dtype=torch.float64), segments=segments)
    assert result["irof"].abs().max() < 1e-6 and bool((result["curve"] == 1).all())


# ----------------------------------------------------------------------------------- faithfulness correlation
def test_faithfulness_correlation_equals_quantus_given_the_same_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    case = _case()
    runs, size, pixels = 10, 20, 12 * 12
    generator = torch.Generator().manual_seed(2)
    subsets = torch.stack([torch.randperm(pixels, generator=generator)[:size] for _ in range(4 * runs)])
    subsets = subsets.view(4, runs, size)
    elements = (subsets[..., None] + torch.arange(3) * pixels).flatten(-2).numpy()  # every channel of each pixel
    calls = iter(range(10**6))

    def choice(n: int, size: int, replace: bool = False) -> np.ndarray:  # Quantus: run after run, image after image
        run, image = divmod(next(calls), 4)
        return elements[image, run]

    monkeypatch.setattr(np.random, "choice", choice)
    theirs = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=3 * size, return_aggregate=False,
                                             disable_warnings=True)(**case["quantus"])  # fmt: skip
    ours = metrics.faithfulness_correlation(case["model"], case["x"], case["maps"], case["y"], subsets=subsets)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_faithfulness_correlation_is_one_for_a_map_that_is_the_linear_model_itself() -> None:
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(1, 16, dtype=torch.float64, generator=generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(weights)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=generator)
    maps = (weights * x.flatten(1)).view(1, 4, 4)  # gradient x input: a subset's sum is its score drop to 0
    result = metrics.faithfulness_correlation(model, x, maps, nr_runs=20, subset_size=5, baseline=0.0)
    assert result.item() == pytest.approx(1.0, abs=1e-6)
    scaled = metrics.faithfulness_correlation(model, x, 3 * maps, nr_runs=20, subset_size=5, baseline=0.0)
    assert torch.equal(result, scaled)


# ---------------------------------------------------------------------------------- monotonicity correlation
def test_monotonicity_correlation_equals_quantus_fed_the_same_uniform_values(monkeypatch: pytest.MonkeyPatch) -> None:
    case = _case()
    groups, samples = 12 * 12 // 16, 3
    draws = torch.rand(groups, samples, 4, generator=torch.Generator().manual_seed(4))
    calls = iter(range(10**6))

    def uniform(low: float = 0.0, high: float = 1.0, size: int | None = None) -> np.ndarray:
        group, sample = divmod(next(calls), samples)
        return draws[group, sample].double().numpy()

    monkeypatch.setattr(np.random, "uniform", uniform)
    theirs = quantus.MonotonicityCorrelation(nr_samples=samples, features_in_step=3 * 16,
                                             disable_warnings=True)(**case["quantus"])  # fmt: skip
    ours = metrics.monotonicity_correlation(case["model"], case["x"], case["maps"], case["y"], nr_samples=samples,
                                            features_in_step=16, draws=draws)  # fmt: skip
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_monotonicity_correlation_by_hand_is_one_when_relevance_orders_the_effect() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    maps = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]], dtype=torch.float64)
    # each pixel set to 1 alone moves the score by its weight: the variance grows with the relevance
    result = metrics.monotonicity_correlation(model, x, maps, baseline=1.0, nr_samples=2, softmax=False)
    assert result.item() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- sensitivity-n
def test_sensitivity_n_recovers_quantus_number_from_its_cumulative_subsets() -> None:
    case = _case()
    seen: dict[str, np.ndarray] = {}

    def pearson(a: np.ndarray, b: np.ndarray, batched: bool = True) -> np.ndarray:  # Quantus' own, recorded
        seen["deltas"], seen["sums"] = a, b
        return quantus.similarity_func.correlation_pearson(a, b, batched=True)

    step = 16
    theirs = quantus.SensitivityN(features_in_step=3 * step, similarity_func=pearson, return_aggregate=False,
                                  disable_warnings=True)(**case["quantus"])  # fmt: skip
    order = torch.sort(case["maps"].flatten(1), dim=1, descending=True, stable=True).indices
    steps = int(0.8 * 144 // (3 * step))  # Quantus: 80 % of the pixels over a step counted in elements
    cumulative = [order[:, None, : (k + 1) * step] for k in range(steps)]  # Quantus' deterministic subsets
    with pytest.warns(RuntimeWarning, match="constant"):  # one subset per size: no correlation across subsets
        ours = metrics.sensitivity_n(case["model"], case["x"], case["maps"], case["y"], subsets=cumulative)
    np.testing.assert_allclose(ours["deltas"][:, :, 0].numpy(), seen["deltas"].T, atol=1e-6)
    last_step = torch.diff(ours["sums"][:, :, 0], dim=1, prepend=torch.zeros(4, 1, dtype=torch.float64))
    np.testing.assert_allclose(3 * last_step.numpy(), seen["sums"].T, atol=1e-9)  # the last step's pixels only
    across_images = quantus.similarity_func.correlation_pearson(ours["deltas"][:, :, 0].T.numpy(),
                                                                3 * last_step.T.numpy(), batched=True)  # fmt: skip
    np.testing.assert_allclose(across_images, theirs, atol=1e-5)


def test_sensitivity_n_follows_the_paper_and_is_one_for_an_exact_attribution() -> None:
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(1, 16, dtype=torch.float64, generator=generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(weights)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=generator)
    maps = (weights * x.flatten(1)).view(2, 4, 4)  # sums over any subset are its score drop: sensitivity-n holds
    result = metrics.sensitivity_n(model, x, maps, fractions=(0.25, 0.5), nr_subsets=10, baseline=0.0, softmax=False)
    assert result["n"].tolist() == [4, 8]
    torch.testing.assert_close(result["correlation"], torch.ones(2, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(result["sums"], result["deltas"], atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------ invariants
def test_every_measure_leaves_the_model_and_the_global_rng_as_found() -> None:
    case = _case()
    model, x, maps = case["model"], case["x"], case["maps"]
    rng, weights, mode = torch.random.get_rng_state(), [p.clone() for p in model.parameters()], model.train()
    metrics.pixel_flipping(model, x, maps, features_in_step=36)
    metrics.region_perturbation(model, x, maps, patch_size=6, order="random")
    metrics.selectivity(model, x, maps, patch_size=6)
    metrics.irof(model, x, maps)
    metrics.faithfulness_correlation(model, x, maps, nr_runs=4, subset_size=10)
    metrics.monotonicity_correlation(model, x, maps, nr_samples=2, features_in_step=36)
    metrics.sensitivity_n(model, x, maps, nr_subsets=4)
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert mode.training


def test_bad_arguments_are_refused_with_their_name() -> None:
    case = _case()
    model, x, maps = case["model"], case["x"], case["maps"]
    with pytest.raises(ValueError, match="features_in_step must be a positive int"):
        metrics.pixel_flipping(model, x, maps, features_in_step=0)
    with pytest.raises(ValueError, match=r"order must be one of .*did you mean 'morf'"):
        metrics.region_perturbation(model, x, maps, order="mor")
    with pytest.raises(ValueError, match="subset_size=200 is more than the image's 144 pixels"):
        metrics.faithfulness_correlation(model, x, maps, subset_size=200)
    with pytest.raises(ValueError, match="baseline must be one of"):
        metrics.selectivity(model, x, maps, baseline="grey")
    with pytest.raises(ValueError, match=r"segments must be \(B, H, W\)"):
        metrics.irof(model, x, maps, segments=torch.zeros(2, 3, 3, dtype=torch.long))


def test_slic_labels_every_pixel_with_a_superpixel_numbered_from_zero() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = metrics.slic(x, n_segments=16)
    for image in labels:
        values = image.unique()
        assert values.tolist() == list(range(len(values))) and 8 <= len(values) <= 16
