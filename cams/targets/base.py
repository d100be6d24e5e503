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

from cams.targets.logits import logits_of

__all__ = ["FunctionTarget", "PerImageTargets", "SourceRows", "Target", "Targets", "select_rows"]

Targets = Union[
    None, int, str, Sequence[int], torch.Tensor, np.ndarray, "Target", Callable[[Any], torch.Tensor],
    Sequence[Callable],
]
"""Every form of ``targets`` that :func:`cams.targets.resolve_targets` accepts."""


class Target:
    """Turns a model output into one score per row; subclasses implement :meth:`__call__`.

    A target that chooses what to explain from the model's own output (every class above a threshold,
    the predicted mask of a class, the detected boxes) makes that choice for each source image from the
    first rows of that image it scores, and keeps it for later rows. Those first rows are always the
    unperturbed forward: the engine scores the plain forward before any Score-CAM/Ablation-CAM forward,
    and the faithfulness metrics score the originals first. :meth:`fresh` gives each call its own copy,
    so every call chooses anew; :meth:`fixed` turns the choice into an explicit target.

    Attributes:
        classes: ``(B,)`` long, the class explained for each source image when the target is a class
            (reported as :attr:`cams.CamMaps.classes`), else ``None``.
        geometric: the target is tied to the input's geometry (a given mask or given boxes), so it cannot
            follow the horizontal flip of ``aug_smooth``.
    """

    classes: torch.Tensor | None = None
    geometric: bool = False

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` of the ``N`` rows of ``output``; row ``r`` comes from source image ``images[r]``."""
        raise NotImplementedError

    def fresh(self) -> Target:
        """This target with nothing chosen yet, for one call (stateless targets return themselves)."""
        return self

    def fixed(self, output: Any) -> Target:
        """The target with its choices made from ``output``, the unperturbed forward of the source images.

        The result explains the same thing for any model (a copy with re-initialised weights, a perturbed
        input). Targets that choose nothing return themselves.
        """
        return self


class SourceRows(Target):
    """``target`` for a batch whose row ``r`` is (a copy of) its source image ``source[r]``: patches of the images
    (SESS), a subsample of them (the callback's noise floor).

    Args:
        target: the target of the source images.
        source: ``(M,)`` long, the source image of each of the new batch's ``M`` images.

    Example:
        >>> from cams.targets.classification import ClassTarget
        >>> target = SourceRows(ClassTarget(torch.tensor([1, 0, 2])), torch.tensor([2, 2, 0]))
        >>> target.classes.tolist()
        [2, 2, 1]
    """

    def __init__(self, target: Target, source: torch.Tensor) -> None:
        self.target, self.source = target, source
        classes = target.classes
        self.classes = None if classes is None else classes.to(source.device)[source]

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        return self.target(output, self.source.to(images.device)[images])


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

    A list of dicts is one dict per image (torchvision's detectors): its rows are its items.

    Example:
        >>> select_rows({"logits": torch.arange(6).view(3, 2)}, slice(1, 3))["logits"].tolist()
        [[2, 3], [4, 5]]
        >>> select_rows([{"scores": torch.ones(2)}, {"scores": torch.zeros(1)}], torch.tensor([False, True]))
        [{'scores': tensor([0.])}]
    """
    if isinstance(output, torch.Tensor):
        return output[rows]
    if isinstance(output, list) and output and all(isinstance(o, dict) for o in output):
        return _pick(output, rows)  # torchvision detectors: one dict per image
    if isinstance(output, (tuple, list)):
        return type(output)(select_rows(o, rows) for o in output)
    if isinstance(output, dict):
        return {k: select_rows(v, rows) for k, v in output.items()}
    return output


def _pick(items: list[Any], rows: int | slice | torch.Tensor) -> Any:
    """``items[rows]`` for an int, a slice, an index tensor or a boolean mask."""
    if isinstance(rows, (int, slice)):
        return items[rows]
    rows = torch.as_tensor(rows)
    if rows.dtype == torch.bool:
        rows = rows.nonzero()[:, 0]
    if rows.dim() == 0:
        return items[int(rows)]
    return [items[int(i)] for i in rows.tolist()]
