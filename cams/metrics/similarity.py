"""Similarity and drift of two sets of maps: cosine similarity, Spearman rank correlation, drift."""

from __future__ import annotations

import torch
from torch import Tensor

from cams.metrics._inputs import as_maps
from cams.names import close_matches

__all__ = ["cosine_similarity", "drift", "spearman"]

_MEASURES = ("cosine", "spearman")


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    # volumes (B, D, H, W) compare voxel by voxel, like maps pixel by pixel
    a = as_maps(a, "a", volumes=isinstance(a, Tensor) and a.dim() == 4 and a.shape[1] != 1)
    b = as_maps(b, "b", volumes=isinstance(b, Tensor) and b.dim() == 4 and b.shape[1] != 1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.flatten(1).to(dtype), b.flatten(1).to(dtype)


def _wide_float(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (exact ranks up to 2**53), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Per-image cosine similarity of two sets of maps.

    .. math:: \cos(a, b) = \frac{\langle a, b \rangle}{\lVert a \rVert_2 \, \lVert b \rVert_2}

    over the flattened maps of each image.

    Convention for all-zero maps (cosine undefined): two all-zero maps are identical, similarity
    ``1``; one all-zero map against a non-zero one gives ``0``. A norm below ``eps`` counts as zero.

    Args:
        a: maps ``(B, H, W)`` (or volumes ``(B, D, H, W)``).
        b: maps ``(B, H, W)``, same shape.
        eps: norms at or below this are treated as zero.

    Returns:
        ``(B,)`` float tensor in ``[-1, 1]`` (in ``[0, 1]`` for non-negative maps).

    Example:
        >>> import torch
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
        >>> b = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])
        >>> cosine_similarity(a, b)
        tensor([1., 0.])
    """
    a, b = _pair(a, b)
    work = _wide_float(a.device)
    a, b = a.to(work), b.to(work)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    za, zb = na <= eps, nb <= eps
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(torch.finfo(work).tiny)
    cos = cos.clamp(-1.0, 1.0)
    cos = torch.where(za | zb, (za & zb).to(cos.dtype), cos)
    return cos.float()


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0 .. N-1`` along dim 1, ties given the average of their ranks (``(B, N)`` -> ``(B, N)``)."""
    work = _wide_float(values.device)
    batch, n = values.shape
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = torch.cumsum(new_group.long(), dim=1) - 1  # (B, N) tie-group id per sorted position
    position = torch.arange(n, device=values.device, dtype=work).expand(batch, n)
    total = torch.zeros(batch, n, device=values.device, dtype=work).scatter_add_(1, group, position)
    count = torch.zeros(batch, n, device=values.device, dtype=work).scatter_add_(
        1, group, torch.ones_like(position)
    )
    mean_rank = (total / count.clamp_min(1)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    r"""Per-image Spearman rank correlation of two sets of maps.

    The Pearson correlation of the pixels' ranks, ties given their average rank (as
    ``scipy.stats.spearmanr``):

    .. math:: \rho(a, b) = \frac{\operatorname{cov}(R(a), R(b))}{\sigma_{R(a)} \, \sigma_{R(b)}}

    Convention for constant maps (ranks without variance, correlation undefined): two constant
    maps give ``1`` (same, empty, ordering); one constant map against a non-constant one gives ``0``.

    Args:
        a: maps ``(B, H, W)`` (or volumes ``(B, D, H, W)``).
        b: maps ``(B, H, W)``, same shape.

    Returns:
        ``(B,)`` float32 tensor in ``[-1, 1]``.

    Example:
        >>> import torch
        >>> a = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
        >>> spearman(a, a ** 2), spearman(a, -a)
        (tensor([1.]), tensor([-1.]))
    """
    a, b = _pair(a, b)
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    va, vb = (ra * ra).sum(dim=1), (rb * rb).sum(dim=1)
    # ranks are multiples of 1/2: a variance is either 0 or at least 1/2.
    ca, cb = va < 0.25, vb < 0.25
    rho = (ra * rb).sum(dim=1) / (va * vb).clamp_min(1e-300 if va.dtype == torch.float64 else 1e-30).sqrt()
    rho = rho.clamp(-1.0, 1.0)
    rho = torch.where(ca | cb, (ca & cb).to(rho.dtype), rho)
    return rho.float()


def drift(a: Tensor, b: Tensor, measure: str = "cosine") -> Tensor:
    r"""How far two sets of maps moved apart: ``1 - mean`` per-image similarity.

    .. math:: \operatorname{drift}(a, b) = 1 - \frac{1}{B} \sum_{i=1}^{B} s(a_i, b_i)

    with ``s`` = :func:`cosine_similarity` (``measure="cosine"``, drift in ``[0, 1]`` for
    non-negative maps) or :func:`spearman` (``measure="spearman"``, drift in ``[0, 2]``).
    ``0`` means unchanged.

    Args:
        a: maps ``(B, H, W)`` (or volumes ``(B, D, H, W)``), e.g. the first maps of a run.
        b: maps ``(B, H, W)``, e.g. the current maps of the same images.
        measure: ``"cosine"`` or ``"spearman"``.

    Returns:
        float32 scalar tensor.

    Example:
        >>> import torch
        >>> a = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> float(drift(a, a)), float(drift(a, 1 - a, measure="spearman"))
        (0.0, 2.0)
    """
    if measure not in _MEASURES:
        raise ValueError(f"measure must be one of {_MEASURES}, got {measure!r}{close_matches(measure, _MEASURES)}")
    similarity = cosine_similarity(a, b) if measure == "cosine" else spearman(a, b)
    return 1.0 - similarity.mean()
