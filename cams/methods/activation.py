"""Activation methods: channel weights from the classifier's weights or the activations' own statistics.

Neither needs a backward pass: CAM reads the weights of the fully connected layer after global pooling
(the ``fc_weights`` input, declared here), FEM the distribution of each channel's activations.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from cams.layer_choice import find_layer
from cams.ops import spatial_dims
from cams.passes import Input, Pass

__all__ = ["FC_WEIGHTS", "cam", "fem"]


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


def _fc_weights(p: Pass, i: int, *, fc_layer: str | None) -> torch.Tensor:
    """CAM: the fully connected layer's weights of each image's class → (B, C)."""
    assert p.target is not None
    classes = p.target.classes
    if classes is None:
        raise ValueError("cam reads the fully connected weights of a class; pass class targets (None, an int, "
                         "one class per image), not a callable")  # fmt: skip
    channels = p.acts[i].shape[1]
    name, fc = _fc_layer(p.model, fc_layer, channels)
    weight = fc.weight.detach().reshape(fc.weight.shape[0], -1).float()
    if weight.shape[1] != channels:
        raise ValueError(
            f"cam: fc_layer {name!r} takes {weight.shape[1]} features but layer {p.layers[i][0]!r} has {channels} "
            "channels; CAM needs global average pooling of the target layer followed by fc_layer"
        )
    classes = classes.to(weight.device)
    _check_gap_fc(p, i, name, fc, weight)
    return weight[classes]


def _fc_layer(model: nn.Module, name: str | None, channels: int) -> tuple[str, nn.Module]:
    if name is not None:
        return name, find_layer(model, name)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    if len(found) != 1:
        what = "no nn.Linear" if not found else f"{len(found)} nn.Linear layers ({[n for n, _ in found]})"
        raise ValueError(
            f"cam: found {what} taking the target layer's {channels} channels; CAM needs global average pooling "
            "followed by one fully connected layer — pass it with get_method('cam').with_options(fc_layer='fc')"
        )
    return found[0]


def _check_gap_fc(p: Pass, i: int, name: str, fc: nn.Module, weight: torch.Tensor) -> None:
    """Warn when the logits are not ``fc(mean(A))``: CAM's weights then do not explain the output."""
    if not isinstance(p.output, torch.Tensor) or p.output.dim() != 2 or p.output.shape[1] != weight.shape[0]:
        return
    pooled = p.acts[i].flatten(2).mean(dim=2)
    bias = getattr(fc, "bias", None)
    logits = pooled @ weight.T + (bias.detach().float() if bias is not None else 0.0)
    expected = p.output.detach().float()
    if not torch.allclose(logits, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max().clamp_min(1e-12))):
        warnings.warn(
            f"cam: the model's logits are not {name}(global average of {p.layers[i][0]!r}); CAM's weights do not "
            "explain this output (choose the layer just before global pooling, or use gradcam)",
            stacklevel=2,
        )


#: CAM: the fully connected layer's weights of each image's class ``(B, C)``
FC_WEIGHTS = Input("fc_weights", _fc_weights)
