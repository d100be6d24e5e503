"""Images -> the model's input tensor, for :func:`cam_callback.explain`: paths, PIL images, arrays or tensors,
converted to the model's channels, resized and normalised as :class:`Preprocess` says."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cams.io import InputError, read_image
from cams.overlay import denormalize

__all__ = ["ImageInput", "Preprocess", "input_channels", "prepare_images"]

ImageInput = Any
"""A path, a list of paths (or of PIL images / arrays), a PIL image, an ``H×W×3`` uint8 array or a tensor."""


@dataclass(frozen=True)
class Preprocess:
    """How :func:`cam_callback.explain` turns pictures into the model's input; ``None`` fields: the checkpoint's.

    Args:
        input_size: ``(C, H, W)`` the pictures are converted (channels) and resized (bilinear) to. Without it and
            without checkpoint state, pictures keep their size and get the channel count of the model's first
            convolution.
        mean: per-channel normalisation mean applied to pictures (and undone for the overlays of tensors).
        std: per-channel normalisation std.
        device: where the model and the images go (``"cpu"``, the default, or ``"cuda"``...).

    Example:
        >>> Preprocess(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).input_size
        (3, 224, 224)
    """

    input_size: Sequence[int] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    device: str | torch.device | None = None


def _as_list(img: Any) -> list[Any]:
    if isinstance(img, (str, os.PathLike)):
        return [img]
    if isinstance(img, (list, tuple)):
        if not img:
            raise InputError("img: an empty list of images")
        return list(img)
    if isinstance(img, np.ndarray) and img.ndim == 4:
        return list(img)
    return [img]


def _to_pil(item: Any, index: int) -> tuple[Any, str | None]:
    """One image (path, PIL image or uint8 array) → (PIL image, file stem or None)."""
    if isinstance(item, (str, os.PathLike)):
        return read_image(item, what="image"), Path(item).stem
    if isinstance(item, Image.Image):
        return item, None
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise InputError(
                f"img[{index}]: an array must be H×W, H×W×3 or H×W×4 uint8; got {array.dtype} {item.shape}"
            )
        return Image.fromarray(array), None
    raise InputError(
        f"img[{index}]: {type(item).__name__} is not an image; pass a path, a PIL image, an H×W×3 uint8 "
        "array or a (B, C, H, W) tensor"
    )


def prepare_images(
    img: Any,
    input_size: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    model_channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images → ``(x, display, names)``: model input (B, C, H, W), display (B, 3, H, W) in [0, 1], stems."""

    channels = int(input_size[0]) if input_size is not None else model_channels
    size = (int(input_size[1]), int(input_size[2])) if input_size is not None else None

    if isinstance(img, torch.Tensor):
        x = img.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise InputError(f"img: a tensor must be (B, C, H, W) or (C, H, W); got shape {tuple(img.shape)}")
        if channels is not None and x.shape[1] != channels:
            raise InputError(f"img: the tensor has {x.shape[1]} channels; the model takes {channels}")
        raw = x.dtype == torch.uint8
        x = x.float() / 255.0 if raw else x.float()
        if size is not None and tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if raw:
            display = _to_rgb(x.clamp(0, 1))
            x = _normalize(x, mean, std)
        else:  # a float tensor is the model's input as it is, already normalised
            display = denormalize(x, mean, std) if mean is not None and std is not None else denormalize(x)
        return x, display, [f"image{i}" for i in range(x.shape[0])]

    items = _as_list(img)
    pictures, names = [], []
    for i, item in enumerate(items):
        picture, stem = _to_pil(item, i)
        pictures.append(picture)
        names.append(stem or f"image{i}")
    if channels is None:
        channels = 1 if all(p.mode in ("L", "I", "I;16", "F", "1") for p in pictures) else 3
    if channels not in (1, 3):
        raise InputError(f"the model takes {channels}-channel input; pass img as a (B, C, H, W) tensor")
    if size is None:
        sizes = {p.size for p in pictures}
        if len(sizes) > 1:
            raise InputError(f"img: images of different sizes {sorted(sizes)} and no input_size to resize to")
        size = (pictures[0].height, pictures[0].width)
    arrays = []
    for picture in pictures:
        picture = picture.convert("L" if channels == 1 else "RGB")
        if (picture.height, picture.width) != size:
            picture = picture.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(picture, dtype=np.float32) / 255.0
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays))
    return _normalize(x, mean, std), _to_rgb(x), _unique(names)


def input_channels(model: nn.Module) -> int | None:
    """The first convolution's ``in_channels``: the channel count pictures get without an ``input_size``."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return None


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def _normalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    if mean is None and std is None:
        return x
    m = torch.as_tensor(mean if mean is not None else 0.0, dtype=x.dtype).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std if std is not None else 1.0, dtype=x.dtype).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, x.shape[1]) or s.shape[1] not in (1, x.shape[1]):
        raise InputError(f"mean/std have {m.shape[1]}/{s.shape[1]} values for {x.shape[1]}-channel images")
    return (x - m) / s


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}-{count + 1}")
    return out
