"""Perturb-and-score helpers shared by the Quantus-family faithfulness measures (``faithfulness_curves``,
``faithfulness_correlations``): baselines, pixel ranks, the originals' scores, chunked scoring of perturbed
rows, Pearson correlation and the trapezoid rule.

A *row* is one perturbed copy of one image. Every measure lists its rows (which image, what is replaced),
builds them ``batch_size`` at a time and scores them with the :class:`cams.targets.Target` of the originals,
so memory stays bounded and the number of forwards is ``ceil(rows / batch_size)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cams.metrics._inputs import as_maps, check_images_and_maps, metric_target
from cams.metrics.similarity import spearman
from cams.names import close_matches
from cams.state import model_device
from cams.targets import Target, Targets, logits_of

__all__ = [
    "BASELINES",
    "Baseline",
    "base_values",
    "check_positive",
    "chunk_size",
    "fill_rows",
    "fixed_base_values",
    "original_scores",
    "pearson",
    "pixel_ranks",
    "prepare",
    "rank_correlation",
    "score_rows",
    "trapezoid",
]

Baseline = str | float
BASELINES = ("black", "white", "mean", "uniform")


def check_positive(value: int, name: str, what: str) -> int:
    """``value`` as a positive int, or ``ValueError`` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int ({what}), got {value!r}")
    return value


def chunk_size(batch_size: int | None, device: torch.device) -> int:
    """Images per forward: ``batch_size``, or the library's default (8 on the CPU, 64 on accelerators)."""
    if batch_size is None:
        return 8 if device.type == "cpu" else 64
    return check_positive(batch_size, "batch_size", "images per forward")


def prepare(model: nn.Module, x: Tensor, maps: Tensor) -> tuple[Tensor, Tensor, torch.device]:
    """``x`` and ``maps`` ``(B, H, W)`` (at ``x``'s size) on the model's device, and the device results go back to.

    Maps at ``x``'s size keep their dtype: float64 maps are ranked in float64 (cast to float32 images' dtype, near
    ties would reorder).
    """
    given = as_maps(maps)
    maps = check_images_and_maps(x, given)
    if given.shape[-2:] == x.shape[-2:]:
        maps = given.to(maps.device)
    device = model_device(model) if any(True for _ in (*model.parameters(), *model.buffers())) else x.device
    return x.detach().to(device), maps.to(device), x.device


def base_values(baseline: Baseline, x: Tensor, name: str = "baseline") -> Tensor | None:
    """What replaced pixels become, one value per image ``(B,)``; ``None`` for ``"uniform"`` (drawn per row).

    ``"black"``/``"white"``: the image's smallest/largest value over all channels and pixels, ``"mean"``: its
    mean (Quantus' batched ``get_baseline_value``), a number: that number.
    """
    flat = x.flatten(1)
    if isinstance(baseline, str):
        if baseline == "black":
            return flat.min(dim=1).values
        if baseline == "white":
            return flat.max(dim=1).values
        if baseline == "mean":
            return flat.mean(dim=1)
        if baseline == "uniform":
            return None
        raise ValueError(f"{name} must be one of {BASELINES} or a number, got {baseline!r}"
                         f"{close_matches(baseline, BASELINES)}")  # fmt: skip
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"{name} must be one of {BASELINES} or a number, got {baseline!r}")
    return torch.full((x.shape[0],), float(baseline), dtype=x.dtype, device=x.device)


def fixed_base_values(baseline: Baseline, x: Tensor, fix: str) -> Tensor:
    """:func:`base_values` for a measure that replaces pixels with one value per image: ``"uniform"`` (a value
    drawn per perturbation) is refused with a ``ValueError`` that ends in ``fix`` (what to pass instead)."""
    fill = base_values(baseline, x)
    if fill is None:
        raise ValueError(f"baseline='uniform' draws a value per perturbation; {fix}")
    return fill


