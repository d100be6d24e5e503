"""Faithfulness curves: remove what the map ranks first, group by group, and follow the model's score.

- :func:`pixel_flipping` (Bach et al., 2015): pixels, ``features_in_step`` at a time;
- :func:`region_perturbation` (Samek et al., 2016): square patches, most (or least) relevant first; AOPC;
- :func:`selectivity` (Montavon et al., 2018): every patch, most relevant first;
- :func:`irof` (Rieger & Hansen, 2020): superpixels, by mean relevance; area over the curve.

Each removal is cumulative: step ``k`` replaces the first ``k`` groups (pixels, patches, superpixels) of the
map's order, ties in raster (or label) order. Every perturbed copy of every image is built and scored in
chunks of ``batch_size`` with the target of the originals (scored first; ``targets=None`` explains each
image's predicted class), under ``torch.inference_mode()`` with the model frozen and left as found. A pixel
is replaced in all channels at once.

Parity with Quantus 0.6.0 (tested): its metrics flatten ``(C, H, W)`` and count *elements*; with the map
broadcast over ``C`` channels and distinct map values, ``features_in_step = C k`` elements there is ``k``
pixels here (equal for ``C = 1`` with ties as well, Quantus' sort made stable). Quantus' ``normalise=True``
divides every map by the largest value of the whole batch and ``abs=True`` takes absolute values: neither
changes maps in ``[0, 1]`` with a maximum of 1 (CAM maps), nor any order these measures use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cams.metrics._perturb import (
    Baseline,
    check_positive,
    chunk_size,
    fixed_base_values,
    original_scores,
    pixel_ranks,
    prepare,
    score_rows,
    trapezoid,
)
from cams.metrics.superpixels import slic
from cams.names import close_matches
from cams.state import frozen_model
from cams.targets import Target, Targets

__all__ = ["irof", "pixel_flipping", "region_perturbation", "selectivity"]

_ORDERS = ("morf", "lerf", "random")


def _removal_scores(
    model: nn.Module, x: Tensor, target: Target, groups: Tensor, steps: Tensor, fill: Tensor, batch_size: int
) -> Tensor:
    """Scores ``(B, max(steps))`` (``nan`` past an image's own steps) of ``x`` with the pixels of groups
    ``< k`` replaced by ``fill``, for ``k = 1 .. steps[i]``; ``groups`` is each pixel's group ``(B, H, W)``."""
    batch = x.shape[0]
    rows_image = torch.repeat_interleave(torch.arange(batch, device=x.device), steps)
    starts = torch.cumsum(steps, 0) - steps
    rows_step = torch.arange(len(rows_image), device=x.device) - starts[rows_image] + 1
    fill = fill.to(x.dtype)

    def build(rows: slice) -> Tensor:
        image, k = rows_image[rows], rows_step[rows]
        removed = groups[image] < k.view(-1, 1, 1)
        return torch.where(removed[:, None], fill[image].view(-1, 1, 1, 1), x[image])

    scores = score_rows(model, target, rows_image, build, batch_size)
    curve = torch.full((batch, int(steps.max())), torch.nan, dtype=torch.float64, device=x.device)
    curve[rows_image, rows_step - 1] = scores
    return curve


def pixel_flipping(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    features_in_step: int = 1,
    baseline: Baseline = "black",
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""Pixel flipping: the score as the most relevant pixels are replaced, ``features_in_step`` at a time.

    Bach et al., *On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
    Propagation*, PLoS ONE 2015, https://doi.org/10.1371/journal.pone.0130140. With pixels sorted by
    decreasing map value and :math:`x^{(k)}` the image with the first :math:`k\,s` of them replaced by the
    baseline (:math:`s` = ``features_in_step``, :math:`K = \lceil HW / s \rceil` steps):

    .. math:: \text{curve}_k = f_c(x^{(k)}), \quad k = 1 .. K, \qquad
              \text{AUC} = \sum_{k=1}^{K-1} \frac{\text{curve}_k + \text{curve}_{k+1}}{2}

    A faithful map makes the score fall fast: lower AUC is better. Equals Quantus'
    ``PixelFlipping(features_in_step=C s, perturb_baseline=baseline)`` (softmax scores by default, as its
    call), ``return_auc_per_sample=True`` for the AUC (the trapezoid rule with unit steps; the unperturbed
    image is not on the curve).

    Args:
        model: classifier; run under ``torch.inference_mode()`` in eval mode, left as found.
        x: images ``(B, C, H, W)`` as the model takes them.
        maps: ``(B, H, W)``; resized (bilinear) to ``x``'s size if needed.
        targets: ``None`` (each image's predicted class), a class per image, an int, or a callable scoring
            each row of an output (see :func:`cams.metrics.average_drop`).
        features_in_step: pixels replaced per step.
        baseline: what replaced pixels become: ``"black"`` (the image's minimum over all channels),
            ``"white"`` (maximum), ``"mean"`` or a number.
        softmax: score probabilities (default, as Quantus) or the raw output.
        batch_size: most images per forward (default 8 on the CPU, 64 elsewhere).

    Returns:
        ``{"curve": (B, K), "auc": (B,)}`` float32 on ``x``'s device.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> x, maps = torch.ones(1, 1, 2, 2), torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
        >>> result = pixel_flipping(model, x, maps, baseline=0.0, softmax=False)
        >>> result["curve"].tolist(), result["auc"].tolist()  # 10 - 4, - 3, - 2, - 1
        ([[6.0, 3.0, 1.0, 0.0]], [7.0])
    """
    check_positive(features_in_step, "features_in_step", "pixels replaced per step")
    x, maps, out = prepare(model, x, maps)
    batch_size = chunk_size(batch_size, x.device)
    fill = fixed_base_values(baseline, x, "pixel_flipping takes a fixed one")
    pixels = maps[0].numel()
    steps = torch.full((x.shape[0],), math.ceil(pixels / features_in_step), device=x.device)
    groups = (pixel_ranks(maps, descending=True) // features_in_step).view_as(maps)
    with frozen_model(model), torch.inference_mode():
        target, _ = original_scores(model, x, targets, softmax, batch_size)
        curve = _removal_scores(model, x, target, groups, steps, fill, batch_size)
    curve = curve.clone()
    return {"curve": curve.float().to(out), "auc": trapezoid(curve).float().to(out)}


def _patch_ranks(maps: Tensor, patch_size: int, order: str, generator: torch.Generator | None) -> tuple[Tensor, int]:
    """Each pixel's patch position in the removal order ``(B, H, W)``, and the number of patches.

    The map is padded with zeros to a multiple of ``patch_size`` (the padding split as Quantus' ``get_padding_size``:
    ``floor`` before, ``ceil`` after); patches are numbered in raster order and sorted by their sum.
    """
    batch, height, width = maps.shape
    pad = []
    for size in (width, height):
        extra = (-size) % patch_size
        pad += [extra // 2, extra - extra // 2]
    padded = F.pad(maps[:, None].double(), pad)
    sums = F.avg_pool2d(padded, patch_size).flatten(1) * patch_size**2  # (B, patches) in raster order
    patches = sums.shape[1]
    if order == "random":
        keys = torch.rand(batch, patches, generator=generator, device=generator.device if generator else None)
        order_of = torch.argsort(keys.to(maps.device), dim=1)
    else:
        order_of = torch.sort(sums, dim=1, descending=order == "morf", stable=True).indices
    positions = torch.arange(patches, device=maps.device).expand_as(order_of)
    rank = torch.empty_like(order_of).scatter_(1, order_of, positions)
    rows = (torch.arange(height, device=maps.device) + pad[2]) // patch_size
    cols = (torch.arange(width, device=maps.device) + pad[0]) // patch_size
    index = rows[:, None] * (padded.shape[-1] // patch_size) + cols[None, :]
    return rank[:, index.flatten()].view(batch, height, width), patches


def _patch_curve(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Targets, *, patch_size: int, order: str, regions: int | None,
    baseline: Baseline, generator: torch.Generator | None, softmax: bool, batch_size: int | None,
) -> tuple[Tensor, Tensor, torch.device]:  # fmt: skip
    """Region perturbation's and selectivity's shared pass: originals' scores ``(B,)`` and the curve of scores."""
    check_positive(patch_size, "patch_size", "side of the square patches, in pixels")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}{close_matches(str(order), _ORDERS)}")
    x, maps, out = prepare(model, x, maps)
    if patch_size > min(maps.shape[-2:]):
        raise ValueError(f"patch_size={patch_size} is larger than the image ({tuple(maps.shape[-2:])})")
    batch_size = chunk_size(batch_size, x.device)
    fill = fixed_base_values(baseline, x, "pass a fixed baseline")
    if order == "random" and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    groups, patches = _patch_ranks(maps, patch_size, order, generator)
    count = patches if regions is None else min(check_positive(regions, "regions_evaluation", "patches"), patches)
    steps = torch.full((x.shape[0],), count, device=x.device)
    with frozen_model(model), torch.inference_mode():
        target, original = original_scores(model, x, targets, softmax, batch_size)
        curve = _removal_scores(model, x, target, groups, steps, fill, batch_size)
    return original.clone(), curve.clone(), out


def region_perturbation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    patch_size: int = 8,
    order: str = "morf",
    regions_evaluation: int = 100,
    baseline: Baseline = "black",
    generator: torch.Generator | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""Region perturbation: the score's drop as square patches are replaced, most relevant first; AOPC.

    Samek et al., *Evaluating the Visualization of What a Deep Neural Network Has Learned*, IEEE TNNLS 2017,
    https://arxiv.org/abs/1509.06321. The image is cut into ``patch_size`` squares (padded to a multiple of
    it), ordered by the sum of the map over each (``"morf"``: largest first, ``"lerf"``: smallest first,
    ``"random"``: from ``generator``); :math:`x^{(k)}` has the first :math:`k` replaced by the baseline:

    .. math:: \text{curve}_k = f_c(x) - f_c(x^{(k)}), \qquad
              \text{AOPC} = \frac{1}{L + 1} \sum_{k=0}^{L} \big(f_c(x) - f_c(x^{(k)})\big)

    for :math:`k = 1 .. L` (``L = regions_evaluation``; the ``k = 0`` term is 0). With ``"morf"`` a larger
    AOPC is better. The curve equals Quantus' ``RegionPerturbation`` (same arguments, ``order="random"``
    aside: our permutation comes from ``generator``); Quantus has no AOPC (its ``get_auc_score`` is the
    trapezoid area of the curve).

    Args:
        model, x, maps, targets, softmax, batch_size: as in :func:`pixel_flipping`.
        patch_size: side of the squares, in pixels.
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
        regions_evaluation: :math:`L`, patches replaced (at most all of them).
        baseline: as in :func:`pixel_flipping`.
        generator: the draws of ``order="random"`` (default: seeded with 0; never the global RNG).

    Returns:
        ``{"curve": (B, L), "aopc": (B,)}`` float32 on ``x``'s device.
    """
    original, curve, out = _patch_curve(
        model, x, maps, targets, patch_size=patch_size, order=order, regions=regions_evaluation,
        baseline=baseline, generator=generator, softmax=softmax, batch_size=batch_size,
    )  # fmt: skip
    drop = original[:, None] - curve
    return {"curve": drop.float().to(out), "aopc": (drop.sum(dim=1) / (drop.shape[1] + 1)).float().to(out)}


def selectivity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    patch_size: int = 8,
    baseline: Baseline = "black",
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""Selectivity: the score as every patch is replaced, most relevant first; area under that curve.

    Montavon, Samek and Müller, *Methods for Interpreting and Understanding Deep Neural Networks*, Digital
    Signal Processing 2018, https://arxiv.org/abs/1706.07979, section 4.3. The patches of
    :func:`region_perturbation` (``"morf"``), all :math:`P` of them, replaced one after the other:

    .. math:: \text{curve}_k = f_c(x^{(k)}), \quad k = 1 .. P, \qquad
              \text{AUC} = \sum_{k=1}^{P-1} \frac{\text{curve}_k + \text{curve}_{k+1}}{2}

    A selective map makes the score fall at once: lower is better. Equals Quantus' ``Selectivity`` (its
    ``get_auc_score`` per image for the AUC).

    Args:
        model, x, maps, targets, softmax, batch_size, patch_size, baseline: as in :func:`region_perturbation`.

    Returns:
        ``{"curve": (B, P), "auc": (B,)}`` float32 on ``x``'s device.
    """
    _, curve, out = _patch_curve(
        model, x, maps, targets, patch_size=patch_size, order="morf", regions=None, baseline=baseline,
        generator=None, softmax=softmax, batch_size=batch_size,
    )  # fmt: skip
    return {"curve": curve.float().to(out), "auc": trapezoid(curve).float().to(out)}


def _contiguous(segments: Tensor) -> tuple[Tensor, Tensor]:
    """Labels ``0 .. L_i - 1`` per image (in the order of the given labels) ``(B, H W)``, and ``L_i`` ``(B,)``."""
    flat = segments.flatten(1).long()
    if bool((flat < 0).any()):
        raise ValueError("segments: labels must be >= 0 (one superpixel label per pixel)")
    labels = int(flat.max()) + 1
    present = torch.zeros(flat.shape[0], labels, dtype=torch.long, device=flat.device)
    present.scatter_(1, flat, 1)
    new = torch.cumsum(present, dim=1) - 1
    return new.gather(1, flat), present.sum(dim=1)


def irof(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    *,
    segments: Tensor | None = None,
    baseline: Baseline = "mean",
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""IROF: iteratively remove superpixels by mean relevance; the area over the normalised score curve.

    Rieger and Hansen, *IROF: a low resource evaluation metric for explanation methods*, ICLR workshop 2020,
    https://arxiv.org/abs/2003.08747. The image's :math:`L` superpixels are sorted by the mean of the map
    over each (largest first); :math:`x^{(l)}` has the first :math:`l` replaced by the baseline, and

    .. math:: p_l = \frac{f_c(x^{(l)})}{f_c(x)}, \quad l = 0 .. L, \qquad
              \text{IROF} = 1 - \frac{1}{L} \sum_{l=0}^{L-1} \frac{p_l + p_{l+1}}{2}

    the area over the curve on the removed fraction :math:`l / L \in [0, 1]`: ``0`` when the score does not
    move, near ``1`` when it collapses at the first superpixel; higher is better.

    Where Quantus' ``IROF`` departs from the paper (this function follows the paper): its area over the
    curve is ``L - trapz(p_1 .. p_L)`` with unit steps, without :math:`p_0` (an unchanged score gives 1, not
    0: :math:`L \cdot \text{IROF} = \text{Quantus} - (1 + p_1) / 2`, tested); its ``"mean"`` baseline is the
    mean of the whole batch of *already perturbed* images at each step (batch-dependent; here: the image's
    own mean, fixed); images with fewer superpixels than the batch's largest count get their curve padded
    with zeros. On a numeric baseline, with the same segments and equal counts, its curve is ours.

    Args:
        model, x, maps, targets, softmax, batch_size: as in :func:`pixel_flipping`.
        segments: superpixel labels ``(B, H, W)`` (ints ``>= 0``); default :func:`cams.metrics.superpixels.slic`
            of ``x`` (Quantus uses ``skimage.segmentation.slic(image, start_label=0)``: pass those for its values).
        baseline: ``"mean"`` (default: the image's mean over all channels), ``"black"``, ``"white"`` or a number.

    Returns:
        ``{"curve": (B, L_max + 1), "irof": (B,)}`` float32 on ``x``'s device: :math:`p_0 .. p_L` (``nan``
        past an image's own count) and the area over it.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.fill_(1.0)
        >>> x, maps = torch.ones(1, 1, 2, 2), torch.tensor([[[0.9, 0.9], [0.1, 0.1]]])
        >>> segments = torch.tensor([[[0, 0], [1, 1]]])
        >>> result = irof(model, x, maps, segments=segments, baseline=0.0, softmax=False)
        >>> result["curve"].tolist(), result["irof"].tolist()  # p = 1, 1/2, 0
        ([[1.0, 0.5, 0.0]], [0.5])
    """
    x, maps, out = prepare(model, x, maps)
    batch_size = chunk_size(batch_size, x.device)
    fill = fixed_base_values(baseline, x, "irof takes a fixed one")
    if segments is None:
        segments = slic(x)
    segments = torch.as_tensor(segments, device=x.device)
    if tuple(segments.shape) != tuple(maps.shape):
        raise ValueError(f"segments must be (B, H, W) = {tuple(maps.shape)}, got {tuple(segments.shape)}")
    labels, counts = _contiguous(segments)
    sums = torch.zeros(labels.shape[0], int(counts.max()), dtype=torch.float64, device=x.device)
    sums.scatter_add_(1, labels, maps.flatten(1).double())
    sizes = torch.zeros_like(sums).scatter_add_(1, labels, torch.ones_like(sums[:, :1]).expand_as(labels))
    means = torch.where(sizes > 0, sums / sizes.clamp_min(1), -torch.inf)  # absent labels sort last
    order = torch.sort(means, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=x.device).expand_as(order))
    groups = rank.gather(1, labels).view_as(maps)
    with frozen_model(model), torch.inference_mode():
        target, original = original_scores(model, x, targets, softmax, batch_size)
        curve = _removal_scores(model, x, target, groups, counts, fill, batch_size)
    ratio = torch.cat([torch.ones_like(original)[:, None], curve / original[:, None]], dim=1).clone()
    steps = torch.arange(ratio.shape[1] - 1, device=x.device)
    inside = steps[None, :] < counts[:, None]
    areas = torch.where(inside, (ratio[:, 1:] + ratio[:, :-1]) / 2, 0.0).sum(dim=1)
    return {"curve": ratio.float().to(out), "irof": (1 - areas / counts).float().to(out)}
