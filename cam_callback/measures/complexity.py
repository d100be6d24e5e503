"""``cam_complexity/<method>/{sparseness, complexity, effective_complexity}``: how concentrated is each map?

Quantus' complexity measures (:mod:`cams.metrics.complexity`), one measure per name, per image, from the maps
alone (no model, no object; the baselines are not scored: they say nothing about the data here):

- ``"sparseness"``: the Gini index of the map (Chalasani et al., 2020); higher is better (sparser);
- ``"complexity"``: the entropy of the map's share per pixel (Bhatt et al., 2020); lower is better;
- ``"effective_complexity"``: the number of pixels above ``eps`` of the map's peak (Nguyen and Rodríguez
  Martínez, 2020); lower is better.

A map the engine returns all zero (a constant map) scores ``0``, ``ln(H W)`` and ``0``: the worst sparseness and
complexity, so a dead map never looks concise. Their cost is one pass over the maps (a sort for sparseness).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from cam_callback.measures.base import Measure, Slice
from cams import metrics

__all__ = ["Complexity", "EffectiveComplexity", "Sparseness"]


class _MapMeasure(Measure):
    """A function of each method's maps alone: ``cam_complexity/<method>/<name>``."""

    def score(self, maps: Tensor) -> Tensor:
        """``(k,)`` values of ``maps``."""
        raise NotImplementedError

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        return {f"cam_complexity/{name}/{self.name}": self.score(cam).float() for name, cam in part.maps.items()}


class Sparseness(_MapMeasure):
    """The Gini index of each map (``0`` constant, near ``1`` a single pixel); higher is better.

    Example:
        >>> Sparseness()
        Sparseness()
    """

    name: ClassVar[str] = "sparseness"

    def score(self, maps: Tensor) -> Tensor:
        return metrics.sparseness(maps)


class Complexity(_MapMeasure):
    """The entropy of each map's share per pixel (``0`` one pixel, ``ln(H W)`` constant); lower is better.

    Example:
        >>> Complexity()
        Complexity()
    """

    name: ClassVar[str] = "complexity"

    def score(self, maps: Tensor) -> Tensor:
        return metrics.complexity(maps)


class EffectiveComplexity(_MapMeasure):
    """How many pixels of each map exceed ``eps`` times its peak; lower is better.

    Args:
        eps: the threshold as a fraction of the map's peak, in ``[0, 1)`` (Quantus' default ``1e-5``).

    Example:
        >>> EffectiveComplexity(eps=0.1)
        EffectiveComplexity(eps=0.1)
    """

    name: ClassVar[str] = "effective_complexity"

    def __init__(self, eps: float = 1e-5) -> None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise ValueError(
                f"EffectiveComplexity(eps={eps!r}): expected a fraction of the map's peak in [0, 1), e.g. 1e-5"
            )
        self.eps = float(eps)

    def score(self, maps: Tensor) -> Tensor:
        return metrics.effective_complexity(maps, eps=self.eps)
