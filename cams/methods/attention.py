"""Attention methods for vision transformers: maps read from attention probabilities, not feature maps."""

from __future__ import annotations

import torch

__all__ = ["legrad"]


def legrad(relevance: torch.Tensor) -> torch.Tensor:
    """LeGrad (Bousselham et al. 2024, https://arxiv.org/abs/2404.03214), as torchcam's ``LeGrad``.

    For each target block ``l``, ``s^l = head(norm(mean_tokens z^l))`` is the class score read from that
    block's output tokens; ``R^l = mean_{heads, queries} ReLU(∂s^l/∂A^l)`` over the block's
    post-softmax attention probabilities ``A^l``, prefix (class/register) keys dropped, on the patch grid;
    map ``= mean_l R^l`` (``relevance``, (B, h, w), see :func:`cams.attention_maps.legrad_relevance`).

    Example:
        >>> legrad(torch.ones(1, 2, 2)).shape
        torch.Size([1, 2, 2])
    """
    return relevance
