"""Guided backpropagation and guided Grad-CAM (Springenberg et al. 2015; Selvaraju et al. 2017).

Guided backprop passes back through each ReLU only positive gradients at positive inputs:
``∂/∂x = g · [x > 0] · [g > 0]``. Here every ReLU is caught — ``nn.ReLU`` modules and functional
``F.relu``/``torch.relu``/``Tensor.relu`` calls alike, in-place or not — through a
:class:`~torch.overrides.TorchFunctionMode` that clamps the gradient arriving at each ReLU output; the
model's modules are never replaced and nothing outlives the call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cams.engine import check_input
from cams.hooks import grad_capable, prepare
from cams.state import frozen_model, model_device
from cams.targets import Targets, resolve_targets

__all__ = ["guided_backprop", "guided_gradcam"]

_RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


def _positive(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp_min(0)


class _GuidedReLU(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _RELUS and isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(_positive)
        return out


def guided_backprop(model: nn.Module, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
    """Guided-backprop gradients of the target score with respect to every input image.

    Args:
        model: classifier; left as found (modes, ``.grad``, RNG, no hooks).
        x: (B, C, H, W) input batch.
        targets: as in :class:`cams.CamEngine` (``None``: each image's predicted class).

    Returns:
        (B, C, H, W) float32 gradients on ``x.device`` (the reference computes only image 0).

    Example:
        >>> import torch, torchvision
        >>> gb = guided_backprop(torchvision.models.resnet18(num_classes=3), torch.randn(2, 3, 32, 32))
        >>> tuple(gb.shape)
        (2, 3, 32, 32)
    """
    x = check_input(x)
    out_device = x.device
    with grad_capable(), frozen_model(model):
        inp = prepare(x, model_device(model)).clone().requires_grad_(True)
        with _GuidedReLU():
            output = model(inp)
            target = resolve_targets(targets, inp.shape[0], output)
            scores = target(output, torch.arange(inp.shape[0], device=inp.device))
            (grad,) = torch.autograd.grad(scores.sum(), inp)
    return grad.float().to(out_device)


def guided_gradcam(gb: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM: guided-backprop gradients (B, C, H, W) times a map (B, H, W) → (B, C, H, W).

    Example:
        >>> guided_gradcam(torch.ones(1, 3, 2, 2), torch.full((1, 2, 2), 0.5)).unique().tolist()
        [0.5]
    """
    if gb.dim() != 4 or cam.dim() != 3 or gb.shape[0] != cam.shape[0] or gb.shape[-2:] != cam.shape[-2:]:
        raise ValueError(
            f"gb (B, C, H, W) and cam (B, H, W) must match; got {tuple(gb.shape)}, {tuple(cam.shape)}"
        )
    return gb * cam[:, None].to(gb)
