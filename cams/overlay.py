"""Images at the edge: colour maps, overlays and PNGs. The engine itself never imports this module.

Everything takes and returns batched torch tensors ``(B, 3, H, W)`` float in ``[0, 1]`` until
:func:`to_uint8`, which hands numpy ``(B, H, W, 3)`` uint8 arrays to file writers and loggers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["colorize", "denormalize", "deprocess_guided", "overlay", "save_png", "to_uint8"]

_COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "hot", "bone", "parula")


@functools.cache
def _lut(colormap: str) -> torch.Tensor:
    """(256, 3) float32 RGB lookup table of an OpenCV colour map (the one the reference uses)."""
    import cv2

    if colormap not in _COLORMAPS:
        raise ValueError(f"colormap={colormap!r} is not known; choose one of {list(_COLORMAPS)}")
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], code)[:, 0, :]
    return torch.from_numpy(bgr[:, ::-1].astype(np.float32) / 255.0)


def colorize(maps: torch.Tensor, colormap: str = "jet") -> torch.Tensor:
    """Colour ``maps`` (B, H, W) in [0, 1] with an OpenCV colour map → (B, 3, H, W) float in [0, 1].

    Values are quantised to 256 levels as ``cv2.applyColorMap(np.uint8(255 * map))`` does.

    Example:
        >>> colorize(torch.zeros(2, 4, 5)).shape
        torch.Size([2, 3, 4, 5])
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W); got shape {tuple(maps.shape)}")
    index = (maps.detach().float().clamp(0, 1) * 255).to(torch.long)
    lut = _lut(colormap).to(maps.device)
    return lut[index].permute(0, 3, 1, 2).contiguous()


def denormalize(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Undo ``Normalize(mean, std)`` on a batch → (B, 3, H, W) float in [0, 1].

    One-channel inputs are repeated to RGB. Without ``mean``/``std`` each image is min-max scaled.

    Example:
        >>> x = torch.zeros(1, 3, 2, 2)
        >>> denormalize(x, mean=[0.5] * 3, std=[0.5] * 3).unique().tolist()
        [0.5]
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W); got shape {tuple(x.shape)}")
    x = x.detach().float()
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x * s + m
    else:
        flat = x.flatten(1)
        lo = flat.min(1).values.view(-1, 1, 1, 1)
        hi = flat.max(1).values.view(-1, 1, 1, 1)
        x = (x - lo) / (hi - lo).clamp_min(1e-7)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        x = x[:, :3]
    return x.clamp(0, 1)


def overlay(
    images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, colormap: str = "jet"
) -> torch.Tensor:
    """Blend colour-mapped ``maps`` over ``images`` → (B, 3, H, W) float in [0, 1].

    ``alpha`` is the heat map's weight; like the reference's ``show_cam_on_image`` the blend is
    divided by its maximum so the brightest pixel is 1.

    Example:
        >>> overlay(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and maps {tuple(maps.shape)} differ in batch or size")
    heat = colorize(maps, colormap)
    blend = alpha * heat + (1 - alpha) * images.detach().float().to(heat.device)
    peak = blend.flatten(1).max(1).values.clamp_min(1e-7).view(-1, 1, 1, 1)
    return blend / peak


def deprocess_guided(gb: torch.Tensor) -> torch.Tensor:
    """Guided-backprop gradients (B, C, H, W) → displayable (B, 3, H, W) in [0, 1].

    Per image: subtract the mean, divide by ``std + 1e-5``, scale by 0.1, shift by 0.5, clip
    (the reference's ``deprocess_image``, batched).

    Example:
        >>> deprocess_guided(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """
    g = gb.detach().float()
    flat = g.flatten(1)
    mean = flat.mean(1).view(-1, 1, 1, 1)
    std = flat.std(1, unbiased=False).view(-1, 1, 1, 1)
    out = ((g - mean) / (std + 1e-5) * 0.1 + 0.5).clamp(0, 1)
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] → numpy (B, H, W, 3) uint8.

    Example:
        >>> to_uint8(torch.ones(1, 3, 2, 2)).max()
        np.uint8(255)
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W); got shape {tuple(images.shape)}")
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write one (H, W, 3) uint8 RGB image (or (H, W) gray) to ``path`` (format from the suffix)."""
    from PIL import Image

    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {image.dtype}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
