"""``cam_localisation/<method>/focus``: on 2 x 2 mosaics of the fixed images, does the map find the class?

Arias-Duart et al., 2022 (:mod:`cams.metrics.focus`). Each image ``i`` of the fixed batch gets one mosaic: it,
another image of its class and two images of other classes, in a seeded random order (the draws are made for the
whole batch from their own generator, so an image gets the same mosaic whatever the number of processes and at
every run). Each mosaic is explained for image ``i``'s **label** (whatever the callback's ``target``), with the
run's methods, and scored by the share of the map's positive relevance on the two tiles of that class: ``0.5`` is
chance, ``1`` the best. With ``"baselines"`` the centre and random maps of the mosaics' size are scored too.

It costs one more engine call per run, on ``N`` mosaics of twice the height and width (four times the pixels);
``Focus(shrink_tiles=True)`` halves each tile first, so that mosaics have the fixed images' size, for a model
that takes one input size only (a ViT).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures.base import Measure, Slice
from cam_callback.measures.baselines import baseline_maps
from cams import metrics

__all__ = ["Focus"]


class Focus(Measure):
    """Focus of every map on a seeded mosaic per fixed image, explained for that image's label.

    Args:
        shrink_tiles: halve each image (2 x 2 average pooling) before tiling, so that a mosaic has the fixed
            images' size (default ``False``: tiles of full size, as the paper and Quantus' ``mosaic_creation``).

    Example:
        >>> Focus()
        Focus(shrink_tiles=False)
    """

    name: ClassVar[str] = "focus"
    scores_baselines: ClassVar[bool] = True

    def __init__(self, shrink_tiles: bool = False) -> None:
        if not isinstance(shrink_tiles, bool):
            raise ValueError(f"Focus(shrink_tiles={shrink_tiles!r}): expected True or False")
        self.shrink_tiles = shrink_tiles

    def problem(self, batch: FixedBatch) -> str | None:
        if batch.images.dim() != 4:
            return "Focus tiles 2-D images into 2 x 2 mosaics and the fixed batch holds volumes; leave 'focus' out"
        labels = batch.labels
        if labels is None:
            return (
                "Focus explains each mosaic for the class of two of its tiles and the fixed batch has no labels: "
                "yield (x, y) batches (or a 'label' key), or pass images={'image': x, 'label': y}"
            )
        if labels.dim() != 1 or labels.is_floating_point():
            return f"Focus needs one class index per fixed image; the labels are {tuple(labels.shape)} {labels.dtype}"
        classes = torch.unique(labels)
        if len(classes) < 2:
            return (
                f"Focus mixes images of a class with images of others, and every fixed image has class "
                f"{int(classes[0])}: take more images (num_images=...) or shuffle the validation set"
            )
        if self.shrink_tiles and any(side % 2 for side in batch.images.shape[2:]):
            return (
                f"Focus(shrink_tiles=True) halves the images and they are {tuple(batch.images.shape[2:])}: "
                "use images of even height and width, or Focus()"
            )
        return None

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        if part.labels is None:
            return {}
        images = F.avg_pool2d(part.images.float(), 2).to(part.images.dtype) if self.shrink_tiles else part.images
        mosaics = metrics.focus_mosaics(images, part.labels)  # seeded: the same mosaics at every run
        device = part.x.device
        rows = part.rows.to(mosaics.images.device)
        x = part.convert_input(mosaics.images[rows].to(device))
        positions = mosaics.positions[rows].to(device)
        explained = part.explain(x, mosaics.targets[rows].to(device))
        values = {
            f"cam_localisation/{name}/focus": metrics.focus(explained[name].float(), positions)
            for name in part.maps
        }
        if part.baselines:
            whole = (len(part.images), *mosaics.images.shape[2:])
            for name, cam in baseline_maps(whole, device).items():
                values[f"cam_localisation/{name}/focus"] = metrics.focus(cam[rows.to(device)], positions)
        return values
