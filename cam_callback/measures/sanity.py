"""``cam_sanity/<method>/spearman``: the model-parameter randomisation test (Adebayo et al., 2018): the rank
correlation of each map with the map of a re-initialised copy of the model (:func:`cams.metrics.sanity_check`);
high means the map ignores the weights."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from cam_callback.measures.base import Measure, Slice
from cams import metrics
from cams.state import frozen_model

__all__ = ["Sanity"]


class Sanity(Measure):
    """Spearman correlation with the maps of a re-initialised copy (a deep copy of the model per run).

    Example:
        >>> Sanity()
        Sanity()
    """

    name: ClassVar[str] = "sanity"

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        values: dict[str, Tensor] = {}
        for name in part.maps:
            with frozen_model(part.model), part.forward_context():
                similarity = metrics.sanity_check(
                    part.model,
                    part.x,
                    part.layers or None,
                    method=name,
                    targets=part.classes,
                    reshape_transform=part.reshape_transform,
                )
            values[f"cam_sanity/{name}/spearman"] = similarity.float()
        return values
