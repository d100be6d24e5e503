"""Activation methods: channel weights from the classifier's weights or the activations' own statistics.

Neither needs a backward pass: CAM reads the weights of the fully connected layer after global pooling,
FEM the distribution of each channel's activations.
"""

from __future__ import annotations

import torch

from cams.ops import spatial_dims

__all__ = ["cam", "fem"]


def cam(acts: torch.Tensor, fc_weights: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al., CVPR 2016, https://arxiv.org/abs/1512.04150).

    For a network ending in global average pooling and a fully connected layer ``W``:
    ``α_k = W[c, k]``, the weight of channel ``k`` for the explained class ``c`` (``fc_weights``, (B, C));
    map ``= Σ_k α_k A_k``, signed (no ReLU, as the paper and torchcam), then min-max scaled.

    Example:
        >>> cam(torch.ones(1, 2, 1, 1), torch.tensor([[2.0, -1.0]])).flatten().tolist()
        [2.0, -1.0]
    """
    return fc_weights.view(*fc_weights.shape, *(1,) * (acts.dim() - 2)) * acts


def fem(acts: torch.Tensor, *, k: float) -> torch.Tensor:
    """FEM, Feature Explanation Method (Fuad et al., IPTA 2020, https://hal.science/hal-02963298/document).

    Each channel is binarised by the k-sigma rule, ``B_k = [A_k > μ_k + k σ_k]`` (mean and population
    standard deviation over space); ``α_k = mean_ij B_k,ij``, the share of the map above its threshold;
    map ``= ReLU(Σ_k α_k A_k)``.

    Example:
        >>> a = torch.tensor([[[[0.0, 0.0, 0.0, 8.0]]]])
        >>> fem(a, k=1.0).flatten().tolist()
        [0.0, 0.0, 0.0, 2.0]
    """
    dims = spatial_dims(acts)
    mean = acts.mean(dim=dims, keepdim=True)
    std = acts.std(dim=dims, keepdim=True, correction=0)
    weights = (acts > mean + k * std).to(acts.dtype).mean(dim=dims, keepdim=True)
    return weights * acts
