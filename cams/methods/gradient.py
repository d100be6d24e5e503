"""Gradient-weighted methods: each turns captured ``(activations, gradients)`` into weighted activations.

Shapes: ``acts`` and ``grads`` are (B, C, *spatial) float32 — (B, C, h, w) for images, (B, C, d, h, w)
for volumes — the activations of the target layer and the gradient of the target score with respect
to them. Each function returns the weighted activations, same shape, whose channel sum (or first
principal component, with ``eigen_smooth``) is the map before ReLU and normalisation.
"""

from __future__ import annotations

import torch

from cams.ops import spatial_dims

__all__ = ["grad_cam", "grad_cam_elementwise", "grad_cam_plus_plus", "hires_cam", "layer_cam", "xgrad_cam"]


def grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391).

    ``α_k = mean_ij ∂y/∂A_k,ij``;  map ``= ReLU(Σ_k α_k A_k)``.

    Example:
        >>> grad_cam(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3)).sum(1)[0, 0, 0].item()
        2.0
    """
    return grads.mean(dim=spatial_dims(acts), keepdim=True) * acts


def grad_cam_plus_plus(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063), Eq. 19.

    ``a_ij = g² / (2 g² + Σ_ab A_ab · g³ + 1e-6)`` (zero where ``g = 0``),
    ``α_k = Σ_ij a_ij ReLU(g_ij)``;  map ``= ReLU(Σ_k α_k A_k)``.

    Example:
        >>> grad_cam_plus_plus(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).abs().sum().item()
        0.0
    """
    g2 = grads.pow(2)
    g3 = g2 * grads
    sum_acts = acts.sum(dim=spatial_dims(acts), keepdim=True)
    aij = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    weights = (grads.clamp_min(0) * aij).sum(dim=spatial_dims(acts), keepdim=True)
    return weights * acts


def xgrad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020, https://arxiv.org/abs/2008.02312).

    ``α_k = Σ_ij (A_k,ij / (Σ_ab A_k,ab + 1e-7)) ∂y/∂A_k,ij``;  map ``= ReLU(Σ_k α_k A_k)``.

    **Conditioning.** ``α_k`` divides by the channel's activation sum ``Σ_ab A_k,ab``. After a ReLU every
    term is ``≥ 0`` and the division is well conditioned (relative condition number 1). On layers with
    signed activations — transformer LayerNorm outputs, hardswish/GELU/SiLU stages, BatchNorm outputs
    before their ReLU — positive and negative values cancel, the sum can be near zero, and ``α_k``
    amplifies any change of the input by the factor ``κ_k = Σ_ab |A_k,ab| / |Σ_ab A_k,ab|`` (pytorch-grad-cam's
    own maps move by up to 5e-4 under a 1e-7 relative input change on such layers). Prefer a post-ReLU
    layer for XGrad-CAM, or Grad-CAM on signed layers. The sums and the division here run in float64, so
    the engine adds no rounding of its own to what that conditioning implies.

    Example:
        >>> round(xgrad_cam(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).sum().item(), 4)
        4.0
    """
    dims = spatial_dims(acts)
    wide = acts.double()
    sum_acts = wide.sum(dim=dims, keepdim=True)
    weights = (grads.double() * wide).sum(dim=dims, keepdim=True) / (sum_acts + 1e-7)
    return (weights * wide).to(acts.dtype)


def layer_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Layer-CAM (Jiang et al., IEEE TIP 2021, http://mftp.mmcheng.net/Papers/21TIP_LayerCAM.pdf).

    Element-wise weights ``ReLU(∂y/∂A_k,ij)``;  map ``= ReLU(Σ_k ReLU(g_k) ⊙ A_k)``.

    Example:
        >>> layer_cam(torch.ones(1, 1, 1, 2), torch.tensor([[[[1.0, -1.0]]]])).tolist()
        [[[[1.0, 0.0]]]]
    """
    return grads.clamp_min(0) * acts


def hires_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891).

    Element-wise product, no spatial averaging: map ``= ReLU(Σ_k g_k ⊙ A_k)``.

    Example:
        >>> hires_cam(torch.ones(1, 1, 1, 2), torch.tensor([[[[1.0, -1.0]]]])).tolist()
        [[[[1.0, -1.0]]]]
    """
    return grads * acts


def grad_cam_elementwise(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``).

    ReLU of the element-wise product before the channel sum: map ``= ReLU(Σ_k ReLU(g_k ⊙ A_k))``.

    Example:
        >>> grad_cam_elementwise(torch.ones(1, 1, 1, 2), torch.tensor([[[[1.0, -1.0]]]])).tolist()
        [[[[1.0, 0.0]]]]
    """
    return (grads * acts).clamp_min(0)
