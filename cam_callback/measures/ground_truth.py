"""``cam_localisation/<method>/{top_k_intersection, relevance_rank_accuracy, attribution_localisation, auc}``.

Quantus' localisation measures against the fixed batch's object boxes or masks, one measure per name, each
scored per image beside :class:`~cam_callback.measures.Localisation`'s pointing game (the centre and random
baselines too, with ``"baselines"``); the scalars are the means over the images that have an object:

- ``"top_k_intersection"``: the share of the map's ``k`` highest pixels on the object (Theiner et al., 2021,
  :func:`cams.metrics.top_k_intersection`);
- ``"relevance_rank_accuracy"``: the share of the object covered by the map's ``|O|`` highest pixels (Arras et
  al., 2022, :func:`cams.metrics.relevance_rank_accuracy`);
- ``"attribution_localisation"``: the share of the map's absolute relevance on the object (Kohlbrenner et al.,
  2020, :func:`cams.metrics.attribution_localisation`);
- ``"auc"``: the ROC AUC of the map as a detector of the object's pixels (Fawcett, 2006,
  :func:`cams.metrics.roc_auc`).

All higher is better. They read the maps and the objects only: their cost is a sort (AUC) or a top-k per map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures.base import Measure, Slice
from cam_callback.measures.localisation import objects
from cams import metrics

__all__ = ["AttributionLocalisation", "LocalisationAUC", "RelevanceRankAccuracy", "TopKIntersection"]


class _ObjectMeasure(Measure):
    """A measure of each scored map against the fixed batch's objects: ``cam_localisation/<method>/<name>``."""

    scores_baselines: ClassVar[bool] = True
    nan_is_undefined: ClassVar[bool] = True

    def problem(self, batch: FixedBatch) -> str | None:
        if batch.boxes is None and batch.masks is None:
            return (
                f"{self.name} scores the maps against objects, and the fixed batch has no object boxes or masks: "
                "give them with images={'image': x, 'boxes': ...} (or 'masks'), or yield them under a "
                "'boxes'/'masks' batch key"
            )
        return None

    def score(self, maps: Tensor, boxes: Tensor | None, masks: Tensor | None) -> Tensor:
        """``(k,)`` values of ``maps`` against the objects."""
        raise NotImplementedError

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        boxes, masks = objects(part.batch, part.x.device)
        if boxes is None and masks is None:
            return {}
        return {
            f"cam_localisation/{name}/{self.name}": self.score(cam, boxes, masks).float()
            for name, cam in part.scored(self.scores_baselines).items()
        }


class TopKIntersection(_ObjectMeasure):
    """The share of each map's ``k`` highest pixels that lie on the object.

    Args:
        k: how many pixels (Quantus' default ``1000`` is 2 % of a 224² image; a fixed batch with fewer pixels per
            image is refused before training, with a suggestion).
        concept_influence: divide by the object's area fraction (``1`` = what a random map scores).

    Example:
        >>> TopKIntersection(k=64)
        TopKIntersection(k=64, concept_influence=False)
    """

    name: ClassVar[str] = "top_k_intersection"

    def __init__(self, k: int = 1000, concept_influence: bool = False) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TopKIntersection(k={k!r}): expected a number of pixels >= 1, e.g. 1000 for 224² images")
        if not isinstance(concept_influence, bool):
            raise ValueError(f"TopKIntersection(concept_influence={concept_influence!r}): expected True or False")
        self.k = k
        self.concept_influence = concept_influence

    def problem(self, batch: FixedBatch) -> str | None:
        pixels = math.prod(batch.images.shape[2:])
        if (no_objects := super().problem(batch)) is not None:
            return no_objects
        if self.k > pixels:
            return (
                f"TopKIntersection(k={self.k}) ranks {self.k} pixels and the maps have {pixels} "
                f"({' x '.join(map(str, batch.images.shape[2:]))}); pass TopKIntersection(k={max(1, pixels // 50)}) "
                "(2 % of the pixels, as k=1000 is of 224²)"
            )
        return None

    def score(self, maps: Tensor, boxes: Tensor | None, masks: Tensor | None) -> Tensor:
        return metrics.top_k_intersection(maps, boxes, masks, k=self.k, concept_influence=self.concept_influence)


class _Plain(_ObjectMeasure):
    """A measure with no options: a function of maps and objects."""

    function: ClassVar[Callable[..., Tensor]]

    def score(self, maps: Tensor, boxes: Tensor | None, masks: Tensor | None) -> Tensor:
        return type(self).function(maps, boxes, masks)


class RelevanceRankAccuracy(_Plain):
    """The share of the object covered by each map's ``|O|`` highest pixels.

    Example:
        >>> RelevanceRankAccuracy()
        RelevanceRankAccuracy()
    """

    name: ClassVar[str] = "relevance_rank_accuracy"
    function = staticmethod(metrics.relevance_rank_accuracy)


class AttributionLocalisation(_Plain):
    """The share of each map's absolute relevance that lies on the object.

    Example:
        >>> AttributionLocalisation()
        AttributionLocalisation()
    """

    name: ClassVar[str] = "attribution_localisation"
    function = staticmethod(metrics.attribution_localisation)


class LocalisationAUC(_Plain):
    """The ROC AUC of each map read as a pixel-wise detector of the object (``0.5`` = chance).

    Example:
        >>> LocalisationAUC()
        LocalisationAUC()
    """

    name: ClassVar[str] = "auc"
    function = staticmethod(metrics.roc_auc)
