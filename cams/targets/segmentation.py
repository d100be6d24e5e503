"""Semantic segmentation: the sum of one class's logits over a mask.

The score pytorch-grad-cam's ``SemanticSegmentationTarget`` gives (its tutorial's "pixel attribution for
semantic segmentation"), batched: for row ``r`` of a ``(N, K, H, W)`` output, class ``c`` and mask ``M``,

.. math:: y_r = \\sum_{p} M_r(p) \\, z_{r, c}(p)

By default ``M`` is the image's predicted mask of ``c`` (the pixels whose arg-max over the classes is
``c``), chosen from the unperturbed forward, as the reference's tutorial builds it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cams.targets._common import ChoosingTarget, index_per_image, per_image, wrong_output

__all__ = ["SegmentationTarget", "segmentation_logits"]

_EXPECTED = "a (B, classes, H, W) segmentation output (a tensor, or a dict with 'out' or 'logits')"


def segmentation_logits(output: Any, target: str = "SegmentationTarget") -> torch.Tensor:
    """The ``(N, K, *spatial)`` class scores of a segmentation model's output.

    Accepts a tensor, torchvision's ``{"out": ..., "aux": ...}`` dicts, and dicts or objects with
    ``logits`` (Hugging Face ``SemanticSegmenterOutput``). Volumes: ``(N, K, D, H, W)``.

    Raises:
        TypeError: anything else, naming what the model returned and the target that fits it.

    Example:
        >>> segmentation_logits({"out": torch.zeros(2, 3, 8, 8), "aux": torch.zeros(2, 3, 8, 8)}).shape
        torch.Size([2, 3, 8, 8])
    """
    found = output
    if isinstance(output, dict):
        found = output.get("out", output.get("logits"))
    elif not isinstance(output, torch.Tensor):
        found = getattr(output, "logits", None)
    if isinstance(found, torch.Tensor) and found.dim() >= 4:
        return found
    raise wrong_output(target, _EXPECTED, output)


class SegmentationTarget(ChoosingTarget):
    """The sum of class ``category``'s logits over a mask, per image (``SemanticSegmentationTarget``).

    Args:
        category: the class explained: an int for every image, or one per image (sequence, 1-D tensor).
        mask: ``None`` (default): each image's predicted mask of ``category``, chosen from the unperturbed
            forward. Or a given mask at the output's resolution: ``(H, W)`` for every image or ``(B, H, W)``
            one per image (``(D, H, W)``/``(B, D, H, W)`` for volumes), bool or float weights, tensor or
            NumPy array. A given mask is tied to the image's geometry, so ``aug_smooth`` refuses it.

    An image whose mask is empty (the class predicted nowhere) scores 0 and gets an empty map; a
    ``RuntimeWarning`` names it.

    Raises (on call):
        TypeError: the output is not a segmentation output (the message names the target that fits).
        ValueError: a class index out of range, or a mask whose size differs from the output's.

    Example:
        >>> out = torch.zeros(1, 3, 2, 2)
        >>> out[0, 1] = torch.tensor([[5.0, -1.0], [-1.0, 5.0]])  # class 1 wins on the diagonal
        >>> SegmentationTarget(1)(out, torch.tensor([0])).tolist()        # 5 + 5 over the predicted mask
        [10.0]
        >>> SegmentationTarget(1, mask=torch.ones(2, 2))({"out": out}, torch.tensor([0])).tolist()
        [8.0]
    """

    def __init__(self, category: int | Sequence[int] | torch.Tensor, mask: Any = None) -> None:
        super().__init__()
        self.category = per_image(category, "SegmentationTarget(category=...)")
        if isinstance(self.category, torch.Tensor):
            self.classes = self.category
        if mask is not None:
            mask = torch.from_numpy(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask.detach()
            if mask.dim() < 2:
                raise ValueError(
                    f"SegmentationTarget(mask=...): expected (H, W) or (B, H, W) (volumes: (D, H, W) or "
                    f"(B, D, H, W)); got shape {tuple(mask.shape)}"
                )
        self.mask: torch.Tensor | None = mask
        self.geometric = mask is not None

    def __repr__(self) -> str:
        category = self.category if isinstance(self.category, int) else self.category.tolist()
        mask = "" if self.mask is None else f", mask={tuple(self.mask.shape)}"
        return f"SegmentationTarget(category={category}{mask})"

    @property
    def spec(self) -> str | None:
        """The ``--target`` form of this target (``"seg:3"``), when it has one."""
        return f"seg:{self.category}" if isinstance(self.category, int) and self.mask is None else None

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        logits = segmentation_logits(output)
        images = images.to(logits.device)
        categories = index_per_image(self.category, images, "SegmentationTarget(category=...)")
        classes = logits.shape[1]
        bad = (categories < 0) | (categories >= classes)
        if bool(bad.any()):
            raise ValueError(
                f"SegmentationTarget: category {int(categories[bad][0])} is out of range for an output with "
                f"{classes} classes (valid: 0..{classes - 1})"
            )
        rows = torch.arange(len(images), device=logits.device)
        picked = logits[rows, categories]  # (N, *spatial)
        masks = self._masks(logits, images, categories).to(picked.dtype)
        return (picked * masks).flatten(1).sum(dim=1)

    def _masks(self, logits: torch.Tensor, images: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        spatial = tuple(logits.shape[2:])
        if self.mask is None:
            def predicted(row: int, image: int) -> torch.Tensor:
                mask = logits[row].detach().argmax(dim=0) == categories[row]
                if not bool(mask.any()):
                    warnings.warn(
                        f"SegmentationTarget: class {int(categories[row])} is predicted nowhere in image {image}; "
                        "its score is 0 and its map is empty (pass mask= to explain a region of your choice)",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                return mask

            return torch.stack(self._choose(images, predicted))
        mask = self.mask.to(logits.device)
        if tuple(mask.shape[-len(spatial):]) != spatial or mask.dim() not in (len(spatial), len(spatial) + 1):
            raise ValueError(
                f"SegmentationTarget(mask=...): the mask has shape {tuple(mask.shape)}, the output's classes "
                f"are {spatial}; give a mask of shape {spatial} (or (B, *{spatial}) one per image) at the output's "
                "resolution"
            )
        if mask.dim() == len(spatial):
            return mask.expand(len(images), *spatial)
        if int(images.max()) >= mask.shape[0]:
            raise ValueError(
                f"SegmentationTarget(mask=...): {mask.shape[0]} masks (one per image) for a batch of at least "
                f"{int(images.max()) + 1} images"
            )
        return mask[images]

    def fixed(self, output: Any) -> SegmentationTarget:
        """This target with each image's mask made explicit: ``mask`` as given, or predicted from ``output``.

        Example:
            >>> out = torch.zeros(2, 2, 1, 2)
            >>> out[:, 1, 0, 0] = 1.0
            >>> SegmentationTarget(1).fixed(out).mask.tolist()
            [[[True, False]], [[True, False]]]
        """
        logits = segmentation_logits(output)
        images = torch.arange(logits.shape[0], device=logits.device)
        categories = index_per_image(self.category, images, "SegmentationTarget(category=...)")
        masks = self.fresh()._masks(logits, images, categories)
        twin = SegmentationTarget(self.category, mask=masks.clone())
        return twin
