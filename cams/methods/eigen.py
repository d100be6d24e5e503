"""Principal-component methods: the map is the first principal component of (weighted) activations.

The engine projects the returned tensor with :func:`cams.ops.first_principal_component`; KPCA-CAM
computes its kernel principal component itself and returns the map.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["eigen_cam", "eigen_grad_cam", "kernel_matrix", "kpca_cam", "seg_eigen_cam"]

Kernel = Literal["linear", "poly", "rbf", "sigmoid", "cosine"]
_KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def eigen_cam(acts: torch.Tensor, grads: torch.Tensor | None = None) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299).

    Map ``= ReLU(first principal component of A)``; not class-discriminative, needs no gradient.

    Example:
        >>> eigen_cam(torch.ones(1, 2, 3, 3)).shape
        torch.Size([1, 2, 3, 3])
    """
    return acts


def eigen_grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Eigen-Grad-CAM (pytorch-grad-cam): first principal component of ``∂y/∂A ⊙ A``.

    Like Eigen-CAM but class-discriminative through the gradient.

    Example:
        >>> eigen_grad_cam(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3)).shape
        torch.Size([1, 2, 3, 3])
    """
    return grads * acts


def seg_eigen_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Seg-Eigen-CAM (Chung & Ying 2025, https://doi.org/10.3390/app15137562).

    First principal component of ``|∂y/∂A| ⊙ A`` (Eq. 10), its sign fixed so that the largest-magnitude
    value is positive (Eq. 13, always, whatever the call's ``eigen_sign``).

    Example:
        >>> seg_eigen_cam(torch.ones(1, 2, 3, 3), -torch.ones(1, 2, 3, 3)).min().item()
        1.0
    """
    return grads.abs() * acts


def kernel_matrix(
    points: torch.Tensor, kernel: Kernel, gamma: float | None, degree: int = 3, coef0: float = 1.0
) -> torch.Tensor:
    """Kernel matrices ``K_b = k(p_i, p_j)`` of a batch of point sets ``(B, n, d)`` → ``(B, n, n)``.

    scikit-learn's definitions and defaults (``gamma = 1/d`` when ``None``): linear ``<x, y>``, poly
    ``(γ<x, y> + c₀)^degree``, rbf ``exp(-γ|x − y|²)``, sigmoid ``tanh(γ<x, y> + c₀)``, cosine
    ``<x, y> / (|x||y|)``.

    Example:
        >>> kernel_matrix(torch.eye(2)[None], "linear", None)[0].tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kpcacam: kernel={kernel!r} is not supported; use one of {list(_KERNELS)}")
    if kernel == "cosine":
        norms = points.norm(dim=2, keepdim=True)
        unit = points / torch.where(norms == 0, torch.ones_like(norms), norms)
        return unit @ unit.transpose(1, 2)
    dot = points @ points.transpose(1, 2)
    if kernel == "linear":
        return dot
    g = 1.0 / points.shape[2] if gamma is None else float(gamma)
    if kernel == "poly":
        return (g * dot + coef0) ** degree
    if kernel == "sigmoid":
        return torch.tanh(g * dot + coef0)
    sq = points.pow(2).sum(dim=2)
    return torch.exp(-g * (sq[:, :, None] - 2 * dot + sq[:, None, :]).clamp_min(0))


def kpca_cam(acts: torch.Tensor, *, kernel: Kernel, gamma: float | None) -> torch.Tensor:
    """KPCA-CAM (Karmani et al. 2024, https://arxiv.org/abs/2410.00267): Eigen-CAM with kernel PCA → (B, *spatial).

    Each image's ``(h·w, C)`` activations are centred per channel; ``K`` = their kernel matrix
    (:func:`kernel_matrix`), centred in feature space (``K − 1K − K1 + 1K1``); the map is the first kernel
    principal component ``v₁ √λ₁`` (scikit-learn's ``KernelPCA(n_components=1).fit_transform``), its sign
    fixed so that the largest-magnitude value is positive (scikit-learn's ``svd_flip``). Computed for the
    whole batch at once in float64; the eigenproblem costs ``O((h·w)³)`` per image.

    Example:
        >>> a = torch.zeros(1, 2, 3, 3)
        >>> a[0, :, 1, 1] = 5.0
        >>> kpca_cam(a, kernel="linear", gamma=None)[0].argmax().item()
        4
    """
    b, c, *spatial = acts.shape
    points = torch.nan_to_num(acts.detach().to(torch.float64), nan=0.0).reshape(b, c, -1).transpose(1, 2)
    points = points - points.mean(dim=1, keepdim=True)
    k = kernel_matrix(points, kernel, gamma)
    k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(k)
    projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()
    flip = projection.max(dim=1).values.abs() < projection.min(dim=1).values.abs()
    projection = torch.where(flip[:, None], -projection, projection)
    return projection.reshape(b, *spatial).to(torch.float32)
