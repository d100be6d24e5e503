"""The maps of earlier runs, and the drift of a run's maps against them.

``cam_drift/<method>/vs_previous`` and ``/vs_first`` compare a run's maps ``(N, H, W)`` with the previous and
the first run's (``1 - mean cosine similarity``, :func:`cams.metrics.drift`); ``cam_drift/pred_changed`` is the
share of images whose predicted class changed since the previous run. :class:`MapHistory` keeps what that needs
(on the CPU) and is saved in the callback's ``state_dict``, so a resumed fit keeps comparing with its first run.
"""

from __future__ import annotations

from typing import Any

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
    """

    def __init__(self) -> None:
        self.first: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] = {}
        self.previous_preds: Tensor | None = None
        self.runs = 0

    def drift(self, maps: dict[str, Tensor], preds: Tensor | None) -> dict[str, float]:
        """``cam_drift/<method>/vs_previous``, ``/vs_first`` and ``cam_drift/pred_changed``, where comparable.

        Args:
            maps: this run's maps per method, ``(N, H, W)``.
            preds: this run's predicted classes ``(N,)``, or ``None``.
        """
        scalars: dict[str, float] = {}
        for name, cam in maps.items():
            previous, first = self.previous.get(name), self.first.get(name)
            if previous is not None and previous.shape == cam.shape:
                scalars[f"cam_drift/{name}/vs_previous"] = float(metrics.drift(cam, previous))
            if first is not None and first.shape == cam.shape:
                scalars[f"cam_drift/{name}/vs_first"] = float(metrics.drift(cam, first))
        last = self.previous_preds
        if preds is not None and last is not None and last.shape == preds.shape:
            scalars["cam_drift/pred_changed"] = float((preds != last).float().mean())
        return scalars

    def remember(self, maps: dict[str, Tensor], preds: Tensor | None) -> None:
        """Keep this run's maps (the first run's too, per method) and predictions, and count the run."""
        for name, cam in maps.items():
            self.first.setdefault(name, cam)
        self.previous = dict(maps)
        self.previous_preds = preds
        self.runs += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and ints (``weights_only`` loadable)."""
        return {"first": dict(self.first), "previous": dict(self.previous), "previous_preds": self.previous_preds,
                "runs": self.runs}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values (missing keys: empty)."""
        self.first = dict(state.get("first", {}))
        self.previous = dict(state.get("previous", {}))
        self.previous_preds = state.get("previous_preds")
        self.runs = int(state.get("runs", 0))
