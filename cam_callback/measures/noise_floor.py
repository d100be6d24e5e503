"""``cam_drift/<method>/noise_floor``: how much the maps move when nothing but noise changes.

The drift (``1 -`` cosine similarity) between each map of the fixed batch and the map of the same image plus
seeded Gaussian noise of ``sigma`` times the fixed batch's pixel standard deviation, with the same weights and
the same classes. Drift between runs well above it is the model changing; drift near it is noise. The noise is
drawn for the whole batch from its own generator (never the global RNG) and sliced, so each image gets the same
noise whatever the number of processes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from cam_callback.measures.base import Measure, Slice
from cams import metrics

__all__ = ["NOISE_SEED", "NoiseFloor"]

NOISE_SEED = 0
"""Seed of the noise-floor perturbation's generator."""


class NoiseFloor(Measure):
    """The drift of the maps under a tiny seeded perturbation of the input (one more engine call per run).

    Args:
        sigma: the perturbation's size as a fraction of the fixed images' pixel standard deviation, in
            ``(0, 1]`` (``0.01``: below one grey level).

    Example:
        >>> NoiseFloor(0.02)
        NoiseFloor(sigma=0.02)
    """

    name: ClassVar[str] = "noise_floor"

    def __init__(self, sigma: float = 0.01) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 < float(sigma) <= 1):
            raise ValueError(
                f"NoiseFloor(sigma={sigma!r}): expected the perturbation's size as a fraction of the images' pixel "
                "standard deviation in (0, 1], e.g. 0.01"
            )
        self.sigma = float(sigma)

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        x = part.x
        sigma = self.sigma * float(part.convert_input(part.images).float().std())
        generator = torch.Generator(device=x.device).manual_seed(NOISE_SEED)
        noise = torch.randn((len(part.images), *x.shape[1:]), generator=generator, device=x.device, dtype=torch.float32)
        noisy = (x.detach().float() + sigma * noise[part.rows.to(x.device)]).to(x.dtype)
        classes = part.engine_classes if part.engine_classes is not None else part.targets  # the same classes
        again = part.explain(noisy, classes)
        return {
            f"cam_drift/{name}/noise_floor": 1.0 - metrics.cosine_similarity(again[name].float(), cam.float())
            for name, cam in part.maps.items()
        }
