"""``cam_drift/<method>/noise_floor``: how much the maps move when nothing but noise changes.

The drift (``1 -`` cosine similarity) between a map of the fixed batch and the map of the same image plus seeded
Gaussian noise of ``sigma`` times the fixed batch's pixel standard deviation, with the same weights and the same
classes, averaged over the images. Drift between runs well above it is the model changing; drift near it is
noise.

It costs one more engine call per run, so it is estimated on a seeded subsample of the fixed images: ``images``
of them (default 4; all when the batch has no more), the same ones at every run so that runs compare, drawn from
its own generator (never the global RNG). With 32 fixed images and Score-CAM that is an eighth of the cost of
explaining the whole batch again. The noise is drawn for the whole batch and sliced, so an image gets the same
noise whatever the number of processes, and every process explains the same number of rows (padded with a
repeated row whose value is dropped), as a sharded model's forward needs. ``docs/callback.md`` gives the
estimate's error against the whole batch on the main job's model.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from cam_callback._distributed import rows_for
from cam_callback.measures.base import Measure, Slice
from cams import metrics
from cams.targets import SourceRows, Target

__all__ = ["NOISE_SEED", "NoiseFloor", "subsample"]

NOISE_SEED = 0
"""Seed of the noise-floor perturbation's and subsample's generators."""


def subsample(n: int, images: int | None) -> Tensor:
    """The sorted indices of the ``images`` fixed images (of ``n``) the noise floor is estimated on; all for ``None``.

    The same for a given ``n`` at every run and in every process: a seeded permutation's first ``images``.

    Example:
        >>> subsample(32, 4).tolist(), subsample(3, 4).tolist(), subsample(5, None).tolist()
        ([12, 25, 28, 31], [0, 1, 2], [0, 1, 2, 3, 4])
    """
    if images is None or images >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(NOISE_SEED))
    return order[:images].sort().values


class NoiseFloor(Measure):
    """The drift of the maps under a tiny seeded perturbation of the input, on a subsample of the fixed images.

    Args:
        sigma: the perturbation's size as a fraction of the fixed images' pixel standard deviation, in
            ``(0, 1]`` (``0.01``: below one grey level).
        images: how many fixed images it is estimated on (a seeded subsample, the same at every run); ``None``:
            all of them, which doubles the cost of a run.

    Example:
        >>> NoiseFloor(0.02)
        NoiseFloor(sigma=0.02, images=4)
    """

    name: ClassVar[str] = "noise_floor"
    nan_is_undefined: ClassVar[bool] = True  # the images outside the subsample

    def __init__(self, sigma: float = 0.01, images: int | None = 4) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 < float(sigma) <= 1):
            raise ValueError(
                f"NoiseFloor(sigma={sigma!r}): expected the perturbation's size as a fraction of the images' pixel "
                "standard deviation in (0, 1], e.g. 0.01"
            )
        if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
            raise ValueError(
                f"NoiseFloor(images={images!r}): expected how many fixed images to estimate it on, e.g. 4, or None "
                "for all of them"
            )
        self.sigma = float(sigma)
        self.images = images

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        x, n = part.x, len(part.images)
        chosen = subsample(n, self.images)
        rows = part.rows.cpu()
        mine = torch.isin(rows, chosen) & (torch.arange(len(rows)) < _real_rows(rows))
        # every process explains as many rows as the busiest one (a sharded model's forward is a collective)
        busiest = max(int(torch.isin(rows_for(n, part.world_size, r), chosen).sum()) for r in range(part.world_size))
        if busiest == 0:
            return {}
        picked = mine.nonzero()[:, 0]
        pad = picked[-1:] if len(picked) else torch.zeros(1, dtype=torch.long)
        picked = torch.cat([picked, pad.expand(busiest - len(picked))])
        sigma = self.sigma * float(part.convert_input(part.images).float().std())
        generator = torch.Generator(device=x.device).manual_seed(NOISE_SEED)
        noise = torch.randn((n, *x.shape[1:]), generator=generator, device=x.device, dtype=torch.float32)
        at = picked.to(x.device)
        noisy = (x[at].detach().float() + sigma * noise[rows.to(x.device)[at]]).to(x.dtype)
        classes = part.engine_classes if part.engine_classes is not None else part.targets  # the same classes
        again = part.explain(noisy, _rows_of(classes, at))
        values = {}
        for name, cam in part.maps.items():
            drift = torch.full((len(rows),), math.nan, device=cam.device)
            found = 1.0 - metrics.cosine_similarity(again[name].float(), cam[at].float())
            drift[at[: int(mine.sum())]] = found[: int(mine.sum())]
            values[f"cam_drift/{name}/noise_floor"] = drift
        return values


def _real_rows(rows: Tensor) -> int:
    """How many of a slice's rows are real: ``rows_for`` pads a slice by repeating its last row."""
    last = rows[-1]
    repeats = int((rows == last).sum())
    return len(rows) - repeats + 1


def _rows_of(targets: object, at: Tensor) -> object:
    """The targets of the rows ``at`` of the slice: per-image classes are cut, a :class:`~cams.targets.Target` sees
    its source rows; ``None``, a class index and a row-wise callable apply to any rows."""
    if isinstance(targets, Tensor) and targets.dim() > 0:
        return targets[at]
    return SourceRows(targets, at) if isinstance(targets, Target) else targets