def fill_rows(
    baseline: Baseline, base: Tensor | None, rows_image: Tensor, draws: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """The value each row's replaced pixels take ``(R,)``: the image's baseline value, or a ``U(0, 1)`` draw.

    ``"uniform"`` takes ``draws`` (``(R,)``, e.g. the very numbers another library drew) or draws them from
    ``generator`` (Quantus: one ``np.random.uniform(0, 1)`` value per image and perturbation).
    """
    if base is not None:
        return base[rows_image]
    if draws is not None:
        draws = torch.as_tensor(draws).reshape(-1)
        if draws.numel() != len(rows_image):
            raise ValueError(f"draws: expected {len(rows_image)} uniform values (one per perturbed copy), "
                             f"got {draws.numel()}")  # fmt: skip
        return draws.to(device=rows_image.device, dtype=torch.float32)
    assert generator is not None, baseline
    return torch.rand(len(rows_image), generator=generator, device=generator.device).to(rows_image.device)


def pixel_ranks(maps: Tensor, descending: bool) -> Tensor:
    """``(B, H W)``: each pixel's position when the map's values are sorted (ties in raster order)."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    positions = torch.arange(flat.shape[1], device=maps.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def original_scores(
    model: nn.Module, x: Tensor, targets: Targets, softmax: bool, batch_size: int
) -> tuple[Target, Tensor]:
    """The target every row is scored with and the originals' scores ``(B,)`` float64; ``targets=None``: the
    predicted class.

    Run inside the caller's ``frozen_model``/``inference_mode``.
    """
    batch = x.shape[0]
    target, predicted = metric_target(targets, batch, softmax, x.device)
    scores = torch.empty(batch, dtype=torch.float64, device=x.device)
    for start in range(0, batch, batch_size):
        rows = torch.arange(start, min(start + batch_size, batch), device=x.device)
        output = model(x[rows])
        if predicted is not None:
            predicted[rows] = logits_of(output, "targets").argmax(dim=1).to(predicted.device)
        scores[rows] = target(output, rows).double()
    return target, scores


def score_rows(
    model: nn.Module,
    target: Target,
    rows_image: Tensor,
    build: Callable[[slice], Tensor],
    batch_size: int,
) -> Tensor:
    """Scores ``(R,)`` float64 of the perturbed rows, built by ``build(rows)`` ``batch_size`` at a time."""
    scores = torch.empty(len(rows_image), dtype=torch.float64, device=rows_image.device)
    for start in range(0, len(rows_image), batch_size):
        rows = slice(start, min(start + batch_size, len(rows_image)))
        output = model(build(rows))
        scores[rows] = target(output, rows_image[rows]).double()
    return scores


def pearson(a: Tensor, b: Tensor, what: str) -> Tensor:
    r"""Pearson correlation of each row of ``a`` with the same row of ``b`` (``(B, N)`` -> ``(B,)``), in float64.

    .. math:: r = \frac{\sum (a - \bar a)(b - \bar b)}{\sqrt{\sum (a - \bar a)^2 \sum (b - \bar b)^2}}

    A constant row has no correlation: ``nan`` (as ``scipy.stats.pearsonr``), with a warning that names
    ``what`` was correlated.
    """
    a, b = a.double(), b.double()
    flat = _constant_rows(a, b, what, "correlation")
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    va, vb = (a * a).sum(dim=1), (b * b).sum(dim=1)
    r = ((a * b).sum(dim=1) / (va * vb).sqrt().clamp_min(1e-300)).clamp(-1.0, 1.0)
    return torch.where(flat, torch.nan, r)


def rank_correlation(a: Tensor, b: Tensor, what: str) -> Tensor:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (``(B, N)`` -> ``(B,)``), ties given
    their average rank (``scipy.stats.spearmanr``); ``nan`` with a warning for a constant row, as :func:`pearson`."""
    flat = _constant_rows(a, b, what, "rank correlation")
    rho = spearman(a[:, None].double(), b[:, None].double())
    return torch.where(flat.to(rho.device), torch.nan, rho)


def _constant_rows(a: Tensor, b: Tensor, what: str, measure: str) -> Tensor:
    """``(B,)`` bool: the rows where ``a`` or ``b`` is constant, for which ``measure`` (a correlation) is undefined;
    a warning naming ``what`` was correlated when there are any (attributed to the correlation's caller)."""
    flat = (a == a[:, :1]).all(dim=1) | (b == b[:, :1]).all(dim=1)
    if bool(flat.any()):
        warnings.warn(
            f"{what}: constant for image(s) {torch.nonzero(flat).flatten().tolist()}, so the {measure} is "
            "undefined there (nan); a constant map or a model whose score does not move under the perturbation",
            RuntimeWarning,
            stacklevel=4,
        )
    return flat


def trapezoid(curve: Tensor, dx: float = 1.0) -> Tensor:
    """Trapezoid area under each row of ``curve`` ``(B, N)`` with spacing ``dx`` (``numpy.trapz``)."""
    if curve.shape[1] < 2:
        return torch.zeros(curve.shape[0], dtype=curve.dtype, device=curve.device)
    return (curve[:, 1:] + curve[:, :-1]).sum(dim=1) * (dx / 2)
