"""Principal-component methods: the map is the first principal component of (weighted) activations.

The engine projects the returned tensor with :func:`cams.ops.first_principal_component`.
"""

from __future__ import annotations

import torch

__all__ = ["eigen_cam", "eigen_grad_cam"]


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
