"""Faithfulness as a correlation: does the map's mass on a set of pixels predict what removing them does?

- :func:`faithfulness_correlation` (Bhatt et al., 2020): random pixel subsets, Pearson;
- :func:`monotonicity_correlation` (Nguyen & Martínez, 2020): pixels in increasing relevance, the variance of
  the score under random replacement, Spearman;
- :func:`sensitivity_n` (Ancona et al., 2018): random subsets of ``n`` pixels for several ``n``, Pearson.

Every perturbed copy replaces pixels in all channels, is built and scored ``batch_size`` at a time with the
target of the originals (scored first; ``targets=None``: each image's predicted class), under
``torch.inference_mode()`` with the model frozen and left as found. The random draws (subsets, replacement
values) come from ``generator`` (default: seeded with 0 on the model's device; never the global RNG), or are
given (``subsets=``, ``draws=``): a test hands Quantus and these functions the very same numbers.

Quantus 0.6.0 counts *elements* of ``(C, H, W)``, the map broadcast over channels; its ``subset_size`` and
``features_in_step`` are ``C`` times the pixel counts here when its elements cover whole pixels (always for
``C = 1``). Its ``normalise=True`` (the map divided by the batch's largest value) and ``abs=True`` change no
correlation these functions take.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cams.metrics._perturb import (
    Baseline,
    base_values,
    check_positive,
    chunk_size,
    fill_rows,
    fixed_base_values,
    original_scores,
    pearson,
    pixel_ranks,
    prepare,
    rank_correlation,
    score_rows,
)
from cams.state import frozen_model
from cams.targets import Target, Targets

__all__ = ["faithfulness_correlation", "monotonicity_correlation", "sensitivity_n"]

FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.4, 0.8)
"""The default sizes of :func:`sensitivity_n`'s subsets, as fractions of the image's pixels."""


def _generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    return generator if generator is not None else torch.Generator(device=device).manual_seed(0)


def _random_subsets(batch: int, runs: int, size: int, pixels: int, generator: torch.Generator) -> Tensor:
    """``(B, runs, size)`` pixel indices, each run a uniform subset without repetition (image after image)."""
    return torch.stack([
        torch.rand(runs, pixels, generator=generator, device=generator.device).topk(size, dim=1).indices
        for _ in range(batch)
    ])  # fmt: skip


def _subset_scores(
    model: nn.Module, x: Tensor, target: Target, subsets: Tensor, fill: Tensor, batch_size: int
) -> Tensor:
    """Scores ``(B, R)`` of ``x`` with the pixels ``subsets[i, r]`` (``(B, R, n)`` indices) set to ``fill[i]``."""
    batch, runs, _ = subsets.shape
    flat = subsets.reshape(batch * runs, -1)
    rows_image = torch.arange(batch, device=x.device).repeat_interleave(runs)
    fill = fill.to(x.dtype)

    def build(rows: slice) -> Tensor:
        image = rows_image[rows]
        removed = torch.zeros(len(image), x[0, 0].numel(), dtype=torch.bool, device=x.device)
        removed.scatter_(1, flat[rows], True)
        return torch.where(removed.view(-1, 1, *x.shape[2:]), fill[image].view(-1, 1, 1, 1), x[image])

    return score_rows(model, target, rows_image, build, batch_size).view(batch, runs)


def _checked_subsets(subsets: Tensor, batch: int, pixels: int, name: str) -> Tensor:
    subsets = torch.as_tensor(subsets)
    if subsets.dim() != 3 or subsets.shape[0] != batch:
        raise ValueError(f"{name} must be (B, runs, size) pixel indices with B = {batch}, got {tuple(subsets.shape)}")
    if bool((subsets < 0).any()) or bool((subsets >= pixels).any()):
        raise ValueError(f"{name}: pixel indices must be in 0 .. {pixels - 1} (flat H x W index)")
    return subsets.long()


def faithfulness_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    nr_runs: int = 100,
    subset_size: int = 224,
    baseline: Baseline = "black",
    subsets: Tensor | None = None,
    generator: torch.Generator | None = None,
    softmax: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    r"""Faithfulness correlation: Pearson's r between a subset's map mass and the score drop when it is removed.

    Bhatt, Weller and Moura, *Evaluating and Aggregating Feature-based Model Explanations*, IJCAI 2020,
    https://arxiv.org/abs/2005.00631, section 3. For ``nr_runs`` random subsets :math:`S_r` of
    ``subset_size`` pixels, with :math:`x_{[S_r]}` the image with them replaced by the baseline:

    .. math:: \mu_F = \operatorname{corr}_r\Big(\sum_{i \in S_r} M_i,\; f_c(x) - f_c(x_{[S_r]})\Big)

    Higher is better (``1``: the map's mass predicts the score drop). Equals Quantus'
    ``FaithfulnessCorrelation(nr_runs, subset_size=C s, perturb_baseline=baseline)`` (logits by default, as
    its call) given the same subsets.

    Args:
        model: classifier; run under ``torch.inference_mode()`` in eval mode, left as found.
        x: images ``(B, C, H, W)`` as the model takes them.
        maps: ``(B, H, W)``; resized (bilinear) to ``x``'s size if needed.
        targets: ``None`` (each image's predicted class), a class per image, an int, or a callable scoring
            each row of an output (see :func:`cams.metrics.average_drop`).
        nr_runs: subsets per image.
        subset_size: pixels per subset.
        baseline: ``"black"`` (the image's minimum over all channels), ``"white"``, ``"mean"`` or a number.
        subsets: ``(B, runs, size)`` flat pixel indices to use instead of random ones (``nr_runs`` and
            ``subset_size`` are then its shape).
        generator: where the subsets are drawn from (default: seeded with 0).
        softmax: score probabilities, or the raw output (default, as Quantus).
        batch_size: most images per forward (default 8 on the CPU, 64 elsewhere).

    Returns:
        ``(B,)`` float32 in ``[-1, 1]`` on ``x``'s device; ``nan`` (with a warning) where the sums or the drops
        are constant.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> x, maps = torch.ones(1, 1, 2, 2), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
        >>> subsets = torch.tensor([[[0], [1], [3]]])  # the drops are the weights: the map is linear in them
        >>> faithfulness_correlation(model, x, maps, subsets=subsets, baseline=0.0)
        tensor([1.])
    """
    x, maps, out = prepare(model, x, maps)
    batch_size = chunk_size(batch_size, x.device)
    pixels = maps[0].numel()
    fill = fixed_base_values(baseline, x, "pass a fixed baseline")
    if subsets is None:
        check_positive(nr_runs, "nr_runs", "random subsets per image")
        check_positive(subset_size, "subset_size", "pixels per subset")
        if subset_size > pixels:
            raise ValueError(f"subset_size={subset_size} is more than the image's {pixels} pixels")
        subsets = _random_subsets(x.shape[0], nr_runs, subset_size, pixels, _generator(generator, x.device))
    subsets = _checked_subsets(subsets, x.shape[0], pixels, "subsets").to(x.device)
    with frozen_model(model), torch.inference_mode():
        target, original = original_scores(model, x, targets, softmax, batch_size)
        perturbed = _subset_scores(model, x, target, subsets, fill, batch_size)
    sums = maps.flatten(1).double().gather(1, subsets.flatten(1)).view(subsets.shape).sum(dim=2)
    drops = original[:, None].double() - perturbed.double()
    return pearson(sums, drops, "faithfulness_correlation: the subsets' map sums or score drops").float().to(out)


def monotonicity_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    nr_samples: int = 100,
    features_in_step: int = 1,
    baseline: Baseline = "uniform",
    eps: float = 1e-5,
    draws: Tensor | None = None,
    generator: torch.Generator | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    r"""Monotonicity correlation: Spearman's rho between a pixel group's relevance and the score's variance
    when it is replaced.

    Nguyen and Martínez, *On quantitative aspects of model interpretability*, 2020,
    https://arxiv.org/abs/2007.07584, section 4.3. Pixels sorted by increasing map value (ties in raster
    order) form :math:`K = \lceil HW / s \rceil` groups :math:`G_k` of :math:`s` = ``features_in_step``;
    each is replaced, alone, ``nr_samples`` times by a random value (``baseline="uniform"``: one
    :math:`U(0, 1)` draw per image and sample, as Quantus), and

    .. math:: v_k = \frac{1}{N} \sum_{n=1}^{N} \big(f_c(x_{[G_k = u_n]}) - f_c(x)\big)^2 \, \frac{1}{f_c(x)^2},
              \qquad \rho = \operatorname{corr}^{\text{Spearman}}_k\Big(\sum_{i \in G_k} M_i,\; v_k\Big)

    (the factor :math:`1 / f_c(x)^2` is 1 where :math:`|f_c(x)| <` ``eps``). Higher is better. Equals Quantus'
    ``MonotonicityCorrelation(nr_samples, features_in_step=C s, perturb_baseline=baseline, eps)`` (softmax
    by default, as its call) fed the same uniform draws.

    Args:
        model, x, maps, targets, batch_size: as in :func:`faithfulness_correlation`.
        nr_samples: replacements per group :math:`N`.
        features_in_step: pixels per group :math:`s`.
        baseline: ``"uniform"`` (default) or a fixed value (``"black"``, ``"white"``, ``"mean"``, a number;
            then every sample is the same).
        eps: the smallest :math:`|f_c(x)|` that scales the variance.
        draws: ``(K, nr_samples, B)`` uniform values to use (Quantus' order: group, sample, image).
        generator: where the uniform values are drawn from (default: seeded with 0).
        softmax: score probabilities (default, as Quantus) or the raw output.

    Returns:
        ``(B,)`` float32 in ``[-1, 1]`` on ``x``'s device; ``nan`` (with a warning) for a constant map or
        variance.
    """
    x, maps, out = prepare(model, x, maps)
    batch_size = chunk_size(batch_size, x.device)
    check_positive(nr_samples, "nr_samples", "replacements per pixel group")
    check_positive(features_in_step, "features_in_step", "pixels per group")
    batch, pixels = x.shape[0], maps[0].numel()
    groups = pixel_ranks(maps, descending=False) // features_in_step  # (B, HW)
    steps = math.ceil(pixels / features_in_step)
    base = base_values(baseline, x)
    # rows (image, group, sample), image-major; the draws are indexed (group, sample, image) as Quantus draws them
    rows_image = torch.arange(batch, device=x.device).repeat_interleave(steps * nr_samples)
    rows_group = torch.arange(steps, device=x.device).repeat_interleave(nr_samples).repeat(batch)
    rows_sample = torch.arange(nr_samples, device=x.device).repeat(batch * steps)
    if base is None and draws is not None:
        draws = torch.as_tensor(draws).to(x.device)
        if tuple(draws.shape) != (steps, nr_samples, batch):
            expected = (steps, nr_samples, batch)
            raise ValueError(f"draws must be (K, nr_samples, B) = {expected}, got {tuple(draws.shape)}")
        draws = draws[rows_group, rows_sample, rows_image]
    fill = fill_rows(baseline, base, rows_image, draws, _generator(generator, x.device)).to(x.dtype)

    def build(rows: slice) -> Tensor:
        image = rows_image[rows]
        replaced = (groups[image] == rows_group[rows, None]).view(-1, 1, *x.shape[2:])
        return torch.where(replaced, fill[rows].view(-1, 1, 1, 1), x[image])

    with frozen_model(model), torch.inference_mode():
        target, original = original_scores(model, x, targets, softmax, batch_size)
        scores = score_rows(model, target, rows_image, build, batch_size)
    original = original.double()
    scale = torch.where(original.abs() >= eps, 1 / original.abs().clamp_min(eps), 1.0) ** 2
    variance = ((scores.double().view(batch, steps, nr_samples) - original[:, None, None]) ** 2).mean(dim=2)
    relevance = torch.zeros(batch, steps, dtype=torch.float64, device=x.device)
    relevance.scatter_add_(1, groups, maps.flatten(1).double())
    what = "monotonicity_correlation: the groups' relevance or the score's variance"
    return rank_correlation(relevance, variance * scale[:, None], what).float().to(out)


def sensitivity_n(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    fractions: Sequence[float] = FRACTIONS,
    nr_subsets: int = 100,
    baseline: Baseline = "black",
    subsets: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""Sensitivity-n: for subsets of ``n`` pixels, Pearson's r between their map mass and the score drop.

    Ancona et al., *Towards better understanding of gradient-based attribution methods for Deep Neural
    Networks*, ICLR 2018, https://arxiv.org/abs/1711.06104, section 3.2. For each size
    :math:`n = \max(1, \operatorname{round}(\phi HW))` (:math:`\phi` in ``fractions``) and ``nr_subsets`` random
    subsets :math:`S` of :math:`n` pixels, per image:

    .. math:: r_n = \operatorname{corr}_S\Big(\sum_{i \in S} M_i,\; f_c(x) - f_c(x_{[S]})\Big)

    An attribution satisfies sensitivity-n when the sum over any :math:`n` pixels is the output's change:
    :math:`r_n = 1`; higher is better. ``"sensitivity_n"`` in the callback is the mean over :math:`n`.

    This follows the paper. Quantus' ``SensitivityN`` computes something else: it removes pixels
    cumulatively in decreasing relevance (one deterministic subset per :math:`n`, the top :math:`k s`),
    correlates across the *images* of the batch instead of across subsets, pairs the cumulative score drop
    with the relevance of the last step's pixels only, keeps ``int(0.8 HW // features_in_step)`` steps (pixels
    over a step counted in elements) and reads only the first ``batch_size`` images. Its
    drops are ours for those subsets (pass them in ``subsets``, one per size); its number is the Pearson r
    over images of ``deltas[:, k, 0]`` with the differences of consecutive ``sums`` (tested).

    Args:
        model, x, maps, targets, batch_size: as in :func:`faithfulness_correlation`.
        fractions: subset sizes as fractions of the pixels, in ``(0, 1]``.
        nr_subsets: random subsets per size.
        baseline: ``"black"`` (default, as Quantus), ``"white"``, ``"mean"`` or a number.
        subsets: one ``(B, S, n)`` tensor of flat pixel indices per size, instead of random ones.
        generator: where the subsets are drawn from (default: seeded with 0).
        softmax: score probabilities (default, as Quantus) or the raw output.

    Returns:
        ``{"correlation": (B, K), "deltas": (B, K, S), "sums": (B, K, S), "n": (K,)}`` on ``x``'s device
        (``K`` sizes): :math:`r_n` (float32; ``nan`` with a warning where undefined), the score drops and the
        subsets' map sums (float64), and the sizes.
    """
    x, maps, out = prepare(model, x, maps)
    batch_size = chunk_size(batch_size, x.device)
    batch, pixels = x.shape[0], maps[0].numel()
    fill = fixed_base_values(baseline, x, "pass a fixed baseline")
    if subsets is None:
        check_positive(nr_subsets, "nr_subsets", "random subsets per size")
        if not fractions or not all(0 < float(f) <= 1 for f in fractions):
            raise ValueError(
                f"fractions must be sizes in (0, 1] (of the pixels), e.g. {list(FRACTIONS)}; got {fractions!r}"
            )
        generator = _generator(generator, x.device)
        sizes = [max(1, round(float(f) * pixels)) for f in fractions]
        subsets = [_random_subsets(batch, nr_subsets, n, pixels, generator) for n in sizes]
    subsets = [_checked_subsets(s, batch, pixels, f"subsets[{k}]").to(x.device) for k, s in enumerate(subsets)]
    if len({s.shape[1] for s in subsets}) != 1:
        raise ValueError("subsets: every size needs the same number of subsets (S)")
    with frozen_model(model), torch.inference_mode():
        target, original = original_scores(model, x, targets, softmax, batch_size)
        perturbed = torch.stack([_subset_scores(model, x, target, s, fill, batch_size) for s in subsets], dim=1)
    flat = maps.flatten(1).double()
    sums = torch.stack([flat.gather(1, s.flatten(1)).view(s.shape).sum(dim=2) for s in subsets], dim=1)
    deltas = original[:, None, None].double() - perturbed.double()
    what = "sensitivity_n: the subsets' map sums or score drops"
    correlation = torch.stack([pearson(sums[:, k], deltas[:, k], what) for k in range(len(subsets))], dim=1)
    n = torch.tensor([s.shape[2] for s in subsets], device=out)
    return {"correlation": correlation.float().to(out), "deltas": deltas.to(out), "sums": sums.to(out), "n": n}
