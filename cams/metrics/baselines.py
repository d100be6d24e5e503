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


def _check_size(size: tuple[int, ...]) -> tuple[int, ...]:
    if len(size) not in (3, 4) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
        raise ValueError(
            f"size must be (B, H, W) (or (B, D, H, W) for volumes) positive ints, e.g. (8, 224, 224); got {size!r}"
        )
    return tuple(size)


def centre_map(size: tuple[int, ...], sigma: float = 0.25, device: torch.device | str | None = None) -> Tensor:
    r"""A Gaussian centred on the image, the same for every image: the "objects are in the middle" baseline.

    .. math:: M(y, x) = \exp\left(-\frac{(y - c_y)^2}{2 (\sigma H)^2} - \frac{(x - c_x)^2}{2 (\sigma W)^2}\right),
              \quad c = \left(\tfrac{H - 1}{2}, \tfrac{W - 1}{2}\right)

    (and the same along ``D`` for volumes), scaled to ``[0, 1]`` (maximum 1 at the centre).

    Args:
        size: ``(B, H, W)``, or ``(B, D, H, W)`` for volumes.
        sigma: standard deviation as a fraction of the image's size along each axis.
        device: where to build the maps.

    Returns:
        ``size`` float32 in ``[0, 1]``.

    Example:
        >>> maps = centre_map((2, 5, 5))
        >>> maps.shape, float(maps[0, 2, 2]), bool(maps[0, 0, 0] < maps[0, 1, 1] < 1)
        (torch.Size([2, 5, 5]), 1.0, True)
    """
    batch, *spatial = _check_size(size)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (a fraction of the image size), got {sigma!r}")
    blob = torch.ones((), dtype=torch.float32, device=device)
    for axis, n in enumerate(spatial):
        offsets = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        line = torch.exp(-(offsets**2) / (2 * (sigma * n) ** 2))
        blob = blob[..., None] * line.view(*([1] * axis), n)
    return (blob / blob.max()).expand(batch, *spatial).contiguous()


def random_map(
    size: tuple[int, ...],
    generator: torch.Generator | None = None,
    cells: int = 7,
    device: torch.device | str | None = None,
) -> Tensor:
    """Smooth random maps: uniform noise on a ``cells`` x ``cells`` grid, upsampled bilinearly, min-max scaled
    (``cells`` x ``cells`` x ``cells``, trilinearly, for volumes).

    A CAM is a coarse feature map upsampled (7 x 7 for a ResNet at 224²), so a fair random baseline is
    coarse too: pixel-wise noise would spread its mass evenly and score like a constant map.

    Args:
        size: ``(B, H, W)``, or ``(B, D, H, W)`` for volumes.
        generator: the random source (never the global RNG); default: a CPU generator seeded with 0,
            so the same call gives the same maps.
        cells: grid side of the noise before upsampling.
        device: where to put the maps (drawn on the generator's device, then moved).

    Returns:
        ``size`` float32 in ``[0, 1]``.

    Example:
        >>> a, b = random_map((2, 16, 16)), random_map((2, 16, 16))
        >>> bool(torch.equal(a, b)), float(a.min()), float(a.max())
        (True, 0.0, 1.0)
    """
    batch, *spatial = _check_size(size)
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 1:
        raise ValueError(f"cells must be a positive int (grid side before upsampling), got {cells!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    noise = torch.rand(batch, 1, *([cells] * len(spatial)), generator=generator, device=generator.device)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    maps = F.interpolate(noise, size=tuple(spatial), mode=mode, align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    scaled = ((flat - low) / (high - low).clamp_min(1e-12)).view(batch, *spatial)
    return scaled.to(device) if device is not None else scaled
