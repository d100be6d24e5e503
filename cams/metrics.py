"""Measures of class activation maps: similarity/drift, localisation, faithfulness and a sanity check.

Every function takes and returns torch tensors on the maps' (or the model's) device and works on a
whole batch at once. Maps are ``(B, H, W)`` (a ``(B, 1, H, W)`` tensor is accepted too), normally
float in ``[0, 1]`` as returned by :class:`cams.CamEngine`.

- Similarity and drift: :func:`cosine_similarity`, :func:`spearman`, :func:`drift`.
- Localisation: :func:`pointing_game` (Zhang et al., 2016), :func:`energy_pointing_game`
  (Wang et al., 2020, Score-CAM).
- Faithfulness: :func:`average_drop`, :func:`increase_in_confidence` (Chattopadhay et al., 2018,
  Grad-CAM++), :func:`deletion_auc`, :func:`insertion_auc` (Petsiuk et al., 2018, RISE) and
  :func:`faithfulness`, which computes all four from one shared, batched set of forwards.
- Sanity: :func:`sanity_check` (Adebayo et al., 2018, cascading model-parameter randomisation).

Functions that run the model do so under :func:`torch.inference_mode` inside
:func:`cams.state.frozen_model`: the model is left as found (modes, BatchNorm buffers, ``.grad``,
global RNG).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "cosine_similarity",
    "drift",
    "energy_pointing_game",
    "pointing_game",
    "spearman",
]

_MEASURES = ("cosine", "spearman")


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def _as_maps(maps: Tensor, name: str = "maps") -> Tensor:
    """Return ``maps`` as a float ``(B, H, W)`` tensor; accept ``(B, 1, H, W)``."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(
            f"{name} must have shape (B, H, W) (or (B, 1, H, W)), got {tuple(maps.shape)}; "
            "for a single map use maps[None]"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    return maps


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    a, b = _as_maps(a, "a"), _as_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.flatten(1).to(dtype), b.flatten(1).to(dtype)


