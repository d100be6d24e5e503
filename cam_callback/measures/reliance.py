r"""Reliance by intervention: does the model's score need the region marked spurious?

A map's attention on a region says the region is *visible* to the method, not that the model *uses* it:
attribution in watermarked areas follows how salient the watermark is (R² ≥ .45) and not whether it carries
the class (R² ≤ .03; Clark et al. 2026, https://arxiv.org/abs/2602.09238). Reliance asks the model instead:
each image's spurious region :math:`S_i` is removed with ROAD's noisy linear imputation (Rong et al. 2022,
https://arxiv.org/abs/2202.00449, :func:`cams.metrics.noisy_linear_imputation`: every removed pixel becomes
the weighted mean of its neighbours, solved jointly, plus noise of 0.01 in the image's units), and so is a
*control* region :math:`C_i` of the same shape and area placed, at a seeded random place, where it covers
neither the object nor :math:`S_i`. With :math:`p_i(x)` the softmax probability of the explained class
:math:`c_i` and :math:`\hat y(x)` the predicted class, the drop is relative, as in Average Drop (Chattopadhay
et al. 2018, https://arxiv.org/abs/1710.11063), without its clamp at zero (so that noise averages out) and
floored at :math:`-1` (a weak score that rises when a region goes counts no more than a score that vanishes):

.. math::

    d_i(R) = \max\Big(-1, \frac{p_i(x_i) - p_i(x_i^{\setminus R})}{p_i(x_i)}\Big), \qquad
    \text{reliance}_i = d_i(S_i), \qquad \text{control}_i = d_i(C_i), \qquad
    \text{vs\_control}_i = \text{reliance}_i - \text{control}_i,

    \text{flips}_i = [\hat y(x_i^{\setminus S}) \ne \hat y(x_i)], \qquad
    \text{control\_flips}_i = [\hat y(x_i^{\setminus C}) \ne \hat y(x_i)].

A model that reads only the marker loses its score when the marker goes (reliance near 1, control near 0);
a model that ignores it loses nothing either way (both near 0). The drop is relative because a model that
learns a shortcut is often unsure on held-out images, where the marker contradicts the object: a probability
of 0.15 that falls to 0.02 when the marker goes is a drop of 0.13, but of 87 % of what the model gave. The
control takes out what removing *any* patch of that size costs (imputation is not perfect), so ``vs_control``
is a difference, not a ratio: for a model that uses neither region both drops are near zero, where a ratio
would be noise over noise.

The originals, the images without :math:`S` and the images without :math:`C` go through the model in one
batched forward. The values are ``nan`` where they are undefined: an image without a spurious region, a
region that covers the whole image (nothing to impute from), or no free place for the control.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cams import metrics
from cams.state import frozen_model
from cams.targets import readable_logits

__all__ = ["IMPUTATION_NOISE", "box_masks", "control_regions", "reliance"]

IMPUTATION_NOISE = 0.01
"""Standard deviation of the noise added to the imputed pixels, in the images' units (ROAD's default)."""


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """``(k, H, W)`` bool masks of boxes ``(k, 4)`` ``x0, y0, x1, y1`` in pixels (pixel ``i`` covers ``[i, i+1)``,
    as :func:`cams.metrics.pointing_game` reads them).

    Example:
        >>> box_masks(torch.tensor([[1, 0, 3, 1]]), 2, 4).int().tolist()
        [[[0, 1, 1, 0], [0, 0, 0, 0]]]
    """
    boxes = boxes.float()
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32).view(1, 1, width)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32).view(1, height, 1)
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (xs >= x0.floor()) & (xs < x1.ceil()) & (ys >= y0.floor()) & (ys < y1.ceil())


def control_regions(regions: Tensor, forbidden: Tensor, draws: Tensor) -> Tensor:
    """Each region moved, whole, to a place where it overlaps nothing forbidden; which place, by ``draws``.

    The free places (top-left corners of the region's bounding box where the moved region stays inside the
    image and covers no forbidden pixel) are found for the whole batch with one grouped convolution; image
    ``i`` takes the ``floor(draws[i] * n_i)``-th of its ``n_i`` free places in raster order, and the region is
    drawn there with one grouped transposed convolution: the same shape and area as the region.

    Args:
        regions: ``(k, H, W)`` bool, the regions to move (the spurious regions).
        forbidden: ``(k, H, W)`` bool, where the moved region may not lie (the object and the region itself).
        draws: ``(k,)`` floats in ``[0, 1)``.

    Returns:
        ``(k, H, W)`` bool on ``regions``' device; all false where the region is empty or has no free place.

    Example:
        >>> regions = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> regions[0, 0, 0] = True
        >>> forbidden = regions.clone()
        >>> forbidden[0, :, :3] = True                          # only the last column is free
        >>> control_regions(regions, forbidden, torch.tensor([0.9]))[0].nonzero().tolist()
        [[3, 3]]
    """
    k, height, width = regions.shape
    device = regions.device
    if k == 0:
        return regions.clone()
    present = regions.flatten(1).any(dim=1)
    rows, cols = regions.any(dim=2), regions.any(dim=1)  # (k, H), (k, W)
    y0 = rows.float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    h = torch.where(present, height - rows.flip(1).float().argmax(dim=1) - y0, 0)
    w = torch.where(present, width - cols.flip(1).float().argmax(dim=1) - x0, 0)
    kh, kw = max(int(h.max()), 1), max(int(w.max()), 1)
    ar_h, ar_w = torch.arange(kh, device=device), torch.arange(kw, device=device)
    index_y = (y0[:, None] + ar_h).clamp(max=height - 1)
    index_x = (x0[:, None] + ar_w).clamp(max=width - 1)
    inside = (ar_h < h[:, None])[:, :, None] & (ar_w < w[:, None])[:, None, :]
    crop = regions[torch.arange(k, device=device)[:, None, None], index_y[:, :, None], index_x[:, None, :]] & inside
    kernel = crop.float()[:, None]  # (k, 1, kh, kw): each region cut to its bounding box, top-left aligned
    padded = F.pad(forbidden.float()[None], (0, kw - 1, 0, kh - 1))
    overlap = F.conv2d(padded, kernel, groups=k)[0]  # (k, H, W): forbidden pixels covered at each place
    ty = torch.arange(height, device=device).view(1, height, 1)
    tx = torch.arange(width, device=device).view(1, 1, width)
    fits = (ty + h.view(-1, 1, 1) <= height) & (tx + w.view(-1, 1, 1) <= width)
    free = ((overlap < 0.5) & fits & present.view(-1, 1, 1)).flatten(1)
    count = free.sum(dim=1)
    choice = (draws.to(device).float().clamp(0, 1) * count).floor().long().clamp(max=(count - 1).clamp_min(0))
    chosen = free & (free.cumsum(dim=1) == (choice + 1)[:, None])
    placed = F.conv_transpose2d(chosen.float().view(1, k, height, width), kernel, groups=k)
    return (placed[0, :, :height, :width] > 0.5) & (count > 0).view(-1, 1, 1)


def reliance(
    model: nn.Module,
    x: Tensor,
    regions: Tensor,
    objects: Tensor,
    classes: Tensor,
    *,
    generator: torch.Generator | None = None,
    draws: Tensor | None = None,
    noise: Tensor | None = None,
    forward_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, Tensor]:
    """How much of each image's explained-class probability needs its region, against an equal-area control.

    See the module docstring for the formulas. One forward of ``3 k`` images (originals, without the region,
    without the control), in eval mode without autograd, the model left as found.

    Args:
        model: a classifier whose output has ``(k, classes)`` logits (a tensor, a dict's ``"logits"``, ...).
        x: ``(k, C, H, W)`` images as the model takes them.
        regions: ``(k, H, W)`` bool spurious regions (an empty one: the image's values are ``nan``).
        objects: ``(k, H, W)`` bool object masks (the control never covers them); :func:`box_masks` for boxes.
        classes: ``(k,)`` the class each image is explained for.
        generator: where the control places and the imputation noise are drawn from when ``draws`` and
            ``noise`` are not given (never the global RNG); default: a fresh one seeded with 0.
        draws: ``(k,)`` floats in ``[0, 1)`` choosing each control's place (see :func:`control_regions`).
        noise: ``(2, k, C, H, W)`` standard normal draws for the imputed pixels of the two removals; scaled by
            :data:`IMPUTATION_NOISE`.
        forward_context: entered around the forward (a Trainer's precision context).

    Returns:
        ``"reliance"``, ``"control"``, ``"vs_control"``, ``"flips"``, ``"control_flips"``: each ``(k,)``
        float32 on ``x``'s device, ``nan`` where undefined.

    Raises:
        ValueError: shapes that do not match; an output without ``(k, classes)`` logits.

    Example:
        >>> from torch import nn
        >>> class ReadsCorner(nn.Module):      # class 1 when the top-left pixel is bright, else class 0
        ...     def forward(self, x):
        ...         bright = 20 * (x[:, 0, 0, 0] - 0.5)
        ...         return torch.stack([-bright, bright], dim=1)
        >>> x = torch.zeros(2, 1, 8, 8)
        >>> x[:, 0, 0, 0] = 1.0
        >>> marker = torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> marker[:, 0, 0] = True
        >>> digit = torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> digit[:, 4:, 4:] = True
        >>> out = reliance(ReadsCorner(), x, marker, digit, torch.tensor([1, 1]))
        >>> [round(float(out[key][0]), 2) for key in ("reliance", "control", "flips")]
        [1.0, 0.0, 1.0]
    """
    k, _, height, width = x.shape
    for name, mask in (("regions", regions), ("objects", objects)):
        if tuple(mask.shape) != (k, height, width):
            raise ValueError(f"{name} must be (k, H, W) = {(k, height, width)} like x, got {tuple(mask.shape)}")
    device = x.device
    regions, objects = regions.to(device).bool(), objects.to(device).bool()
    if draws is None or noise is None:
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(0)
        draws = torch.rand(k, generator=generator, device=device) if draws is None else draws
        if noise is None:
            noise = torch.randn((2, *x.shape), generator=generator, device=device, dtype=torch.float32)
    controls = control_regions(regions, objects | regions, draws)
    removed = torch.cat([regions, controls])  # (2k, H, W)
    defined = removed.flatten(1).any(dim=1) & ~removed.flatten(1).all(dim=1)
    keep = ~removed | ~defined.view(-1, 1, 1)  # an undefined removal keeps the image as it is
    doubled = torch.cat([x, x]).detach()
    with torch.no_grad():
        imputed = metrics.noisy_linear_imputation(doubled, keep, noise=0.0)
        noisy = imputed + (IMPUTATION_NOISE * noise.to(device).reshape(doubled.shape) * ~keep[:, None]).to(x.dtype)
    with frozen_model(model), torch.no_grad(), forward_context():
        output = model(torch.cat([x.detach(), noisy]))
    logits = readable_logits(output)
    if logits is None or logits.shape[0] != 3 * k:
        raise ValueError("reliance needs a classifier whose output has (N, classes) logits; the model returned "
                         f"{type(output).__name__}")  # fmt: skip
    probabilities = logits.float().softmax(dim=1)
    rows = torch.arange(3 * k, device=logits.device)
    p = probabilities[rows, classes.to(logits.device).long().repeat(3)].view(3, k)
    predicted = logits.argmax(dim=1).view(3, k)
    nan = torch.tensor(float("nan"), device=logits.device)
    ok = defined.to(logits.device).view(2, k)
    relative = ((p[0] - p[1:]) / p[0].clamp_min(torch.finfo(p.dtype).tiny)).clamp_min(-1.0)
    drop = torch.where(ok, relative, nan)
    flips = torch.where(ok, (predicted[1:] != predicted[0]).float(), nan)
    values = {
        "reliance": drop[0],
        "control": drop[1],
        "vs_control": drop[0] - drop[1],
        "flips": flips[0],
        "control_flips": flips[1],
    }
    return {key: value.float().to(device) for key, value in values.items()}
