"""``cam_randomisation/<method>/...``: do the maps change when the weights, or the explained class, are random?

- :class:`MPRT` (``mprt``): mean Spearman correlation with the maps of the model re-initialised step by step
  (Adebayo et al., 2018; :func:`cams.metrics.mprt`); by default one step per block of the model;
- :class:`SmoothMPRT` (``smooth_mprt``): the same on maps averaged over noisy copies (Hedström et al., 2023);
- :class:`EfficientMPRT` (``efficient_mprt``): relative rise of the maps' entropy once every layer is random;
- :class:`RandomLogit` (``random_logit``): SSIM with the map of a random other class (Sixt et al., 2020).

Each builds its own randomised copies of the model (a deep copy per run, the model never touched) and explains
them with the run's methods at the explained layers, for the classes the run explained. Lower is better for
``mprt``, ``smooth_mprt`` and ``random_logit``, higher for ``efficient_mprt``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures._quantus import check_count, check_fraction, image_draws, plane_images_only
from cam_callback.measures.base import Measure, Slice
from cams import metrics
from cams.metrics.randomisation import ORDERS, mprt_scores
from cams.state import frozen_model
from cams.targets import logits_of

__all__ = ["MPRT", "RANDOM_LOGIT_SEED", "SMOOTH_SEED", "EfficientMPRT", "RandomLogit", "SmoothMPRT"]

SMOOTH_SEED = 21
"""Seed of :class:`SmoothMPRT`'s noise (per image, see :func:`cam_callback.measures._quantus.image_generator`)."""
RANDOM_LOGIT_SEED = 22
"""Seed of :class:`RandomLogit`'s other classes."""


def _check_order(measure: str, order: Any) -> str:
    if order not in ORDERS:
        raise ValueError(f"{measure}(order={order!r}): expected one of {list(ORDERS)}")
    return order


class MPRT(Measure):
    """Model parameter randomisation: ``1 + steps`` engine calls per run (``"blocks"``: 8 for a ResNet).

    Args:
        order: ``"top_down"`` (cascading from the output, Quantus' default), ``"bottom_up"`` or ``"independent"``.
        modules: the randomisation steps: ``"blocks"`` (default, :func:`cams.metrics.randomisation.blocks`),
            ``None`` (every module with ``reset_parameters``, as Quantus: 41 steps for a ResNet-18) or names.
        seed: the re-initialisation's seed (Quantus' 42).

    Example:
        >>> MPRT(order="independent")
        MPRT(order='independent', modules='blocks', seed=42)
    """

    name: ClassVar[str] = "mprt"

    def __init__(self, order: str = "top_down", modules: Any = "blocks", seed: int = 42) -> None:
        self.order = _check_order(type(self).__name__, order)
        self.modules = modules if modules is None or isinstance(modules, str) else tuple(modules)
        self.seed = int(seed)

    def _options(self, part: Slice) -> dict[str, Any]:
        return {}

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        with frozen_model(part.model), part.forward_context():
            scores = mprt_scores(
                part.model, part.x, part.layers or None, list(part.maps), part.classes, order=self.order,
                seed=self.seed, modules=self.modules, reshape_transform=part.reshape_transform, **self._options(part),
            )  # fmt: skip
        tag = f"cam_randomisation/{{}}/{self.name}"
        return {tag.format(m): torch.stack(list(s.values())).mean(dim=0) for m, s in scores.items()}


