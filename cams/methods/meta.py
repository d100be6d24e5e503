"""Meta-methods: Finer-CAM, RefineCAM and SESS run any other method and change or combine its maps.

All three are built over a base method by :func:`cams.methods.finer_cam` / :func:`cams.methods.refine_cam` /
:func:`cams.methods.sess`, or by name: ``"finercam(layercam)"``, ``"refinecam(layercam)"``,
``"sess(gradcam++)"``. Finer-CAM gives the base method other gradients (:func:`finer_gradients`, the
``finer_grads`` input, :data:`FINER_GRADS`); RefineCAM only changes how the engine combines the maps of
several target layers (their product); SESS runs the base method on patches, through the engine call's own
:attr:`cams.passes.Pass.explain`, and fuses them (:func:`sess_maps`, the ``sess`` input, :data:`SESS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cams.ops import gaussian_blur
from cams.passes import Input, Pass
from cams.targets import SourceRows, Target, logits_of

__all__ = [
    "FINER_GRADS",
    "SESS",
    "SESS_OPTIONS",
    "finer_gradients",
    "sess_map",
    "sess_maps",
    "sliding_windows",
]

#: SESS's options and defaults (pytorch-grad-cam's ``SESS``): see :func:`sess_maps`.
SESS_OPTIONS: dict[str, Any] = {
    "scales": None,
    "num_scales": 12,
    "scale_step_ratio": 2.0 / 7.0,
    "window_size": None,
    "step_size": None,
    "pre_filter_ratio": 0.0,
    "theta": 0.0,
    "pool": "mean",
    "smooth": True,
    "use_softmax_scores": True,
}


#: the Gaussian SESS smooths its fused maps with: 11×11, σ = 5, reflected borders (pytorch-grad-cam's cv2 call)
_BLUR, _BLUR_SIGMA = 11, 5.0


def sess_map(fused: torch.Tensor) -> torch.Tensor:
    """SESS, Saliency Enhancing with Scaling and Sliding (Tan et al. 2022, https://arxiv.org/abs/2207.01769).

    ``fused`` (B, H, W) is the base method's patch maps, weighted by their patches' class probability and
    fused (:func:`sess_maps`); the map is that fusion.

    Example:
        >>> sess_map(torch.ones(1, 2, 2)).shape
        torch.Size([1, 2, 2])
    """
    return fused


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Start offsets of windows of ``window`` px every ``step`` px; the last is shifted back inside the image.

    Example:
        >>> window_starts(131, 32, 32)
        [0, 32, 64, 96, 99]
    """
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def sliding_windows(height: int, width: int, step: int, window: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of the windows covering a ``height × width`` image, row by row.

    Example:
        >>> sliding_windows(40, 40, 32, 32)
        [(0, 0), (8, 0), (0, 8), (8, 8)]
    """
    return [(x, y) for y in window_starts(height, step, window) for x in window_starts(width, step, window)]


def _scales(window: int, scales: Any, num_scales: int, ratio: float) -> list[int]:
    if scales is not None:
        chosen = [int(s) for s in scales]
    else:
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"sess: num_scales={num_scales!r}; expected a positive int, e.g. 12")
        step = round(window * ratio)
        chosen = [window + step * i for i in range(num_scales)]
    small = [s for s in chosen if s < window]
    if small or not chosen:
        raise ValueError(f"sess: every scale must be at least the window size {window}; got scales={chosen}")
    return chosen


def _resized(x: torch.Tensor, short: int) -> torch.Tensor:
    """Resize so that the shorter side is ``short`` (torchvision's ``resize(img, int)``, antialiased)."""
    h, w = x.shape[-2:]
    size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def sess_maps(
    p: Pass,
    *,
    base: Any,
    scales: Any,
    num_scales: int,
    scale_step_ratio: float,
    window_size: int | None,
    step_size: int | None,
    pre_filter_ratio: float,
    theta: float,
    pool: str,
    smooth: bool,
    use_softmax_scores: bool,
) -> torch.Tensor:
    """SESS maps (B, H, W) of ``base`` for the call's input, target and target layers (pytorch-grad-cam's ``SESS``).

    1. The image is resized so that its shorter side is each of the ``scales`` (default: ``num_scales``
       sizes from the window size up in steps of ``scale_step_ratio`` × window), and a square window of
       ``window_size`` px (default: the shorter side) slides over each, ``step_size`` px apart (default: the
       window), the last window shifted back inside.
    2. Every patch of every image goes through the engine with ``base`` (one forward and one backward per
       patch, in chunks of the call's ``batch_size``, default 32): its map, and its weight, the target
       score on the softmax of the output (``use_softmax_scores``; else the raw score), clipped at 0 and
       divided by the image's highest. The lowest ``pre_filter_ratio`` share of patches is dropped.
    3. Each weighted patch map is pasted at its place in its scale and resized to the input; the patches
       are fused pixel by pixel by their mean over the maps above ``theta`` (``pool="mean"``) or their
       maximum (``"max"``), and blurred by an 11×11 Gaussian of σ = 5 (``smooth``).

    ``base`` is the base :class:`cams.CamMethod`, run on the patches by the call's :attr:`~cams.passes.Pass.explain`
    (the same model, target layers, ``reshape_transform`` and call options). The reference scores the patches
    in one pass and computes their maps in another; here one forward gives both.
    """
    x = p.x
    if x.dim() != 4:
        raise ValueError(f"sess slides windows over images (B, C, H, W); got input shape {tuple(x.shape)}")
    if pool not in ("mean", "max"):
        raise ValueError(f"sess: pool={pool!r}; expected 'mean' or 'max'")
    if not 0.0 <= pre_filter_ratio < 1.0:
        raise ValueError(f"sess: pre_filter_ratio={pre_filter_ratio!r}; expected a value in [0, 1)")
    if smooth and min(x.shape[2:]) <= _BLUR // 2:
        raise ValueError(f"sess: the map ({tuple(x.shape[2:])}) is too small for an {_BLUR}×{_BLUR} blur")
    assert p.target is not None and p.explain is not None, "the engine gives SESS its target and its explain"
    batch, _, height, width = x.shape
    window = int(window_size) if window_size is not None else min(height, width)
    step = int(step_size) if step_size is not None else window
    if window < 1 or step < 1:
        raise ValueError(f"sess: window_size={window_size!r} and step_size={step_size!r} must be positive")

    per_scale: list[tuple[int, int, list[tuple[int, int]]]] = []
    patches = []
    for scale in _scales(window, scales, num_scales, scale_step_ratio):
        scaled = _resized(x, scale)
        sh, sw = scaled.shape[-2:]
        corners = sliding_windows(sh, sw, step, window)
        per_scale.append((sh, sw, corners))
        patches += [scaled[:, :, y1 : y1 + window, x1 : x1 + window] for x1, y1 in corners]
    count = len(patches)
    stacked = torch.stack(patches, dim=1).reshape(batch * count, x.shape[1], window, window)
    source = torch.arange(batch, device=x.device).repeat_interleave(count)

    chunk = p.batch_size or 32
    maps, scores = [], []
    for start in range(0, len(stacked), chunk):
        rows = slice(start, start + chunk)
        target = SourceRows(p.target, source[rows])
        result = p.explain(stacked[rows], base, target)
        maps.append(result[base.name])
        scores.append(_patch_scores(result, target, use_softmax_scores))
    patch_maps = torch.cat(maps).view(batch, count, window, window)
    weights, kept = _patch_weights(torch.cat(scores).view(batch, count).clamp_min(0), pre_filter_ratio)
    weighted = patch_maps * weights[:, :, None, None]

    fused = torch.zeros(batch, height, width, device=x.device)
    counts = torch.zeros_like(fused)
    first = 0
    for sh, sw, corners in per_scale:
        group = slice(first, first + len(corners))
        first += len(corners)
        canvas = fused.new_zeros(batch, len(corners), sh, sw)
        for j, (x1, y1) in enumerate(corners):
            canvas[:, j, y1 : y1 + window, x1 : x1 + window] = weighted[:, group][:, j]
        pasted = F.interpolate(canvas, size=(height, width), mode="bilinear", align_corners=False)
        keep = kept[:, group, None, None]
        if pool == "max":
            fused = torch.maximum(fused, torch.where(keep, pasted, 0.0).amax(dim=1))
        else:
            above = (pasted > theta) & keep
            fused += torch.where(above, pasted, 0.0).sum(dim=1)
            counts += above.sum(dim=1)
    if pool == "mean":
        fused = torch.where(counts > 0, fused / counts.clamp_min(1), 0.0)
    if not smooth:
        return fused
    return gaussian_blur(fused[:, None], _BLUR, _BLUR_SIGMA, border="reflect")[:, 0]


def _patch_scores(result: Any, target: Target, softmax: bool) -> torch.Tensor:
    """Each patch's weight before scaling: the target on the softmax of the logits, or the target score itself."""
    if not softmax and result.scores is not None:
        return result.scores.float()
    if result.logits is None:
        raise ValueError("sess: use_softmax_scores needs (B, classes) logits; the model returns something else — "
                         "pass get_method('sess').with_options(use_softmax_scores=False)")  # fmt: skip
    rows = torch.arange(len(result.logits), device=result.logits.device)
    logits = logits_of(result.logits, "targets").float()
    return target(logits.softmax(dim=1) if softmax else logits, rows).float()


def _patch_weights(scores: torch.Tensor, pre_filter_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's weight (its score over the image's highest; all 1 if none is positive) and whether it is kept."""
    drop = int(scores.shape[1] * pre_filter_ratio)
    kept = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        kept.scatter_(1, scores.argsort(dim=1, stable=True)[:, :drop], False)
    top = scores.amax(dim=1, keepdim=True)
    weights = torch.where(top > 0, scores / torch.where(top > 0, top, torch.ones_like(top)), 1.0)
    return weights, kept


def _sess(p: Pass, i: int, **options: Any) -> torch.Tensor:
    return sess_maps(p, **options)


#: SESS: the base method's patch maps, weighted and fused ``(B, H, W)`` (every option of the method reaches it)
SESS = Input("sess", _sess, reads_feature_map=False)


def _finer_grads(p: Pass, i: int, *, alpha: float, comparisons: Sequence[int]) -> torch.Tensor:
    outputs, target = p.outputs, p.target
    assert outputs is not None and target is not None

    def every_layer() -> list[torch.Tensor]:  # one backward gives every layer's gradients
        grads = finer_gradients(p.output, outputs, target, alpha=alpha, comparisons=comparisons)
        return [p.feature_map(j, g).float() for j, g in enumerate(grads)]

    return p.cached(("finer", alpha, tuple(comparisons)), every_layer)[i]


def finer_gradients(
    output: Any, outputs: Sequence[torch.Tensor], target: Target, *, alpha: float, comparisons: Sequence[int]
) -> list[torch.Tensor]:
    """Finer-CAM: gradients of pytorch-grad-cam's ``FinerWeightedTarget`` score with respect to ``outputs``.

    For each row, with logits ``y`` and main class ``m`` (the target's class, or the prediction), the
    comparison classes ``d_j`` are those at the ranks ``comparisons`` (default 1, 2, 3) when the classes
    are sorted by ``|y − y_m|`` (rank 0 is ``m``); ``w_j = softmax(y)_{d_j}`` and the score is
    ``Σ_j w_j (y_m − α y_{d_j}) / (Σ_j w_j + 1e-9)``, differentiated through ``w`` as well.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"finercam: alpha={alpha!r}; expected a number")
    classes = target.classes
    if classes is None:
        raise ValueError("finercam compares classes; pass class targets (None, an int, one class per image)")
    logits = logits_of(output, "targets")
    y = logits.float()
    main = classes.to(y.device)
    ranks = [int(r) for r in comparisons]
    valid = [r for r in ranks if 0 < r < y.shape[1]] if ranks else []
    if not valid:
        raise ValueError(f"finercam: comparisons={tuple(comparisons)!r} selects no class of {y.shape[1]}; use ranks "
                         "from 1 (the closest class) up")  # fmt: skip
    with torch.no_grad():
        distance = (y - y.gather(1, main[:, None])).abs()
        distance.scatter_(1, main[:, None], -1.0)
        order = distance.argsort(dim=1, stable=True)
    others = order[:, valid]
    probs = y.softmax(dim=1).gather(1, others)
    gap = y.gather(1, main[:, None]) - alpha * y.gather(1, others)
    score = (probs * gap).sum(dim=1) / (probs.sum(dim=1) + 1e-9)
    grads = torch.autograd.grad(score.sum(), list(outputs), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads, strict=True)]


#: Finer-CAM: the gradients of the contrastive score, per layer ``(B, C, *spatial)``, from the shared forward's graph
FINER_GRADS = Input("finer_grads", _finer_grads, graph=True)
