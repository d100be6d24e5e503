"""Blank maps caught where they are made: every map the engine returns is checked once, with a reason per image.

A map that is constant (min-max scaling then makes it all zero) or that varies by less than the scaling resolves
carries no information: its overlay is blank, its drift is 0. The engine checks each layer's map of each method
right after it is made (:func:`diagnose`: a few reductions over the ``(B, h, w)`` map; the activations and
gradients are read only for the images found blank, to name the cause), puts the reasons in
:attr:`cams.CamMaps.degenerate` (``method -> [Degenerate | None]`` per image) and says so in **one**
:class:`DegenerateMapWarning` per call (:func:`warning_text`). The maps themselves are returned unchanged.

=========================  ========================================================================================
cause                      what happened (and what to do)
=========================  ========================================================================================
``single_position``        the target layer's feature map has one position (``1×1``, ``1×1×1``): every map of it is
                           constant. Explain the last layer with a larger grid (named in the reason).
``zero_gradient``          the target score does not change with the layer's output (an untrained head initialised
                           to zero, a class predicted nowhere): every gradient map is empty.
``constant_features``      the layer's activations are the same at every position (an untrained network whose
                           normalisation layers have seen no data, e.g. LeViT at random initialisation).
``degenerate_component``   the (weighted) activations do not vary across positions: their first principal
                           component is zero (Eigen-CAM family).
``no_positive_evidence``   the weighted sum is ≤ 0 at every position: no position raises the score, so the ReLU
                           leaves nothing (random initialisation, or a class the model scores down).
``tiny_range``             the map's values span less than min-max scaling resolves (``1e-14``), or less than the
                           float32 rounding of its values.
``non_finite``             the map holds NaN or infinite values (an overflowing low-precision forward).
``constant``               the map is the same everywhere for another reason.
=========================  ========================================================================================

Example:
    >>> import torch
    >>> cam = torch.zeros(2, 3, 3)
    >>> cam[0, 1, 1] = 1.0                    # image 0 points somewhere; image 1 is blank
    >>> [None if r is None else r.cause for r in diagnose("gradcam", cam, cam)]
    [None, 'constant']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cams.aug_smooth import plain_rows

__all__ = [
    "CAUSES",
    "MINMAX_FLOOR",
    "Degenerate",
    "DegenerateMapWarning",
    "blank_rows",
    "combine_layers",
    "deaugment_reasons",
    "diagnose",
    "warning_text",
]

#: the spread below which the engine's two min-max scalings (``(c - min) / (max - min + 1e-7)`` of the layer's map,
#: then of the resized map, as pytorch-grad-cam scales) leave the returned map below 0.5 everywhere
MINMAX_FLOOR = 1e-14
#: a spread this small relative to the map's magnitude is float32 rounding, not structure (≈ 8 ulp)
_ROUNDING = 1e-6

#: every cause, with a short description (the callback names it when it has no image's own reason)
CAUSES: dict[str, str] = {
    "single_position": "the target layer's feature map has a single position, so every map of it is constant",
    "zero_gradient": "the target score does not change with the target layer's output (zero gradient)",
    "constant_features": "the target layer's activations are the same at every position",
    "degenerate_component": "the weighted activations do not vary across positions (a zero principal component)",
    "no_positive_evidence": "no position raises the target score: the ReLU leaves nothing",
    "tiny_range": "the map varies by less than min-max scaling or float32 rounding resolves",
    "non_finite": "the map holds NaN or infinite values",
    "constant": "the map is the same at every position",
}


class DegenerateMapWarning(RuntimeWarning):
    """A map the engine returns carries no information (constant or all zero); the message names why."""


@dataclass(frozen=True)
class Degenerate:
    """Why one image's map carries no information.

    Attributes:
        cause: one of :data:`CAUSES` (``"single_position"``, ``"no_positive_evidence"``, ...), for code.
        reason: a sentence for the user: the layer, the shapes and values involved, and what to do.
    """

    cause: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def blank_rows(cam: torch.Tensor) -> torch.Tensor:
    """Which maps of ``cam`` ``(B, *spatial)`` (before min-max scaling) carry no information → ``(B,)`` bool.

    Blank: a non-finite value, a spread ``max - min`` at most :data:`MINMAX_FLOOR`, or at most ``1e-6`` of the
    map's largest magnitude (float32 rounding stretched to ``[0, 1]`` would look like structure). A map of tiny
    values that varies (an untrained detector's gradients, ``1e-8``) is not blank: min-max scaling shows it.

    Example:
        >>> blank_rows(torch.tensor([[[0.0, 1.0]], [[2.0, 2.0]], [[1e3, 1e3 + 1e-4]], [[0.0, 1e-8]]])).tolist()
        [False, True, True, False]
    """
    flat = cam.detach().flatten(1).float()
    high, low = flat.amax(dim=1), flat.amin(dim=1)
    finite = torch.isfinite(high) & torch.isfinite(low)  # amax and amin carry a nan or an inf through
    spread = high - low
    scale = torch.maximum(high.abs(), low.abs())
    return ~finite | (spread <= MINMAX_FLOOR) | (spread <= _ROUNDING * scale)


def diagnose(
    method: str,
    before_relu: torch.Tensor,
    cam: torch.Tensor,
    *,
    layer: str | None = None,
    acts: torch.Tensor | None = None,
    grads: torch.Tensor | None = None,
    projected: bool = False,
    suggest: Callable[[], str] | None = None,
) -> list[Degenerate | None]:
    """The reason each map of one layer carries no information (``None`` for a map that does).

    Args:
        method: the method's name, for the reasons.
        before_relu: the map before the ReLU ``(B, *spatial)`` (the channel sum or principal component).
        cam: the map after the ReLU (the same tensor for methods without one), before min-max scaling.
        layer: the target layer's name (``None``: the method reads no target layer).
        acts: the layer's feature map ``(B, C, *spatial)`` when the method reads it, to tell constant features.
        grads: the gradient of the score with respect to it when the method uses one, to tell a zero gradient.
        projected: the map is a first principal component (Eigen-CAM family).
        suggest: called once, only for a single-position feature map: the sentence proposing another layer.

    Returns:
        One :class:`Degenerate` or ``None`` per image.
    """
    blank = blank_rows(cam)
    if not bool(blank.any()):
        return [None] * cam.shape[0]
    where = f"target layer {layer!r}" if layer is not None else "the input"
    of = f"of target layer {layer!r}" if layer is not None else "of the input"
    positions = math.prod(cam.shape[1:])
    single = None
    reasons: list[Degenerate | None] = []
    for b in range(cam.shape[0]):
        if not bool(blank[b]):
            reasons.append(None)
            continue
        if not bool(torch.isfinite(cam[b]).all()):
            reasons.append(Degenerate("non_finite", (
                f"the {method} map {of} holds NaN or infinite values (its activations or gradients "
                "overflowed: a float16 forward? explain in float32 or bfloat16)")))  # fmt: skip
        elif positions == 1:
            if single is None:
                shape = tuple(acts.shape) if acts is not None else tuple(cam.shape)
                hint = suggest() if suggest is not None else ""
                single = Degenerate("single_position", (
                    f"the feature map {of} {shape} has a single position at this input size, so every map of it "
                    f"is constant{'; ' + hint if hint else ''}"))  # fmt: skip
            reasons.append(single)
        elif grads is not None and not bool(grads[b].any()):
            reasons.append(Degenerate("zero_gradient", (
                f"{where}: the gradient of the target score is zero at every position of its feature map "
                f"{tuple(grads.shape[1:])}: the score does not change with this layer's output (an untrained "
                "classifier head initialised to zero, as torchvision's ViT and timm's MLP-Mixer have before "
                "training, or a target that scores nothing, such as a class predicted nowhere); gradient maps "
                "are empty")))  # fmt: skip
        elif acts is not None and _constant_over_positions(acts[b]):
            cause = "degenerate_component" if projected else "constant_features"
            reasons.append(Degenerate(cause, (
                f"the activations {of} {tuple(acts.shape[1:])} are the same at every position"
                f"{' (their first principal component is zero)' if projected else ''}, so no map of them can point "
                "anywhere: an untrained network whose normalisation layers have not seen data (LeViT at random "
                "initialisation); train it, or explain an earlier layer")))  # fmt: skip
        elif projected and acts is not None:
            reasons.append(Degenerate("degenerate_component", (
                f"the {method} map {of}: the weighted activations do not vary across positions, so their "
                "first principal component is zero; try eigencam (the activations alone) or gradcam")))
        elif before_relu is not cam and float(before_relu[b].max()) <= 0:
            reasons.append(Degenerate("no_positive_evidence", (
                f"the {method} map {of} is ≤ 0 at every position (max {float(before_relu[b].max()):.3g}): "
                "no position raises the target score, so the ReLU leaves nothing (common at random "
                "initialisation or for a class the model scores down); a trained model, another target, or "
                "eigencam (no ReLU of the score) shows where it looks")))  # fmt: skip
        else:
            high, low = float(cam[b].max()), float(cam[b].min())
            if high > low:
                reasons.append(Degenerate("tiny_range", (
                    f"the {method} map {of} spans only {high - low:.2g} (values up to "
                    f"{max(abs(high), abs(low)):.2g}): less than min-max scaling or float32 rounding resolves; the "
                    "score barely depends on this layer (an untrained or saturated model)")))  # fmt: skip
            else:
                reasons.append(Degenerate("constant", f"the {method} map {of} is the same at every position"))
    return reasons


def _constant_over_positions(feature_map: torch.Tensor) -> bool:
    """Whether one image's ``(C, *spatial)`` activations are equal at every position."""
    flat = feature_map.flatten(1)
    return bool((flat == flat[:, :1]).all())


def combine_layers(
    per_layer: Sequence[list[Degenerate | None]], names: Sequence[str]
) -> list[Degenerate | None]:
    """One reason per image for a map aggregated over several layers: blank only where every layer's map is.

    Example:
        >>> r = Degenerate("constant", "flat")
        >>> [x if x is None else x.cause for x in combine_layers([[r, None], [r, r]], ["a", "b"])]
        ['constant', None]
    """
    if len(per_layer) == 1:
        return list(per_layer[0])
    out: list[Degenerate | None] = []
    for reasons in zip(*per_layer, strict=True):
        if any(r is None for r in reasons):
            out.append(None)
            continue
        causes = {r.cause for r in reasons if r is not None}
        text = "; ".join(f"{name!r}: {r}" for name, r in zip(names, reasons, strict=True))
        cause = next(iter(causes)) if len(causes) == 1 else "constant"
        out.append(Degenerate(cause, f"every target layer's map is blank ({text})"))
    return out


def deaugment_reasons(reasons: list[Degenerate | None], batch: int) -> list[Degenerate | None]:
    """One reason per source image from its six augmented copies' (``aug_smooth``): blank only where every copy's
    map is, with the plain copy's reason.

    Example:
        >>> r = Degenerate("constant", "flat")
        >>> deaugment_reasons([r, None] * 6, 2)
        [Degenerate(cause='constant', reason='flat'), None]
    """
    copies = [reasons[k * batch : (k + 1) * batch] for k in range(len(reasons) // batch)]
    plain = plain_rows(batch).start // batch
    out: list[Degenerate | None] = []
    for b in range(batch):
        mine = [copy[b] for copy in copies]
        out.append(None if any(r is None for r in mine) else mine[plain])
    return out


def warning_text(degenerate: dict[str, list[Degenerate | None]]) -> str | None:
    """The one warning of a call: per method and cause, the images and the reason (``None``: nothing blank).

    Example:
        >>> print(warning_text({"gradcam": [Degenerate("constant", "flat"), None, Degenerate("constant", "flat")]}))
        2 of the 3 maps returned carry no information (constant or all zero):
        - gradcam, images [0, 2]: flat
    """
    lines: list[str] = []
    blank = total = 0
    for method, reasons in degenerate.items():
        total += len(reasons)
        groups: dict[str, list[int]] = {}
        texts: dict[str, str] = {}
        for i, reason in enumerate(reasons):
            if reason is not None:
                groups.setdefault(reason.cause, []).append(i)
                texts.setdefault(reason.cause, reason.reason)
        for cause, images in groups.items():
            blank += len(images)
            lines.append(f"- {method}, image{'s' if len(images) > 1 else ''} {images}: {texts[cause]}")
    if not lines:
        return None
    return f"{blank} of the {total} maps returned carry no information (constant or all zero):\n" + "\n".join(lines)