def _wide_float(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (exact ranks up to 2**53), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


# --------------------------------------------------------------------------------------------------
# similarity and drift
# --------------------------------------------------------------------------------------------------
def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Per-image cosine similarity of two sets of maps.

    .. math:: \cos(a, b) = \frac{\langle a, b \rangle}{\lVert a \rVert_2 \, \lVert b \rVert_2}

    over the flattened maps of each image.

    Convention for all-zero maps (cosine undefined): two all-zero maps are identical, similarity
    ``1``; one all-zero map against a non-zero one gives ``0``. A norm below ``eps`` counts as zero.

    Args:
        a: maps ``(B, H, W)``.
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
        a: maps ``(B, H, W)``.
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
        a: maps ``(B, H, W)``, e.g. the first maps of a run.
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
        raise ValueError(f"measure must be one of {_MEASURES}, got {measure!r}{_suggest(measure, _MEASURES)}")
    similarity = cosine_similarity(a, b) if measure == "cosine" else spearman(a, b)
    return 1.0 - similarity.mean()


def _suggest(value: object, choices: Sequence[str]) -> str:
    import difflib

    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value.lower(), list(choices), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


# --------------------------------------------------------------------------------------------------
# localisation
# --------------------------------------------------------------------------------------------------
def _object_masks(maps: Tensor, boxes: Tensor | None, masks: Tensor | None) -> Tensor:
    """The object of each image as a bool ``(B, H, W)`` mask, from ``boxes`` or ``masks``."""
    batch, height, width = maps.shape
    if (boxes is None) == (masks is None):
        raise ValueError(
            "pass exactly one of boxes (B, 4) as x0, y0, x1, y1 pixels or masks (B, H, W) bool; "
            f"got boxes={'a tensor' if boxes is not None else None}, "
            f"masks={'a tensor' if masks is not None else None}"
        )
    if masks is not None:
        masks = torch.as_tensor(masks, device=maps.device)
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if tuple(masks.shape) != (batch, height, width):
            raise ValueError(
                f"masks must have the maps' shape {(batch, height, width)}, got {tuple(masks.shape)}; "
                "resize the masks (nearest) to the maps' size"
            )
        return masks.bool() if masks.dtype == torch.bool else masks > 0.5
    boxes = torch.as_tensor(boxes, device=maps.device)
    if tuple(boxes.shape) != (batch, 4):
        raise ValueError(f"boxes must have shape ({batch}, 4) as x0, y0, x1, y1, got {tuple(boxes.shape)}")
    boxes = boxes.float()
    ys = torch.arange(height, device=maps.device, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=maps.device, dtype=torch.float32).view(1, 1, width)
    x0, y0, x1, y1 = (boxes[:, i].view(batch, 1, 1) for i in range(4))
    # pixel (y, x) covers [x, x+1) x [y, y+1); x1, y1 are exclusive.
    return (xs >= x0.floor()) & (xs < x1.ceil()) & (ys >= y0.floor()) & (ys < y1.ceil())


def _peak(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column of each map's maximum; ties go to the one nearest the image centre."""
    batch, height, width = maps.shape
    flat = maps.flatten(1)
    is_max = flat == flat.max(dim=1, keepdim=True).values
    ys = torch.arange(height, device=maps.device, dtype=torch.float32).repeat_interleave(width)
    xs = torch.arange(width, device=maps.device, dtype=torch.float32).repeat(height)
    centre_distance = (ys - (height - 1) / 2) ** 2 + (xs - (width - 1) / 2) ** 2
    distance = torch.where(is_max, centre_distance.expand(batch, -1), torch.inf)
    index = distance.argmin(dim=1)  # first in raster order among equally central maxima
    return index // width, index % width


def pointing_game(
    maps: Tensor,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
    tolerance: float = 15,
) -> Tensor:
    r"""Pointing game: does each map's maximum fall on the object?

    Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV 2016,
    https://arxiv.org/abs/1608.00507. A hit is counted when the map's maximum lies within
    ``tolerance`` pixels (Euclidean) of an object pixel:

    .. math:: \operatorname{hit}_i = \mathbb{1}\left[\min_{q \in O_i} \lVert p_i - q \rVert_2
              \le \tau\right], \quad p_i = \arg\max_p M_i(p)

    Rules for the cases the definition leaves open:

    - Several pixels share the maximum (e.g. a **constant map**): the one nearest the image centre
      ``((H-1)/2, (W-1)/2)`` is used (first in raster order among equally near ones). A constant
      map thus plays the paper's centre baseline.
    - **Empty object** (an all-false mask, or a box of zero area): the game is undefined and the
      image's result is ``NaN`` (average with :func:`torch.nanmean` to skip such images).

    Args:
        maps: ``(B, H, W)``.
        boxes: ``(B, 4)`` ``x0, y0, x1, y1`` in pixels of the maps, ``x1, y1`` exclusive.
        masks: ``(B, H, W)`` bool (or 0/1) object masks. Pass exactly one of ``boxes``, ``masks``.
        tolerance: radius in pixels, ``15`` in the paper; ``0`` demands a hit on the object itself.

    Returns:
        ``(B,)`` float32: ``1.`` hit, ``0.`` miss, ``nan`` no object.

    Example:
        >>> import torch
        >>> maps = torch.zeros(2, 32, 32)
        >>> maps[0, 5, 5] = 1.0     # inside the box
        >>> maps[1, 30, 30] = 1.0   # 15.56 pixels from the box's corner pixel (19, 19)
        >>> boxes = torch.tensor([[0, 0, 20, 20], [0, 0, 20, 20]])
        >>> pointing_game(maps, boxes=boxes, tolerance=15)
        tensor([1., 0.])
        >>> pointing_game(maps, boxes=boxes, tolerance=16)
        tensor([1., 1.])
    """
    maps = _as_maps(maps)
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}; the paper uses 15")
    objects = _object_masks(maps, boxes, masks)
    batch, height, width = maps.shape
    row, col = _peak(maps)
    ys = torch.arange(height, device=maps.device, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=maps.device, dtype=torch.float32).view(1, 1, width)
    distance2 = (ys - row.view(batch, 1, 1).float()) ** 2 + (xs - col.view(batch, 1, 1).float()) ** 2
    hit = (objects & (distance2 <= float(tolerance) ** 2)).flatten(1).any(dim=1)
    empty = ~objects.flatten(1).any(dim=1)
    return torch.where(empty, torch.nan, hit.float())


def energy_pointing_game(
    maps: Tensor,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
) -> Tensor:
    r"""Energy-based pointing game: the share of the map's mass that lies on the object.

    Wang et al., *Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks*, CVPR-W 2020, https://arxiv.org/abs/1910.01279, section 4.2:

    .. math:: \operatorname{Proportion}_i = \frac{\sum_{p \in O_i} M_i(p)}{\sum_{p} M_i(p)}

    Maps are expected non-negative (CAMs are); negative values are clamped to ``0``.

    Rules for the cases the definition leaves open:

    - A **constant map** gives the object's area fraction ``|O| / (H W)``. An **all-zero map**
      (no mass, ratio ``0/0``) is treated as constant: area fraction too.
    - **Empty object** (all-false mask or zero-area box): ``NaN``, as in :func:`pointing_game`.

    Args:
        maps: ``(B, H, W)``.
        boxes: ``(B, 4)`` ``x0, y0, x1, y1`` pixels, ``x1, y1`` exclusive.
        masks: ``(B, H, W)`` bool (or 0/1). Pass exactly one of ``boxes``, ``masks``.

    Returns:
        ``(B,)`` float32 in ``[0, 1]`` (``nan`` where there is no object).

    Example:
        >>> import torch
        >>> maps = torch.zeros(2, 4, 4)
        >>> maps[0, :2, :2] = 1.0                 # all its mass in the box
        >>> maps[1] = 1.0                         # constant: the box's area fraction
        >>> energy_pointing_game(maps, boxes=torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]))
        tensor([1.0000, 0.2500])
    """
    maps = _as_maps(maps)
    objects = _object_masks(maps, boxes, masks)
    mass = maps.clamp_min(0).flatten(1).float()
    flat_objects = objects.flatten(1)
    total = mass.sum(dim=1)
    inside = (mass * flat_objects).sum(dim=1)
    area_fraction = flat_objects.float().mean(dim=1)
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float32).tiny), area_fraction)
    share = share.clamp(0.0, 1.0)
    return torch.where(flat_objects.any(dim=1), share, torch.nan)

