"""Attention rollout and gradient-weighted rollout: maps read from every block's attention of a vision transformer.

The math is pure (:func:`attention_rollout`, :func:`gradient_rollout`: ``(L, B, heads, N, N)`` in, ``(B, N, N)``
out); the weighing functions :func:`rollout` and :func:`grad_rollout` read the class token's row (or the patch
tokens' mean) on the patch grid. Their inputs are declared here: ``attentions`` (the probabilities, caught by
:func:`cams.attention_capture.attention_probabilities` during the shared forward), ``attention_gradients`` (the
probabilities and their gradients from the same forward and one ``autograd.grad``), ``patch_tokens`` and
``query_tokens`` (:func:`cams.attention_capture.token_grid`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from cams.attention_capture import AttentionRecord, attention_probabilities, token_grid
from cams.passes import Input, Pass

__all__ = [
    "ATTENTIONS",
    "ATTENTION_GRADIENTS",
    "PATCH_TOKENS",
    "QUERY_TOKENS",
    "HeadFusion",
    "attention_rollout",
    "grad_rollout",
    "gradient_rollout",
    "rollout",
    "warn_if_zero",
]

HeadFusion = Literal["mean", "max", "min"]


def _working(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def attention_rollout(
    attentions: torch.Tensor, *, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, https://arxiv.org/abs/2005.00928) of ``(L, B, heads, N, N)``
    post-softmax attentions, first block first → ``(B, N, N)``.

    Per block: ``Ā = fuse_heads(A)`` (``head_fusion``: mean, max or min over heads); with ``discard_ratio`` the
    lowest ``⌊ratio · N²⌋`` entries of each image's ``Ā`` are set to 0, the class token's attention to itself kept
    (jacobgil/vit-explain's rule); ``Â = (Ā + I) / 2`` row-normalised (the residual connection);
    ``R = Â_L ··· Â_2 Â_1``.

    Raises:
        ValueError: an unknown ``head_fusion`` or a ``discard_ratio`` outside ``[0, 1)``.

    Example:
        >>> uniform = torch.full((2, 1, 1, 2, 2), 0.5)
        >>> attention_rollout(uniform)[0].tolist()
        [[0.625, 0.375], [0.375, 0.625]]
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"rollout: head_fusion={head_fusion!r}; expected 'mean', 'max' or 'min'")
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ValueError(f"rollout: discard_ratio={discard_ratio!r}; expected a value in [0, 1)")
    attentions = _working(attentions)
    batch, tokens = attentions.shape[1], attentions.shape[-1]
    eye = torch.eye(tokens, dtype=attentions.dtype, device=attentions.device)
    result = eye.expand(batch, tokens, tokens)
    for attention in attentions:
        if head_fusion == "mean":
            fused = attention.mean(dim=1)
        else:
            fused = attention.amax(dim=1) if head_fusion == "max" else attention.amin(dim=1)
        drop = int(tokens * tokens * discard_ratio)
        if drop:
            flat = fused.flatten(1)
            lowest = flat.topk(drop, dim=1, largest=False).indices
            discard = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
            discard[:, 0] = False
            fused = flat.masked_fill(discard, 0.0).view_as(fused)
        residual = (fused + eye) / 2
        result = (residual / residual.sum(dim=-1, keepdim=True)) @ result
    return result


def gradient_rollout(attentions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted rollout (Chefer, Gur & Wolf, ICCV 2021, https://arxiv.org/abs/2103.15679, Eq. 13-14) of
    ``(L, B, heads, N, N)`` attentions ``A`` and their gradients ``∇A = ∂y_t/∂A`` → ``(B, N, N)``.

    ``R = I``; per block, first block first: ``Ā = E_h[(∇A ⊙ A)⁺]`` (mean over heads of the positive part),
    ``R ← R + Ā · R``.

    Example:
        >>> a = torch.full((1, 1, 1, 2, 2), 0.5)
        >>> gradient_rollout(a, torch.ones_like(a))[0].tolist()
        [[1.5, 0.5], [0.5, 1.5]]
    """
    attentions, gradients = _working(attentions), _working(gradients)
    batch, tokens = attentions.shape[1], attentions.shape[-1]
    result = torch.eye(tokens, dtype=attentions.dtype, device=attentions.device).expand(batch, tokens, tokens)
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = (gradient * attention).clamp_min(0).mean(dim=1)
        result = result + weighted @ result
    return result


