"""``cam_faithfulness/<method>/...``: Quantus' faithfulness family, every map and the baselines scored.

============================  ====================================================  ======  ===================
name                          logs (per map)                                        better  forwards per image
============================  ====================================================  ======  ===================
``pixel_flipping``            AUC of the score as pixels go, most relevant first     ↓       1 + ``steps``
``region_perturbation``       AOPC of the score's drop as patches go (MoRF)          ↑       1 + ``regions``
``selectivity``               AUC of the score as every patch goes (MoRF)            ↓       1 + patches (64)
``irof``                      area over the score curve as superpixels go            ↑       1 + superpixels
``faithfulness_correlation``  Pearson r of subset mass and score drop                ↑       1 + ``nr_runs``
``monotonicity_correlation``  Spearman rho of group relevance and score variance     ↑       1 + steps x samples
``sensitivity_n``             mean over n of Pearson r for subsets of n pixels       ↑       1 + sizes x subsets
============================  ====================================================  ======  ===================

Each calls its :mod:`cams.metrics` function (:func:`cams.metrics.pixel_flipping`, ...) on the process's slice
with the model frozen, in the run's precision, for the classes the run explained; the random draws (subsets,
replacement values) are made per image from its own generator, so an image gets the same ones whatever the
number of processes. The defaults are sized to run every epoch (Quantus' are for one evaluation: pixel by
pixel, 100 runs); pass an instance for others. They perturb 2-D images: a batch of volumes is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures._quantus import check_count, image_draws, plane_images_only
from cam_callback.measures.base import Measure, Slice, model_scores
from cams import metrics

__all__ = [
    "DRAW_SEED",
    "IROF",
    "FaithfulnessCorrelation",
    "MonotonicityCorrelation",
    "PixelFlipping",
    "RegionPerturbation",
    "Selectivity",
    "SensitivityN",
]

DRAW_SEED = 24
"""Seed of the random subsets and replacement values (per image)."""


def _mean_r(*args: Any, **kwargs: Any) -> dict[str, Tensor]:
    return {"r": torch.nanmean(metrics.sensitivity_n(*args, **kwargs)["correlation"], dim=1)}


def _named(function: Callable[..., Tensor], key: str) -> Callable[..., dict[str, Tensor]]:
    return lambda *args, **kwargs: {key: function(*args, **kwargs)}


class _Perturbing(Measure):
    """A measure of this family: its function on every scored map (the baselines too); 2-D images only.

    Subclasses name the :mod:`cams.metrics` function, the key of its result that is logged, and the options
    of a slice (:meth:`options`: computed once per run and slice, the same for every map).
    """

    scores_baselines: ClassVar[bool] = True
    nan_is_undefined: ClassVar[bool] = True
    key: ClassVar[str] = ""

    def problem(self, batch: FixedBatch) -> str | None:
        return plane_images_only(self.name, batch)

    def function(self) -> Callable[..., dict[str, Tensor]]:
        raise NotImplementedError

    def options(self, part: Slice) -> dict[str, Any]:
        """The function's options for this slice (drawn per image where random)."""
        return {}

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        options, function = self.options(part), self.function()
        return {
            f"cam_faithfulness/{name}/{self.name}": model_scores(function, part, cam, **options)[self.key]
            for name, cam in part.scored(self.scores_baselines).items()
        }


def _patch(part: Slice, patch_size: int | None) -> int:
    return patch_size or math.ceil(min(part.x.shape[-2:]) / 8)


def _pixels(part: Slice) -> int:
    return part.x.shape[-1] * part.x.shape[-2]


class PixelFlipping(_Perturbing):
    """Pixel flipping's AUC over ``steps`` steps of ``ceil(HW / steps)`` pixels (black baseline).

    Example:
        >>> PixelFlipping(steps=8)
        PixelFlipping(steps=8)
    """

    name: ClassVar[str] = "pixel_flipping"
    key: ClassVar[str] = "auc"

    def __init__(self, steps: int = 16) -> None:
        self.steps = check_count("PixelFlipping", "steps", steps, "removal steps")

    def function(self) -> Callable[..., dict[str, Tensor]]:
        return metrics.pixel_flipping

    def options(self, part: Slice) -> dict[str, Any]:
        return {"features_in_step": math.ceil(_pixels(part) / self.steps)}


class RegionPerturbation(_Perturbing):
    """Region perturbation's AOPC over the first ``regions`` patches, most relevant first.

    Args:
        regions: patches replaced (Quantus: 100).
        patch_size: side of the patches (``None``: an eighth of the image's shorter side, 64 patches).

    Example:
        >>> RegionPerturbation()
        RegionPerturbation(regions=16, patch_size=None)
    """

    name: ClassVar[str] = "region_perturbation"
    key: ClassVar[str] = "aopc"

    def __init__(self, regions: int = 16, patch_size: int | None = None) -> None:
        self.regions = check_count("RegionPerturbation", "regions", regions, "patches replaced")
        self.patch_size = None if patch_size is None else check_count(
            "RegionPerturbation", "patch_size", patch_size, "side of the patches")  # fmt: skip

    def function(self) -> Callable[..., dict[str, Tensor]]:
        return metrics.region_perturbation

    def options(self, part: Slice) -> dict[str, Any]:
        return {"patch_size": _patch(part, self.patch_size), "regions_evaluation": self.regions}


class Selectivity(_Perturbing):
    """Selectivity's AUC, every patch replaced in turn, most relevant first.

    Args:
        patch_size: side of the patches (``None``: an eighth of the image's shorter side, 64 patches).

    Example:
        >>> Selectivity(patch_size=4)
        Selectivity(patch_size=4)
    """

    name: ClassVar[str] = "selectivity"
    key: ClassVar[str] = "auc"

    def __init__(self, patch_size: int | None = None) -> None:
        self.patch_size = None if patch_size is None else check_count(
            "Selectivity", "patch_size", patch_size, "side of the patches")  # fmt: skip

    def function(self) -> Callable[..., dict[str, Tensor]]:
        return metrics.selectivity

    def options(self, part: Slice) -> dict[str, Any]:
        return {"patch_size": _patch(part, self.patch_size)}


