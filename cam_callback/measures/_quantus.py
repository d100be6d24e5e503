"""What the measures of Quantus' families share: seeded draws per image, the 2-D check, argument checks.

Random draws are made per image of the fixed batch, each from its own CPU generator seeded with the measure's
seed and the image's index in the batch: an image gets the same draws whatever the number of processes, the
slice it falls in or the device, and never from the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from cam_callback._batch import FixedBatch

__all__ = ["check_count", "check_fraction", "image_draws", "image_generator", "plane_images_only"]


def image_generator(seed: int, image: int) -> torch.Generator:
    """The CPU generator of image ``image`` of the fixed batch for a measure seeded with ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + image)


def image_draws(draw: Callable[[torch.Generator], Tensor], seed: int, rows: Tensor, device: torch.device) -> Tensor:
    """``draw(generator)`` for each image of ``rows`` (indices into the fixed batch), stacked ``(k, ...)``.

    Example:
        >>> a = image_draws(lambda g: torch.rand(3, generator=g), 0, torch.tensor([4, 5]), torch.device("cpu"))
        >>> b = image_draws(lambda g: torch.rand(3, generator=g), 0, torch.tensor([5]), torch.device("cpu"))
        >>> torch.equal(a[1], b[0])
        True
    """
    return torch.stack([draw(image_generator(seed, int(i))) for i in rows.tolist()]).to(device)


def plane_images_only(name: str, batch: FixedBatch) -> str | None:
    """The reason ``name`` cannot run on a batch of volumes (it perturbs 2-D images), else ``None``."""
    if batch.images.dim() == 5:
        return (
            f"the fixed batch holds volumes (N, C, D, H, W), and {name!r} perturbs 2-D images only; leave it out of "
            "measures (drift and the 3-D pointing game are logged for volumes)"
        )
    return None


def check_count(measure: str, argument: str, value: Any, what: str) -> int:
    """``value`` as a positive int, or ``ValueError`` naming the measure, the argument and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{measure}({argument}={value!r}): expected a positive int ({what})")
    return value


def check_fraction(measure: str, argument: str, value: Any, low: float, high: float, what: str) -> float:
    """``value`` as a float in ``(low, high]``, or ``ValueError`` naming the measure, the argument and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low < float(value) <= high):
        raise ValueError(f"{measure}({argument}={value!r}): expected a number in ({low:g}, {high:g}] ({what})")
    return float(value)
