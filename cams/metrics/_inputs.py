"""Input checks shared by the measures: maps as ``(B, H, W)`` (or volumes ``(B, D, H, W)``) float tensors, images
with their maps, counts, and the target every scored row is explained for."""

from __future__ import annotations

import torch
from torch import Tensor

from cams.targets import ClassTarget, Target, Targets, resolve_targets

__all__ = ["as_maps", "check_counts", "check_images_and_maps", "metric_target"]


def as_maps(maps: Tensor, name: str = "maps", volumes: bool = False) -> Tensor:
    """Return ``maps`` as a float ``(B, H, W)`` tensor; accept ``(B, 1, H, W)``.

    With ``volumes``, a ``(B, D, H, W)`` tensor is kept as volumes (``D = 1`` too).
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1 and not volumes:
        maps = maps[:, 0]
    if maps.dim() != 3 and not (volumes and maps.dim() == 4):
        shapes = "(B, H, W) or (B, D, H, W)" if volumes else "(B, H, W) (or (B, 1, H, W))"
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(maps.shape)}; for a single map use maps[None]")
    if not maps.is_floating_point():
        maps = maps.float()
    return maps


def check_images_and_maps(x: Tensor, maps: Tensor) -> Tensor:
    """Validate ``x`` ``(B, C, H, W)``; return maps ``(B, H, W)`` at ``x``'s size, dtype and device."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be images (B, C, H, W), got {shape}")
    maps = as_maps(maps).to(device=x.device)
    if maps.shape[0] != x.shape[0]:
        raise ValueError(
            f"maps has {maps.shape[0]} maps for {x.shape[0]} images in x; pass one map per image"
        )
    if maps.shape[-2:] != x.shape[-2:]:
        maps = torch.nn.functional.interpolate(
            maps[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
    return maps.to(x.dtype if x.is_floating_point() else torch.float32)


def check_counts(steps: int, batch_size: int) -> None:
    """Reject a non-positive number of steps or images per forward, naming the argument."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int (number of deletion/insertion steps), got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (images per forward), got {batch_size!r}")


def metric_target(targets: Targets, batch: int, softmax: bool, device: torch.device) -> tuple[Target, Tensor | None]:
    """The target of every scored row, and for ``targets=None`` the class tensor the originals fill in.

    The originals are the first rows scored, so the predicted class of each image is known before any
    perturbed copy of it is scored.
    """
    if targets is None:
        classes = torch.zeros(batch, dtype=torch.long, device=device)
        return ClassTarget(classes, softmax=softmax), classes
    return resolve_targets(targets, batch, softmax=softmax), None
