r"""ROAD: remove and debias (Rong et al., ICML 2022), in torch, batched.

Rong, Leemann, Borisov, Kasneci and Kasneci, *A Consistent and Efficient Evaluation Strategy for
Attribution Methods*, ICML 2022, https://arxiv.org/abs/2202.00449. Deletion-style measures replace the
removed pixels by a constant, and a model then sees the *shape* of the removed region, which leaks the
attribution's ranking into the score (the "class information leakage" of the paper). ROAD removes
pixels with a **noisy linear imputation** instead: each removed pixel becomes the weighted mean of its
eight neighbours (weights 1/6 for edge neighbours, 1/12 for diagonal ones, renormalised at the image
border), with the neighbours that are themselves removed solved for jointly, plus a little Gaussian
noise. The joint solve is one sparse, symmetric positive definite linear system per image and channel;
here it is solved for a whole chunk of images at once with a multigrid-preconditioned conjugate
gradient on 3 x 3 convolutions, in torch on the images' device (pytorch-grad-cam's ``NoisyLinearImputer``
builds a SciPy sparse matrix per image and solves it on the CPU).

The measures follow pytorch-grad-cam 1.5.7 (``pytorch_grad_cam/metrics/road.py``, itself taken from the
authors' code): at percentile :math:`p` the map's threshold :math:`t_p` is the :math:`p`-th percentile of
the map (linear interpolation, as ``numpy.percentile``), and

- *most relevant first* (MoRF) keeps the pixels with :math:`M < t_p` and imputes the rest (the top
  :math:`100 - p` %); lower scores are better (removing what the map ranks first should hurt);
- *least relevant first* (LeRF) keeps the pixels with :math:`1 - M < t'_p` (:math:`t'_p` the percentile
  of :math:`1 - M`), i.e. imputes the pixels the map ranks last; higher is better;

(one difference: the reference thresholds, so a map with ties at the threshold, such as the exact zeros
a CAM's ReLU leaves, keeps fewer pixels than asked, and none at all when more than ``p`` % of the map is
zero, where its sparse solve fails; here pixels are ranked, ties in raster order, and exactly
:math:`\lceil p (HW - 1) / 100 \rceil` are kept: the same pixels as the reference's whenever the map's
values are distinct)

each as the change of the target score, ``score(imputed) - score(image)``, averaged over the
percentiles (10, 20, ..., 90 by default), and *combined* :math:`= (\text{LeRF} - \text{MoRF}) / 2`
(higher is better).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cams.metrics._inputs import check_counts, check_images_and_maps, metric_target
from cams.state import frozen_model
from cams.targets import Targets, logits_of

__all__ = ["noisy_linear_imputation", "road"]

#: Values (pixels x channels) imputed together in one solve: ~32 MiB per float64 work vector.
_SOLVE_VALUES = 1 << 22

#: Percentiles of the reference's ``ROADCombined`` / ``ROAD*RelevantFirstAverage``.
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

# Neighbour weights of the reference imputer (``neighbors_weights``): 1/6 edge, 1/12 diagonal.
_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def noisy_linear_imputation(
    x: Tensor,
    keep: Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> Tensor:
    r"""Replace the pixels where ``keep`` is false by ROAD's noisy linear imputation.

    Each removed pixel :math:`i` gets the value :math:`v_i` that solves, jointly for all removed pixels,

    .. math:: v_i = \frac{\sum_{j \in N(i)} w_{ij} v_j}{\sum_{j \in N(i)} w_{ij}}

    over its in-image 8-neighbourhood :math:`N(i)` (kept neighbours fixed, removed ones unknown;
    :math:`w = 1/6` for edge and :math:`1/12` for diagonal neighbours), then ``noise`` times a standard
    normal draw is added to it. Channels are imputed independently with the same mask. The system is
    symmetric positive definite whenever an image keeps at least one pixel; it is solved in float64
    by a multigrid-preconditioned conjugate gradient until every system's relative residual is below
    ``tol`` (10-20 iterations at any image size; a warning says so when ``max_iter`` did not get there).

    Args:
        x: images ``(B, C, H, W)``.
        keep: ``(B, H, W)`` bool, ``True`` for the pixels to keep (pytorch-grad-cam's ``mask`` > 0.5).
        noise: standard deviation of the noise added to the imputed pixels (``0.01`` as the reference,
            in the units of ``x``); ``0`` for none.
        generator: the generator the noise is drawn from (never the global RNG); default: a fresh one
            seeded with 0 on ``x``'s device.
        tol: relative residual at which the solve stops.
        max_iter: iteration cap.

    Returns:
        ``(B, C, H, W)``, ``x``'s dtype: kept pixels bitwise as in ``x``, the others imputed.

    Raises:
        ValueError: shapes that do not match, or an image that keeps no pixel (nothing to impute from).

    Example:
        >>> x = torch.zeros(1, 1, 1, 3)
        >>> x[0, 0, 0, 0], x[0, 0, 0, 2] = 1.0, 3.0
        >>> keep = torch.tensor([[[True, False, True]]])
        >>> noisy_linear_imputation(x, keep, noise=0.0)  # the middle pixel: (1 + 3) / 2
        tensor([[[[1., 2., 3.]]]])
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be images (B, C, H, W), got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
    keep = torch.as_tensor(keep, device=x.device)
    if keep.dim() == 4 and keep.shape[1] == 1:
        keep = keep[:, 0]
    if tuple(keep.shape) != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"keep must be (B, H, W) = {(x.shape[0], *x.shape[2:])}, got {tuple(keep.shape)}")
    keep = keep.bool()
    if not bool(keep.flatten(1).any(dim=1).all()):
        raise ValueError("keep: an image keeps no pixel, so there is nothing to impute the others from")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (a standard deviation), got {noise!r}")
    batch, channels, height, width = x.shape
    work = _work_dtype(x.device)
    values = x.detach().to(work).reshape(batch * channels, 1, height, width)
    known = keep[:, None].expand(batch, channels, height, width).reshape(batch * channels, 1, height, width)
    system = _MaskedSystem((~known).to(work))
    rhs = system.unknown[0] * _neighbours(values * known)
    solution = _conjugate_gradient(system, rhs, tol, max_iter)
    imputed = solution.view(batch, channels, height, width).to(x.dtype)
    if noise > 0:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        imputed = imputed + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(keep[:, None], x, imputed)


