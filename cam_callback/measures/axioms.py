"""``cam_axioms/<method>/conservation`` and ``/sensitivity``: XGrad-CAM's axioms (Fu et al., 2020) as
relative errors (0 when the axiom holds), per channel-sum method, at the (single) target layer
(:func:`cams.metrics.axioms`; one forward per channel of the layer)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

import cams
from cam_callback.measures.base import Measure, Setting, Slice
from cams import metrics

__all__ = ["Axioms"]


def _projects(method: str) -> bool:
    """Whether a method projects on a principal component (no channel sum, so no axioms)."""
    return cams.get_method(method).project


class Axioms(Measure):
    """Conservation and sensitivity errors of each method that sums weighted channels.

    Example:
        >>> Axioms()
        Axioms()
    """

    name: ClassVar[str] = "axioms"
    nan_is_undefined: ClassVar[bool] = True

    def check(self, setting: Setting) -> None:
        if setting.layers is not None and len(setting.layers) > 1:
            layers = [layer if isinstance(layer, str) else type(layer).__name__ for layer in setting.layers]
            raise ValueError(
                f"CAMCallback(measures=[..., 'axioms'], target_layers={layers!r}): the axioms are defined for one "
                "layer; pass a single target layer"
            )
        if all(_projects(name) for name in setting.methods):
            raise ValueError(
                f"CAMCallback(measures=[..., 'axioms'], methods={list(setting.methods)!r}): the axioms concern "
                "methods that sum weighted channels; add one such as 'gradcam' or 'xgradcam'"
            )

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        layer = part.layers[0] if part.layers else None
        values: dict[str, Tensor] = {}
        for name in part.maps:
            if layer is None or _projects(name):
                continue
            with part.forward_context():
                errors = metrics.axioms(part.model, part.x, layer, method=name, targets=part.classes)
            for key, value in errors.items():
                values[f"cam_axioms/{name}/{key}"] = value.float()
        return values
