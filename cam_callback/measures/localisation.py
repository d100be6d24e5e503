"""``cam_localisation/<method>/pointing_game`` and ``/energy``: does the map find the object?

With object boxes or masks in the fixed batch (``images={"boxes": ...}`` or a ``"boxes"``/``"masks"`` batch
key), each map is scored by the pointing game (Zhang et al., 2016: is the map's peak inside the object,
within ``tolerance`` pixels?) and the energy-based pointing game (Wang et al., 2020: the share of the map's
mass on the object), per image; the scalars are the means over the images that have an object.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures.base import Measure, Slice
from cams import metrics

__all__ = ["Localisation", "objects"]


def objects(batch: FixedBatch, device: object) -> tuple[Tensor | None, Tensor | None]:
    """The batch's object ``(boxes, masks)`` on ``device``: the masks when it has both (they are exact)."""
    masks = None if batch.masks is None else batch.masks.to(device)
    boxes = None if batch.boxes is None or masks is not None else batch.boxes.to(device)
    return boxes, masks


class Localisation(Measure):
    """The pointing game and its energy-based form on the fixed batch's objects.

    Args:
        tolerance: pixels around the object that still count as a hit in the pointing game (15 as in Zhang
            et al. for 224² images; use a smaller value for small images).

    Example:
        >>> Localisation(tolerance=4)
        Localisation(tolerance=4)
    """

    name: ClassVar[str] = "localisation"
    scores_baselines: ClassVar[bool] = True
    nan_is_undefined: ClassVar[bool] = True

    def __init__(self, tolerance: int = 15) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError(f"Localisation(tolerance={tolerance!r}): expected pixels >= 0, e.g. 15")
        self.tolerance = tolerance

    def problem(self, batch: FixedBatch) -> str | None:
        if batch.boxes is None and batch.masks is None:
            return (
                "the fixed batch has no object boxes or masks to score the maps against: give them with "
                "images={'image': x, 'boxes': ...} (or 'masks'), or yield them under a 'boxes'/'masks' batch key"
            )
        return None

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        boxes, masks = objects(part.batch, part.x.device)
        if boxes is None and masks is None:
            return {}
        values: dict[str, Tensor] = {}
        for name, cam in part.scored(self.scores_baselines).items():
            hit = metrics.pointing_game(cam, boxes=boxes, masks=masks, tolerance=self.tolerance)
            values[f"cam_localisation/{name}/pointing_game"] = hit.float()
            values[f"cam_localisation/{name}/energy"] = metrics.energy_pointing_game(cam, boxes, masks).float()
        return values
