"""What to explain: one model of targets for the engine, the metrics and ``explain``.

A :class:`Target` maps a model output and the source image of each row to one score per row
(see :mod:`cams.targets.base`). :func:`resolve_targets` turns every form a user may pass into one.
:func:`logits_of` and :func:`readable_logits` (:mod:`~cams.targets.logits`) read the logits in a model output.

One module per task:

- classification (:mod:`~cams.targets.classification`): :class:`ClassTarget`, the logit or softmax
  probability of a class (what an int, a list of ints or ``None`` becomes);
- multi-label (:mod:`~cams.targets.multilabel`): :class:`MultiLabelTarget`, a class or every class above a
  threshold of sigmoid outputs; :func:`classes_above` for one map per (image, class);
- semantic segmentation (:mod:`~cams.targets.segmentation`): :class:`SegmentationTarget`, a class's logits
  summed over its predicted (or a given) mask;
- detection (:mod:`~cams.targets.detection`): :class:`DetectionTarget`, the score of detections matching
  boxes; :func:`fpn_reshape` for detector backbones' feature pyramids;
- embeddings (:mod:`~cams.targets.embedding`): :class:`EmbeddingTarget`, cosine similarity to a concept.

:func:`parse_target` reads the text forms of the command line (``seg:3``, ``multilabel:all``).

Example:
    >>> import torch
    >>> target = resolve_targets(None, 2, output=torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    >>> target.classes.tolist()
    [1, 0]
    >>> target(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.arange(2)).tolist()
    [0.8999999761581421, 0.800000011920929]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cams.targets.base import FunctionTarget, PerImageTargets, SourceRows, Target, Targets, select_rows
from cams.targets.classification import ClassTarget, check_classes
from cams.targets.detection import DetectionTarget, fpn_reshape
from cams.targets.embedding import EmbeddingTarget
from cams.targets.logits import logits_of, readable_logits
from cams.targets.multilabel import MultiLabelTarget, classes_above
from cams.targets.segmentation import SegmentationTarget, segmentation_logits
from cams.targets.spec import parse_target

__all__ = [
    "ClassTarget",
    "DetectionTarget",
    "EmbeddingTarget",
    "FunctionTarget",
    "MultiLabelTarget",
    "PerImageTargets",
    "SegmentationTarget",
    "SourceRows",
    "Target",
    "Targets",
    "classes_above",
    "fpn_reshape",
    "logits_of",
    "parse_target",
    "readable_logits",
    "resolve_targets",
    "segmentation_logits",
    "select_rows",
]


def resolve_targets(targets: Targets, batch: int, output: Any = None, *, softmax: bool = False) -> Target:
    """Build the :class:`Target` for ``targets`` and a batch of ``batch`` source images.

    Args:
        targets: ``None`` (each image's predicted class: needs ``output``), a text form
            (:func:`parse_target`: ``"pred"``, ``"3"``, ``"seg:3"``, ``"multilabel:all"``, ...), an int (NumPy ints
            too) for every image, one class per image (sequence, 1-D integer tensor or NumPy array), a callable
            ``output -> (N,)`` scores, one callable per image (pytorch-grad-cam's ``ClassifierOutputTarget``
            style), or a :class:`Target` (a fresh copy, see :meth:`Target.fresh`).
        batch: the number of source images.
        output: the model's output for the source images; needed for ``targets=None`` and used to check
            class indices against the number of classes.
        softmax: class and callable targets score softmax probabilities instead of the raw output.

    Raises:
        TypeError: an unsupported ``targets`` type, or class targets on a model whose output is not
            ``(B, classes)``.
        ValueError: a class index out of range, a wrong number of targets, or text that is no target form.
    """
    if isinstance(targets, str):  # the text forms of the command line and of a LightningCLI YAML file
        targets = parse_target(targets)
    if isinstance(targets, Target):
        return targets.fresh()
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return FunctionTarget(targets, softmax=softmax)
    if (
        isinstance(targets, Sequence)
        and not isinstance(targets, str)
        and len(targets) > 0
        and all(callable(t) for t in targets)
    ):
        if len(targets) != batch:
            raise ValueError(f"targets: got {len(targets)} callables for a batch of {batch} images")
        return PerImageTargets(targets)
    if targets is None:
        if output is None:
            raise ValueError("targets=None explains the predicted class, which needs the model output")
        classes = logits_of(output, "targets").detach().argmax(dim=1)
        return ClassTarget(classes.clone(), softmax=softmax)
    classes = _class_indices(targets, batch)
    if output is not None:
        logits = logits_of(output, "targets")
        check_classes(classes, logits.shape[1])
        classes = classes.to(logits.device)
    return ClassTarget(classes, softmax=softmax)


def _class_indices(targets: Any, batch: int) -> torch.Tensor:
    """``(batch,)`` long class indices from an int, a sequence, a tensor or a NumPy array of ints."""
    if isinstance(targets, (bool, np.bool_, str)):
        raise TypeError(
            f"targets must be None, an int, one int per image, or a callable; got {type(targets).__name__} "
            f"{targets!r}"
        )
    if isinstance(targets, (np.ndarray, np.generic)):
        targets = torch.from_numpy(np.asarray(targets))
    if isinstance(targets, torch.Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"targets: class indices must be integers; got a tensor of dtype {targets.dtype}")
        classes = targets.detach().reshape(-1).long()
    elif isinstance(targets, int):
        classes = torch.tensor([targets], dtype=torch.long)
    elif isinstance(targets, Sequence):
        values = list(targets)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
            raise TypeError(
                f"targets: a sequence must hold one int class index per image; got {values!r}"
            )
        classes = torch.tensor([int(v) for v in values], dtype=torch.long)
    else:
        raise TypeError(
            f"targets must be None, an int, one int per image, or a callable; got {type(targets).__name__} "
            f"{targets!r}"
        )
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.numel() != batch:
        raise ValueError(
            f"targets: got {classes.numel()} class indices for a batch of {batch} images; give one class "
            f"index per image ({batch}), or one int for all"
        )
    return classes.clone()