class SmoothMPRT(MPRT):
    """:class:`MPRT` on maps averaged over ``nr_samples`` noisy copies: ``(1 + steps) nr_samples`` explained batches.

    Args:
        order, modules, seed: as in :class:`MPRT` (``order`` defaults to ``"bottom_up"``, as Quantus').
        nr_samples: copies averaged (Quantus: 50), the last one without noise.
        noise_magnitude: the noise's standard deviation as a fraction of each image's value range (Quantus' 0.1).

    Example:
        >>> SmoothMPRT(nr_samples=4)
        SmoothMPRT(order='bottom_up', modules='blocks', seed=42, nr_samples=4, noise_magnitude=0.1)
    """

    name: ClassVar[str] = "smooth_mprt"

    def __init__(self, order: str = "bottom_up", modules: Any = "blocks", seed: int = 42, nr_samples: int = 8,
                 noise_magnitude: float = 0.1) -> None:  # fmt: skip
        super().__init__(order, modules, seed)
        self.nr_samples = check_count("SmoothMPRT", "nr_samples", nr_samples, "noisy copies averaged, >= 2")
        if nr_samples < 2:
            raise ValueError(f"SmoothMPRT(nr_samples={nr_samples!r}): expected at least 2 (one clean, one noisy copy)")
        self.noise_magnitude = check_fraction("SmoothMPRT", "noise_magnitude", noise_magnitude, 0, 10,
                                              "the noise's standard deviation over the image's range")  # fmt: skip

    def _options(self, part: Slice) -> dict[str, Any]:
        shape = (self.nr_samples - 1, *part.x.shape[1:])
        noise = image_draws(lambda g: torch.randn(shape, generator=g), SMOOTH_SEED, part.rows, part.x.device)
        return {"nr_samples": self.nr_samples, "noise_magnitude": self.noise_magnitude, "noise": noise.transpose(0, 1)}


class EfficientMPRT(Measure):
    """The maps' entropy rise once every layer is re-initialised: 2 engine calls per method and run.

    Args:
        n_bins: histogram bins of the entropy (Quantus' 100).
        seed: the re-initialisation's seed (Quantus' 42).

    Example:
        >>> EfficientMPRT()
        EfficientMPRT(n_bins=100, seed=42)
    """

    name: ClassVar[str] = "efficient_mprt"

    def __init__(self, n_bins: int = 100, seed: int = 42) -> None:
        self.n_bins = check_count("EfficientMPRT", "n_bins", n_bins, "histogram bins")
        self.seed = int(seed)

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        values: dict[str, Tensor] = {}
        for name in part.maps:
            with frozen_model(part.model), part.forward_context():
                values[f"cam_randomisation/{name}/efficient_mprt"] = metrics.efficient_mprt(
                    part.model, part.x, part.layers or None, name, part.classes, seed=self.seed, n_bins=self.n_bins,
                    reshape_transform=part.reshape_transform,
                )  # fmt: skip
        return values


class RandomLogit(Measure):
    """SSIM (2-D, the paper's) with the map of a random other class: 2 engine calls per method and run.

    The other class of each image is drawn from its own seeded generator. The run must explain classes
    (``target="pred"``, ``"label"`` or a class index).

    Args:
        flat: Quantus' SSIM of the flattened maps instead.

    Example:
        >>> RandomLogit()
        RandomLogit(flat=False)
    """

    name: ClassVar[str] = "random_logit"

    def __init__(self, flat: bool = False) -> None:
        self.flat = bool(flat)

    def problem(self, batch: FixedBatch) -> str | None:
        return plane_images_only(self.name, batch)

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        if part.engine_classes is None:
            raise ValueError(
                "CAMCallback(measures=[..., 'random_logit', ...]): the random logit test explains another class, and "
                "this run's target chooses no class per image; use target='pred', 'label' or a class index"
            )
        classes = part.engine_classes.to(part.x.device)
        with frozen_model(part.model), torch.no_grad(), part.forward_context():
            count = logits_of(part.model(part.x[:1]), "targets").shape[1]
        draw = image_draws(lambda g: torch.randint(0, max(count - 1, 1), (1,), generator=g)[0], RANDOM_LOGIT_SEED,
                           part.rows, part.x.device)  # fmt: skip
        off = draw + (draw >= classes).long()
        values: dict[str, Tensor] = {}
        for name in part.maps:
            with frozen_model(part.model), part.forward_context():
                values[f"cam_randomisation/{name}/random_logit"] = metrics.random_logit(
                    part.model, part.x, part.layers or None, name, classes, off_classes=off, flat=self.flat,
                    reshape_transform=part.reshape_transform,
                )  # fmt: skip
        return values
