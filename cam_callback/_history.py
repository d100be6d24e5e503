"""The maps of earlier runs, and the drift of a run's maps against them.

``cam_drift/<method>/vs_previous`` and ``/vs_first`` compare a run's maps ``(N, H, W)`` with the previous and
the first run's (``1 - mean cosine similarity``, :func:`cams.metrics.drift`); ``cam_drift/pred_changed`` is the
share of images whose predicted class changed since the previous run. :class:`MapHistory` keeps what that needs
(on the CPU) and is saved in the callback's ``state_dict``, so a resumed fit keeps comparing with its first run.

A map that carries no information (:mod:`cams.health`: constant, usually all zero) has no direction to compare:
the drift is taken over the images whose maps carry information in both runs, and not reported at all when no
image is left (a blank map against a blank map is not "no drift").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cams import metrics

__all__ = ["MapHistory"]


class MapHistory:
    """The first and the previous run's maps per method, the previous predictions, and how many runs there were.

    Example:
        >>> import torch
        >>> history = MapHistory()
        >>> history.drift({"gradcam": torch.rand(2, 4, 4)}, None)  # nothing to compare with yet
        {}
        >>> history.remember({"gradcam": torch.ones(2, 4, 4)}, torch.tensor([0, 1]))
        >>> history.drift({"gradcam": torch.ones(2, 4, 4)}, torch.tensor([0, 0]))
        {'cam_drift/gradcam/vs_previous': 0.0, 'cam_drift/gradcam/vs_first': 0.0, 'cam_drift/pred_changed': 0.5}
        >>> history.drift({"gradcam": torch.zeros(2, 4, 4)}, None, {"gradcam": torch.tensor([True, True])})
        {}
    """

    def __init__(self) -> None:
        self.first: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] = {}
        self.first_blank: dict[str, Tensor] = {}
        self.previous_blank: dict[str, Tensor] = {}
        self.previous_preds: Tensor | None = None
        self.runs = 0

    def drift(
        self, maps: dict[str, Tensor], preds: Tensor | None, blank: dict[str, Tensor] | None = None
    ) -> dict[str, float]:
        """``cam_drift/<method>/vs_previous``, ``/vs_first`` and ``cam_drift/pred_changed``, where comparable.

        Args:
            maps: this run's maps per method, ``(N, H, W)``.
            preds: this run's predicted classes ``(N,)``, or ``None``.
            blank: method -> ``(N,)`` bool, the maps that carry no information (left out, here and in the run
                compared with); ``None``: none.
        """
        scalars: dict[str, float] = {}
        blank = blank or {}
        for name, cam in maps.items():
            mine = blank.get(name)
            for tag, earlier, gone in (("vs_previous", self.previous, self.previous_blank),
                                       ("vs_first", self.first, self.first_blank)):  # fmt: skip
                other = earlier.get(name)
                if other is None or other.shape != cam.shape:
                    continue
                keep = torch.ones(cam.shape[0], dtype=torch.bool)
                for mask in (mine, gone.get(name)):
                    if mask is not None and mask.shape == keep.shape:
                        keep &= ~mask.cpu()
                if bool(keep.any()):
                    scalars[f"cam_drift/{name}/{tag}"] = float(metrics.drift(cam[keep], other[keep]))
        last = self.previous_preds
        if preds is not None and last is not None and last.shape == preds.shape:
            scalars["cam_drift/pred_changed"] = float((preds != last).float().mean())
        return scalars

    def remember(self, maps: dict[str, Tensor], preds: Tensor | None, blank: dict[str, Tensor] | None = None) -> None:
        """Keep this run's maps (the first run's too, per method), which of them are blank, and the predictions,
        and count the run."""
        blank = blank or {}
        for name, cam in maps.items():
            if name not in self.first:
                self.first[name] = cam
                if name in blank:
                    self.first_blank[name] = blank[name]
        self.previous = dict(maps)
        self.previous_blank = {name: mask for name, mask in blank.items() if name in maps}
        self.previous_preds = preds
        self.runs += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and ints (``weights_only`` loadable)."""
        return {"first": dict(self.first), "previous": dict(self.previous), "previous_preds": self.previous_preds,
                "runs": self.runs, "first_blank": dict(self.first_blank),
                "previous_blank": dict(self.previous_blank)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values (missing keys: empty)."""
        self.first = dict(state.get("first", {}))
        self.previous = dict(state.get("previous", {}))
        self.first_blank = dict(state.get("first_blank", {}))
        self.previous_blank = dict(state.get("previous_blank", {}))
        self.previous_preds = state.get("previous_preds")
        self.runs = int(state.get("runs", 0))
