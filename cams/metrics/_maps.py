"""Input checks shared by the measures: maps as ``(B, H, W)`` (or volumes ``(B, D, H, W)``) float tensors."""

from __future__ import annotations

from torch import Tensor

__all__ = ["as_maps"]


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
