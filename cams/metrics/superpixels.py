"""Superpixels for :func:`cams.metrics.irof`: a batched SLIC in torch, on the images' device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["slic"]

_FAR = 1e17  # a padded centre's value: its squared distance (~1e34) loses to any real one and stays finite


def slic(x: Tensor, n_segments: int = 100, compactness: float = 0.5, iterations: int = 10) -> Tensor:
    r"""SLIC superpixels of a batch of images: local k-means on colour and position.

    Achanta et al., *SLIC Superpixels Compared to State-of-the-Art Superpixel Methods*, IEEE TPAMI 2012,
    https://doi.org/10.1109/TPAMI.2012.120. Centres start on a regular grid of about ``n_segments`` cells
    (step :math:`S = \sqrt{HW / n}`); each of ``iterations`` rounds assigns every pixel to the nearest of
    the 3 x 3 centres around its grid cell by

    .. math:: D^2 = \frac{\lVert c_p - c_k \rVert^2}{\sigma^2} + m^2 \frac{\lVert p - p_k \rVert^2}{S^2}

    (:math:`c` the channel values, :math:`\sigma` the image's standard deviation over all of them,
    :math:`m` = ``compactness``) and moves each centre to the mean of its pixels. Labels are renumbered
    ``0 .. L - 1`` per image in order of first centre. Unlike ``skimage.segmentation.slic`` there is no
    conversion to Lab and connectivity is not enforced (a label may cover two pieces); pass skimage's segments
    to :func:`cams.metrics.irof` to reproduce Quantus' numbers.

    Args:
        x: images ``(B, C, H, W)``.
        n_segments: about how many superpixels.
        compactness: weight of position against colour (larger: squarer superpixels).
        iterations: assignment rounds.

    Returns:
        ``(B, H, W)`` long labels on ``x``'s device.

    Example:
        >>> x = torch.zeros(1, 1, 8, 8)
        >>> x[..., 4:] = 1.0
        >>> labels = slic(x, n_segments=4)
        >>> labels.unique().tolist(), bool((labels[0, :, :4] != labels[0, :, 4:]).all())
        ([0, 1, 2, 3], True)
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be images (B, C, H, W), got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
    if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1:
        raise ValueError(f"n_segments must be a positive int, got {n_segments!r}")
    batch, _, height, width = x.shape
    step = math.sqrt(height * width / n_segments)
    rows, cols = max(1, round(height / step)), max(1, round(width / step))
    work = x.detach().float().flatten(2)  # (B, C, HW)
    scale = work.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    ys = torch.arange(height, device=x.device, dtype=torch.float32).repeat_interleave(width)
    xs = torch.arange(width, device=x.device, dtype=torch.float32).repeat(height)
    weight = compactness / step
    features = torch.cat([work / scale, (weight * torch.stack([ys, xs]))[None].expand(batch, 2, -1)], dim=1)
    cell_row = (ys * rows / height).long().clamp_max(rows - 1)
    cell_col = (xs * cols / width).long().clamp_max(cols - 1)
    centre_y = (torch.arange(rows, device=x.device) + 0.5) * height / rows
    centre_x = (torch.arange(cols, device=x.device) + 0.5) * width / cols
    seed_pixels = (centre_y.long()[:, None] * width + centre_x.long()[None, :]).flatten()
    features = features.transpose(0, 1).contiguous()  # (C + 2, B, HW): one contiguous plane per feature
    planes = features.shape[0]
    centres = features[:, :, seed_pixels]  # (C + 2, B, K)
    # each pixel's 3 x 3 candidate centres, as indices into the grid of centres padded by one cell far away
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    padded = [(cell_row + 1 + dr) * (cols + 2) + (cell_col + 1 + dc) for dr, dc in offsets]
    inside = [(cell_row + dr).clamp(0, rows - 1) * cols + (cell_col + dc).clamp(0, cols - 1) for dr, dc in offsets]
    count = rows * cols
    labels = torch.zeros(batch, height * width, dtype=torch.long, device=x.device)
    for _ in range(iterations):
        grid = F.pad(centres.view(planes * batch, rows, cols), (1, 1, 1, 1), value=_FAR).view(planes, batch, -1)
        best = torch.full((batch, height * width), torch.inf, device=x.device)
        for index, label in zip(padded, inside, strict=True):
            near = grid.index_select(2, index)  # (C + 2, B, HW)
            distance = (features[0] - near[0]) ** 2
            for plane in range(1, planes):
                distance += (features[plane] - near[plane]) ** 2
            closer = distance < best
            best = torch.minimum(best, distance)
            labels = torch.where(closer, label, labels)
        sums = torch.zeros(planes, batch, count, device=x.device)
        sums.scatter_add_(2, labels[None].expand_as(features), features)
        sizes = torch.zeros(batch, count, device=x.device).scatter_add_(1, labels, torch.ones_like(best))
        centres = torch.where(sizes > 0, sums / sizes.clamp_min(1), centres)
    present = torch.zeros(batch, count, dtype=torch.long, device=x.device).scatter_(1, labels, 1)
    renumbered = torch.cumsum(present, dim=1) - 1
    return renumbered.gather(1, labels).view(batch, height, width)
