"""Attention probabilities of vision-transformer blocks, caught during the engine's shared forward (LeGrad).

:func:`attention_tap` is a context manager the engine enters around its one forward when a method asks for
the ``"legrad"`` input: for each target block it records the post-softmax attention probabilities
``(B, heads, queries, keys)`` in a form the rest of the forward depends on, so gradients reach them.
Two kinds of blocks are understood:

- torchvision's ``EncoderBlock`` (a ``self_attention: nn.MultiheadAttention``): the attention is asked for
  its per-head probabilities and its output is recomputed from them (torchcam's approach);
- timm's ``Block`` (an ``attn`` with ``qkv``, ``attn_drop`` and ``fused_attn``): the fused kernel is switched
  off for the forward and the output of ``attn_drop`` (the probabilities, used by ``attn @ v``) is recorded.

Every hook is removed and every flag restored on exit. The tap and :func:`legrad_relevance` are the
``legrad`` input, declared here (:data:`LEGRAD`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cams.passes import Input, Pass
from cams.targets import Target

__all__ = [
    "LEGRAD",
    "AttentionTap",
    "ask_for_weights",
    "attention_tap",
    "check_mha",
    "default_projection",
    "legrad_relevance",
    "patch_grid",
    "replay_with_weights",
]


class AttentionTap:
    """What :func:`attention_tap` caught: ``probs[i]`` (B, heads, Q, K) of target block ``i`` (graph-connected)."""

    def __init__(self, n: int) -> None:
        self.probs: list[torch.Tensor | None] = [None] * n


def _attention_of(name: str, block: nn.Module) -> nn.Module:
    if isinstance(block, nn.MultiheadAttention):
        raise ValueError(
            f"legrad: target layer {name!r} is the attention itself; pass the transformer block that contains it "
            "(its output tokens give the block's class score)"
        )
    for child in block.children():
        if isinstance(child, nn.MultiheadAttention):
            return child
        if hasattr(child, "qkv") and isinstance(getattr(child, "attn_drop", None), nn.Module) and hasattr(
            child, "fused_attn"
        ):
            return child
    raise ValueError(
        f"legrad: target layer {name!r} ({type(block).__name__}) is not a transformer block with a self-attention "
        "(torchvision's EncoderBlock or timm's Block); pass the blocks, e.g. target_layers="
        "[f'encoder.layers.encoder_layer_{i}' for i in range(8, 12)] or [f'blocks.{i}' for i in range(8, 12)]"
    )


@contextlib.contextmanager
def attention_tap(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> Iterator[AttentionTap]:
    """Record each target block's attention probabilities during the forward run inside the block.

    Raises:
        ValueError: a target layer is not a supported transformer block (the message lists what is).
    """
    tap = AttentionTap(len(layers))
    attentions = [_attention_of(name, block) for name, block in layers]
    handles: list[Any] = []
    flags: list[tuple[nn.Module, Any]] = []
    try:
        for i, attention in enumerate(attentions):
            if isinstance(attention, nn.MultiheadAttention):
                check_mha(attention, layers[i][0])
                asked: dict[str, tuple[bool, bool]] = {}
                handles.append(attention.register_forward_pre_hook(ask_for_weights(asked), with_kwargs=True))
                replay = replay_with_weights(_record_at(tap, i), asked)  # prepended: runs before an outer tap's
                handles.append(attention.register_forward_hook(replay, with_kwargs=True, prepend=True))
            else:
                flags.append((attention, attention.fused_attn))
                attention.fused_attn = False
                handles.append(attention.attn_drop.register_forward_hook(_record(tap, i)))
        yield tap
    finally:
        for handle in handles:
            handle.remove()
        for attention, flag in flags:
            attention.fused_attn = flag


def check_mha(attention: nn.MultiheadAttention, name: str, method: str = "legrad") -> None:
    """Raise a ``ValueError`` naming ``method`` unless ``attention`` is batch-first with one Q/K/V projection and
    adds no key/value tokens (what :func:`replay_with_weights` recomputes)."""
    if not attention.batch_first or not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
        raise ValueError(f"{method}: the attention of {name!r} must be batch-first with one Q/K/V projection")
    if attention.bias_k is not None or attention.bias_v is not None or attention.add_zero_attn:
        raise ValueError(f"{method}: the attention of {name!r} adds key/value tokens, which {method} does not support")


def _record(tap: AttentionTap, i: int) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        tap.probs[i] = output

    return hook


def _record_at(tap: AttentionTap, i: int) -> Callable[[torch.Tensor], None]:
    def record(probs: torch.Tensor) -> None:
        tap.probs[i] = probs

    return record


def ask_for_weights(asked: dict[str, tuple[bool, bool]]) -> Callable[..., Any]:
    """Make ``nn.MultiheadAttention`` return per-head probabilities (``need_weights=True``, not averaged);
    remember in ``asked`` what the caller wanted back."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args, kwargs = list(args), dict(kwargs)
        requested = args[4] if len(args) > 4 else kwargs.get("need_weights", True)
        averaged = args[6] if len(args) > 6 else kwargs.get("average_attn_weights", True)
        asked["returns"] = (bool(requested), bool(averaged))
        if len(args) > 4:
            args[4] = True
        else:
            kwargs["need_weights"] = True
        if len(args) > 6:
            args[6] = False
        else:
            kwargs["average_attn_weights"] = False
        return tuple(args), kwargs

    return hook


