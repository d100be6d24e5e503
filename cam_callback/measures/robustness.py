"""``cam_robustness/<method>/...``: how far the maps move when the input moves a little (lower is better).

- :class:`MaxSensitivity` (``max_sensitivity``), :class:`AvgSensitivity` (``avg_sensitivity``): the largest /
  mean relative change of the map over ``nr_samples`` uniform perturbations (Yeh et al., 2019);
- :class:`LocalLipschitz` (``local_lipschitz``): the largest change of the map over the change of the input,
  over Gaussian perturbations (Alvarez-Melis & Jaakkola, 2018).

The ``nr_samples`` perturbed copies of the process's slice are explained together, in one call of the run's
engine (its methods, smoothing and target: each copy explains the class its image was explained for). The
noise is drawn per image from its own generator (:mod:`cam_callback.measures._quantus`), so an image gets the
same noise whatever the number of processes; the values are :func:`cams.metrics.max_sensitivity`'s, ...,
with that noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor

from cam_callback.measures._quantus import check_count, check_fraction, image_draws
from cam_callback.measures.base import Measure, Slice
from cams.metrics.robustness import explanation_changes

__all__ = ["NOISE_SEED", "AvgSensitivity", "LocalLipschitz", "MaxSensitivity"]

NOISE_SEED = 23
"""Seed of the robustness measures' perturbations (per image)."""


class _Sensitivity(Measure):
    """The shared pass: ``nr_samples`` perturbed copies of the slice, one engine call, the changes per copy."""

    lipschitz: ClassVar[bool] = False
    mean: ClassVar[bool] = False

    def _noise(self, part: Slice) -> Tensor:
        raise NotImplementedError

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        noise = self._noise(part).transpose(0, 1).to(part.x.dtype)  # (N, k, C, H, W)
        classes = part.engine_classes if part.engine_classes is not None else part.targets

        def draws() -> Iterator[Tensor]:
            return iter(noise)

        def explain(images: Tensor, targets: object) -> dict[str, Tensor]:
            return part.explain(images, targets)

        changes = explanation_changes(explain, part.x, part.maps, draws, classes, lipschitz=self.lipschitz)
        values = {}
        for name, change in changes.items():
            reduced = torch.nanmean(change, dim=0) if self.mean else change.nan_to_num(-torch.inf).amax(dim=0)
            values[f"cam_robustness/{name}/{self.name}"] = torch.where(change.isnan().all(dim=0), torch.nan,
                                                                        reduced).float()  # fmt: skip
        return values


class MaxSensitivity(_Sensitivity):
    """The largest relative change of the maps over uniform noise: ``nr_samples`` explained copies per image.

    Args:
        nr_samples: perturbed copies per image (Quantus: 200).
        lower_bound: the noise is ``U(-lower_bound, lower_bound)`` per element (Quantus' 0.2), in the units of the
            model's (normalised) input.

    Example:
        >>> MaxSensitivity(nr_samples=4)
        MaxSensitivity(nr_samples=4, lower_bound=0.2)
    """

    name: ClassVar[str] = "max_sensitivity"

    def __init__(self, nr_samples: int = 8, lower_bound: float = 0.2) -> None:
        self.nr_samples = check_count(type(self).__name__, "nr_samples", nr_samples, "perturbed copies per image")
        self.lower_bound = check_fraction(type(self).__name__, "lower_bound", lower_bound, 0, 1e6,
                                          "the uniform noise's half width")  # fmt: skip

    def _noise(self, part: Slice) -> Tensor:
        shape, bound = (self.nr_samples, *part.x.shape[1:]), self.lower_bound
        return image_draws(lambda g: torch.rand(shape, generator=g) * (2 * bound) - bound, NOISE_SEED, part.rows,
                           part.x.device)  # fmt: skip


class AvgSensitivity(MaxSensitivity):
    """The mean relative change of the maps over uniform noise (same noise and settings as :class:`MaxSensitivity`).

    Example:
        >>> AvgSensitivity()
        AvgSensitivity(nr_samples=8, lower_bound=0.2)
    """

    name: ClassVar[str] = "avg_sensitivity"
    mean: ClassVar[bool] = True


class LocalLipschitz(_Sensitivity):
    """The largest ratio of the maps' change to the input's, over Gaussian noise: ``nr_samples`` copies per image.

    Args:
        nr_samples: perturbed copies per image (Quantus: 200).
        perturb_std: the noise's standard deviation (Quantus' 0.1), mean 0.

    Example:
        >>> LocalLipschitz()
        LocalLipschitz(nr_samples=8, perturb_std=0.1)
    """

    name: ClassVar[str] = "local_lipschitz"
    lipschitz: ClassVar[bool] = True

    def __init__(self, nr_samples: int = 8, perturb_std: float = 0.1) -> None:
        self.nr_samples = check_count("LocalLipschitz", "nr_samples", nr_samples, "perturbed copies per image")
        self.perturb_std = check_fraction("LocalLipschitz", "perturb_std", perturb_std, 0, 1e6,
                                          "the Gaussian noise's standard deviation")  # fmt: skip

    def _noise(self, part: Slice) -> Tensor:
        shape, std = (self.nr_samples, *part.x.shape[1:]), self.perturb_std
        return image_draws(lambda g: torch.randn(shape, generator=g) * std, NOISE_SEED, part.rows, part.x.device)