def _rows_on_grid(relevance: torch.Tensor, patches: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``relevance`` (B, N, N): the mean of rows ``queries``, its columns ``patches`` (h, w) → (B, h, w)."""
    rows = relevance[:, queries.to(relevance.device)].mean(dim=1)
    return rows[:, patches.to(relevance.device)]


def rollout(
    attentions: torch.Tensor,
    patch_tokens: torch.Tensor,
    query_tokens: torch.Tensor,
    *,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
) -> torch.Tensor:
    """Attention rollout's map (B, h, w): the class token's row of :func:`attention_rollout` on the patch grid.

    ``patch_tokens`` (h, w): the token of each grid cell; ``query_tokens``: the class token (the mean over the patch
    tokens' rows for models without one). Class-agnostic; no gradient, works under ``torch.inference_mode()``.

    Example:
        >>> rollout(torch.full((1, 1, 1, 3, 3), 1 / 3), torch.tensor([[1, 2]]), torch.tensor([0])).shape
        torch.Size([1, 1, 2])
    """
    relevance = attention_rollout(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio)
    return _rows_on_grid(relevance, patch_tokens, query_tokens)


def grad_rollout(
    attention_gradients: torch.Tensor, patch_tokens: torch.Tensor, query_tokens: torch.Tensor
) -> torch.Tensor:
    """Gradient-weighted rollout's map (B, h, w): the class token's row of :func:`gradient_rollout` on the patch grid.

    ``attention_gradients`` ``(2, L, B, heads, N, N)``: the attentions and their gradients; ``patch_tokens`` and
    ``query_tokens`` as in :func:`rollout`. Class-discriminative.

    Example:
        >>> a = torch.full((1, 1, 1, 3, 3), 1 / 3)
        >>> grad_rollout(torch.stack([a, a]), torch.tensor([[1, 2]]), torch.tensor([0])).shape
        torch.Size([1, 1, 2])
    """
    attentions, gradients = attention_gradients
    return _rows_on_grid(gradient_rollout(attentions, gradients), patch_tokens, query_tokens)


# ---------------------------------------------------------------------- inputs
def _stacked(record: AttentionRecord, method: str, model: nn.Module) -> list[torch.Tensor]:
    if not record.probs:
        raise RuntimeError(f"{method}: no attention of {type(model).__name__} ran during the forward")
    shapes = {tuple(t.shape) for t in record.probs}
    if len(shapes) > 1 or len(next(iter(shapes))) != 4:
        raise ValueError(
            f"{method} multiplies attention matrices of one size through the blocks, and {type(model).__name__}'s "
            f"attentions have shapes {sorted(shapes)} (windowed or pooled attention, e.g. Swin, MViT); use legrad on "
            "its blocks, or a gradient method on a layer (gradcam, layercam)"
        )
    return record.probs


def _attention_tap(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> Any:
    return attention_probabilities(model, method="rollout")


@contextlib.contextmanager
def _gradient_tap(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> Iterator[AttentionRecord]:
    with attention_probabilities(model, grad=True, method="gradrollout") as record:
        yield record


def _attentions(p: Pass, i: int) -> torch.Tensor:
    return torch.stack([t.detach() for t in _stacked(p.taps["attentions"], "rollout", p.model)])


def _attention_gradients(p: Pass, i: int) -> torch.Tensor:
    assert p.target is not None
    probs = _stacked(p.taps["attention_gradients"], "gradrollout", p.model)
    score = p.target(p.output, torch.arange(len(p.x), device=p.x.device))
    if not score.requires_grad:
        raise RuntimeError("gradrollout: the target score does not depend on the attention (no graph reached it)")
    gradients = torch.autograd.grad(score.sum(), probs, allow_unused=True, retain_graph=True)
    missing = [n for n, g in zip(p.taps["attention_gradients"].names, gradients, strict=True) if g is None]
    if missing:
        raise RuntimeError(f"gradrollout: the target score does not depend on the attention of {missing}")
    stacked = torch.stack(list(gradients))
    warn_if_zero(stacked.transpose(0, 1).flatten(1), "gradrollout", "the gradient of the target score with "
                  "respect to every attention")  # fmt: skip
    return torch.stack([torch.stack([t.detach() for t in probs]), stacked])


def warn_if_zero(per_image: torch.Tensor, method: str, what: str) -> None:
    """A ``RuntimeWarning`` naming the images whose row of ``per_image`` (B, ...) is zero everywhere."""
    rows = (per_image == 0).all(dim=1).nonzero()[:, 0].tolist()
    if rows:
        warnings.warn(
            f"{method}: {what} is zero for image(s) {rows}: the score does not change with it (an untrained "
            "classifier head initialised to zero, as torchvision's ViT has before training); their maps are empty",
            RuntimeWarning,
            stacklevel=3,
        )


def _tokens(p: Pass) -> tuple[torch.Tensor, torch.Tensor]:
    records = [r for r in p.taps.values() if isinstance(r, AttentionRecord) and r.probs]
    if not records:
        raise RuntimeError("rollout: the patch tokens are read from the attentions, and none was recorded")
    tokens = int(records[0].probs[0].shape[-1])
    return p.cached(("token_grid", tokens), lambda: token_grid(p.model, tokens, p.x.shape[2:]))


def _patch_tokens(p: Pass, i: int) -> torch.Tensor:
    return _tokens(p)[0]


def _query_tokens(p: Pass, i: int) -> torch.Tensor:
    return _tokens(p)[1]


_ATTENTION = {"reads_layers": False, "reads_feature_map": False}
#: every block's post-softmax attention ``(L, B, heads, N, N)``, from the shared forward
ATTENTIONS = Input("attentions", _attentions, needs_target=False, tap=_attention_tap, **_ATTENTION)
#: the attentions and ``∂score/∂A`` ``(2, L, B, heads, N, N)``, from the shared forward and one ``autograd.grad``
ATTENTION_GRADIENTS = Input("attention_gradients", _attention_gradients, graph=True, tap=_gradient_tap, **_ATTENTION)
#: the token index of each patch-grid cell ``(h, w)``
PATCH_TOKENS = Input("patch_tokens", _patch_tokens, needs_target=False, **_ATTENTION)
#: the rows a rollout map reads: the class token, or every patch token ``(q,)``
QUERY_TOKENS = Input("query_tokens", _query_tokens, needs_target=False, **_ATTENTION)
