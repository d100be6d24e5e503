"""Object detection: the score of the detections that match given boxes, and the FPN feature reshape.

For torchvision's detectors (Faster R-CNN, RetinaNet, FCOS, ...), whose eval-mode output is one dict
``{"boxes": (m, 4), "labels": (m,), "scores": (m,)}`` per image. :class:`DetectionTarget` is
pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``: for each given box ``b`` with label ``l``, the detection
``j`` of highest IoU with ``b`` counts when that IoU is above the threshold and its label is ``l``:

.. math:: y = \\sum_{b} \\mathbb{1}[\\mathrm{IoU}(b, d_j) > t \\wedge l_j = l_b] \\, (\\mathrm{IoU}(b, d_j) + s_j),
          \\quad j = \\arg\\max_j \\mathrm{IoU}(b, d_j)

:func:`fpn_reshape` turns the backbone's feature pyramid (a dict of levels) into one ``(B, C, h, w)`` map,
as the reference's Faster R-CNN tutorial does with ``fasterrcnn_reshape_transform``; pass it as
``CamEngine(model, "backbone", reshape_transform=fpn_reshape)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

from cams.targets._common import ChoosingTarget, wrong_output

__all__ = ["DetectionTarget", "fpn_reshape"]

_EXPECTED = "a detector's output: a list of {'boxes', 'labels', 'scores'} dicts, one per image"


def _detections(output: Any) -> list[Mapping[str, torch.Tensor]]:
    if (
        isinstance(output, (list, tuple))
        and output
        and all(isinstance(o, Mapping) and all(k in o for k in ("boxes", "labels", "scores")) for o in output)
    ):
        return list(output)
    raise wrong_output("DetectionTarget", _EXPECTED, output)


def _as_list(values: Any, name: str, columns: int | None) -> list[torch.Tensor] | torch.Tensor:
    """One tensor for every image, or a list with one tensor per image."""
    if isinstance(values, (list, tuple)) and values and all(isinstance(v, torch.Tensor) for v in values):
        items = [v.detach() for v in values]
        for item in items:
            _check_shape(item, name, columns)
        return items
    tensor = torch.as_tensor(values).detach()
    _check_shape(tensor, name, columns)
    return tensor


def _check_shape(t: torch.Tensor, name: str, columns: int | None) -> None:
    good = t.dim() == 2 and t.shape[1] == columns if columns is not None else t.dim() == 1
    if not good:
        want = f"(k, {columns})" if columns is not None else "(k,)"
        raise ValueError(
            f"DetectionTarget({name}=...): expected {want} for every image, or a list of those (one per image); "
            f"got shape {tuple(t.shape)}"
        )


class DetectionTarget(ChoosingTarget):
    """The score of the detections matching given boxes (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``).

    Args:
        boxes: ``None`` (default): each image's own detections with a score of at least
            ``score_threshold``, chosen from the unperturbed forward (the reference tutorial's choice).
            Or given boxes ``x0, y0, x1, y1`` in input pixels: ``(k, 4)`` for every image, or a list with one
            ``(k_i, 4)`` tensor per image. Given boxes are tied to the image's geometry, so ``aug_smooth``
            refuses them.
        labels: the class of each given box, ``(k,)`` or a list of ``(k_i,)`` (needed with ``boxes``).
        iou_threshold: a detection matches a box when their IoU is above this.
        score_threshold: with ``boxes=None``, the least score of a detection to explain.

    An image none of whose boxes is matched (or with no detection above ``score_threshold``) scores 0 and
    gets an empty map; a ``RuntimeWarning`` names it.

    Raises (on call):
        TypeError: the output is not a detector's list of dicts (the message names the target that fits).

    Example:
        >>> detections = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([3]),
        ...                "scores": torch.tensor([0.75])}]
        >>> target = DetectionTarget(boxes=torch.tensor([[0.0, 0.0, 10.0, 8.0]]), labels=torch.tensor([3]))
        >>> target(detections, torch.tensor([0])).tolist()   # IoU 0.8 + score 0.75
        [1.5499999523162842]
        >>> DetectionTarget()(detections, torch.tensor([0])).tolist()   # its own detection: IoU 1 + 0.75
        [1.75]
    """

    def __init__(
        self,
        boxes: torch.Tensor | Sequence[torch.Tensor] | None = None,
        labels: torch.Tensor | Sequence[torch.Tensor] | None = None,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if (boxes is None) != (labels is None):
            raise ValueError(
                "DetectionTarget: give boxes and labels together (one label per box), or neither to explain "
                "each image's own detections"
            )
        for name, value in (("iou_threshold", iou_threshold), ("score_threshold", score_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"DetectionTarget({name}={value!r}): expected a number in [0, 1], e.g. 0.5")
        self.boxes = None if boxes is None else _as_list(boxes, "boxes", 4)
        self.labels = None if labels is None else _as_list(labels, "labels", None)
        if isinstance(self.boxes, list) != isinstance(self.labels, list) or (
            isinstance(self.boxes, list) and [len(b) for b in self.boxes] != [len(lb) for lb in self.labels]  # type: ignore[union-attr]
        ) or (isinstance(self.boxes, torch.Tensor) and len(self.boxes) != len(self.labels)):  # type: ignore[arg-type]
            raise ValueError("DetectionTarget: boxes and labels must come alike (both per image or both for all), "
                             "with one label per box")
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.geometric = boxes is not None

    def __repr__(self) -> str:
        if self.boxes is None:
            what = f"score_threshold={self.score_threshold}"
        elif isinstance(self.boxes, list):
            what = f"boxes=<{len(self.boxes)} images>"
        else:
            what = f"boxes=<{len(self.boxes)} boxes>"
        return f"DetectionTarget({what}, iou_threshold={self.iou_threshold})"

    def _given(self, image: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.boxes is not None and self.labels is not None
        if isinstance(self.boxes, list):
            if image >= len(self.boxes):
                raise ValueError(
                    f"DetectionTarget(boxes=...): {len(self.boxes)} lists of boxes (one per image) for a batch of "
                    f"at least {image + 1} images"
                )
            return self.boxes[image], self.labels[image]  # type: ignore[index]
        return self.boxes, self.labels  # type: ignore[return-value]

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        detections = _detections(output)
        if len(detections) != len(images):
            raise ValueError(f"DetectionTarget: {len(detections)} detection dicts for {len(images)} rows")

        def choose(row: int, image: int) -> tuple[torch.Tensor, torch.Tensor]:
            found = detections[row]
            if self.boxes is None:
                keep = found["scores"].detach() >= self.score_threshold
                chosen = found["boxes"].detach()[keep], found["labels"].detach()[keep]
                if not bool(keep.any()):
                    warnings.warn(
                        f"DetectionTarget: image {image} has no detection with a score >= {self.score_threshold}; "
                        "its score is 0 and its map is empty (lower score_threshold or pass boxes=)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return chosen
            return self._given(image)

        listed = images.tolist()
        new = {image: listed.index(image) for image in listed if image not in self._chosen}
        chosen = self._choose(images, choose)
        scores = []
        for row, (det, (boxes, labels)) in enumerate(zip(detections, chosen, strict=True)):
            score, matched = self._score(det, boxes, labels)
            image = listed[row]
            if self.boxes is not None and not matched and new.get(image) == row:
                warnings.warn(
                    f"DetectionTarget: no detection of image {image} matches its boxes (IoU > "
                    f"{self.iou_threshold}, same label); its score is 0 and its map is empty",
                    RuntimeWarning,
                    stacklevel=2,
                )
            scores.append(score)
        return torch.stack(scores)

    def _score(
        self, det: Mapping[str, torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, bool]:
        found = det["boxes"]
        if len(found) == 0 or len(boxes) == 0:
            return torch.zeros((), device=found.device, dtype=found.dtype), False
        ious = torchvision.ops.box_iou(boxes.to(found.device, found.dtype), found)  # (k, m)
        index = ious.argmax(dim=1)
        best = ious.gather(1, index[:, None])[:, 0]
        ok = (best > self.iou_threshold) & (det["labels"][index] == labels.to(found.device))
        return (best + det["scores"][index])[ok].sum(), bool(ok.any())

    def fixed(self, output: Any) -> DetectionTarget:
        """This target with each image's boxes and labels made explicit, from ``output`` (its detections).

        Example:
            >>> detections = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1]),
            ...                "scores": torch.tensor([0.9])}]
            >>> DetectionTarget().fixed(detections).boxes
            [tensor([[0., 0., 4., 4.]])]
        """
        if self.boxes is not None:
            return self
        detections = _detections(output)
        boxes, labels = [], []
        for det in detections:
            keep = det["scores"].detach() >= self.score_threshold
            boxes.append(det["boxes"].detach()[keep].clone())
            labels.append(det["labels"].detach()[keep].clone())
        return DetectionTarget(boxes, labels, self.iou_threshold, self.score_threshold)


def fpn_reshape(features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A feature pyramid (dict of ``(B, C, h_i, w_i)`` levels) → one ``(B, L·C, h, w)`` map.

    Each level's absolute value is resized bilinearly to the size of the ``"pool"`` level (torchvision's
    Faster R-CNN FPN), else of the smallest level (RetinaNet, FCOS), and the levels are stacked along the
    channels: pytorch-grad-cam's ``fasterrcnn_reshape_transform``. Applied to gradients too.

    Example:
        >>> levels = {"0": torch.ones(1, 2, 8, 8), "1": torch.ones(1, 2, 4, 4), "pool": torch.ones(1, 2, 2, 2)}
        >>> fpn_reshape(levels).shape
        torch.Size([1, 6, 2, 2])
    """
    if not isinstance(features, Mapping) or not features:
        raise TypeError(
            f"fpn_reshape takes a feature pyramid (a dict of (B, C, h, w) levels, the output of a detector's "
            f"backbone); got {type(features).__name__}"
        )
    if "pool" in features:
        size = features["pool"].shape[-2:]
    else:
        size = min((v.shape[-2:] for v in features.values()), key=lambda s: s[0] * s[1])
    return torch.cat([F.interpolate(v.abs(), size=tuple(size), mode="bilinear") for v in features.values()], dim=1)
