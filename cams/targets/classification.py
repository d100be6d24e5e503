"""Classification targets: the logit (or softmax probability) of one class per image."""

from __future__ import annotations

from typing import Any

import torch

from cams.targets.base import Target
from cams.targets.logits import LOGIT_KEYS, logits_of, readable_logits

__all__ = ["LOGIT_KEYS", "ClassTarget", "logits_of", "readable_logits"]


class ClassTarget(Target):
    """The score of one class per source image: its logit, or its softmax probability.

    Args:
        classes: ``(B,)`` class index per source image (``images`` of a call index into it).
        softmax: score ``softmax(logits)[class]`` instead of the logit.

    Raises (on call):
        ValueError: a class index outside the model's classes.

    Example:
        >>> target = ClassTarget(torch.tensor([1, 0]))
        >>> target(torch.tensor([[0.0, 2.0], [5.0, 1.0]]), torch.tensor([0, 1])).tolist()
        [2.0, 5.0]
        >>> ClassTarget(torch.tensor([1]), softmax=True)(torch.zeros(1, 4), torch.tensor([0])).tolist()
        [0.25]
    """

    def __init__(self, classes: torch.Tensor, softmax: bool = False) -> None:
        self.classes = classes
        self.softmax = softmax

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        logits = logits_of(output, "targets")
        classes = self.classes.to(logits.device)[images.to(logits.device)]
        check_classes(classes, logits.shape[1])
        if self.softmax:
            logits = logits.float().softmax(dim=1)
        return logits.gather(1, classes[:, None])[:, 0]


def check_classes(classes: torch.Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` naming the first class index outside ``0 .. num_classes - 1``."""
    bad = (classes < 0) | (classes >= num_classes)
    if bool(bad.any()):
        values = classes[bad].unique().tolist()
        raise ValueError(
            f"targets {values} out of range for a model with {num_classes} classes: class index {values[0]} "
            f"is out of range (valid: 0..{num_classes - 1})"
        )
