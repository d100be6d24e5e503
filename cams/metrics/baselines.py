"""Baseline maps to score beside a method's: a centre map and a seeded random map.

A measure means little without the score of a map that knows nothing: the pytorch-grad-cam metrics
tutorial shows a random map often scoring close to real methods on faithfulness, and a centre map is the
classic pointing-game baseline (objects tend to sit in the middle of photos). Score these exactly as the
method's maps (same boxes, masks, model and target) and log them beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["centre_map", "random_map"]


def _check_size(size: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
        raise ValueError(f"size must be (B, H, W) positive ints, e.g. (8, 224, 224); got {size!r}")
    return size


def centre_map(size: tuple[int, int, int], sigma: float = 0.25, device: torch.device | str | None = None) -> Tensor:
    r"""A Gaussian centred on the image, the same for every image: the "objects are in the middle" baseline.

    .. math:: M(y, x) = \exp\left(-\frac{(y - c_y)^2}{2 (\sigma H)^2} - \frac{(x - c_x)^2}{2 (\sigma W)^2}\right),
              \quad c = \left(\tfrac{H - 1}{2}, \tfrac{W - 1}{2}\right)

    scaled to ``[0, 1]`` (maximum 1 at the centre).

    Args:
        size: ``(B, H, W)``.
        sigma: standard deviation as a fraction of the image's height and width.
        device: where to build the maps.

    Returns:
        ``(B, H, W)`` float32 in ``[0, 1]``.

    Example:
        >>> maps = centre_map((2, 5, 5))
        >>> maps.shape, float(maps[0, 2, 2]), bool(maps[0, 0, 0] < maps[0, 1, 1] < 1)
        (torch.Size([2, 5, 5]), 1.0, True)
    """
    batch, height, width = _check_size(size)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (a fraction of the image size), got {sigma!r}")
    ys = torch.arange(height, dtype=torch.float32, device=device) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32, device=device) - (width - 1) / 2
    gy = torch.exp(-(ys**2) / (2 * (sigma * height) ** 2))
    gx = torch.exp(-(xs**2) / (2 * (sigma * width) ** 2))
    blob = gy[:, None] * gx[None, :]
    return (blob / blob.max()).expand(batch, height, width).contiguous()


def random_map(
    size: tuple[int, int, int],
    generator: torch.Generator | None = None,
    cells: int = 7,
    device: torch.device | str | None = None,
) -> Tensor:
    """Smooth random maps: uniform noise on a ``cells`` x ``cells`` grid, upsampled bilinearly, min-max scaled.

    A CAM is a coarse feature map upsampled (7 x 7 for a ResNet at 224²), so a fair random baseline is
    coarse too: pixel-wise noise would spread its mass evenly and score like a constant map.

    Args:
        size: ``(B, H, W)``.
        generator: the random source (never the global RNG); default: a CPU generator seeded with 0,
            so the same call gives the same maps.
        cells: grid side of the noise before upsampling.
        device: where to put the maps (drawn on the generator's device, then moved).

    Returns:
        ``(B, H, W)`` float32 in ``[0, 1]``.

    Example:
        >>> a, b = random_map((2, 16, 16)), random_map((2, 16, 16))
        >>> bool(torch.equal(a, b)), float(a.min()), float(a.max())
        (True, 0.0, 1.0)
    """
    batch, height, width = _check_size(size)
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 1:
        raise ValueError(f"cells must be a positive int (grid side before upsampling), got {cells!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    noise = torch.rand(batch, 1, cells, cells, generator=generator, device=generator.device)
    maps = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    scaled = ((flat - low) / (high - low).clamp_min(1e-12)).view(batch, height, width)
    return scaled.to(device) if device is not None else scaled
