"""Perturbation methods: channel weights from how the target score reacts to each channel.

The engine measures ``channel_scores`` (B, C) — the target score with the input masked by each
upsampled channel (Score-CAM) or with each channel ablated (Ablation-CAM) — in batched forwards
that reuse the captured activations, and ``base_scores`` (B,) from the plain forward. These functions
turn them into weighted activations (B, C, *spatial).
"""

from __future__ import annotations

import torch

__all__ = ["ablation_cam", "is_cam", "score_cam", "ss_cam"]


def score_cam(acts: torch.Tensor, channel_scores: torch.Tensor, base_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPRW 2020, https://arxiv.org/abs/1910.01279).

    ``M_k`` = channel ``k`` upsampled (bilinear, corners aligned) and min-max scaled;
    ``s_k = y(X ⊙ M_k)``;  ``α = softmax_k(s)``;  map ``= ReLU(Σ_k α_k A_k)``.

    Example:
        >>> w = score_cam(torch.ones(1, 2, 1, 1), torch.tensor([[0.0, 0.0]]), torch.tensor([1.0]))
        >>> w.flatten().tolist()
        [0.5, 0.5]
    """
    weights = torch.softmax(channel_scores, dim=1)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts


def ablation_cam(acts: torch.Tensor, channel_scores: torch.Tensor, base_scores: torch.Tensor) -> torch.Tensor:
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020, https://openaccess.thecvf.com/content_WACV_2020/
    papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf).

    ``s_k`` = target score with channel ``k`` of the layer set to zero (to ``min − 1e7`` when the
    layer has negative values); ``α_k = (y − s_k) / y``;  map ``= ReLU(Σ_k α_k A_k)``.

    Where ``y = 0`` (a ReLU before the logits gives such scores) the relative drop is undefined; the
    weights are then the drops themselves, ``α_k = y − s_k`` — the same ranking of channels, and the scale
    is removed by the min-max normalisation (the reference returns NaN maps there).

    ``y − s_k`` is a difference of two nearly equal float32 scores, divided by ``y``: the weights are
    computed, and the activations weighted, in float64, so that no rounding is added beyond what the
    scores themselves carry.

    Example:
        >>> w = ablation_cam(torch.ones(1, 2, 1, 1), torch.tensor([[1.0, 2.0]]), torch.tensor([2.0]))
        >>> w.flatten().tolist()
        [0.5, 0.0]
        >>> ablation_cam(torch.ones(1, 2, 1, 1), torch.tensor([[-1.0, 0.5]]), torch.tensor([0.0])).flatten().tolist()
        [1.0, -0.5]
    """
    y = base_scores.double()[:, None]
    drop = y - channel_scores.double()
    weights = torch.where(y != 0, drop / torch.where(y != 0, y, 1.0), drop)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts.double()


def ss_cam(acts: torch.Tensor, mean_score_gains: torch.Tensor) -> torch.Tensor:
    """SS-CAM (Wang et al. 2020, https://arxiv.org/abs/2006.14255), as torchcam's ``SSCAM``.

    ``M_k`` = channel ``k`` min-max scaled, then upsampled (bilinear, half-pixel); with ``N`` noise draws
    ``δ ~ N(0, σ²)`` per pixel, ``s_k = mean_n [y(X ⊙ (M_k + δ_n)) − y(X)]`` (``mean_score_gains``, (B, C));
    ``α = softmax_k(s)``;  map ``= ReLU(Σ_k α_k A_k)``.

    Example:
        >>> ss_cam(torch.ones(1, 2, 1, 1), torch.tensor([[0.0, 0.0]])).flatten().tolist()
        [0.5, 0.5]
    """
    weights = torch.softmax(mean_score_gains, dim=1)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts


def is_cam(acts: torch.Tensor, mean_score_gains: torch.Tensor) -> torch.Tensor:
    """IS-CAM (Naidu et al. 2020, https://arxiv.org/abs/2010.03023), as torchcam's ``ISCAM``.

    ``M_k`` as in SS-CAM, without noise; for ``i = 1..N`` the input is scaled along the path
    ``c_i = Σ_{j≤i} j/N``: ``s_k = mean_i [y(c_i · (X ⊙ M_k)) − y(X)]`` (``mean_score_gains``, (B, C));
    ``α = softmax_k(s)``;  map ``= ReLU(Σ_k α_k A_k)``. Deterministic: nothing is drawn at random.

    Example:
        >>> is_cam(torch.ones(1, 2, 1, 1), torch.tensor([[0.0, 0.0]])).flatten().tolist()
        [0.5, 0.5]
    """
    weights = torch.softmax(mean_score_gains, dim=1)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts
