"""Statistics of maps the randomisation measures compare: structural similarity and discrete entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["discrete_entropy", "ssim"]


def ssim(a: Tensor, b: Tensor, window: int = 7, flat: bool = False) -> Tensor:
    r"""Mean structural similarity of each pair of maps (Wang et al., 2004), uniform windows, as scikit-image.

    .. math:: \text{SSIM} = \frac{(2\mu_a\mu_b + C_1)(2\sigma_{ab} + C_2)}{(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2
              + \sigma_b^2 + C_2)}, \quad C_1 = (0.01 L)^2, \; C_2 = (0.03 L)^2

    averaged over every ``window`` x ``window`` window inside the map (sample covariances), with :math:`L`
    the range of the two maps together: ``skimage.metrics.structural_similarity(a, b, data_range=L)``.
    ``flat=True`` slides a 1-D window over the flattened map instead (what Quantus' ``ssim`` does with its
    batched, flattened maps). Two equal constant maps give 1 (skimage: ``nan``).

    Args:
        a, b: maps ``(B, H, W)``.
        window: odd side of the windows.
        flat: compare the flattened maps with 1-D windows.

    Returns:
        ``(B,)`` float64 in ``[-1, 1]``.
    """
    a, b = (m.double().flatten(1)[:, None] if flat else m.double()[:, None] for m in (a, b))
    if min(a.shape[2:]) < window:
        raise ValueError(f"ssim: the maps ({tuple(a.shape[2:])}) are smaller than the {window}-pixel window")
    pool = F.avg_pool1d if flat else F.avg_pool2d
    both = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
    data_range = (both.max(dim=1).values - both.min(dim=1).values).view(-1, *[1] * (a.dim() - 1))
    points = window ** (1 if flat else 2)
    norm = points / (points - 1)
    ux, uy = pool(a, window, 1), pool(b, window, 1)
    vx = norm * (pool(a * a, window, 1) - ux * ux)
    vy = norm * (pool(b * b, window, 1) - uy * uy)
    vxy = norm * (pool(a * b, window, 1) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    same = (data_range.flatten() == 0) & (a.flatten(1) == b.flatten(1)).all(dim=1)
    return torch.where(same, 1.0, s.flatten(1).mean(dim=1))


def discrete_entropy(maps: Tensor, n_bins: int = 100) -> Tensor:
    r"""Entropy of each map's histogram of ``n_bins`` equal bins between its minimum and maximum.

    .. math:: H = -\sum_k p_k \log p_k, \qquad p_k = \frac{\#\{i : M_i \in \text{bin}_k\}}{HW}

    Bins as ``numpy.histogram(map, bins=n_bins)`` (edges in the map's dtype, the last bin closed; a constant map
    gets the range ``value ± 0.5``) and the entropy as ``scipy.stats.entropy`` (Quantus' ``discrete_entropy``).

    Example:
        >>> discrete_entropy(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), n_bins=2)  # two equal bins: log 2
        tensor([0.6931], dtype=torch.float64)
    """
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    same = low == high
    low, high = torch.where(same, low - 0.5, low), torch.where(same, high + 0.5, high)
    steps = torch.arange(n_bins + 1, device=flat.device, dtype=flat.dtype)
    edges = low[:, None] + steps * ((high - low) / n_bins)[:, None]
    edges[:, -1] = high
    index = torch.searchsorted(edges.contiguous(), flat.contiguous(), right=True) - 1
    counts = torch.zeros(flat.shape[0], n_bins, dtype=torch.float64, device=flat.device)
    counts.scatter_add_(1, index.clamp(0, n_bins - 1), torch.ones_like(flat, dtype=torch.float64))
    p = counts / counts.sum(dim=1, keepdim=True)
    return -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0.0)).sum(dim=1)
