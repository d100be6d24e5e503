"""``cam_faithfulness/<method>/...``: does the model's score follow the map?

- :class:`Faithfulness`: Average Drop and Increase in Confidence (Chattopadhay et al., 2018) and the
  deletion/insertion AUCs (Petsiuk et al., 2018), from one batched set of forwards
  (:func:`cams.metrics.faithfulness`): ``average_drop``, ``increase_in_confidence``, ``deletion_auc``,
  ``insertion_auc``.
- :class:`Road`: remove and debias (Rong et al., 2022, :func:`cams.metrics.road`): ``road_morf``,
  ``road_lerf``, ``road_combined``; ``2 x 9`` imputed copies of each image, noise seeded per call, so with
  several processes its values differ from one process's by that noise (``noise=0.01`` of the image range).

Both perturb 2-D images: a fixed batch of volumes is refused before training.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures.base import Measure, Slice, model_scores
from cams import metrics

__all__ = ["Faithfulness", "Road"]


def _volumes(name: str, what: str, batch: FixedBatch) -> str | None:
    if batch.images.dim() == 5:
        return (
            f"the fixed batch holds volumes (N, C, D, H, W), and {what} 2-D images only; leave {name!r} out of "
            "measures (drift and the 3-D pointing game are logged for volumes)"
        )
    return None


class Faithfulness(Measure):
    """Average Drop, Increase in Confidence and the deletion/insertion AUCs of every map.

    Example:
        >>> Faithfulness()
        Faithfulness()
    """

    name: ClassVar[str] = "faithfulness"
    scores_baselines: ClassVar[bool] = True

    def problem(self, batch: FixedBatch) -> str | None:
        return _volumes(self.name, "the faithfulness metrics (Average Drop, deletion/insertion) perturb", batch)

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        return {
            f"cam_faithfulness/{name}/{key}": value
            for name, cam in part.scored(self.scores_baselines).items()
            for key, value in model_scores(metrics.faithfulness, part, cam).items()
        }


class Road(Measure):
    """ROAD's most-relevant-first, least-relevant-first and combined scores of every map.

    Example:
        >>> Road()
        Road()
    """

    name: ClassVar[str] = "road"
    scores_baselines: ClassVar[bool] = True

    def problem(self, batch: FixedBatch) -> str | None:
        return _volumes(self.name, "ROAD imputes pixels of", batch)

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        return {
            f"cam_faithfulness/{name}/road_{key}": value
            for name, cam in part.scored(self.scores_baselines).items()
            for key, value in model_scores(metrics.road, part, cam).items()
        }
