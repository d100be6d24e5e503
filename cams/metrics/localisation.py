"""Localisation: does a map point at the object? Pointing game and energy-based pointing game."""

from __future__ import annotations

import torch
from torch import Tensor

from cams.metrics._maps import as_maps

__all__ = ["energy_pointing_game", "pointing_game"]


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
    maps = as_maps(maps)
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
    maps = as_maps(maps)
    objects = _object_masks(maps, boxes, masks)
    mass = maps.clamp_min(0).flatten(1).float()
    flat_objects = objects.flatten(1)
    total = mass.sum(dim=1)
    inside = (mass * flat_objects).sum(dim=1)
    area_fraction = flat_objects.float().mean(dim=1)
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float32).tiny), area_fraction)
    share = share.clamp(0.0, 1.0)
    return torch.where(flat_objects.any(dim=1), share, torch.nan)
