"""The target model: what a CAM, a metric or ``explain`` explains, as one score per row of a model output.

A :class:`Target` is called as ``target(output, images) -> (N,)``: ``output`` is what the model returned
for ``N`` input rows and ``images`` (N,) says which source image each row belongs to, so one target
serves the plain forward (one row per image), the six stacked copies of ``aug_smooth`` and the batched
perturbation forwards (many rows per image) of Score-CAM, Ablation-CAM and the faithfulness metrics.

Users pass ``targets`` in whatever form is handy (``None`` for the predicted class, an int, one class
per image, a callable, pytorch-grad-cam's per-image target objects, or a :class:`Target`);
:func:`resolve_targets` turns each form into a :class:`Target`. New kinds of targets (segmentation,
detection, embeddings, ...) are subclasses of :class:`Target` in this package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch

__all__ = ["FunctionTarget", "PerImageTargets", "Target", "Targets", "select_rows"]

Targets = Union[
    None, int, Sequence[int], torch.Tensor, np.ndarray, "Target", Callable[[Any], torch.Tensor], Sequence[Callable]
]
"""Every form of ``targets`` that :func:`cams.targets.resolve_targets` accepts."""


class Target:
    """Turns a model output into one score per row; subclasses implement :meth:`__call__`.

    Attributes:
        classes: ``(B,)`` long, the class explained for each source image when the target is a class
            (reported as :attr:`cams.CamMaps.classes`), else ``None``.
    """

    classes: torch.Tensor | None = None

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` of the ``N`` rows of ``output``; row ``r`` comes from source image ``images[r]``."""
        raise NotImplementedError


class FunctionTarget(Target):
    """A user's callable ``output -> (N,)`` scores, applied to whole (chunks of) outputs.

    The callable must act row by row: perturbation forwards give it outputs whose rows come from
    different images.

    Args:
        fn: the callable.
        softmax: give ``fn`` the softmax probabilities of the classifier output instead of the output.

    Example:
        >>> target = FunctionTarget(lambda out: out[:, 1])
        >>> target(torch.tensor([[0.0, 2.0], [1.0, 3.0]]), torch.arange(2)).tolist()
        [2.0, 3.0]
    """

    def __init__(self, fn: Callable[[Any], torch.Tensor], softmax: bool = False) -> None:
        self.fn = fn
        self.softmax = softmax

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        if self.softmax:
            from cams.targets.classification import logits_of

            output = logits_of(output, "targets").float().softmax(dim=1)
        scores = self.fn(output)
        if not isinstance(scores, torch.Tensor) or scores.shape != (len(images),):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(
                f"targets: the callable must map the model output to one score per image (row), shape "
                f"({len(images)},); it returned {shape}"
            )
        return scores


class PerImageTargets(Target):
    """One callable per source image, each given that image's row of the output (pytorch-grad-cam style).

    ``ClassifierOutputTarget(3)`` and friends from pytorch-grad-cam work as they are; when every callable
    has an int ``category`` attribute, those are reported as :attr:`classes`.

    Example:
        >>> target = PerImageTargets([lambda row: row[0], lambda row: row[1]])
        >>> target(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.arange(2)).tolist()
        [1.0, 4.0]
    """

    def __init__(self, callables: Sequence[Callable[[Any], Any]]) -> None:
        self.callables = list(callables)
        categories = [getattr(c, "category", None) for c in self.callables]
        if categories and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in categories):
            self.classes = torch.tensor([int(c) for c in categories], dtype=torch.long)  # type: ignore[arg-type]

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        rows = [self.callables[int(i)](select_rows(output, r)) for r, i in enumerate(images.tolist())]
        return torch.stack([torch.as_tensor(r).reshape(()) for r in rows])


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
