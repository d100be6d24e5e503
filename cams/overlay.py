"""Images at the edge: colour maps, overlays and PNGs. The engine itself never imports this module.

Everything takes and returns batched torch tensors ``(B, 3, H, W)`` float in ``[0, 1]`` until
:func:`to_uint8`, which hands numpy ``(B, H, W, 3)`` uint8 arrays to file writers and loggers. Volumes
``(B, C, D, H, W)`` are shown as their three orthogonal slices (:func:`orthogonal_slices`) laid out side by
side (:func:`side_by_side`); segmentation masks as outlines (:func:`mask_outline`, :func:`draw_outline`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "colorize",
    "denormalize",
    "deprocess_guided",
    "draw_outline",
    "mask_outline",
    "orthogonal_slices",
    "overlay",
    "save_png",
    "side_by_side",
    "to_uint8",
]

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


def orthogonal_slices(volumes: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three planes of each volume through voxel ``at`` (B, 3) = ``(d, h, w)``.

    Args:
        volumes: ``(B, C, D, H, W)`` (or ``(B, D, H, W)``, e.g. maps).
        at: ``(B, 3)`` long voxel indices, e.g. :func:`cams.ops.peak` of the maps.

    Returns:
        ``(axial, coronal, sagittal)``: ``(B, C, H, W)`` at depth ``d``, ``(B, C, D, W)`` at row ``h`` and
        ``(B, C, D, H)`` at column ``w`` (without the ``C`` dimension for ``(B, D, H, W)`` input).

    Example:
        >>> v = torch.arange(24.0).view(1, 1, 2, 3, 4)
        >>> [tuple(s.shape) for s in orthogonal_slices(v, torch.tensor([[1, 2, 3]]))]
        [(1, 1, 3, 4), (1, 1, 2, 4), (1, 1, 2, 3)]
        >>> orthogonal_slices(v, torch.tensor([[1, 2, 3]]))[0][0, 0, 2, 3].item() == v[0, 0, 1, 2, 3].item()
        True
    """
    squeeze = volumes.dim() == 4
    if squeeze:
        volumes = volumes[:, None]
    if volumes.dim() != 5 or at.shape != (volumes.shape[0], 3):
        raise ValueError(
            f"volumes must be (B, C, D, H, W) and at (B, 3); got {tuple(volumes.shape)} and {tuple(at.shape)}"
        )
    at = at.to(volumes.device).long()
    batch = torch.arange(volumes.shape[0], device=volumes.device)
    planes = (
        volumes[batch, :, at[:, 0]],
        volumes[batch, :, :, at[:, 1]],
        volumes[batch, :, :, :, at[:, 2]],
    )
    return tuple(p[:, 0] if squeeze else p for p in planes)  # type: ignore[return-value]


def side_by_side(images: Sequence[torch.Tensor], gap: int = 2, fill: float = 1.0) -> torch.Tensor:
    """Lay images ``(B, 3, h_i, w_i)`` of different sizes side by side → ``(B, 3, max h_i, Σ w_i + gaps)``.

    Images are top-aligned; the gaps and the space below shorter images get ``fill`` (white).

    Example:
        >>> side_by_side([torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 6, 2)]).shape
        torch.Size([2, 3, 6, 9])
    """
    if not images:
        raise ValueError("images: give at least one (B, 3, h, w) tensor")
    height = max(int(im.shape[-2]) for im in images)
    width = sum(int(im.shape[-1]) for im in images) + gap * (len(images) - 1)
    first = images[0]
    out = torch.full((first.shape[0], first.shape[1], height, width), fill, dtype=torch.float32, device=first.device)
    x = 0
    for im in images:
        h, w = im.shape[-2:]
        out[:, :, :h, x : x + w] = im.float()
        x += w + gap
    return out


def mask_outline(masks: torch.Tensor) -> torch.Tensor:
    """The outline of each mask (B, H, W) → (B, H, W) bool: its pixels with a neighbour (of 8) outside it.

    The image's border is not an edge: a mask running off the image is open there.

    Example:
        >>> m = torch.zeros(1, 5, 5, dtype=torch.bool)
        >>> m[0, 1:4, 1:4] = True
        >>> mask_outline(m)[0].int().tolist()[1:4]
        [[0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0]]
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (B, H, W); got shape {tuple(masks.shape)}")
    inside = masks.bool()
    outside = (~inside).float()[:, None]
    touches_outside = F.max_pool2d(outside, kernel_size=3, stride=1, padding=1)[:, 0] > 0
    return inside & touches_outside


def draw_outline(
    images: torch.Tensor, masks: torch.Tensor, color: Sequence[float] = (0.0, 1.0, 0.0)
) -> torch.Tensor:
    """Draw the outline of ``masks`` (B, H, W) on ``images`` (B, 3, H, W) in ``color`` (green) → a copy.

    Example:
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> m[0, 1:3, 1:3] = True
        >>> draw_outline(torch.zeros(1, 3, 4, 4), m)[0, 1].tolist()[1]
        [0.0, 1.0, 1.0, 0.0]
    """
    if images.dim() != 4 or masks.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"images (B, 3, H, W) and masks (B, H, W) differ: {tuple(images.shape)}, {tuple(masks.shape)}")
    edge = mask_outline(masks.to(images.device))[:, None]
    paint = torch.as_tensor(color, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return torch.where(edge, paint, images.float())


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
