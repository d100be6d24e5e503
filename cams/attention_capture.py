"""Every self-attention of a vision transformer, its probabilities caught during one forward (rollout).

:func:`self_attentions` finds the attentions the engine can read, in three kinds:

- ``"mha"``: ``nn.MultiheadAttention`` (torchvision's ViT): asked for its per-head probabilities and its output
  recomputed from them (:func:`cams.attention_maps.replay_with_weights`, LeGrad's way);
- ``"timm"``: timm's ``Attention`` (an ``attn`` with ``qkv``, ``attn_drop`` and ``fused_attn``): the fused kernel is
  switched off for the forward and the output of ``attn_drop`` (the probabilities ``attn @ v`` uses) recorded;
- ``"hf"``: Hugging Face attentions with ``q_proj``/``k_proj``/``v_proj`` and a ``config`` (``ViTAttention``,
  ``DeiTAttention``, ...): the eager implementation is chosen for the forward and the returned weights recorded.

:func:`attention_probabilities` is the context manager around the engine's shared forward (the ``tap`` of the
rollout inputs of :mod:`cams.methods.rollout`); every hook is removed and every flag and config value restored on
exit. :func:`token_grid` reads which tokens are patches, on which grid, with :mod:`cams.layout`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from cams.attention_maps import ask_for_weights, check_mha, replay_with_weights
from cams.layout import grid_hints, infer_layout, prefix_hint

__all__ = [
    "AttentionKind",
    "AttentionRecord",
    "attention_probabilities",
    "has_class_token",
    "self_attentions",
    "token_grid",
]

AttentionKind = Literal["mha", "timm", "hf"]

_FOR_CNNS = "gradcam, layercam, scorecam, ablationcam or reciprocam"


class AttentionRecord:
    """What :func:`attention_probabilities` caught, in the order the attentions ran.

    Attributes:
        probs: one ``(B, heads, N, N)`` post-softmax probability tensor per attention call (graph-connected with
            ``grad=True``).
        names: the attention module of each.
    """

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.names: list[str] = []

    def add(self, name: str) -> Callable[[torch.Tensor], None]:
        def record(probs: torch.Tensor) -> None:
            self.probs.append(probs)
            self.names.append(name)

        return record


def attention_kind(module: nn.Module) -> AttentionKind | None:
    """Which kind of self-attention ``module`` is (``None``: none the engine reads).

    Example:
        >>> attention_kind(nn.MultiheadAttention(8, 2, batch_first=True)), attention_kind(nn.Linear(2, 2))
        ('mha', None)
    """
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    qkv, dropout = getattr(module, "qkv", None), getattr(module, "attn_drop", None)
    if isinstance(qkv, nn.Linear) and isinstance(dropout, nn.Module) and hasattr(module, "fused_attn"):
        return "timm"
    config = getattr(module, "config", None)
    projections = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    if hasattr(config, "_attn_implementation_internal") and all(isinstance(m, nn.Linear) for m in projections):
        return "hf"
    return None


def self_attentions(model: nn.Module) -> list[tuple[str, nn.Module, AttentionKind]]:
    """``(name, module, kind)`` of every self-attention of ``model`` the engine can read, in registration order.

    Example:
        >>> import torchvision
        >>> vit = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=3)
        >>> [(name, kind) for name, _, kind in self_attentions(vit)][0]
        ('encoder.layers.encoder_layer_0.self_attention', 'mha')
    """
    found = []
    for name, module in model.named_modules():
        kind = attention_kind(module)
        if kind is not None:
            found.append((name, module, kind))
    return found


@contextlib.contextmanager
def attention_probabilities(
    model: nn.Module, *, grad: bool = False, method: str = "rollout"
) -> Iterator[AttentionRecord]:
    """Record the probabilities of every self-attention of ``model`` during the forward run inside the block.

    With ``grad``, autograd is switched on when the first attention starts (the forward may run under
    ``no_grad``), and an attention input that carries no graph (frozen weights before it) is made a leaf, so
    that every recorded probability tensor and the model output are graph-connected.

    Raises:
        ValueError: the model has no self-attention the engine reads (the message names the methods for CNNs),
            or an ``nn.MultiheadAttention`` it cannot recompute; ``method`` names the asking method.
    """
    attentions = self_attentions(model)
    if not attentions:
        raise ValueError(
            f"{method} reads the attention of vision transformers, and {type(model).__name__} has no self-attention "
            "the engine reads (torchvision's nn.MultiheadAttention, timm's Attention, Hugging Face's ViT attention); "
            f"for convolutional networks use {_FOR_CNNS}"
        )
    record = AttentionRecord()
    handles: list[Any] = []
    flags: list[tuple[Any, str, Any]] = []
    try:
        for name, module, kind in attentions:
            if grad:
                handles.append(module.register_forward_pre_hook(_graph_from_here, with_kwargs=True))
            if kind == "mha":
                check_mha(module, name, method)
                asked: dict[str, tuple[bool, bool]] = {}
                handles.append(module.register_forward_pre_hook(ask_for_weights(asked), with_kwargs=True))
                replay = replay_with_weights(record.add(name), asked)  # prepended: runs before an outer tap's
                handles.append(module.register_forward_hook(replay, with_kwargs=True, prepend=True))
            elif kind == "timm":
                flags.append((module, "fused_attn", module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(_probs_output(record.add(name))))
            else:
                config = module.config
                if not any(c is config for c, _, _ in flags):
                    flags.append((config, "_attn_implementation_internal", config._attn_implementation_internal))
                    config._attn_implementation_internal = "eager"
                handles.append(module.register_forward_hook(_weights_output(record.add(name), name, method)))
        yield record
    finally:
        for handle in handles:
            handle.remove()
        for owner, attribute, value in reversed(flags):
            setattr(owner, attribute, value)


def _graph_from_here(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    torch.set_grad_enabled(True)
    if not args or not isinstance(args[0], torch.Tensor) or args[0].requires_grad:
        return None
    first = args[0]
    leaf = first.detach().requires_grad_()
    return tuple(leaf if a is first else a for a in args), kwargs


def _probs_output(record: Callable[[torch.Tensor], None]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        record(output)

    return hook


def _weights_output(record: Callable[[torch.Tensor], None], name: str, method: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor):
            raise RuntimeError(f"{method}: the attention {name!r} returned no attention weights in eager mode")
        record(weights)

    return hook


def has_class_token(model: nn.Module) -> bool:
    """Whether ``model`` has a class token: timm's and Hugging Face's ``cls_token``, torchvision's ``class_token``.

    Example:
        >>> import torchvision
        >>> has_class_token(torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32)), has_class_token(nn.Linear(1, 1))
        (True, False)
    """
    for module in model.modules():
        for attribute in ("cls_token", "class_token"):
            if isinstance(getattr(module, attribute, None), torch.Tensor):
                return True
    return False


def token_grid(
    model: nn.Module, tokens: int, size: Sequence[int], method: str = "rollout"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of ``tokens`` attention tokens are patches, on which grid, and which rows a map reads.

    Returns:
        ``(patches, queries)``: ``patches`` ``(h, w)`` long, the token index of each grid cell (prefix tokens —
        class, distillation, register — dropped, read as :mod:`cams.layout` reads a token output); ``queries``
        ``(q,)`` long, the rows to read: the class token's (``[0]``) when the model has one, else every patch
        token's (their mean, as global average pooling).

    Raises:
        ValueError: the tokens cannot be read on a grid for an input of spatial ``size``.

    Example:
        >>> import torchvision
        >>> vit = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32)
        >>> patches, queries = token_grid(vit, 17, (32, 32))
        >>> patches.shape, patches[0, :2].tolist(), queries.tolist()
        (torch.Size([4, 4]), [1, 2], [0])
    """
    shape = (1, 3, *size)
    layout = infer_layout(torch.empty(1, tokens, 1), shape, grid_hints(model, size), name=f"{method}'s attention",
                          prefix_hint=prefix_hint(model))  # fmt: skip
    if layout.kind != "tokens":  # pragma: no cover - a 3-D tensor is always read as tokens or refused
        raise ValueError(f"{method}: cannot read {tokens} attention tokens on a grid")
    h, w = layout.grid
    patches = torch.arange(layout.prefix, tokens).view(h, w)
    queries = torch.tensor([0]) if layout.prefix and has_class_token(model) else patches.flatten()
    return patches, queries
