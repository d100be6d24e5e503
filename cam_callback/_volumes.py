"""How the callback shows volumes and segmentation targets: slices through the peak, mask outlines.

- A volume ``(C, D, H, W)`` and its map ``(D, H, W)`` are shown as the three orthogonal slices through
  the map's peak (the voxel the pointing game counts): axial ``(H, W)``, coronal ``(D, W)`` and sagittal
  ``(D, H)``, each with the map over the image, side by side. The input grid cuts through the centre.
- For a :class:`cams.targets.SegmentationTarget`, each overlay gets a second tile beside it: the image
  with the outline of the mask the map explains (the predicted mask of the class, or the given one).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cams.ops import peak
from cams.overlay import denormalize, draw_outline, orthogonal_slices, overlay, side_by_side
from cams.targets import SegmentationTarget, Target

__all__ = ["fixed_target", "outline_panels", "volume_input_panels", "volume_panels"]


def _display(volumes: Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> Tensor:
    """``(N, C, D, H, W)`` model inputs → ``(N, 3, D, H, W)`` in [0, 1] (de-normalised, or min-max per volume)."""
    n, c, d, h, w = volumes.shape
    flat = denormalize(volumes.reshape(n, c, d * h, w), mean, std)  # per-volume min-max without mean/std
    return flat.reshape(n, 3, d, h, w)


def volume_input_panels(
    volumes: Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> Tensor:
    """The three slices through the centre of each volume ``(N, C, D, H, W)`` → ``(N, 3, P, Q)`` panels.

    Example:
        >>> volume_input_panels(torch.rand(2, 1, 4, 6, 8), None, None).shape
        torch.Size([2, 3, 6, 26])
    """
    shown = _display(volumes, mean, std)
    centre = torch.tensor([(n - 1) // 2 for n in volumes.shape[2:]]).expand(volumes.shape[0], 3)
    return side_by_side(orthogonal_slices(shown, centre))


def volume_panels(
    volumes: Tensor,
    maps: Tensor,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    alpha: float,
    colormap: str,
) -> Tensor:
    """Each volume's map ``(N, D, H, W)`` over it ``(N, C, D, H, W)``, as three slices through the map's peak.

    Returns:
        ``(N, 3, max(H, D), 2 W + H + 4)`` float panels in [0, 1]: axial, coronal, sagittal.

    Example:
        >>> maps = torch.zeros(1, 4, 6, 8)
        >>> maps[0, 1, 2, 3] = 1.0
        >>> volume_panels(torch.rand(1, 1, 4, 6, 8), maps, None, None, 0.5, "jet").shape
        torch.Size([1, 3, 6, 26])
    """
    shown = _display(volumes, mean, std)
    at = peak(maps)
    image_slices = orthogonal_slices(shown, at)
    map_slices = orthogonal_slices(maps.float(), at)
    return side_by_side([overlay(i, m, alpha, colormap) for i, m in zip(image_slices, map_slices, strict=True)])


def fixed_target(pl_module: torch.nn.Module, x: Tensor, target: Any, forward_context: Any) -> Any:
    """A task target with its choices (predicted mask, classes above a threshold, ...) made explicit from the
    model's current output, so the outline, faithfulness and the sanity check see what the maps explain.

    Other targets come back as they are; a target that chooses nothing costs no forward.
    """
    if not isinstance(target, Target) or type(target).fixed is Target.fixed:
        return target
    from cams.state import frozen_model

    with frozen_model(pl_module), torch.inference_mode(), forward_context():
        output = pl_module(x)
    with torch.inference_mode(False):
        return target.fixed(output)


def outline_panels(shown: Tensor, overlays: Tensor, target: Any) -> Tensor:
    """For a segmentation target: each overlay ``(N, 3, H, W)`` beside the image with the explained mask's outline.

    ``target`` is the fixed target (:func:`fixed_target`); anything else returns ``overlays`` as they are.
    """
    if not isinstance(target, SegmentationTarget) or target.mask is None or shown.dim() != 4:
        return overlays
    masks = target.mask.detach().float().cpu()
    if masks.dim() == 2:
        masks = masks.expand(shown.shape[0], *masks.shape)
    if tuple(masks.shape[-2:]) != tuple(shown.shape[-2:]):  # outputs at a lower resolution (SegFormer)
        masks = F.interpolate(masks[:, None], size=tuple(shown.shape[-2:]), mode="nearest")[:, 0]
    return side_by_side([overlays, draw_outline(shown.cpu(), masks > 0.5)])
