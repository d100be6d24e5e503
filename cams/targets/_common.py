"""What the task targets share: naming what a model returned, per-image arguments, choices kept per image."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from cams.targets.base import Target

__all__ = ["ChoosingTarget", "describe", "fitting_target", "index_per_image", "per_image", "wrong_output"]

T = TypeVar("T")


def describe(output: Any) -> str:
    """What a model returned, in words, for error messages.

    Example:
        >>> describe(torch.zeros(2, 5, 8, 8))
        'a tensor of shape (2, 5, 8, 8)'
        >>> describe({"out": torch.zeros(1, 3, 4, 4)})
        "a dict with keys ['out'] (out: (1, 3, 4, 4))"
    """
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, dict):
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in output.items() if isinstance(v, torch.Tensor))
        return f"a {type(output).__name__} with keys {list(output)}" + (f" ({shapes})" if shapes else "")
    if isinstance(output, (list, tuple)) and output and all(isinstance(o, dict) for o in output):
        return f"a {type(output).__name__} of {len(output)} dicts with keys {list(output[0])}"
    if isinstance(output, (list, tuple)):
        return f"a {type(output).__name__} of {len(output)} items"
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return f"a {type(output).__name__} with logits of shape {tuple(logits.shape)}"
    return f"a {type(output).__name__}"


def fitting_target(output: Any) -> str:
    """The target that fits what a model returned, as advice for error messages.

    Example:
        >>> fitting_target(torch.zeros(2, 5, 8, 8))
        'SegmentationTarget(category) for (B, classes, H, W) outputs'
    """
    if isinstance(output, dict) and "out" in output:
        output = output["out"]
    if (
        isinstance(output, (list, tuple))
        and output
        and all(isinstance(o, dict) for o in output)
        and all(k in output[0] for k in ("boxes", "scores", "labels"))
    ):
        return "DetectionTarget(boxes, labels) for detectors' lists of {'boxes', 'scores', 'labels'} dicts"
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        output = logits
    if isinstance(output, torch.Tensor):
        if output.dim() == 2:
            return (
                "a class index or ClassTarget (softmax classifiers), MultiLabelTarget (sigmoid outputs) or "
                "EmbeddingTarget(concept) (embeddings) for (B, K) outputs"
            )
        if output.dim() >= 4:
            return "SegmentationTarget(category) for (B, classes, H, W) outputs"
    return "a callable target output -> (B,) scores"


def wrong_output(target: str, expected: str, output: Any) -> TypeError:
    """The error for a target given an output it cannot score: names both, and the target that fits."""
    return TypeError(
        f"targets: {target} needs {expected}, but the model returned {describe(output)}; use "
        f"{fitting_target(output)}"
    )


def per_image(value: Any, name: str) -> int | torch.Tensor:
    """An int for every image, or a ``(B,)`` long tensor of one int per image (sequence, tensor, array)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.dtype == torch.bool or value.dim() > 1:
            raise TypeError(f"{name} must be an int or one int per image; got a {value.dtype} tensor of shape "
                            f"{tuple(value.shape)}")
        return value.detach().reshape(-1).long().clone()
    if isinstance(value, Sequence) and not isinstance(value, str) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        return torch.tensor([int(v) for v in value], dtype=torch.long)
    raise TypeError(f"{name} must be an int or one int per image; got {type(value).__name__} {value!r}")


def index_per_image(value: int | torch.Tensor, images: torch.Tensor, name: str) -> torch.Tensor:
    """``(N,)`` the value of each row's source image (an int is every image's)."""
    if isinstance(value, int):
        return torch.full((len(images),), value, dtype=torch.long, device=images.device)
    if int(images.max()) >= len(value):
        raise ValueError(f"{name}: got {len(value)} values (one per image) for a batch of at least "
                         f"{int(images.max()) + 1} images")
    return value.to(images.device)[images]


class ChoosingTarget(Target):
    """A target that chooses, per source image, from the first rows of that image it scores.

    Subclasses call :meth:`_choose` in ``__call__``; the choices live in the copy :meth:`fresh` returns.
    """

    def __init__(self) -> None:
        self._chosen: dict[int, Any] = {}

    def fresh(self) -> ChoosingTarget:
        twin = copy.copy(self)
        twin._chosen = {}
        return twin

    def _choose(self, images: torch.Tensor, choose: Callable[[int, int], T]) -> list[T]:
        """Each row's choice: ``choose(row, image)`` on the first row of every image not seen before."""
        listed = images.tolist()
        for row, image in enumerate(listed):
            if image not in self._chosen:
                self._chosen[image] = choose(row, image)
        return [self._chosen[image] for image in listed]