def replay_with_weights(
    record: Callable[[torch.Tensor], None], asked: dict[str, tuple[bool, bool]]
) -> Callable[..., Any]:
    """A forward hook for an ``nn.MultiheadAttention`` whose pre-hook is :func:`ask_for_weights`: the output is
    recomputed from the returned per-head probabilities ``(B, heads, Q, K)``, so that it depends on them, and
    ``record(probs)`` is told them; the caller gets back what it asked for."""

    def hook(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        requested, averaged = asked.pop("returns", (True, True))
        query, value = args[0], args[2] if len(args) > 2 else kwargs["value"]
        if query is not value and not torch.equal(query, value):
            raise ValueError("only self-attention is supported (query, key and value must be the same tokens)")
        probs = output[1]
        batch, source, embed = value.shape
        heads = module.num_heads
        v = F.linear(value, module.in_proj_weight[2 * embed :],
                     None if module.in_proj_bias is None else module.in_proj_bias[2 * embed :])  # fmt: skip
        v = v.reshape(batch, source, heads, embed // heads).transpose(1, 2)
        mixed = (probs @ v).transpose(1, 2).reshape(batch, probs.shape[-2], embed)
        record(probs)
        weights = (probs.mean(dim=1) if averaged else probs) if requested else None
        return module.out_proj(mixed), weights

    return hook


def default_projection(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tokens (B, N, D) → class logits, as the LeGrad paper: the final norm and head on the mean token.

    torchvision ``VisionTransformer``: ``heads(encoder.ln(mean))``; timm ``VisionTransformer``:
    ``head(fc_norm(norm(mean)))``.

    Raises:
        ValueError: neither; pass LeGrad's ``score_projection`` option.
    """
    encoder = getattr(model, "encoder", None)
    if isinstance(getattr(encoder, "ln", None), nn.Module) and isinstance(getattr(model, "heads", None), nn.Module):
        return lambda tokens: model.heads(encoder.ln(tokens.mean(dim=1)))
    parts = [getattr(model, n, None) for n in ("norm", "fc_norm", "head")]
    if all(isinstance(part, nn.Module) for part in parts):
        norm, fc_norm, head = parts
        return lambda tokens: head(fc_norm(norm(tokens.mean(dim=1))))
    raise ValueError(
        f"legrad: cannot tell how {type(model).__name__} turns tokens into class scores; pass "
        "get_method('legrad').with_options(score_projection=fn), fn: tokens (B, N, D) -> logits (B, classes)"
    )


def _prefix_tokens(model: nn.Module, given: int | None) -> int | None:
    if given is not None:
        return int(given)
    found = getattr(model, "num_prefix_tokens", None)
    if isinstance(found, int):
        return found
    if isinstance(getattr(model, "class_token", None), nn.Parameter):
        return 1
    return None


def patch_grid(keys: int, prefix: int | None, size: Sequence[int]) -> tuple[int, int, int]:
    """``(prefix, h, w)``: how ``keys`` tokens split into prefix tokens and an ``h × w`` grid for an input of ``size``.

    The grid is the factorisation of the patch tokens closest to the input's aspect ratio. With
    ``prefix=None`` the prefix is the fewest leading tokens (at most 16) whose removal leaves a grid of
    exactly the input's aspect ratio.

    Example:
        >>> patch_grid(197, 1, (224, 224)), patch_grid(129, None, (128, 256))
        ((1, 14, 14), (1, 8, 16))
    """
    height, width = int(size[0]), int(size[1])
    if prefix is None:
        for p in range(min(keys, 17)):
            n = keys - p
            exact = [d for d in range(1, n + 1) if n % d == 0 and d * width == (n // d) * height]
            if exact:
                return p, exact[0], n // exact[0]
        raise ValueError(
            f"legrad: cannot tell the prefix tokens of {keys} tokens for a {height}×{width} input; pass the "
            "prefix_tokens option (e.g. 1 for a class token)"
        )
    n = keys - prefix
    if n < 1:
        raise ValueError(f"legrad: prefix_tokens={prefix} leaves no patch token of {keys}")
    best = min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(math.log(d * width / ((n // d) * height))))
    return prefix, best, n // best


def legrad_relevance(
    model: nn.Module,
    tokens: Sequence[torch.Tensor],
    tap: AttentionTap,
    target: Target,
    size: Sequence[int],
    *,
    score_projection: Callable[[torch.Tensor], torch.Tensor] | None,
    prefix_tokens: int | None,
) -> torch.Tensor:
    """LeGrad's map (B, h, w): the mean over blocks of ``mean_{heads, queries} ReLU(∂s^l/∂A^l)`` on the patch grid.

    ``tokens[l]`` is block ``l``'s output (graph-connected), ``s^l`` the target score of its projection
    (:func:`default_projection`); one ``autograd.grad`` per block, each walking back only through that block.
    """
    project = score_projection or default_projection(model)
    prefix = _prefix_tokens(model, prefix_tokens)
    maps = []
    for i, (z, probs) in enumerate(zip(tokens, tap.probs, strict=True)):
        if probs is None or z.dim() != 3:
            raise RuntimeError(f"legrad: target block {i} did not run its attention, or its output is not tokens")
        logits = project(z)
        rows = torch.arange(len(z), device=z.device)
        score = target(logits, rows)
        (grad,) = torch.autograd.grad(score.sum(), probs, retain_graph=True)
        relevance = grad.clamp_min(0).mean(dim=(1, 2))
        p, h, w = patch_grid(relevance.shape[-1], prefix, size)
        maps.append(relevance[:, p:].reshape(len(z), h, w).float())
    return torch.stack(maps).mean(dim=0)


def _legrad(p: Pass, i: int, *, score_projection: Callable[[torch.Tensor], torch.Tensor] | None,
            prefix_tokens: int | None) -> torch.Tensor:  # fmt: skip
    assert p.target is not None and p.outputs is not None
    return legrad_relevance(p.model, p.outputs, p.taps["legrad"], p.target, p.x.shape[2:],
                            score_projection=score_projection, prefix_tokens=prefix_tokens)  # fmt: skip


#: LeGrad: the relevance of the target blocks' attention (B, h, w), from the tap on the shared forward
LEGRAD = Input("legrad", _legrad, reads_feature_map=False, graph=True, tap=attention_tap)
