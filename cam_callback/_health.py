"""Maps that carry no information in a run: which images, why, and how the callback says so.

The engine names the reason for every blank map it returns (:mod:`cams.health`, :attr:`cams.CamMaps.degenerate`).
A run turns them into a cause code per image and method (:func:`health_codes`, gathered across processes with the
maps), and from those:

- ``cam_health/<method>/degenerate``: the share of the fixed batch's maps that carry no information
  (:func:`health_scalars`), logged at every run (0.0 when every map is informative);
- a red frame around such a map's tile in ``cam/<method>`` and in the timeline, with ``no information`` written
  under it (:mod:`cam_callback._overlays`, :mod:`cam_callback._timeline`);
- their drift left out (:class:`cam_callback._history.MapHistory`);
- one :class:`cams.health.DegenerateMapWarning` per method and cause in a session (:class:`HealthWatch`), naming
  the images, the reason and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from cams.health import CAUSES

__all__ = ["CAUSE_CODES", "HealthWatch", "cause_reasons", "health_codes", "health_scalars"]

#: cause -> the code a run gathers per image (0: the map carries information)
CAUSE_CODES: dict[str, int] = {cause: i + 1 for i, cause in enumerate(CAUSES)}
_BY_CODE = {code: cause for cause, code in CAUSE_CODES.items()}


def health_codes(result: Any, methods: Iterable[str], device: torch.device) -> dict[str, Tensor]:
    """``health/<method>``: each image's cause code ``(k,)`` long (0: informative) from an engine result.

    Example:
        >>> from cams import CamMaps
        >>> from cams.health import Degenerate
        >>> result = CamMaps({"gradcam": torch.zeros(2, 4, 4)})
        >>> result.degenerate = {"gradcam": [None, Degenerate("single_position", "1×1")]}
        >>> health_codes(result, ["gradcam"], torch.device("cpu"))["health/gradcam"].tolist()
        [0, 1]
    """
    found: Mapping[str, list[Any]] = getattr(result, "degenerate", None) or {}
    out = {}
    for method in methods:
        reasons = found.get(method, [])
        n = len(result[method])
        codes = [0 if i >= len(reasons) or reasons[i] is None else CAUSE_CODES[reasons[i].cause] for i in range(n)]
        out[f"health/{method}"] = torch.tensor(codes, dtype=torch.long, device=device)
    return out


def cause_reasons(result: Any) -> dict[str, dict[str, str]]:
    """method -> cause -> the first reason the engine gave for it on this process's images."""
    out: dict[str, dict[str, str]] = {}
    for method, reasons in (getattr(result, "degenerate", None) or {}).items():
        for reason in reasons:
            if reason is not None:
                out.setdefault(method, {}).setdefault(reason.cause, reason.reason)
    return out


def health_scalars(codes: Mapping[str, Tensor]) -> dict[str, float]:
    """``cam_health/<method>/degenerate``: the share of the batch's maps that carry no information.

    Example:
        >>> health_scalars({"gradcam": torch.tensor([0, 4, 0, 0])})
        {'cam_health/gradcam/degenerate': 0.25}
    """
    return {f"cam_health/{method}/degenerate": float((c != 0).float().mean()) for method, c in codes.items()}


class HealthWatch:
    """One warning per method and cause in a session: which images' maps carry no information, and why.

    Example:
        >>> watch = HealthWatch()
        >>> codes = {"gradcam": torch.tensor([CAUSE_CODES["no_positive_evidence"], 0])}
        >>> len(watch.check(codes, {}, "before training")), watch.check(codes, {}, "epoch 1")
        (1, [])
    """

    def __init__(self) -> None:
        self.warned: set[tuple[str, str]] = set()

    def check(self, codes: Mapping[str, Tensor], reasons: Mapping[str, Mapping[str, str]], when: str) -> list[str]:
        """The messages for the (method, cause) pairs not warned about yet in this session.

        Args:
            codes: method -> each image's cause code ``(N,)`` (:data:`CAUSE_CODES`).
            reasons: method -> cause -> the engine's reason (this process's images; else the cause's description).
            when: the run, for the message (``"epoch 2 (global step 40)"``).
        """
        messages = []
        for method, per_image in codes.items():
            for code in sorted({int(c) for c in per_image.tolist() if c}):
                cause = _BY_CODE[code]
                if (method, cause) in self.warned:
                    continue
                self.warned.add((method, cause))
                images = (per_image == code).nonzero().flatten().tolist()
                reason = reasons.get(method, {}).get(cause, CAUSES[cause])
                messages.append(
                    f"CAMCallback: {len(images)} of the {per_image.numel()} {method} maps at {when} carry no "
                    f"information (images {images}): {reason}. Their tiles are framed in red in cam/{method} and "
                    f"its timeline, cam_health/{method}/degenerate logs their share at every run, and "
                    f"cam_drift/{method}/... leaves them out (not logged when no image is left). This cause is "
                    "not warned about again in this session."
                )
        return messages
