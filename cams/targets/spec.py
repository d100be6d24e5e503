"""Targets written as text, for ``explain(target=...)`` and ``cam-callback explain --target``.

=========================  ==============================================================
form                       target
=========================  ==============================================================
``pred``                   each image's predicted class
``3``                      class 3 (logit)
``seg:3``                  :class:`~cams.targets.SegmentationTarget` ``(3)``: class 3 over its predicted mask
``multilabel:3``           :class:`~cams.targets.MultiLabelTarget` ``(3)``: class 3 of a multi-label model
``multilabel:all``         every class above probability 0.5 (``multilabel:all@0.3``: above 0.3)
=========================  ==============================================================
"""

from __future__ import annotations

from cams.names import close_matches
from cams.targets.base import Target
from cams.targets.multilabel import MultiLabelTarget
from cams.targets.segmentation import SegmentationTarget

__all__ = ["FORMS", "parse_target"]

FORMS = ("pred", "CLASS", "seg:CLASS", "multilabel:CLASS", "multilabel:all", "multilabel:all@THRESHOLD")
_KINDS = ("seg", "segmentation", "multilabel")


def parse_target(spec: str) -> int | Target | None:
    """The target a text form names: ``None`` (predicted class), a class index, or a task target.

    Raises:
        ValueError: an unknown form, naming it and listing the forms (with close matches).

    Example:
        >>> parse_target("seg:3"), parse_target("multilabel:all@0.3"), parse_target("7"), parse_target("pred")
        (SegmentationTarget(category=3), MultiLabelTarget(threshold=0.3), 7, None)
    """
    text = spec.strip()
    if text == "pred":
        return None
    if _is_index(text):
        return int(text)
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if sep and kind in ("seg", "segmentation") and _is_index(rest):
        return SegmentationTarget(int(rest))
    if sep and kind == "multilabel":
        if _is_index(rest):
            return MultiLabelTarget(int(rest))
        head, at, threshold = rest.partition("@")
        if head == "all" and not at:
            return MultiLabelTarget()
        if head == "all":
            try:
                return MultiLabelTarget(threshold=float(threshold))
            except ValueError as err:
                raise ValueError(f"target {spec!r}: {err}") from err
    hint = close_matches(kind, _KINDS) if sep else ""
    raise ValueError(f"target {spec!r} is not a target form{hint}; use one of {', '.join(FORMS)}")


def _is_index(text: str) -> bool:
    return text.isdigit()
