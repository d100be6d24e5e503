"""Batched tensor operations shared by every CAM method: normalise, resize, project.

All functions are pure: tensors in, tensors out, no state, on the input's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "Border",
    "EigenSign",
    "aggregate_layers",
    "first_principal_component",
    "gaussian_blur",
    "minmax",
    "one_thread",
    "peak",
    "resize",
    "spatial_dims",
    "sum_or_project",
]

EigenSign = Literal["max", "none"]
Border = Literal["zeros", "reflect"]

#: The reference divides by ``max + 1e-7`` after subtracting the minimum (``scale_cam_image``).
_MINMAX_EPS = 1e-7


def spatial_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The spatial dimensions of a ``(B, C, *spatial)`` tensor: ``(2, 3)`` for images, ``(2, 3, 4)`` for volumes.

    Example:
        >>> spatial_dims(torch.zeros(1, 2, 3, 4, 5))
        (2, 3, 4)
    """
    return tuple(range(2, t.dim()))


def minmax(cams: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``cams`` (B, H, W) (or (B, D, H, W)) to [0, 1]: ``(c - min) / (max(c - min) + 1e-7)``.

    A constant map becomes all zeros.

    Example:
        >>> minmax(torch.tensor([[[1.0, 3.0]]])).tolist()
        [[[0.0, 1.0]]]
    """
    flat = cams.flatten(1)
    shifted = flat - flat.min(dim=1, keepdim=True).values
    scaled = shifted / (shifted.max(dim=1, keepdim=True).values + _MINMAX_EPS)
    return scaled.view_as(cams)


def resize(cams: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize maps (B, h, w) to ``size`` = (H, W) bilinearly, or (B, d, h, w) to (D, H, W) trilinearly.

    Half-pixel centres, no antialiasing: the sampling of ``cv2.resize(..., interpolation=INTER_LINEAR)``
    that the reference uses (and of ``scipy.ndimage.zoom``-free trilinear resizing for volumes).

    Example:
        >>> resize(torch.ones(2, 7, 7), (224, 224)).shape
        torch.Size([2, 224, 224])
        >>> resize(torch.ones(1, 2, 3, 4), (8, 12, 16)).shape
        torch.Size([1, 8, 12, 16])
    """
    if tuple(cams.shape[1:]) == tuple(size):
        return cams
    mode = {2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(cams[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def first_principal_component(activations: torch.Tensor, sign: EigenSign = "max") -> torch.Tensor:
    """Project (B, C, h, w) activations on their first principal component → (B, h, w) ((B, C, d, h, w) → (B, d, h, w)).

    Each image's ``(h·w, C)`` matrix is centred per channel and projected on its first right
    singular vector ``v₁``: ``P = (A - Ā) v₁ = u₁ σ₁`` (Eigen-CAM, Muhammad & Yeasin 2020,
    https://arxiv.org/abs/2008.00299). Computed for the whole batch at once in float64.

    The sign of a singular vector is arbitrary. ``sign="max"`` (default) flips each projection so that
    its largest-magnitude value is positive (salient regions come out positive; the rule of
    Seg-Eigen-CAM, Eq. 13). ``sign="none"`` keeps whatever sign ``torch.linalg.svd`` returns. That is
    *not* the reference's sign: pytorch-grad-cam takes the SVD with numpy, and the two solvers return
    opposite signs for some images, whose maps then come out inverted relative to the reference. To
    compare with pytorch-grad-cam, use ``"max"`` on both sides (its ``get_2d_projection_with_sign_correction``
    applies the same rule).

    Example:
        >>> a = torch.zeros(1, 2, 2, 2)
        >>> a[0, :, 0, 0] = 4.0
        >>> first_principal_component(a)[0].argmax().item()
        0
    """
    if sign not in ("max", "none"):
        raise ValueError(f"eigen_sign must be 'max' or 'none'; got {sign!r}")
    b, c, *spatial = activations.shape
    mat = torch.nan_to_num(activations.detach().to(torch.float64), nan=0.0).reshape(b, c, -1)
    mat = mat.transpose(1, 2)
    mat = mat - mat.mean(dim=1, keepdim=True)
    u, s, _ = torch.linalg.svd(mat, full_matrices=False)
    projection = u[..., 0] * s[..., :1]
    if sign == "max":
        flip = projection.max(dim=1).values.abs() < projection.min(dim=1).values.abs()
        projection = torch.where(flip[:, None], -projection, projection)
    return projection.reshape(b, *spatial).to(torch.float32)


def sum_or_project(weighted: torch.Tensor, project: bool, sign: EigenSign = "max") -> torch.Tensor:
    """Collapse weighted activations (B, C, *spatial) to maps (B, *spatial): channel sum, or first component."""
    if project:
        return first_principal_component(weighted, sign)
    return weighted.sum(dim=1)


def aggregate_layers(maps: list[torch.Tensor], how: str = "mean") -> torch.Tensor:
    """Combine per-layer maps (each (B, H, W) in [0, 1]) into one map in [0, 1].

    ``"mean"``: min-max of the mean of the maps clamped at 0 (pytorch-grad-cam's ``aggregate_multi_layers``);
    ``"product"``: min-max of the product of the maps, each min-max scaled again (RefineCAM).

    Example:
        >>> a, b = torch.tensor([[[0.0, 1.0, 1.0]]]), torch.tensor([[[0.0, 1.0, 0.0]]])
        >>> aggregate_layers([a, b]).round(decimals=3).tolist(), aggregate_layers([a, b], "product").tolist()
        ([[[0.0, 1.0, 0.5]]], [[[0.0, 0.9999998807907104, 0.0]]])
    """
    if len(maps) == 1:  # the mean of one map clamped at 0 (it is already in [0, 1]) is the map itself
        return minmax(maps[0])
    if how == "product":
        product = minmax(maps[0])
        for m in maps[1:]:
            product = product * minmax(m)
        return minmax(product)
    return minmax(torch.stack(maps, dim=1).clamp_min(0).mean(dim=1))


def peak(maps: torch.Tensor) -> torch.Tensor:
    """Where each map (B, H, W) or volume (B, D, H, W) is highest → (B, 2) or (B, 3) long indices.

    Ties go to the maximum nearest the centre ``((n - 1) / 2`` along every axis; then the first in raster
    order), so a constant map points at its centre: the pointing game's rule, and where the callback cuts
    its slices through a volume.

    Example:
        >>> m = torch.zeros(1, 3, 4, 5)
        >>> m[0, 2, 1, 3] = 1.0
        >>> peak(m).tolist(), peak(torch.zeros(1, 3, 3)).tolist()
        ([[2, 1, 3]], [[1, 1]])
    """
    batch, *spatial = maps.shape
    flat = maps.flatten(1)
    is_max = flat == flat.max(dim=1, keepdim=True).values
    grids = torch.meshgrid(
        *(torch.arange(n, device=maps.device, dtype=torch.float32) for n in spatial), indexing="ij"
    )
    centre_distance = sum((g.flatten() - (n - 1) / 2) ** 2 for g, n in zip(grids, spatial, strict=True))
    distance = torch.where(is_max, centre_distance.expand(batch, -1), torch.inf)
    index = distance.argmin(dim=1)  # first in raster order among equally central maxima
    coords = []
    for n in reversed(spatial):
        coords.append(index % n)
        index = index // n
    return torch.stack(coords[::-1], dim=1)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0, border: Border = "zeros") -> torch.Tensor:
    r"""Blur each channel with a normalised ``kernel_size`` x ``kernel_size`` Gaussian (applied as two 1-D passes).

    ``border`` says what lies beyond the image:

    - ``"zeros"`` (default): zero padding, so borders darken towards 0, as the RISE evaluation code
      (https://github.com/eclique/RISE, ``evaluation.py``: 11 x 11, sigma 5) blurs the insertion metric's
      starting image (:func:`cams.metrics.insertion_auc`);
    - ``"reflect"``: the image reflected about its edge pixels, as OpenCV's ``GaussianBlur`` by default
      (``BORDER_REFLECT_101``), which SESS's fused maps are smoothed with.

    Args:
        x: images ``(B, C, H, W)``, any float dtype; for maps ``(B, H, W)`` pass ``maps[:, None]``.
        kernel_size: odd kernel side in pixels.
        sigma: standard deviation in pixels.
        border: ``"zeros"`` or ``"reflect"``.

    Returns:
        ``(B, C, H, W)``, same dtype and device as ``x``.

    Raises:
        ValueError: an even or non-positive ``kernel_size``, ``sigma <= 0``, an unknown ``border``, or, with
            ``"reflect"``, an image no larger than half the kernel.

    Example:
        >>> x = torch.zeros(1, 1, 21, 21)
        >>> x[0, 0, 10, 10] = 1.0
        >>> y = gaussian_blur(x)
        >>> round(float(y.sum()), 4), bool(y[0, 0, 10, 10] < 1), bool(y[0, 0, 10, 10] == y.max())
        (1.0, True, True)
        >>> gaussian_blur(torch.ones(1, 1, 12, 12), border="reflect").sub(1).abs().max().item() < 1e-6
        True
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number of pixels, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma!r}")
    if border not in ("zeros", "reflect"):
        raise ValueError(f"border must be 'zeros' or 'reflect', got {border!r}")
    half = kernel_size // 2
    if border == "reflect" and min(x.shape[-2:]) <= half:
        raise ValueError(
            f"an image of {tuple(x.shape[-2:])} px is too small for a {kernel_size}×{kernel_size} blur with "
            f"reflected borders (it needs more than {half} px a side)"
        )
    offsets = torch.arange(kernel_size, dtype=torch.float64, device=x.device) - half
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    line = (line / line.sum()).to(x.dtype)
    channels = x.shape[1]
    out = F.pad(x, (half, half, half, half), mode="reflect" if border == "reflect" else "constant")
    out = F.conv2d(out, line.view(1, 1, 1, kernel_size).expand(channels, 1, 1, kernel_size), groups=channels)
    return F.conv2d(out, line.view(1, 1, kernel_size, 1).expand(channels, 1, kernel_size, 1), groups=channels)


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU operations on one thread, the thread count restored on exit.

    For loops of many small operations (DFF's NMF sweeps, the Sobel filter), where the threads' start-up costs
    more than their work. Nothing changes on other devices or when torch already runs on one thread.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