class IROF(_Perturbing):
    """IROF's area over the curve, superpixels (:func:`cams.metrics.slic`, once per run) removed by mean relevance.

    Args:
        n_segments: about how many superpixels per image (Quantus, via skimage: 100).

    Example:
        >>> IROF()
        IROF(n_segments=32)
    """

    name: ClassVar[str] = "irof"
    key: ClassVar[str] = "irof"

    def __init__(self, n_segments: int = 32) -> None:
        self.n_segments = check_count("IROF", "n_segments", n_segments, "superpixels per image")

    def function(self) -> Callable[..., dict[str, Tensor]]:
        return metrics.irof

    def options(self, part: Slice) -> dict[str, Any]:
        return {"segments": metrics.slic(part.x.detach().float(), n_segments=self.n_segments)}


class FaithfulnessCorrelation(_Perturbing):
    """Faithfulness correlation over ``nr_runs`` random subsets of ``subset_size`` pixels (black baseline).

    Args:
        nr_runs: subsets per image (Quantus: 100).
        subset_size: pixels per subset (``None``: the image's width, Quantus' 224 at 224²).

    Example:
        >>> FaithfulnessCorrelation()
        FaithfulnessCorrelation(nr_runs=32, subset_size=None)
    """

    name: ClassVar[str] = "faithfulness_correlation"
    key: ClassVar[str] = "r"

    def __init__(self, nr_runs: int = 32, subset_size: int | None = None) -> None:
        self.nr_runs = check_count("FaithfulnessCorrelation", "nr_runs", nr_runs, "random subsets per image")
        self.subset_size = None if subset_size is None else check_count(
            "FaithfulnessCorrelation", "subset_size", subset_size, "pixels per subset")  # fmt: skip

    def function(self) -> Callable[..., dict[str, Tensor]]:
        return _named(metrics.faithfulness_correlation, "r")

    def options(self, part: Slice) -> dict[str, Any]:
        """``subsets``: ``(k, nr_runs, size)`` flat pixel indices, drawn per image."""
        pixels = _pixels(part)
        size = min(self.subset_size or part.x.shape[-1], pixels)
        subsets = image_draws(lambda g: torch.rand(self.nr_runs, pixels, generator=g).topk(size).indices,
                              DRAW_SEED, part.rows, part.x.device)  # fmt: skip
        return {"subsets": subsets}


class MonotonicityCorrelation(_Perturbing):
    """Monotonicity correlation over ``steps`` pixel groups, each replaced ``nr_samples`` times by U(0, 1).

    Example:
        >>> MonotonicityCorrelation()
        MonotonicityCorrelation(steps=16, nr_samples=4)
    """

    name: ClassVar[str] = "monotonicity_correlation"
    key: ClassVar[str] = "rho"

    def __init__(self, steps: int = 16, nr_samples: int = 4) -> None:
        self.steps = check_count("MonotonicityCorrelation", "steps", steps, "pixel groups")
        self.nr_samples = check_count("MonotonicityCorrelation", "nr_samples", nr_samples, "replacements per group")

    def function(self) -> Callable[..., dict[str, Tensor]]:
        return _named(metrics.monotonicity_correlation, "rho")

    def options(self, part: Slice) -> dict[str, Any]:
        """Pixels per group and ``draws``: the uniform values ``(K, nr_samples, k)``, drawn per image."""
        step = math.ceil(_pixels(part) / self.steps)
        groups = math.ceil(_pixels(part) / step)
        values = image_draws(lambda g: torch.rand(groups, self.nr_samples, generator=g), DRAW_SEED, part.rows,
                             part.x.device)  # fmt: skip
        return {"nr_samples": self.nr_samples, "features_in_step": step, "draws": values.permute(1, 2, 0)}


class SensitivityN(_Perturbing):
    """Sensitivity-n (the paper's): the mean over the sizes of the Pearson r over ``nr_subsets`` subsets each.

    Example:
        >>> SensitivityN()
        SensitivityN(fractions=(0.1, 0.3, 0.5), nr_subsets=8)
    """

    name: ClassVar[str] = "sensitivity_n"
    key: ClassVar[str] = "r"

    def __init__(self, fractions: Any = (0.1, 0.3, 0.5), nr_subsets: int = 8) -> None:
        self.fractions = tuple(float(f) for f in fractions)
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"SensitivityN(fractions={fractions!r}): expected sizes in (0, 1], e.g. (0.1, 0.3, 0.5)")
        self.nr_subsets = check_count("SensitivityN", "nr_subsets", nr_subsets, "random subsets per size")

    def function(self) -> Callable[..., dict[str, Tensor]]:
        return _mean_r

    def options(self, part: Slice) -> dict[str, Any]:
        """``subsets``: one ``(k, nr_subsets, n)`` tensor of flat pixel indices per size, drawn per image."""
        pixels = _pixels(part)
        sizes = [max(1, round(f * pixels)) for f in self.fractions]

        def draw(g: torch.Generator) -> Tensor:
            keys = torch.rand(len(sizes), self.nr_subsets, pixels, generator=g)
            return torch.cat([keys[i].topk(n).indices for i, n in enumerate(sizes)], dim=1)

        flat = image_draws(draw, DRAW_SEED, part.rows, part.x.device)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return {"subsets": [flat[:, :, start : start + n] for start, n in zip(starts, sizes, strict=True)]}
