"""The result of :func:`cam_callback.explain`: the maps for a batch of images, ready to look at or save."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cams.io import encode_image, npy_bytes, write_files
from cams.overlay import colorize, to_uint8

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """The maps for a batch of images, ready to look at or save.

    Attributes:
        maps: method name → ``(B, H, W)`` float32 tensor in ``[0, 1]`` on the CPU (``H, W`` = the model's
            input size).
        overlays: method name → ``(B, H, W, 3)`` uint8 RGB numpy array, the map blended over the image.
        images: ``(B, H, W, 3)`` uint8 RGB, the images as the model saw them (resized, before normalising).
        classes: ``(B,)`` int64, the class explained for each image (predicted or chosen).
        scores: ``(B,)`` float32, that class's logit: the model's raw output for it (NaN when the output
            is not ``(B, classes)``); for a task target (segmentation, multi-label...) the target's own score.
        probabilities: ``(B,)`` float32, that class's softmax probability over the model's outputs.
        score: which of the two the maps explain: ``"logit"`` (default) or ``"probability"``.
        names: file stems used by :meth:`save` (the image files' stems, else ``image0``, ``image1``, ...).
        target_layers: dotted names of the explained layers.
        colormap: colour map of the heat maps and overlays.
        target: what was explained when it is not one class per image (``"seg:3"``, ``"multilabel:all"``,
            a target's repr); ``""`` for classes. :attr:`classes` is then ``-1`` where no single class applies.

    Example:
        >>> e = Explanation(maps={"gradcam": torch.rand(1, 8, 8)},
        ...                 overlays={"gradcam": np.zeros((1, 8, 8, 3), np.uint8)},
        ...                 images=np.zeros((1, 8, 8, 3), np.uint8), classes=torch.tensor([3]),
        ...                 scores=torch.tensor([1.5]), names=["cat"], target_layers=["layer4"])
        >>> e.methods
        ['gradcam']
        >>> import tempfile
        >>> sorted(p.name for p in e.save(tempfile.mkdtemp()))
        ['cat-gradcam-heatmap.png', 'cat-gradcam-overlay.png', 'explanation.json', 'gradcam.npy']
    """

    maps: dict[str, torch.Tensor] = field(repr=False)
    overlays: dict[str, np.ndarray] = field(repr=False)
    images: np.ndarray = field(repr=False)
    classes: torch.Tensor
    scores: torch.Tensor
    names: list[str]
    target_layers: list[str]
    colormap: str = "jet"
    probabilities: torch.Tensor | None = None
    score: str = "logit"
    target: str = ""

    @property
    def methods(self) -> list[str]:
        """The methods explained, in the order asked for."""
        return list(self.maps)

    def heatmaps(self, method: str) -> np.ndarray:
        """The colour-mapped ``method`` maps → ``(B, H, W, 3)`` uint8 RGB."""
        return to_uint8(colorize(self.maps[method], self.colormap))

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write PNGs and raw maps into ``directory`` (created if needed) → the written paths.

        Files, for each image stem ``<stem>`` (see :attr:`names`) and method ``<method>``:

        - ``<stem>-<method>-heatmap.png``: the map coloured with :attr:`colormap`;
        - ``<stem>-<method>-overlay.png``: the map over the image;
        - ``<method>.npy``: all maps of the method, float32 ``(B, H, W)`` in :attr:`names` order;
        - ``explanation.json``: names, classes, logits (``scores``), probabilities, which score the maps
          explain, methods and layers.

        All files are written into a temporary folder next to ``directory`` and moved in together, so
        an interrupted save leaves no partial set behind. Existing files of the same names are replaced.
        """
        files: dict[str, bytes] = {}
        for method in self.methods:
            heat = self.heatmaps(method)
            for i, stem in enumerate(self.names):
                files[f"{stem}-{method}-heatmap.png"] = encode_image(heat[i], "PNG")
                files[f"{stem}-{method}-overlay.png"] = encode_image(self.overlays[method][i], "PNG")
        for method in self.methods:
            buf = npy_bytes(self.maps[method].float().numpy())
            files[f"{method}.npy"] = buf
        summary = {
            "names": self.names,
            "classes": [int(c) for c in self.classes],
            "scores": [float(s) for s in self.scores],
            "probabilities": None if self.probabilities is None else [float(p) for p in self.probabilities],
            "score": self.score,
            "methods": self.methods,
            "target_layers": self.target_layers,
        }
        if self.target:
            summary["target"] = self.target
        files["explanation.json"] = (json.dumps(summary, indent=2) + "\n").encode()
        return write_files(directory, files)
