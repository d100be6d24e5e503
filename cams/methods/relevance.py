"""AttnLRP: layer-wise relevance propagation through attention, LayerNorm and softmax, as one modified backward.

AttnLRP (Achtibat et al., ICML 2024, https://arxiv.org/abs/2402.05602) is computed as the authors' ``lxt``
package computes it, in the Gradient × Input form: the forward keeps its values, a few operations get another
backward, and the relevance of the input is ``x ⊙ ∂̃y/∂x``. While :func:`lrp_rules` is active:

- LayerNorm (and RMSNorm): the identity rule, as a backward that treats the standard deviation as a constant,
  ``∂̃/∂x = (g w − mean(g w)) / σ`` (``lxt``'s ``layer_norm_forward``);
- element-wise activations (GELU, SiLU, ReLU, ...): the identity rule, ``∂̃/∂x = g · f(x) / (x + 10⁻¹⁰)``
  (``lxt``'s ``identity_rule_implicit``);
- attention: the uniform rule on the two products ``q kᵀ`` and ``A v``: the gradient reaching the queries and
  keys is divided by 4, the values' by 2 (``lxt``'s ``wrap_attention_forward``); the softmax keeps its own
  gradient (its AttnLRP rule in this form), so timm's and Hugging Face's fused kernels are kept;
- linear layers, convolutions, additions: their own gradient (the ε-rule, ε → 0).

The attentions are timm's ``Attention`` (on its ``qkv`` projection), Hugging Face's (``q_proj``, ``k_proj``,
``v_proj``) and torchvision's ``nn.MultiheadAttention`` (recomputed from its input with the rule, its output
replaced). Every hook is removed on exit. The ``attnlrp`` input (:data:`ATTNLRP`) is declared here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cams.attention_capture import self_attentions
from cams.methods.rollout import warn_if_zero
from cams.passes import Input, Pass
from cams.targets import Target

__all__ = ["ATTNLRP", "attn_lrp", "attnlrp_relevance", "lrp_rules"]

#: lxt's ``identity_rule_implicit`` epsilon
_IDENTITY_EPS = 1e-10
_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Softplus)
_ACTIVATION_MODULES = ("transformers.activations", "timm.layers.activations")
_FOR_CNNS = "fullgrad, gradcam, layercam or reciprocam"


def attn_lrp(relevance: torch.Tensor) -> torch.Tensor:
    """AttnLRP (Achtibat et al., ICML 2024, https://arxiv.org/abs/2402.05602): the input's relevance (B, H, W).

    ``R(x) = Σ_channels x ⊙ ∂̃y_t/∂x``, ``∂̃`` the backward with the AttnLRP rules (see :mod:`cams.methods.relevance`
    and :func:`attnlrp_relevance`): LayerNorm's standard deviation held constant, the identity rule on
    activations, the uniform rule (½ each) on the attention's products. The relevance sums to about ``y_t``
    (what the biases absorb is missing). The map keeps the positive relevance (evidence for the target), min-max
    scaled, at the input's resolution.

    Example:
        >>> attn_lrp(torch.ones(1, 4, 4)).shape
        torch.Size([1, 4, 4])
    """
    return relevance


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` (broadcast over the last dimension)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class _IdentityRule(torch.autograd.Function):
    """``y = f(x)`` as computed; backward ``g · y / (x + 10⁻¹⁰)`` (lxt's ``identity_rule_implicit_fn``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        working = torch.promote_types(x.dtype, torch.float32)  # half precision would lose the 1e-10
        ctx.save_for_backward(y.to(working) / (x.to(working) + _IDENTITY_EPS))
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return (grad * ratio).to(grad.dtype), None


class _NormRule(torch.autograd.Function):
    """``y = norm(x)`` as computed; backward with the normaliser held constant over the last ``dims`` dimensions:
    ``(g w − mean(g w)) / σ`` for LayerNorm (``centre``), ``g w / rms`` for RMSNorm."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float, dims: int, centre: bool
    ) -> torch.Tensor:
        axes = tuple(range(-dims, 0))
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        if centre:
            scale = (wide.var(dim=axes, unbiased=False, keepdim=True) + eps).sqrt()
        else:
            scale = (wide.pow(2).mean(dim=axes, keepdim=True) + eps).sqrt()
        ctx.save_for_backward(scale, weight)
        ctx.axes, ctx.centre = axes, centre
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        scale, weight = ctx.saved_tensors
        g = (grad if weight is None else grad * weight).to(scale.dtype)
        if ctx.centre:
            g = g - g.mean(dim=ctx.axes, keepdim=True)
        return (g / scale).to(grad.dtype), None, None, None, None, None


def _without_graph(module: nn.Module, args: Any) -> None:
    torch.set_grad_enabled(False)


def _norm_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    torch.set_grad_enabled(True)
    centre = isinstance(module, nn.LayerNorm)
    shape = module.normalized_shape
    dims = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    eps = module.eps if module.eps is not None else torch.finfo(output.dtype).eps
    weight = None if module.weight is None else module.weight.detach()
    return _NormRule.apply(args[0], output, weight, float(eps), dims, centre)


def _activation_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    torch.set_grad_enabled(True)
    return _IdentityRule.apply(args[0], output)


def _thirds(width: int, device: torch.device, dtype: torch.dtype, v_scale: float = 0.5) -> torch.Tensor:
    third = width // 3
    return torch.tensor([0.25] * (2 * third) + [v_scale] * third, device=device, dtype=dtype)


def _scale_output(scale: float, fired: list[str], name: str) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        fired.append(name)
        return _ScaledGradient.apply(output, torch.tensor(scale, device=output.device, dtype=output.dtype))

    return hook


def _scale_qkv(fired: list[str], name: str) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        fired.append(name)
        return _ScaledGradient.apply(output, _thirds(output.shape[-1], output.device, output.dtype))

    return hook


def _mha_with_rule(fired: list[str], name: str) -> Callable[..., Any]:
    """Recompute torchvision's self-attention from its input with the uniform rule on ``q kᵀ`` and ``A v``."""

    def hook(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        torch.set_grad_enabled(True)
        fired.append(name)
        x = args[0] if args else kwargs["query"]
        batch, tokens, embed = x.shape
        heads = module.num_heads
        qkv = F.linear(x, module.in_proj_weight, module.in_proj_bias)
        qkv = _ScaledGradient.apply(qkv, _thirds(qkv.shape[-1], qkv.device, qkv.dtype))
        q, k, v = (t.reshape(batch, tokens, heads, embed // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, embed)
        return module.out_proj(mixed), None

    return hook


@contextlib.contextmanager
def lrp_rules(model: nn.Module) -> Iterator[list[str]]:
    """Give ``model``'s LayerNorms, activations and attentions the AttnLRP backward for the forwards run inside.

    Yields the names of the attentions whose rule was applied (one entry per call), so a caller can tell an
    attention whose projections never ran as modules (BEiT's and EVA's ``F.linear``).

    Raises:
        ValueError: the model has no self-attention the engine reads, an ``nn.MultiheadAttention`` that is not
            batch-first self-attention with one projection, or a gated timm attention.
    """
    attentions = self_attentions(model)
    if not attentions:
        raise ValueError(
            f"attnlrp propagates relevance through the attention of vision transformers, and {type(model).__name__} "
            "has no self-attention the engine reads (torchvision's nn.MultiheadAttention, timm's Attention, Hugging "
            f"Face's ViT attention); for convolutional networks use {_FOR_CNNS}"
        )
    fired: list[str] = []
    handles: list[Any] = []
    try:
        for name, module, kind in attentions:
            if kind == "mha":
                if not module.batch_first or not module._qkv_same_embed_dim or module.bias_k is not None:
                    raise ValueError(f"attnlrp: the attention {name!r} must be batch-first self-attention with one "
                                     "Q/K/V projection and no added key/value tokens")  # fmt: skip
                handles.append(module.register_forward_pre_hook(_without_graph))
                handles.append(module.register_forward_hook(_mha_with_rule(fired, name), with_kwargs=True))
            elif kind == "timm":
                if getattr(module, "gate", None) is not None:
                    raise ValueError(f"attnlrp: the gated attention {name!r} multiplies its output by a gate, which "
                                     "the AttnLRP rules here do not cover")  # fmt: skip
                handles.append(module.qkv.register_forward_hook(_scale_qkv(fired, name)))
            else:
                handles.append(module.q_proj.register_forward_hook(_scale_output(0.25, fired, name)))
                handles.append(module.k_proj.register_forward_hook(_scale_output(0.25, [], name)))
                handles.append(module.v_proj.register_forward_hook(_scale_output(0.5, [], name)))
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                handles += [module.register_forward_pre_hook(_without_graph), module.register_forward_hook(_norm_hook)]
            elif isinstance(module, _ACTIVATIONS) or type(module).__module__ in _ACTIVATION_MODULES:
                handles += [module.register_forward_pre_hook(_without_graph),
                            module.register_forward_hook(_activation_hook)]  # fmt: skip
        yield fired
    finally:
        for handle in handles:
            handle.remove()


def attnlrp_relevance(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """AttnLRP's relevance of each input pixel, summed over channels → (B, H, W), signed (float32, or float64 for a
    float64 model).

    One forward with :func:`lrp_rules` and autograd from the input, one ``autograd.grad`` of the target scores to
    the input: ``R = Σ_c x ⊙ ∂̃y/∂x``. Parameter ``.grad`` is never written.

    Raises:
        ValueError: see :func:`lrp_rules`; or an attention whose projections did not run as modules.
    """
    leaf = x.detach().clone().requires_grad_()
    with lrp_rules(model) as fired, torch.enable_grad():
        output = model(leaf)
        scores = target(output, torch.arange(len(x), device=x.device))
        (grad,) = torch.autograd.grad(scores.sum(), leaf)
    names = {name for name, _, _ in self_attentions(model)}
    if names - set(fired):
        missing = sorted(names - set(fired))
        raise ValueError(
            f"attnlrp: the attention {missing[0]!r} computes its projections without calling its projection module "
            "(BEiT, EVA and other attentions with F.linear or rotary embeddings), so its AttnLRP rule cannot be "
            "applied; use gradrollout or legrad for it"
        )
    relevance = (leaf.detach() * grad).sum(dim=1)
    relevance = relevance.to(torch.promote_types(relevance.dtype, torch.float32))
    warn_if_zero(relevance.flatten(1), "attnlrp", "the relevance of every pixel")
    return relevance


def _attnlrp(p: Pass, i: int) -> torch.Tensor:
    assert p.target is not None
    return attnlrp_relevance(p.model, p.x, p.target)


#: AttnLRP: the relevance of each input pixel ``(B, H, W)``, from one forward and one backward with the LRP rules
ATTNLRP = Input("attnlrp", _attnlrp, reads_layers=False, reads_feature_map=False)
