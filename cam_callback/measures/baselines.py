"""``baseline_centre`` and ``baseline_random``: maps that know nothing, scored beside the methods.

With ``"baselines"`` among the measures, every measure that scores maps against the data (localisation, the
shortcut energies, faithfulness, ROAD) also scores a centre map and a seeded random map
(:func:`cams.metrics.centre_map`, :func:`cams.metrics.random_map`), so each method's number can be read
against what no explanation at all would get. They are drawn for the whole fixed batch (and sliced for each
process), from their own generator.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from cam_callback.measures.base import Measure
from cams import metrics

__all__ = ["BASELINES", "BASELINE_SEED", "RANDOM_CELLS", "Baselines", "baseline_maps"]

BASELINES = ("baseline_centre", "baseline_random")
"""The pseudo-method names the baseline maps are logged under."""
BASELINE_SEED = 0
"""Seed of the random baseline map's generator."""
RANDOM_CELLS = 7
"""Grid side of the random baseline map before upsampling (a ResNet's 7 x 7 at 224²)."""


def baseline_maps(shape: tuple[int, ...], device: torch.device) -> dict[str, Tensor]:
    """The centre and seeded random maps ``(N, H, W)`` (``(N, D, H, W)``) for maps of that shape, on ``device``.

    Example:
        >>> maps = baseline_maps((2, 8, 8), torch.device("cpu"))
        >>> sorted(maps), tuple(maps["baseline_random"].shape)
        (['baseline_centre', 'baseline_random'], (2, 8, 8))
    """
    generator = torch.Generator().manual_seed(BASELINE_SEED)
    return {
        "baseline_centre": metrics.centre_map(shape, device=device),
        "baseline_random": metrics.random_map(shape, generator=generator, cells=RANDOM_CELLS, device=device),
    }


class Baselines(Measure):
    """Score the centre and random baseline maps wherever a measure scores the methods' maps.

    It computes nothing itself: it adds the baseline maps to what the measures with ``scores_baselines``
    (:class:`~cam_callback.measures.Localisation`, :class:`~cam_callback.measures.Shortcut`,
    :class:`~cam_callback.measures.Faithfulness`, :class:`~cam_callback.measures.Road`) score.

    Example:
        >>> Baselines()
        Baselines()
    """

    name: ClassVar[str] = "baselines"
