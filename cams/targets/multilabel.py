"""Multi-label classifiers: one sigmoid per class, any number of classes present in an image.

Two ways to explain such a model:

- **a given class** (``MultiLabelTarget(3)``, or one class per image): its logit (or, with
  ``sigmoid=True``, its sigmoid probability) — one map per image, as for a softmax classifier;
- **every class above a threshold** (``MultiLabelTarget()``): one map per image explaining the classes
  the model finds present together. Its score is the sum of their logits (or probabilities),
  ``y = Σ_{k: σ(z_k) > t} z_k``; since every gradient method is linear in ``∂y/∂A``, the map weighs the
  evidence for all present classes at once. The classes are chosen per image from the unperturbed
  forward; an image with no class above the threshold explains its most probable class, so no map is
  empty. For **one map per (image, class)** pair instead, expand the batch with :func:`classes_above`
  and explain each row's class: ``images, classes = classes_above(model(x)); engine(x[images], targets=classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cams.targets._common import ChoosingTarget, index_per_image, per_image, wrong_output

__all__ = ["MultiLabelTarget", "classes_above"]

_EXPECTED = "a (B, classes) multi-label output (one logit per class)"


def _logits(output: Any) -> torch.Tensor:
    found = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if isinstance(output, dict):
        found = output.get("logits")
    if isinstance(found, torch.Tensor) and found.dim() == 2:
        return found
    raise wrong_output("MultiLabelTarget", _EXPECTED, output)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1), e.g. 0.5; got {threshold!r}")
    return float(threshold)


def classes_above(output: Any, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (image, class) pair whose sigmoid probability is above ``threshold`` → ``(images, classes)``.

    Each image with no class above the threshold contributes its most probable class, so every image
    appears at least once. Explain one map per pair with ``engine(x[images], targets=classes)``.

    Example:
        >>> logits = torch.tensor([[2.0, -1.0, 3.0], [-2.0, -1.0, -3.0]])
        >>> images, classes = classes_above(logits)
        >>> images.tolist(), classes.tolist()
        ([0, 0, 1], [0, 2, 1])
    """
    selected = _selection(_logits(output).detach(), _check_threshold(threshold))
    images, classes = selected.nonzero(as_tuple=True)
    return images, classes


def _selection(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(N, K)`` bool: classes above ``threshold``; the top class where none is."""
    selected = logits.float().sigmoid() > threshold
    empty = ~selected.any(dim=1)
    if bool(empty.any()):
        selected[empty, logits[empty].argmax(dim=1)] = True
    return selected


class MultiLabelTarget(ChoosingTarget):
    """Multi-label outputs: a given class, or every class above a probability threshold.

    Args:
        classes: ``None`` (default): every class whose sigmoid probability is above ``threshold``, chosen
            per image from the unperturbed forward (the top class where none is); an int for every image;
            one class per image (sequence, 1-D tensor); or a ``(B, K)`` boolean selection of classes.
        threshold: probability above which a class counts as present (with ``classes=None``).
        sigmoid: score sigmoid probabilities instead of logits.

    Raises (on call):
        TypeError: the output is not ``(B, classes)`` (the message names the target that fits).
        ValueError: a class index out of range.

    Example:
        >>> logits = torch.tensor([[2.0, -1.0, 3.0]])
        >>> MultiLabelTarget()(logits, torch.tensor([0])).tolist()      # classes 0 and 2: 2 + 3
        [5.0]
        >>> MultiLabelTarget(1)(logits, torch.tensor([0])).tolist()
        [-1.0]
    """

    def __init__(
        self,
        classes: int | Sequence[int] | torch.Tensor | None = None,
        threshold: float = 0.5,
        *,
        sigmoid: bool = False,
    ) -> None:
        super().__init__()
        self.threshold = _check_threshold(threshold)
        self.sigmoid = bool(sigmoid)
        self.selection: torch.Tensor | None = None
        self.category: int | torch.Tensor | None = None
        if isinstance(classes, torch.Tensor) and classes.dim() == 2:
            self.selection = classes.detach().bool()
        elif classes is not None:
            self.category = per_image(classes, "MultiLabelTarget(classes=...)")
            if isinstance(self.category, torch.Tensor):
                self.classes = self.category

    def __repr__(self) -> str:
        if self.selection is not None:
            what = f"classes=<selection {tuple(self.selection.shape)}>"
        elif self.category is not None:
            what = f"classes={self.category if isinstance(self.category, int) else self.category.tolist()}"
        else:
            what = f"threshold={self.threshold}"
        return f"MultiLabelTarget({what}{', sigmoid=True' if self.sigmoid else ''})"

    @property
    def spec(self) -> str | None:
        """The ``--target`` form of this target (``"multilabel:3"``, ``"multilabel:all@0.3"``), when it has one."""
        if self.sigmoid or self.selection is not None or isinstance(self.category, torch.Tensor):
            return None
        if self.category is not None:
            return f"multilabel:{self.category}"
        return "multilabel:all" if self.threshold == 0.5 else f"multilabel:all@{self.threshold:g}"

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        logits = _logits(output)
        images = images.to(logits.device)
        values = logits.float().sigmoid() if self.sigmoid else logits
        if self.category is not None:
            classes = index_per_image(self.category, images, "MultiLabelTarget(classes=...)")
            bad = (classes < 0) | (classes >= logits.shape[1])
            if bool(bad.any()):
                raise ValueError(
                    f"MultiLabelTarget: class {int(classes[bad][0])} is out of range for a model with "
                    f"{logits.shape[1]} classes (valid: 0..{logits.shape[1] - 1})"
                )
            return values.gather(1, classes[:, None])[:, 0]
        selected = self._selected(logits, images)
        return (values * selected.to(values.dtype)).sum(dim=1)

    def _selected(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if self.selection is not None:
            selection = self.selection.to(logits.device)
            if selection.shape[1] != logits.shape[1] or int(images.max()) >= selection.shape[0]:
                raise ValueError(
                    f"MultiLabelTarget(classes=...): a selection of shape {tuple(selection.shape)} does not fit "
                    f"an output with {logits.shape[1]} classes and a batch of at least {int(images.max()) + 1}"
                )
            return selection[images]
        rows = self._choose(images, lambda row, image: _selection(logits[row : row + 1].detach(), self.threshold)[0])
        return torch.stack(rows)

    def fixed(self, output: Any) -> MultiLabelTarget:
        """This target with each image's classes made explicit (a ``(B, K)`` selection), chosen from ``output``.

        Example:
            >>> MultiLabelTarget().fixed(torch.tensor([[2.0, -1.0, 3.0]])).selection.tolist()
            [[True, False, True]]
        """
        if self.category is not None:
            return self
        logits = _logits(output)
        images = torch.arange(logits.shape[0], device=logits.device)
        return MultiLabelTarget(self.fresh()._selected(logits, images).clone(), sigmoid=self.sigmoid)
