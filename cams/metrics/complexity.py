r"""Complexity: how concentrated is a map? Sparseness (Gini index), complexity (entropy), effective complexity.

These read the maps alone (no model, no object): a map that puts its relevance on few pixels is easier to read.
Each takes maps ``(B, ...)`` (any spatial shape: ``(B, H, W)``, ``(B, 1, H, W)``, volumes ``(B, D, H, W)``),
works on the magnitudes :math:`a = |M|` flattened to :math:`n` values per map, in float64, and returns ``(B,)``
float32. The defaults equal Quantus 0.6.0's (``abs=True``, ``normalise=True``), with one difference in the
normalisation: Quantus' ``normalise_by_max`` divides by the largest magnitude of the **whole batch**, this by
each map's own, so that an image's value does not depend on the images beside it (and on a process's share of a
batch). The two agree whenever every map peaks at the same value (the engine's maps all peak at ``1``), and
only :func:`effective_complexity` and :func:`sparseness` with ``epsilon`` depend on it: the Gini index and the
entropy are unchanged by scaling a map.

A **constant map** scores sparseness ``0``, complexity :math:`\ln n` and effective complexity :math:`n` (the
least concentrated values); an **all-zero map** (what the engine returns for a constant one) is treated as
constant by the first two, and has effective complexity ``0`` (no value above the threshold).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cams.metrics.ranking import sorted_rows

__all__ = ["complexity", "effective_complexity", "sparseness"]


def _magnitudes(maps: Tensor) -> Tensor:
    """``|maps|`` as ``(B, n)`` in the maps' floating dtype."""
    if not isinstance(maps, Tensor) or maps.dim() < 2:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a batch (B, H, W) (or (B, D, H, W)), got {shape}; for one map use maps[None]")
    flat = maps.flatten(1).abs()
    return flat if flat.is_floating_point() else flat.float()


def _checked(values: Tensor) -> Tensor:
    """``values`` (a reduction of each map), refused where a map held ``nan`` (it propagates into them)."""
    if bool(torch.isnan(values).any()):
        raise ValueError("maps contain nan; fix the maps (torch.nan_to_num) first")
    return values


def sparseness(maps: Tensor, *, epsilon: float = 0.0) -> Tensor:
    r"""Sparseness: the Gini index of each map's magnitudes.

    Chalasani, Chen, Chowdhury, Wu and Jha, *Concise Explanations of Neural Networks using Adversarial Training*,
    ICML 2020, https://arxiv.org/abs/1810.06583. With the magnitudes sorted increasingly, :math:`a_{(1)} \le
    \dots \le a_{(n)}`:

    .. math:: G = \frac{\sum_{i=1}^{n} (2i - n - 1)\, a_{(i)}}{n \sum_{i=1}^{n} a_{(i)}}

    ``0`` for a constant map (every value equal), :math:`1 - 1/n` for a single non-zero pixel. Quantus 0.6.0's
    ``Sparseness()`` adds ``1e-7`` to every (normalised) value first, which lowers the index of maps with little
    mass (by ``~n 1e-7 / \sum a``: ``1e-4`` relative for a 224² map with 50 pixels' worth of mass) and makes an
    all-zero map score ``0``; ``epsilon=1e-7`` reproduces it.

    Args:
        maps: ``(B, ...)`` maps, any sign (magnitudes are scored).
        epsilon: added to each magnitude after dividing the map by its peak (Quantus: ``1e-7``).

    Returns:
        ``(B,)`` float32 in ``[0, 1)``; higher is sparser (better).

    Example:
        >>> one_pixel = torch.zeros(1, 2, 2)
        >>> one_pixel[0, 0, 0] = 1.0
        >>> sparseness(torch.cat([one_pixel, torch.ones(1, 2, 2)]))   # 1 - 1/4, and a constant map
        tensor([0.7500, 0.0000])
    """
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0 (Quantus adds 1e-7), got {epsilon!r}")
    ordered = sorted_rows(_magnitudes(maps))[0].double()  # nan sorts last
    peak = _checked(ordered[:, -1:])
    values = ordered / torch.where(peak > 0, peak, 1.0) + epsilon
    n = values.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=values.device, dtype=values.dtype) - n - 1
    total = values.sum(dim=1)
    gini = (values * weights).sum(dim=1) / (n * torch.where(total > 0, total, 1.0))
    return torch.where(total > 0, gini, 0.0).float()


def complexity(maps: Tensor) -> Tensor:
    r"""Complexity: the entropy of each map's share of relevance per pixel.

    Bhatt, Weller and Moura, *Evaluating and Aggregating Feature-based Model Explanations*, IJCAI 2020,
    https://arxiv.org/abs/2005.00631. With :math:`p_i = a_i / \sum_j a_j`:

    .. math:: H = -\sum_{i=1}^{n} p_i \ln p_i \qquad (0 \ln 0 = 0)

    ``0`` for a single non-zero pixel, :math:`\ln n` (the most) for a constant map. Equals Quantus 0.6.0's
    ``Complexity()`` (natural logarithm; it adds ``1e-12`` inside the log, a change below ``n 10^{-12}``); an
    all-zero map, where Quantus returns ``nan``, is treated as constant (:math:`\ln n`).

    Args:
        maps: ``(B, ...)`` maps, any sign (magnitudes are scored).

    Returns:
        ``(B,)`` float32 in ``[0, ln n]``; lower is better.

    Example:
        >>> maps = torch.zeros(2, 2, 2)
        >>> maps[0, 0, :] = 1.0                    # two pixels: ln 2
        >>> maps[1] = 1.0                          # four: ln 4
        >>> complexity(maps)
        tensor([0.6931, 1.3863])
    """
    magnitudes = _magnitudes(maps)
    total = _checked(magnitudes.sum(dim=1, dtype=torch.float64))
    # H = ln T - sum(a ln a) / T for p = a / T: one pass, a ln a in the maps' dtype, sums in float64
    spread = torch.special.xlogy(magnitudes, magnitudes).sum(dim=1, dtype=torch.float64)
    most = math.log(magnitudes.shape[1])
    entropy = (torch.log(total) - spread / torch.where(total > 0, total, 1.0)).clamp(0.0, most)  # rounding
    return torch.where(total > 0, entropy, most).float()


def effective_complexity(maps: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Effective complexity: how many pixels carry more than ``eps`` of the map's peak.

    Nguyen and Rodríguez Martínez, *On quantitative aspects of model interpretability*, arXiv 2020,
    https://arxiv.org/abs/2007.07584:

    .. math:: \operatorname{EC} = \left|\{ i : a_i / \max_j a_j > \varepsilon \}\right|

    Equals Quantus 0.6.0's ``EffectiveComplexity(eps=1e-5)`` with each map divided by its own peak (Quantus
    divides by the batch's, see the module docstring). An all-zero map counts ``0``; a constant one, :math:`n`.

    Args:
        maps: ``(B, ...)`` maps, any sign (magnitudes are scored).
        eps: the threshold, a fraction of the peak, in ``[0, 1)``.

    Returns:
        ``(B,)`` float32 counts in ``[0, n]``; lower is better.

    Example:
        >>> maps = torch.tensor([[[1.0, 0.5], [1e-6, 0.0]]])
        >>> effective_complexity(maps)
        tensor([2.])
    """
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be a fraction of the map's peak in [0, 1), got {eps!r}; Quantus uses 1e-5")
    magnitudes = _magnitudes(maps)
    peak = _checked(magnitudes.amax(dim=1, keepdim=True))
    return (magnitudes / torch.where(peak > 0, peak, 1.0) > eps).sum(dim=1).float()