def _neighbours(z: Tensor) -> Tensor:
    """Weighted sum of each pixel's in-image 8 neighbours, ``(N, 1, H, W)`` (zero outside the image)."""
    kernel = torch.tensor(_WEIGHTS, dtype=z.dtype, device=z.device).view(1, 1, 3, 3)
    return F.conv2d(z, kernel, padding=1)


class _MaskedSystem:
    """The imputation system ``A z = u * (d z - N(z))`` on the unknown pixels ``u``, with a multigrid preconditioner.

    ``d`` is each pixel's in-image neighbour weight sum and ``N`` the weighted neighbour sum; ``A`` is
    symmetric positive definite on the unknown pixels when every connected hole touches a known pixel.
    The preconditioner is one symmetric V-cycle: damped Jacobi smoothing (two sweeps before and after),
    restriction by 2 x 2 sums and prolongation by repetition (its transpose), the same operator
    rediscretised on each coarser grid (a coarse pixel is unknown when its four children are), and an
    exact solve (LU of the dense coarse matrix, factored once) on the coarsest grid of at most 8 x 8.
    Conjugate gradient then converges in about 10-20 iterations whatever the image size (plain Jacobi
    preconditioning needs a number growing with the size of the holes: ~70 at 16 x 16, ~240 at 64 x 64,
    ~740 at 224 x 224).
    """

    _OMEGA = 0.8  # damped Jacobi: D^-1 A has eigenvalues in (0, 2]
    _COARSEST = 64  # pixels of the grid solved exactly
    _SHIFT = 1e-2

    def __init__(self, unknown: Tensor) -> None:
        self.unknown: list[Tensor] = []
        self.degree: list[Tensor] = []
        level = unknown
        while True:
            height, width = level.shape[-2:]
            ones = torch.ones(1, 1, height, width, dtype=unknown.dtype, device=unknown.device)
            self.unknown.append(level)
            self.degree.append(_neighbours(ones))
            if height * width <= self._COARSEST or min(height, width) <= 2:
                break
            level = -F.max_pool2d(-level, 2, ceil_mode=True)  # unknown only if all four children are
        self._coarse = self._factor(len(self.unknown) - 1)

    def _factor(self, level: int) -> tuple[Tensor, Tensor]:
        """LU factors of the dense matrix of the coarsest grid (identity rows on known pixels)."""
        unknown = self.unknown[level]
        systems, _, height, width = unknown.shape
        pixels = height * width
        basis = torch.eye(pixels, dtype=unknown.dtype, device=unknown.device).view(pixels, 1, height, width)
        columns = self.degree[level] * basis - _neighbours(basis)  # (pixels, 1, h, w): A e_j before masking
        flat_unknown = unknown.view(systems, pixels)
        dense = flat_unknown[:, :, None] * columns.view(pixels, pixels).T[None]  # rows: unknown pixels only
        dense = dense * flat_unknown[:, None, :] + torch.diag_embed(1 - flat_unknown)
        # A coarse grid may have no known pixel left, where the operator is singular (constants): a small
        # shift keeps the preconditioner positive definite; conjugate gradient corrects for it.
        shift = self._SHIFT * self.degree[level].view(1, pixels) * flat_unknown
        return torch.linalg.lu_factor(dense + torch.diag_embed(shift))

    def apply(self, z: Tensor, level: int = 0) -> Tensor:
        return self.unknown[level] * (self.degree[level] * z - _neighbours(z))

    def _smooth(self, e: Tensor, r: Tensor, level: int) -> Tensor:
        return e + self._OMEGA * self.unknown[level] / self.degree[level] * (r - self.apply(e, level))

    def precondition(self, r: Tensor, level: int = 0) -> Tensor:
        """One V-cycle for ``A e = r`` from ``e = 0``: a symmetric positive definite approximate inverse."""
        if level == len(self.unknown) - 1:
            solution = torch.linalg.lu_solve(*self._coarse, r.flatten(1)[:, :, None])
            return solution.view_as(r) * self.unknown[level]
        e = self._smooth(self._smooth(torch.zeros_like(r), r, level), r, level)
        residual = r - self.apply(e, level)
        height, width = residual.shape[-2:]
        coarse = 4 * F.avg_pool2d(F.pad(residual, (0, width % 2, 0, height % 2)), 2) * self.unknown[level + 1]
        correction = self.precondition(coarse, level + 1)
        e = e + self.unknown[level] * F.interpolate(correction, scale_factor=2, mode="nearest")[..., :height, :width]
        return self._smooth(self._smooth(e, r, level), r, level)


