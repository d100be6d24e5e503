"""What to explain: turn the user's ``targets`` into a scorer of model outputs.

A scorer maps ``(output, image_index)`` to one score per row of ``output``; ``image_index`` (N,) says
which input image each row belongs to, so the same scorer serves the plain forward (one row per
image) and the batched perturbation forwards (many rows per image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

__all__ = ["Scorer", "Targets", "resolve_targets", "select_rows"]

Targets = Union[None, int, Sequence[int], torch.Tensor, Callable[[Any], torch.Tensor], Sequence[Callable]]  # noqa: UP007


class Scorer:
    """Scores of the explained class (or callable target) for rows of a model output."""

    def __init__(self, classes: torch.Tensor | None = None, fn: Callable | None = None,
                 per_image: Sequence[Callable] | None = None) -> None:
        self.classes = classes
        self._fn = fn
        self._per_image = per_image
        #: rows per original batch when the plain forward stacks several augmented copies
        self.split: int | None = None

    def __call__(self, output: Any, image_index: torch.Tensor, main: bool = False) -> torch.Tensor:
        """Scores (N,) of the rows of ``output``; ``main`` marks the plain (possibly augmented) forward."""
        if self.classes is not None:
            logits = _as_logits(output, "targets")
            classes = self.classes.to(logits.device)[image_index.to(logits.device)]
            return logits.gather(1, classes[:, None])[:, 0]
        if self._per_image is not None:
            rows = [self._per_image[int(i)](select_rows(output, r)) for r, i in enumerate(image_index.tolist())]
            return torch.stack([torch.as_tensor(r).reshape(()) for r in rows])
        assert self._fn is not None
        if main and self.split is not None and len(image_index) > self.split:
            # augmented copies are stacked: give a batch callable one original-sized batch at a time
            n = self.split
            return torch.cat([
                self(select_rows(output, slice(i, i + n)), image_index[i : i + n])
                for i in range(0, len(image_index), n)
            ])
        scores = self._fn(output)
        if not isinstance(scores, torch.Tensor) or scores.shape != (len(image_index),):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(
                f"targets: the callable must map the model output to one score per image, shape "
                f"({len(image_index)},); it returned {shape}"
            )
        return scores


def select_rows(output: Any, rows: int | slice | torch.Tensor) -> Any:
    """Index the rows of a model output: a tensor, or tuples/lists/dicts of them (other leaves pass through).

    Example:
        >>> select_rows({"logits": torch.arange(6).view(3, 2)}, slice(1, 3))["logits"].tolist()
        [[2, 3], [4, 5]]
    """
    if isinstance(output, torch.Tensor):
        return output[rows]
    if isinstance(output, (tuple, list)):
        return type(output)(select_rows(o, rows) for o in output)
    if isinstance(output, dict):
        return {k: select_rows(v, rows) for k, v in output.items()}
    return output


def _as_logits(output: Any, argument: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        what = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else (
            f"a {type(output).__name__}")
        raise TypeError(
            f"{argument}: class indices need a model output of shape (B, classes), but the model returned "
            f"{what}; pass a callable target, e.g. targets=lambda out: out['logits'][:, 3]"
        )
    return output


def resolve_targets(targets: Targets, output: Any, batch: int) -> Scorer:
    """Build the scorer for ``targets`` given the plain forward's ``output`` for ``batch`` images.

    ``None`` explains each image's predicted class; an ``int`` the same class for all images; a
    sequence or 1-D tensor one class per image; a callable ``output -> (B,)`` any scalar of the output;
    a sequence of callables (pytorch-grad-cam's ``ClassifierOutputTarget`` style) one per image.

    Raises:
        TypeError: class targets on a model whose output is not ``(B, classes)``.
        ValueError: a class index out of range, or a wrong number of targets.
    """
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return Scorer(fn=targets)
    if isinstance(targets, Sequence) and not isinstance(targets, str) and len(targets) > 0 and all(
        callable(t) for t in targets
    ):
        if len(targets) != batch:
            raise ValueError(f"targets: got {len(targets)} callables for a batch of {batch} images")
        return Scorer(per_image=list(targets))
    logits = _as_logits(output, "targets")
    num_classes = logits.shape[1]
    if targets is None:
        classes = logits.detach().argmax(dim=1)
    else:
        if isinstance(targets, bool) or not isinstance(targets, (int, Sequence, torch.Tensor)):
            raise TypeError(
                f"targets must be None, an int, one int per image, or a callable; got "
                f"{type(targets).__name__} {targets!r}"
            )
        classes = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if classes.numel() == 1:
            classes = classes.expand(batch)
        if classes.numel() != batch:
            raise ValueError(f"targets: got {classes.numel()} class indices for a batch of {batch} images")
        bad = (classes < 0) | (classes >= num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"targets: class index {int(classes[bad][0])} is out of range for a model with "
                f"{num_classes} outputs (valid: 0..{num_classes - 1})"
            )
    return Scorer(classes=classes.to(logits.device).clone())
