"""Localisation: does a map point at the object? Pointing game, energy-based pointing game, attribution localisation.

All take maps ``(B, H, W)`` with boxes ``(B, 4)`` or masks ``(B, H, W)``, or volumes ``(B, D, H, W)`` with
boxes ``(B, 6)`` (``x0, y0, z0, x1, y1, z1`` in voxels: ``x`` along ``W``, ``y`` along ``H``, ``z`` along
``D``) or masks ``(B, D, H, W)``; distances are Euclidean in pixels (voxels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cams.metrics._inputs import as_maps
from cams.ops import peak

__all__ = ["attribution_localisation", "energy_pointing_game", "maps_and_objects", "pointing_game"]


def maps_and_objects(maps: Tensor, boxes: Tensor | None, masks: Tensor | None) -> tuple[Tensor, Tensor]:
    """Maps ``(B, H, W)`` or volumes ``(B, D, H, W)``, and each one's object as a bool mask of that shape.

    Volumes are recognised by their objects: boxes ``(B, 6)`` or masks ``(B, D, H, W)``. Every measure that
    scores maps against objects (here and in :mod:`cams.metrics.ranking`) reads its objects through this.

    Raises:
        ValueError: neither or both of ``boxes`` and ``masks``, or either of the wrong shape.
    """
    if (boxes is None) == (masks is None):
        raise ValueError(
            "pass exactly one of boxes ((B, 4) x0, y0, x1, y1 pixels; (B, 6) x0, y0, z0, x1, y1, z1 voxels for "
            "volumes) or masks ((B, H, W) or (B, D, H, W), bool); "
            f"got boxes={'a tensor' if boxes is not None else None}, "
            f"masks={'a tensor' if masks is not None else None}"
        )
    if boxes is not None:
        boxes = torch.as_tensor(boxes)
    if masks is not None:
        masks = torch.as_tensor(masks)
    # (B, D, H, W) with D > 1 is a volume; (B, 1, H, W) is a map with a channel unless the objects are 3-D
    volume = isinstance(maps, Tensor) and maps.dim() == 4 and (
        maps.shape[1] != 1
        or (boxes is not None and boxes.dim() == 2 and boxes.shape[1] == 6)
    )
    maps = as_maps(maps, volumes=volume)
    batch, *spatial = maps.shape
    if masks is not None:
        masks = masks.to(maps.device)
        if masks.dim() == len(spatial) + 2 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if tuple(masks.shape) != tuple(maps.shape):
            raise ValueError(
                f"masks must have the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}; "
                "resize the masks (nearest) to the maps' size"
            )
        return maps, masks.bool() if masks.dtype == torch.bool else masks > 0.5
    assert boxes is not None
    boxes = boxes.to(maps.device)
    half = len(spatial)
    if tuple(boxes.shape) != (batch, 2 * half):
        what = "x0, y0, x1, y1" if half == 2 else "x0, y0, z0, x1, y1, z1"
        raise ValueError(f"boxes must have shape ({batch}, {2 * half}) as {what}, got {tuple(boxes.shape)}")
    boxes = boxes.float()
    # box column k bounds axis x, y[, z] = the maps' last, second-to-last[, third-to-last] dimension;
    # pixel i covers [i, i+1), so the upper bounds are exclusive.
    inside = torch.ones(maps.shape, dtype=torch.bool, device=maps.device)
    for k in range(half):
        dim = half - k  # dimension of maps, counting the batch as 0
        shape = [1] * (half + 1)
        shape[dim] = spatial[dim - 1]
        coord = torch.arange(spatial[dim - 1], device=maps.device, dtype=torch.float32).view(shape)
        lo = boxes[:, k].view(-1, *[1] * half)
        hi = boxes[:, k + half].view(-1, *[1] * half)
        inside = inside & (coord >= lo.floor()) & (coord < hi.ceil())
    return maps, inside


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
        maps: ``(B, H, W)``, or volumes ``(B, D, H, W)``.
        boxes: ``(B, 4)`` ``x0, y0, x1, y1`` in pixels of the maps, ``x1, y1`` exclusive; for volumes
            ``(B, 6)`` ``x0, y0, z0, x1, y1, z1`` in voxels (``z`` along ``D``).
        masks: ``(B, H, W)`` (volumes: ``(B, D, H, W)``) bool (or 0/1) object masks. Pass exactly one of
            ``boxes``, ``masks``.
        tolerance: radius in pixels (voxels), ``15`` in the paper; ``0`` demands a hit on the object itself.

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
        >>> volume = torch.zeros(1, 8, 8, 8)
        >>> volume[0, 6, 1, 2] = 1.0             # z = 6, y = 1, x = 2
        >>> pointing_game(volume, boxes=torch.tensor([[0, 0, 4, 4, 4, 8]]), tolerance=0)
        tensor([1.])
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}; the paper uses 15")
    maps, objects = maps_and_objects(maps, boxes, masks)
    spatial = maps.shape[1:]
    at = peak(maps).float()
    distance2 = torch.zeros(maps.shape, device=maps.device)
    for axis, n in enumerate(spatial):
        shape = [1] * (len(spatial) + 1)
        shape[axis + 1] = n
        coord = torch.arange(n, device=maps.device, dtype=torch.float32).view(shape)
        distance2 = distance2 + (coord - at[:, axis].view(-1, *[1] * len(spatial))) ** 2
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
        maps: ``(B, H, W)``, or volumes ``(B, D, H, W)``.
        boxes: ``(B, 4)`` ``x0, y0, x1, y1`` pixels, ``x1, y1`` exclusive (volumes: ``(B, 6)``
            ``x0, y0, z0, x1, y1, z1`` voxels).
        masks: ``(B, H, W)`` (volumes: ``(B, D, H, W)``) bool (or 0/1). Pass exactly one of ``boxes``, ``masks``.

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
    maps, objects = maps_and_objects(maps, boxes, masks)
    mass = maps.clamp_min(0).flatten(1).float()
    flat_objects = objects.flatten(1)
    total = mass.sum(dim=1)
    inside = (mass * flat_objects).sum(dim=1)
    area_fraction = flat_objects.float().mean(dim=1)
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float32).tiny), area_fraction)
    share = share.clamp(0.0, 1.0)
    return torch.where(flat_objects.any(dim=1), share, torch.nan)


def attribution_localisation(
    maps: Tensor,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
) -> Tensor:
    r"""Attribution localisation: the share of the map's absolute relevance that lies on the object.

    Kohlbrenner et al., *Towards Best Practice in Explaining Neural Network Decisions with LRP*, IJCNN 2020,
    https://arxiv.org/abs/1910.09840, the inside-total relevance ratio:

    .. math:: \mu_i = \frac{\sum_{p \in O_i} |M_i(p)|}{\sum_{p} |M_i(p)|}

    On non-negative maps (every CAM) it equals :func:`energy_pointing_game`, which clamps negative values to
    ``0`` where this takes their magnitude. The default equals Quantus 0.6.0's ``AttributionLocalisation()``
    defaults (``abs=True``, ``normalise=True``, which cannot change a ratio, ``weighted=False``,
    ``positive_attributions=False``), computed in float64 without its ``1e-9`` in the denominator. Quantus'
    ``weighted=True`` variant is left out: it scales by a box size it computes from ``x_batch[2:].size`` (the
    batch from its third image on, not one image), so its values change with the batch size.

    Rules for the cases the definition leaves open, as in :func:`energy_pointing_game`:

    - An **all-zero map** (``0 / 0``) is treated as a constant map: the object's area fraction
      ``|O| / (H W)``, what a map without information scores (Quantus returns ``0``).
    - **Empty object**: ``NaN``.

    Args:
        maps: ``(B, H, W)``, or volumes ``(B, D, H, W)``; any sign.
        boxes: ``(B, 4)`` ``x0, y0, x1, y1`` pixels, ``x1, y1`` exclusive (volumes: ``(B, 6)``).
        masks: ``(B, H, W)`` (volumes: ``(B, D, H, W)``) bool (or 0/1). Pass exactly one of ``boxes``, ``masks``.

    Returns:
        ``(B,)`` float32 in ``[0, 1]`` (``nan`` where there is no object); higher is better.

    Example:
        >>> import torch
        >>> maps = torch.zeros(2, 4, 4)
        >>> maps[0, 0, 0], maps[0, 3, 3] = 3.0, -1.0   # |3| inside the box, |-1| outside
        >>> maps[1] = 1.0                               # constant: the box's area fraction
        >>> attribution_localisation(maps, boxes=torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]))
        tensor([0.7500, 0.2500])
    """
    maps, objects = maps_and_objects(maps, boxes, masks)
    mass = maps.abs().flatten(1).double()
    flat_objects = objects.flatten(1)
    total = mass.sum(dim=1)
    inside = (mass * flat_objects).sum(dim=1)
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny),
                        flat_objects.double().mean(dim=1))  # fmt: skip
    return torch.where(flat_objects.any(dim=1), share, torch.nan).float()