def _conjugate_gradient(system: _MaskedSystem, rhs: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solve ``system.apply(z) = rhs`` for a batch of SPD systems ``(N, 1, H, W)`` (multigrid-preconditioned CG)."""
    tiny = torch.finfo(rhs.dtype).tiny

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(dim=(1, 2, 3), keepdim=True)

    z = torch.zeros_like(rhs)
    residual = rhs
    scale = dot(rhs, rhs).sqrt().clamp_min(tiny)
    preconditioned = system.precondition(residual)
    direction = preconditioned
    rz = dot(residual, preconditioned)
    worst = float((dot(residual, residual).sqrt() / scale).max())
    for _ in range(max_iter):
        if worst <= tol:
            break
        product = system.apply(direction)
        curvature = dot(direction, product)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(tiny), 0.0)
        z = z + alpha * direction
        residual = residual - alpha * product
        preconditioned = system.precondition(residual)
        rz_next = dot(residual, preconditioned)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(tiny), 0.0)
        direction = preconditioned + beta * direction
        rz = rz_next
        worst = float((dot(residual, residual).sqrt() / scale).max())
    if worst > tol:
        warnings.warn(
            f"noisy_linear_imputation: the linear solve stopped after {max_iter} iterations with a relative "
            f"residual of {worst:.2e} (> tol={tol:.0e}); pass a larger max_iter for an exact imputation",
            RuntimeWarning,
            stacklevel=3,
        )
    return z


def _keep_masks(maps: Tensor, percentiles: Sequence[float], most_relevant_first: bool) -> Tensor:
    """``(P, B, H, W)`` bool: the pixels kept at each percentile (the reference's ``Remove*RelevantFirst``).

    At percentile ``p`` the ``ceil(p / 100 * (HW - 1))`` pixels ranked lowest (MoRF: smallest map values;
    LeRF: largest) are kept, ties in raster order: for maps with distinct values this is exactly the
    reference's ``map < numpy.percentile(map, p)`` (linear interpolation).
    """
    batch = maps.shape[0]
    flat = maps.flatten(1)
    pixels = flat.shape[1]
    order = torch.sort(flat if most_relevant_first else -flat, dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=maps.device).expand(batch, -1))
    counts = torch.tensor(
        [math.ceil(round(p / 100 * (pixels - 1), 9)) for p in percentiles], device=maps.device
    )
    return (rank[None] < counts.view(-1, 1, 1)).view(len(percentiles), *maps.shape)


def road(
    model: torch.nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Targets = None,
    percentiles: Sequence[float] = PERCENTILES,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""ROAD scores of maps: most relevant first, least relevant first and combined, per image.

    See the module docstring for the paper and the definitions. ``2 P`` imputed copies of every image
    (``P`` percentiles) are imputed together (as many as fit in ~4 M values per solve) and scored
    ``batch_size`` at a time, after the originals.

    Args:
        model: classifier; run under ``torch.inference_mode()`` in eval mode and left as found.
        x: images ``(B, C, H, W)`` as the model takes them (normalised).
        maps: ``(B, H, W)`` in ``[0, 1]``; resized (bilinear) to ``x``'s size if needed.
        targets: as in :func:`cams.metrics.average_drop` (``None``: each image's predicted class).
        percentiles: the percentiles :math:`p` (in ``(0, 100)``) averaged over.
        noise: imputation noise (see :func:`noisy_linear_imputation`); ``0`` for a deterministic score.
        generator: where the noise comes from (never the global RNG); default: seeded with 0.
        softmax: score softmax probabilities (default, like the other faithfulness measures here) or
            the raw output (pytorch-grad-cam's ``ClassifierOutputTarget``).
        batch_size: most images per forward (default 8 on the CPU, 64 elsewhere).

    Returns:
        ``{"morf", "lerf", "combined"}``, each ``(B,)`` float32 on ``x``'s device: mean score change with
        the most / least relevant pixels imputed (lower / higher is better), and ``(lerf - morf) / 2``
        (higher is better).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False))
        >>> with torch.no_grad():  # the score is the pixel at row 1, column 2
        ...     _ = model[1].weight.copy_(torch.eye(16)[6])
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> x[0, 0, 1, 2] = 1.0
        >>> on_pixel = torch.zeros(1, 4, 4)
        >>> on_pixel[0, 1, 2] = 1.0
        >>> result = road(model, x, on_pixel, percentiles=[50], noise=0.0, softmax=False)
        >>> [round(float(result[k]), 3) for k in ("morf", "lerf", "combined")]
        [-1.0, 0.0, 0.5]
    """
    device = next((t.device for t in (*model.parameters(), *model.buffers())), x.device)
    if batch_size is None:
        batch_size = 8 if device.type == "cpu" else 64
    check_counts(1, batch_size)
    percentiles = [float(p) for p in percentiles]
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles must be numbers in (0, 100), e.g. {list(PERCENTILES)}; got {percentiles!r}")
    maps = check_images_and_maps(x, maps).float()
    out_device = x.device
    x, maps = x.detach().to(device), maps.to(device)
    batch = x.shape[0]
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    target, predicted = metric_target(targets, batch, softmax, device)
    images = torch.arange(batch, device=device)

    with frozen_model(model), torch.inference_mode():
        original = torch.empty(batch, device=device)
        for start in range(0, batch, batch_size):
            rows = images[start : start + batch_size]
            output = model(x[rows])
            if predicted is not None:
                predicted[rows] = logits_of(output, "targets").argmax(dim=1).to(predicted.device)
            original[rows] = target(output, rows).float()
        # rows: (order, percentile, image); order 0 = MoRF, 1 = LeRF
        keep = torch.cat([_keep_masks(maps, percentiles, True), _keep_masks(maps, percentiles, False)])
        keep = keep.reshape(-1, *maps.shape[1:])
        row_image = images.repeat(2 * len(percentiles))
        scores = torch.empty(len(row_image), device=device)
        per_solve = max(batch_size, _SOLVE_VALUES // x[0].numel())  # few large solves: CG's cost is per step
        for solve_start in range(0, len(row_image), per_solve):
            solved = torch.arange(solve_start, min(solve_start + per_solve, len(row_image)), device=device)
            imputed = noisy_linear_imputation(x[row_image[solved]], keep[solved], noise, generator)
            for start in range(0, len(solved), batch_size):
                rows = solved[start : start + batch_size]
                scores[rows] = target(model(imputed[start : start + batch_size]), row_image[rows]).float()
    change = (scores.view(2, len(percentiles), batch) - original).mean(dim=1).clone()
    morf, lerf = change[0].to(out_device), change[1].to(out_device)
    return {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}
