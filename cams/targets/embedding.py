"""Embeddings: the cosine similarity of a model's output embedding to a concept embedding.

pytorch-grad-cam's tutorial "pixel attribution for embeddings" explains where an image looks like a
concept (another image's embedding, a text embedding, a class prototype) with its
``SimilarityToConceptTarget``: ``y = cos(f(x), c)``. :class:`EmbeddingTarget` is that target, batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cams.targets._common import wrong_output
from cams.targets.base import Target

__all__ = ["EmbeddingTarget"]


class EmbeddingTarget(Target):
    """Cosine similarity of each row's embedding to a concept embedding (``SimilarityToConceptTarget``).

    .. math:: y_r = \\frac{f_r \\cdot c}{\\max(\\lVert f_r \\rVert \\lVert c \\rVert, \\epsilon)}

    Args:
        concept: ``(D,)`` for every image, or ``(B, D)`` one concept per image (tensor or NumPy array).

    Raises (on call):
        TypeError: the output is not ``(B, D)`` embeddings (the message names the target that fits).
        ValueError: the concept's size differs from the embeddings'.

    Example:
        >>> target = EmbeddingTarget(torch.tensor([1.0, 0.0]))
        >>> target(torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.arange(2)).tolist()
        [1.0, 0.7071067690849304]
    """

    def __init__(self, concept: torch.Tensor | np.ndarray) -> None:
        concept = torch.as_tensor(np.asarray(concept) if not isinstance(concept, torch.Tensor) else concept)
        if concept.dim() not in (1, 2) or not concept.is_floating_point():
            raise ValueError(
                f"EmbeddingTarget(concept=...): expected a float (D,) embedding or (B, D), one per image; got "
                f"{concept.dtype} of shape {tuple(concept.shape)}"
            )
        self.concept = concept.detach()

    def __repr__(self) -> str:
        return f"EmbeddingTarget(concept={tuple(self.concept.shape)})"

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            raise wrong_output("EmbeddingTarget", "(B, D) embeddings", output)
        concept = self.concept.to(output.device, output.dtype)
        if concept.shape[-1] != output.shape[1]:
            raise ValueError(
                f"EmbeddingTarget: the concept has {concept.shape[-1]} dimensions, the model's embeddings "
                f"{output.shape[1]}"
            )
        if concept.dim() == 2:
            if int(images.max()) >= concept.shape[0]:
                raise ValueError(
                    f"EmbeddingTarget: {concept.shape[0]} concepts (one per image) for a batch of at least "
                    f"{int(images.max()) + 1} images"
                )
            concept = concept[images.to(output.device)]
        return F.cosine_similarity(output, concept.expand_as(output), dim=1)
