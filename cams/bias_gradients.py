"""FullGrad's inputs: the gradient of the score with respect to the input and to every bias, from one backward.

The network's output is the sum of the input-gradient term ``x ⊙ ∂y/∂x`` and one bias-gradient term per
layer with a bias (Srinivas & Fleuret 2019, Eq. 3). Every such layer's gradient is caught by a tensor hook
on its output during the single ``autograd.grad`` to the input, and reduced to one map per layer on the
spot: ``Σ_c ψ(|b_c ⊙ ∂y/∂z_c|)`` (``ψ`` = min-max scaling per channel) at the layer's resolution, then
resized once: resizing is linear, so this is pytorch-grad-cam's "resize every channel, then sum" at a
fraction of the cost. They are the ``fullgrad`` input, declared here (:data:`FULLGRAD`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from cams.ops import minmax, resize
from cams.passes import Input, Pass
from cams.targets import Target

__all__ = ["FULLGRAD", "bias_layers", "effective_bias", "full_gradient_terms"]

#: exact types, as the reference: subclasses (timm's BatchNormAct2d, ...) may fold an activation in
_BIAS_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Conv3d, nn.BatchNorm3d)


def bias_layers(model: nn.Module, dims: int = 4) -> list[tuple[str, nn.Module]]:
    """Convolutions and BatchNorm layers with a bias, in registration order (2-D ones for ``dims=4``, 3-D for 5).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        >>> [name for name, _ in bias_layers(net)]
        ['1']
    """
    kinds = _BIAS_TYPES[:2] if dims == 4 else _BIAS_TYPES[2:]
    return [(n, m) for n, m in model.named_modules() if type(m) in kinds and getattr(m, "bias", None) is not None]


def effective_bias(module: nn.Module) -> torch.Tensor:
    """The bias a layer adds: a convolution's ``b``; BatchNorm's ``β − μγ/√(σ² + ε)`` with its running statistics.

    Example:
        >>> bn = nn.BatchNorm2d(2).eval()
        >>> _ = bn.running_mean.fill_(4.0), bn.running_var.fill_(4.0 - bn.eps), bn.bias.data.fill_(3.0)
        >>> effective_bias(bn).tolist()
        [1.0, 1.0]
    """
    bias = module.bias.detach()
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is None or module.running_var is None:
            warnings.warn(
                f"fullgrad: {type(module).__name__} without running statistics normalises with each batch's own; "
                "its bias term uses β alone",
                stacklevel=3,
            )
            return bias
        weight = module.weight.detach() if module.weight is not None else torch.ones_like(bias)
        return bias - module.running_mean * weight / torch.sqrt(module.running_var + module.eps)
    return bias


def full_gradient_terms(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """FullGrad's terms at the input's resolution → (B, C_in + L, *spatial).

    Channel ``c < C_in``: ``ψ(|x_c ⊙ ∂y/∂x_c|)``; then one channel per call of each of the ``L`` bias layers
    (:func:`bias_layers`): ``resize(Σ_c ψ(|b_c ⊙ ∂y/∂z_c|))``. ``y`` is the target score of each image;
    one forward with autograd from the input, one ``autograd.grad`` to the input.

    Raises:
        ValueError: the model has no convolution or BatchNorm layer with a bias.
    """
    layers = bias_layers(model, x.dim())
    if not layers:
        raise ValueError(
            f"fullgrad: {type(model).__name__} has no {'2' if x.dim() == 4 else '3'}-D convolution or BatchNorm "
            "layer with a bias, so FullGrad has no bias gradients to sum; choose another method"
        )
    size = tuple(x.shape[2:])
    biases = [effective_bias(m) for _, m in layers]
    terms: list[torch.Tensor] = []

    def reduce(bias: torch.Tensor) -> Any:
        def on_grad(grad: torch.Tensor) -> None:
            shape = (1, -1, *(1,) * (grad.dim() - 2))
            per_channel = (bias.view(shape) * grad).abs().float()
            b, c = per_channel.shape[:2]
            scaled = minmax(per_channel.reshape(b * c, *per_channel.shape[2:]))
            terms.append(resize(scaled.view(b, c, *per_channel.shape[2:]).sum(dim=1), size))

        return on_grad

    def hook(index: int) -> Any:
        def on_output(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(reduce(biases[index]))

        return on_output

    leaf = x.detach().clone().requires_grad_()
    handles = [module.register_forward_hook(hook(i)) for i, (_, module) in enumerate(layers)]
    try:
        with torch.enable_grad():
            output = model(leaf)
            scores = target(output, torch.arange(len(x), device=x.device))
            (grad_x,) = torch.autograd.grad(scores.sum(), leaf)
    finally:
        for handle in handles:
            handle.remove()
    gx = (grad_x * leaf.detach()).abs().float()
    b, c = gx.shape[:2]
    input_terms = minmax(gx.reshape(b * c, *size)).view(b, c, *size)
    if not terms:
        raise RuntimeError("fullgrad: no bias layer's output reached the target score")
    return torch.cat([input_terms, torch.stack(terms[::-1], dim=1)], dim=1)


def _fullgrad(p: Pass, i: int) -> torch.Tensor:
    assert p.target is not None
    return full_gradient_terms(p.model, p.x, p.target)


#: FullGrad: the input-gradient terms and one term per bias layer ``(B, C_in + L, *spatial)``, from one backward
FULLGRAD = Input("fullgrad", _fullgrad, reads_layers=False, reads_feature_map=False)
