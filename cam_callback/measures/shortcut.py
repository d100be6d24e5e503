"""Shortcut watch: how much of each map lies on a region marked spurious, and a warning when it beats the object.

Given spurious regions (``images={..., "spurious_mask": ...}`` or a batch key ``spurious_mask``/``spurious_masks``)
beside the object's boxes or masks, every run logs, per method (and per baseline map):

- ``cam_shortcut/<method>/energy``: the share of the map's mass on the spurious region (the energy-based
  pointing game of :func:`cams.metrics.energy_pointing_game`, averaged over the images that have one);
- ``cam_shortcut/<method>/vs_object``: that share divided by the share on the object, over the same
  images (``cam_localisation/<method>/energy`` is the object's share over all images).

When ``vs_object`` exceeds ``Shortcut(ratio=...)`` at a run after the baseline, a :class:`ShortcutWarning`
says so once per method, in words. Before training the maps reflect random weights, so the baseline run
is not judged.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures.base import Measure, Whole
from cam_callback.measures.localisation import objects
from cams import metrics

__all__ = ["Shortcut", "ShortcutWarning", "ShortcutWatch", "shortcut_message", "shortcut_scalars"]


class ShortcutWarning(UserWarning):
    """A CAM puts more attention on a region marked spurious than on the object (spurious regions in the batch).

    Turn it into an error to stop training when it happens::

        warnings.filterwarnings("error", category=ShortcutWarning)
    """


def shortcut_scalars(maps: dict[str, Tensor], batch: FixedBatch) -> dict[str, float]:
    """``cam_shortcut/<method>/energy`` and ``/vs_object`` for maps ``(N, H, W)`` of the fixed batch.

    Args:
        maps: each method's maps (or a baseline's), ``(N, H, W)`` on any device.
        batch: the fixed batch, with ``spurious`` masks and the object's ``boxes`` or ``masks``.

    Example:
        >>> maps = torch.zeros(1, 4, 4)
        >>> maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0                 # 3/4 of the mass on the marker
        >>> spurious = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> spurious[0, 0, 0] = True
        >>> batch = FixedBatch(torch.zeros(1, 1, 4, 4), boxes=torch.tensor([[2, 2, 4, 4]]), spurious=spurious)
        >>> shortcut_scalars({"gradcam": maps}, batch)
        {'cam_shortcut/gradcam/energy': 0.75, 'cam_shortcut/gradcam/vs_object': 3.0}
    """
    assert batch.spurious is not None
    scalars: dict[str, float] = {}
    for name, cam in maps.items():
        cam = cam.detach().float()
        spurious = batch.spurious.to(cam.device)
        boxes, masks = objects(batch, cam.device)
        on_spurious = metrics.energy_pointing_game(cam, masks=spurious).double()
        has_region = torch.isfinite(on_spurious)
        scalars[f"cam_shortcut/{name}/energy"] = float(on_spurious[has_region].mean()) if has_region.any() else math.nan
        if boxes is not None or masks is not None:
            on_object = metrics.energy_pointing_game(cam, boxes=boxes, masks=masks).double()
            both = has_region & torch.isfinite(on_object)
            spurious_share = float(on_spurious[both].sum())
            object_share = float(on_object[both].sum())
            ratio = spurious_share / object_share if object_share > 0 else math.inf if spurious_share > 0 else math.nan
            scalars[f"cam_shortcut/{name}/vs_object"] = ratio if bool(both.any()) else math.nan
    return scalars


def shortcut_message(method: str, scalars: dict[str, float], threshold: float, when: str) -> str:
    """The warning's words: what was measured, against what, and what to look at."""
    spurious = scalars[f"cam_shortcut/{method}/energy"]
    ratio = scalars[f"cam_shortcut/{method}/vs_object"]
    object_energy = spurious / ratio if ratio > 0 else 0.0
    return (
        f"CAMCallback: possible shortcut. {when}, {method}'s attention on the spurious region is {ratio:.1f}x its "
        f"attention on the object (Shortcut(ratio={threshold:g})): {spurious:.0%} of the map's mass lies on the "
        f"spurious region against {object_energy:.0%} on the object. The model may be learning the spurious cue "
        f"instead of the object; see cam_shortcut/{method}/energy and the cam/{method}/timeline image. "
        "This warning is given once per method."
    )


class Shortcut(Measure):
    """The share of each map on the spurious regions, and that share over the share on the object.

    Args:
        ratio: when ``cam_shortcut/<method>/vs_object`` exceeds it at a run after the baseline, a
            :class:`ShortcutWarning` says so (once per method; see :class:`ShortcutWatch`).

    Example:
        >>> Shortcut(ratio=2.0)
        Shortcut(ratio=2.0)
    """

    name: ClassVar[str] = "shortcut"
    scores_baselines: ClassVar[bool] = True

    def __init__(self, ratio: float = 1.0) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0 < float(ratio) < math.inf):
            raise ValueError(
                f"Shortcut(ratio={ratio!r}): expected a positive number, e.g. 1.0 (warn when the spurious region "
                "gets more attention than the object)"
            )
        self.ratio = float(ratio)

    def problem(self, batch: FixedBatch) -> str | None:
        if batch.spurious is None:
            return (
                "the fixed batch has no spurious regions: give them with images={'image': x, 'boxes': ..., "
                "'spurious_mask': ...}, or yield them under a 'spurious_mask' batch key"
            )
        return None

    def on_batch(self, whole: Whole) -> dict[str, float]:
        if whole.batch.spurious is None:
            return {}
        return shortcut_scalars(whole.scored(self.scores_baselines), whole.batch)


class ShortcutWatch:
    """Which methods were warned about, and when; each method is warned about once per session.

    Args:
        ratio: the threshold of the :class:`Shortcut` measure.

    Example:
        >>> watch = ShortcutWatch(1.0)
        >>> scalars = {"cam_shortcut/gradcam/energy": 0.6, "cam_shortcut/gradcam/vs_object": 3.0}
        >>> len(watch.check(scalars, ["gradcam"], "epoch 2")), watch.check(scalars, ["gradcam"], "epoch 3")
        (1, [])
        >>> watch.alerts
        {'gradcam': 'epoch 2'}
    """

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.alerts: dict[str, str] = {}

    def check(self, scalars: dict[str, float], methods: list[str] | tuple[str, ...], when: str) -> list[str]:
        """The warnings due now: one per method over the ratio that was not warned about yet."""
        messages = []
        for name in methods:
            ratio = scalars.get(f"cam_shortcut/{name}/vs_object")
            if ratio is None or not ratio > self.ratio or name in self.alerts:
                continue
            self.alerts[name] = when
            messages.append(shortcut_message(name, scalars, self.ratio, f"After {when}"))
        return messages
