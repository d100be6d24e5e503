"""Gradient-weighted methods: each turns captured ``(activations, gradients)`` into weighted activations.

Shapes: ``acts`` and ``grads`` are (B, C, *spatial) float32 — (B, C, h, w) for images, (B, C, d, h, w)
for volumes — the activations of the target layer and the gradient of the target score with respect
to them. Each function returns the weighted activations, same shape, whose channel sum (or first
principal component, with ``eigen_smooth``) is the map before ReLU and normalisation.

ShapleyCAM's second-order input, the Hessian-vector product ``hvp``, is declared here (:data:`HVP`);
Smooth Grad-CAM++'s noisy gradients in :mod:`cams.noise`, FullGrad's terms in :mod:`cams.bias_gradients`.
"""

from __future__ import annotations

import torch

from cams.ops import spatial_dims
from cams.passes import Input, Pass

__all__ = [
    "HVP",
    "full_grad",
    "grad_cam",
    "grad_cam_elementwise",
    "grad_cam_plus_plus",
    "hires_cam",
    "layer_cam",
    "shapley_cam",
    "smooth_grad_cam_plus_plus",
    "xgrad_cam",
]


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


def shapley_cam(acts: torch.Tensor, grads: torch.Tensor, hvp: torch.Tensor) -> torch.Tensor:
    """ShapleyCAM (Cai et al., ICLR 2025, https://arxiv.org/abs/2501.06261).

    A second-order Taylor reading of the score as a Shapley value of the channels:
    ``α_k = mean_ij (g - ½ H A)_k,ij`` with ``g = ∂y/∂A`` and ``H A`` the Hessian-vector product
    ``(∂²y/∂A²) · A``;  map ``= ReLU(Σ_k α_k A_k)``. For networks that are piecewise linear after the target
    layer ``H A = 0`` and ShapleyCAM is Grad-CAM; pair it with a smooth target (pytorch-grad-cam's
    ``ClassifierOutputReST``) or smooth activations.

    Example:
        >>> a, g = torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
        >>> shapley_cam(a, g, torch.zeros_like(a)).equal(grad_cam(a, g))
        True
    """
    return grad_cam(acts, grads - 0.5 * hvp)


def smooth_grad_cam_plus_plus(acts: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Smooth Grad-CAM++ (Omeiza et al. 2019, https://arxiv.org/abs/1908.01224).

    ``moments`` (3, B, C, *spatial) holds ``D¹, D², D³``: the means of ``g, g², g³`` over ``N`` noisy copies
    ``x + ε``, ``ε ~ N(0, σ²)``, of the input (``g = ∂y/∂A`` of each copy). With the clean activations ``A``:
    ``a_ij = D² / (2 D² + Σ_ab A_ab D³_ab + 1e-8)``,  ``α_k = Σ_ij a_ij ReLU(D¹_ij)``;
    map ``= ReLU(Σ_k α_k A_k)``. The numerator ``D²`` is torchcam's correction of the paper's ``D¹``.

    Example:
        >>> g = torch.ones(1, 1, 2, 2)  # a = 1 / (2 + 4), α = 4 a
        >>> [round(v, 4) for v in smooth_grad_cam_plus_plus(g, torch.stack([g, g, g])).flatten().tolist()]
        [0.6667, 0.6667, 0.6667, 0.6667]
    """
    d1, d2, d3 = moments
    spatial = spatial_dims(acts)
    aij = d2 / (2 * d2 + (d3 * acts).sum(dim=spatial, keepdim=True) + 1e-8)
    weights = (aij * d1.clamp_min(0)).sum(dim=spatial, keepdim=True)
    return weights * acts


def full_grad(terms: torch.Tensor) -> torch.Tensor:
    """FullGrad (Srinivas & Fleuret, NeurIPS 2019, https://arxiv.org/abs/1905.00780).

    ``terms`` (B, C_in + L, H, W) are the full-gradient terms at input resolution: ``ψ(|x ⊙ ∂y/∂x|)`` per
    input channel, and for each of the L layers with a bias (convolutions and BatchNorm, whose
    bias is ``β - μγ/σ``) ``Σ_c ψ(|b_c ⊙ ∂y/∂z_c|)`` resized to the input, ``ψ`` = min-max scaling per
    channel (see :func:`cams.bias_gradients.full_gradient_terms`); map ``= Σ terms``.

    Example:
        >>> full_grad(torch.ones(1, 4, 2, 2)).sum(1).flatten().tolist()
        [4.0, 4.0, 4.0, 4.0]
    """
    return terms


def _hvp(p: Pass, i: int) -> torch.Tensor:
    """ShapleyCAM: the Hessian-vector product ``(∂²y/∂A²) A`` → (B, C, *spatial)."""
    assert p.graph_grads is not None and p.outputs is not None
    grad, output = p.graph_grads[i], p.outputs[i]
    hvp = None
    if grad.requires_grad:
        (hvp,) = torch.autograd.grad(grad, output, grad_outputs=p.raw[i].to(grad.dtype), retain_graph=True,
                                     allow_unused=True)  # fmt: skip
    if hvp is None:  # the score is linear in the layer's output after it: no second-order term
        return torch.zeros_like(p.acts[i])
    return p.feature_map(i, hvp).float()


#: ShapleyCAM: the Hessian-vector product ``(∂²y/∂A²) A`` ``(B, C, *spatial)``, from the shared backward's graph
HVP = Input("hvp", _hvp, backward=True, graph=True, second_order=True)
