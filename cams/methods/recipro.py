"""Recipro-CAM and ViT-ReciproCAM: gradient-free maps from one partial forward per feature-map position.

For each position ``k`` of the target layer's feature map, a copy of the layer's output keeps position ``k``
(or a 3×3 Gaussian neighbourhood of it) and zeroes the rest; only the layers after the target run on the copies
(:func:`cams.methods.perturbation.replaced_forward`, Ablation-CAM's partial forward), and the target score of
copy ``k`` is the map at ``k``. The ``recipro_scores`` input (:data:`RECIPRO_SCORES`) is declared here; it needs
no gradient, so it works inside ``torch.inference_mode()`` (as Lightning validates).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from cams.layout import Layout
from cams.methods.perturbation import replaced_forward
from cams.passes import Input, Pass

__all__ = ["RECIPRO_SCORES", "VIT_RECIPRO_SCORES", "mosaic", "position_masks", "recipro_cam", "vit_recipro_cam"]

#: the paper's 3×3 neighbourhood weights, ``[1/4, 1/2, 1/4]`` in each direction
_GAUSSIAN_1D = (0.25, 0.5, 0.25)


def recipro_cam(position_scores: torch.Tensor) -> torch.Tensor:
    """Recipro-CAM (Byun & Lee 2022, https://arxiv.org/abs/2209.14074).

    ``F`` is the target layer's feature map ``(C, h, w)``; ``M^k`` keeps position ``k`` of it,
    ``M^k = F ⊙ e_k`` (``e_k`` one at ``k``, zero elsewhere), or with ``gaussian=True`` the paper's 3×3
    neighbourhood ``F ⊙ (g ⋆ e_k)``, ``g = [1/4, 1/2, 1/4]ᵀ[1/4, 1/2, 1/4]``, cut at the borders. The network
    after the target layer, ``f``, runs on every ``M^k``: map ``S(k) = y_c(f(M^k))`` (``position_scores``,
    (B, h, w)), min-max scaled, no ReLU. Gradient-free; ``h·w`` partial forwards per image, batched.

    Example:
        >>> recipro_cam(torch.tensor([[[1.0, 2.0]]])).tolist()
        [[[1.0, 2.0]]]
    """
    return position_scores


def vit_recipro_cam(position_scores: torch.Tensor) -> torch.Tensor:
    """ViT-ReciproCAM (Byun & Lee 2023, https://arxiv.org/abs/2310.02588): Recipro-CAM on a transformer's tokens.

    The target layer's tokens ``(p + h·w, C)``: the ``p`` prefix tokens (class, distillation, register) are
    kept in every copy, patch token ``k`` (or its Gaussian 3×3 neighbourhood on the patch grid) is kept and the
    other patch tokens are zeroed; the blocks after the target layer run on the ``h·w`` copies and
    ``S(k) = y_c`` of copy ``k`` (``position_scores``, (B, h, w)). At the engine's default layer of class-token
    ViTs, the last block's first norm, the copies feed the last attention (the paper's placement); at a block,
    the copies replace its output tokens and the blocks after it run.

    Example:
        >>> vit_recipro_cam(torch.zeros(1, 2, 2)).shape
        torch.Size([1, 2, 2])
    """
    return position_scores


def position_masks(grid: tuple[int, ...], gaussian: bool, device: torch.device | None = None) -> torch.Tensor:
    """``(P, *grid)`` masks, ``P = prod(grid)``: mask ``k`` is one at position ``k`` (row-major), zero elsewhere, or
    the 3×3 (3×3×3 for volumes) Gaussian neighbourhood of ``k``, cut at the borders.

    Example:
        >>> position_masks((2, 2), gaussian=False)[1].tolist()
        [[0.0, 1.0], [0.0, 0.0]]
        >>> position_masks((3, 3), gaussian=True)[4].tolist()
        [[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]]
    """
    positions = math.prod(grid)
    eye = torch.eye(positions, device=device).view(positions, 1, *grid)
    if not gaussian:
        return eye[:, 0]
    g = torch.tensor(_GAUSSIAN_1D, device=device)
    kernel = g
    for _ in grid[1:]:
        kernel = kernel[..., None] * g
    conv = F.conv2d if len(grid) == 2 else F.conv3d
    return conv(eye, kernel[None, None], padding=1)[:, 0]


def mosaic(source: torch.Tensor, layout: Layout, masks: torch.Tensor) -> torch.Tensor:
    """Copies of one image's raw layer output ``source`` (no batch dimension), each masked by one of ``masks``
    ``(n, *grid)`` in the output's own layout → ``(n, *source.shape)``; prefix tokens are kept in every copy.

    Example:
        >>> layout = Layout("tokens", (1, 5, 2), (2, 2), prefix=1, channel_dim=2)
        >>> copies = mosaic(torch.ones(5, 2), layout, position_masks((2, 2), gaussian=False))
        >>> copies[2, :, 0].tolist()
        [1.0, 0.0, 0.0, 1.0, 0.0]
    """
    masks = masks.to(source.dtype)
    if layout.kind == "channels_first":
        return source[None] * masks[:, None]
    if layout.kind == "channels_last":
        return source[None] * masks[..., None]
    if layout.kind == "tokens":
        prefix = source[: layout.prefix].expand(len(masks), *source[: layout.prefix].shape)
        return torch.cat([prefix, source[None, layout.prefix :] * masks.flatten(1)[..., None]], dim=1)
    raise ValueError(f"mosaic: a {layout.kind} layout has no positions to keep")


def _position_scores(p: Pass, i: int, gaussian: bool, tokens: bool) -> torch.Tensor:
    """The target score of each copy of target layer ``i``'s output that keeps one position → ``(B, *grid)``."""
    assert p.target is not None and p.layouts
    name, module = p.layers[i]
    layout, raw = p.layouts[i], p.raw[i]
    method = "vitreciprocam" if tokens else "reciprocam"
    if layout.kind == "custom" or not isinstance(raw, torch.Tensor):
        raise ValueError(
            f"{method} keeps one position of layer {name!r}'s own output, which a reshape_transform hides; explain "
            "the layer without reshape_transform (token and channels-last outputs are read automatically)"
        )
    if tokens and layout.kind != "tokens":
        raise ValueError(
            f"vitreciprocam masks the tokens of a transformer; layer {name!r} gives a {layout.kind.replace('_', '-')} "
            f"feature map {tuple(raw.shape)}: use 'reciprocam' on it, or pick a transformer block"
        )
    if not tokens and layout.kind == "tokens":
        raise ValueError(
            f"reciprocam masks positions of a feature map; layer {name!r} gives tokens {tuple(raw.shape)}: use "
            "'vitreciprocam', which keeps the class and register tokens in every copy"
        )
    masks = position_masks(layout.grid, gaussian, raw.device)
    positions = len(masks)
    chunk = p.batch_size or max(1, min(positions, (256 << 20) // max(1, raw[0].numel() * raw.element_size())))
    scores: torch.Tensor | None = None  # in the scores' own precision, at least float32 (float64 models keep it)
    report = p.reporter(method, i)
    shared = True
    with torch.no_grad():
        for b in range(raw.shape[0]):
            for start in range(0, positions, chunk):
                copies = mosaic(raw[b], layout, masks[start : start + chunk])
                output, shared = replaced_forward(p.model, module, p.x[b : b + 1], copies, shared)
                rows = torch.full((len(copies),), b, device=p.x.device, dtype=torch.long)
                score = p.target(output, rows)
                if scores is None:
                    dtype = torch.promote_types(score.dtype, torch.float32)
                    scores = torch.empty(raw.shape[0], positions, device=p.x.device, dtype=dtype)
                scores[b, start : start + len(copies)] = score
                if report is not None:
                    report(b * positions + start + len(copies), raw.shape[0] * positions)
    assert scores is not None
    flat_rows = (scores.amax(dim=1) == scores.amin(dim=1)).nonzero()[:, 0].tolist()
    if flat_rows:
        warnings.warn(
            f"{method}: the target score is the same whichever position of layer {name!r} is kept, for image(s) "
            f"{flat_rows} (an untrained head initialised to zero, or a layer the output does not depend on); their "
            "maps are empty",
            RuntimeWarning,
            stacklevel=2,
        )
    return scores.view(raw.shape[0], *layout.grid)


def _recipro_scores(p: Pass, i: int, *, gaussian: bool) -> torch.Tensor:
    return _position_scores(p, i, gaussian, tokens=False)


def _vit_recipro_scores(p: Pass, i: int, *, gaussian: bool) -> torch.Tensor:
    return _position_scores(p, i, gaussian, tokens=True)


#: Recipro-CAM: the target score with only each position of the layer's feature map kept ``(B, *grid)``
RECIPRO_SCORES = Input("recipro_scores", _recipro_scores)
#: ViT-ReciproCAM: the target score with only each patch token (and the prefix tokens) kept ``(B, h, w)``
VIT_RECIPRO_SCORES = Input("vit_recipro_scores", _vit_recipro_scores)
