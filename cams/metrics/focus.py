r"""Focus: on a 2 x 2 mosaic of two images of a class and two of others, how much of the map falls on the class?

Arias-Duart, Parés, Garcia-Gasulla and Giménez-Ábalos, *Focus! Rating XAI Methods and Finding Biases*,
FUZZ-IEEE 2022, https://arxiv.org/abs/2109.15035. A mosaic's map, explained for the mosaic's target class
:math:`c`, should put its positive relevance on the two tiles showing class :math:`c`:

.. math:: \operatorname{Focus} = \frac{\sum_{p \in T_c} \max(M(p), 0)}{\sum_{p} \max(M(p), 0)}

with :math:`T_c` the pixels of the target-class tiles. ``0.5`` is chance (two of the four tiles), ``1`` a map
entirely on the class. Two steps, so that a test (or a second library) can be handed the same draws:

- :func:`focus_mosaics` draws the mosaics from seeded draws (one mosaic per image of a batch, that image a
  tile of its own class) or builds them from given tile ``indices``; it returns the tile positions of the class;
- :func:`focus` scores maps of the mosaics, explained for their classes, against those positions.

Tiles are in reading order, top-left, top-right, bottom-left, bottom-right, as Quantus 0.6.0's
``mosaic_creation`` builds them (a row is two tiles side by side along the width) and its ``Focus`` scores them
(rows ``:H/2`` are the top, columns ``:W/2`` the left). Quantus 0.5.x sliced its top-right quadrant as
``[H/2:, :W/2]`` and its bottom-left as ``[:H/2, W/2:]``, exchanging height and width, so it scored those two
tiles swapped; 0.6.0's batched rewrite follows the paper, and so does this (the tests check both on mosaics that
are not square).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cams.metrics._inputs import as_maps

__all__ = ["FOCUS_SEED", "Mosaics", "focus", "focus_mosaics"]

FOCUS_SEED = 0
"""Seed of the mosaics' draws when no generator is given."""


@dataclass(frozen=True)
class Mosaics:
    """2 x 2 mosaics of images, each with the class it is explained for.

    Attributes:
        images: ``(M, C, 2H, 2W)`` the mosaics, on the images' device.
        targets: ``(M,)`` long: each mosaic's class, the class of two of its tiles.
        positions: ``(M, 4)`` bool: the tiles (top-left, top-right, bottom-left, bottom-right) showing it.
        indices: ``(M, 4)`` long: the image of the batch in each tile.
    """

    images: Tensor
    targets: Tensor
    positions: Tensor
    indices: Tensor


def _draw(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Seeded tiles ``(N, 4)`` and positions ``(N, 4)``: mosaic ``i`` shows image ``i``, another image of its class
    (itself when it is its class's only image) and two images of other classes (distinct when there are two)."""
    n = len(labels)
    device = generator.device
    labels = labels.to(device)
    own = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=device)
    same = own & ~eye
    same = same | (eye & ~same.any(dim=1, keepdim=True))  # an only image of its class shows twice
    partner = torch.multinomial(same.double(), 1, generator=generator)[:, 0]
    other = ~own
    first = torch.multinomial(other.double(), 1, generator=generator)[:, 0]
    rest = other.clone()
    rest[torch.arange(n, device=device), first] = False
    rest = torch.where(rest.any(dim=1, keepdim=True), rest, other)  # one image of other classes: twice
    second = torch.multinomial(rest.double(), 1, generator=generator)[:, 0]
    tiles = torch.stack([torch.arange(n, device=device), partner, first, second], dim=1)
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)
    positions = torch.tensor([True, True, False, False], device=device).expand(n, 4).gather(1, order)
    return tiles.gather(1, order), positions


def focus_mosaics(
    images: Tensor,
    labels: Tensor,
    generator: torch.Generator | None = None,
    *,
    indices: Tensor | None = None,
    targets: Tensor | None = None,
) -> Mosaics:
    """2 x 2 mosaics for :func:`focus`: drawn (one per image) or built from given tiles.

    Drawn (``indices=None``): mosaic ``i`` is explained for ``labels[i]`` and shows image ``i``, another image
    of that class drawn uniformly (image ``i`` again when it is the only one) and two images drawn uniformly
    from the other classes (one of them twice when only one image has another class), in a random order. The
    draws come from ``generator`` (never the global RNG), so the same generator state gives the same mosaics.
    Quantus' ``mosaic_creation`` draws ``mosaics_per_class`` mosaics per class with Python's ``random``
    instead; to score its mosaics, pass its ``mosaic_indices_list`` as ``indices`` and its ``target_list`` as
    ``targets``.

    Args:
        images: ``(N, C, H, W)``.
        labels: ``(N,)`` class of each image; at least two classes.
        generator: the draws' generator (default: a fresh CPU one seeded with :data:`FOCUS_SEED`).
        indices: ``(M, 4)`` long: the image in each tile (top-left, top-right, bottom-left, bottom-right).
        targets: ``(M,)`` the class each given mosaic is explained for (with ``indices`` only).

    Returns:
        :class:`Mosaics`: ``images`` ``(M, C, 2H, 2W)`` (``M = N`` when drawn), ``targets``, ``positions``
        (``labels[indices] == targets``) and ``indices``, on ``images``' device.

    Raises:
        ValueError: shapes that do not match, fewer than two classes, or ``indices`` without ``targets``.

    Example:
        >>> images = torch.arange(4.0).view(4, 1, 1, 1)          # four 1 x 1 images: 0, 1, 2, 3
        >>> mosaics = focus_mosaics(images, torch.tensor([0, 0, 1, 1]),
        ...                         indices=torch.tensor([[0, 2, 3, 1]]), targets=torch.tensor([0]))
        >>> mosaics.images[0, 0]
        tensor([[0., 2.],
                [3., 1.]])
        >>> mosaics.positions
        tensor([[ True, False, False,  True]])
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be (N, C, H, W), got {shape}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
        raise ValueError(
            f"labels must be (N,) = ({len(images)},) class indices, got {tuple(labels.shape)} {labels.dtype}"
        )
    if len(torch.unique(labels)) < 2:
        raise ValueError(
            f"Focus needs images of at least two classes to build mosaics from, got only class {labels[0].item()}; "
            "use a batch with several classes"
        )
    if indices is None:
        if targets is not None:
            raise ValueError("targets is for given indices; drawn mosaics are explained for labels[i]")
        if generator is None:
            generator = torch.Generator().manual_seed(FOCUS_SEED)
        indices, positions = _draw(labels, generator)
        targets = labels.to(indices.device)
    else:
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.dim() != 2 or indices.shape[1] != 4:
            raise ValueError(f"indices must be (M, 4) image indices per tile, got {tuple(indices.shape)}")
        if targets is None:
            raise ValueError("indices need targets: the (M,) class each mosaic is explained for")
        targets = torch.as_tensor(targets).to(indices.device)
        if tuple(targets.shape) != (len(indices),):
            raise ValueError(f"targets must be ({len(indices)},), one class per mosaic, got {tuple(targets.shape)}")
        positions = labels.to(indices.device)[indices] == targets[:, None]
    tiles = images[indices.to(images.device)]  # (M, 4, C, H, W)
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=-1)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=-1)
    device = images.device
    return Mosaics(torch.cat([top, bottom], dim=-2), targets.to(device), positions.to(device), indices.to(device))


def focus(maps: Tensor, positions: Tensor) -> Tensor:
    r"""Focus of maps of mosaics: the share of each map's positive relevance on the tiles of its class.

    See the module docstring for the paper and the formula. The quadrants split the map at ``H // 2`` and
    ``W // 2`` (the tile boundary of a mosaic of ``H/2 x W/2`` tiles). The default equals Quantus 0.6.0's
    ``Focus()`` (its defaults ``abs=False``, ``normalise=True``; the positive part is scored either way), in
    float64 without its ``1e-9`` in the denominator.

    A map with **no positive relevance** (all zero, as the engine returns for a constant map) is treated as a
    constant map: the share of the map the target tiles cover (``0.5`` for two of four equal tiles), what a map
    without information scores; Quantus returns ``0`` there.

    Args:
        maps: ``(M, H, W)`` (or ``(M, 1, H, W)``) maps of :attr:`Mosaics.images`, each explained for its
            mosaic's :attr:`~Mosaics.targets`.
        positions: ``(M, 4)`` bool: :attr:`Mosaics.positions` (top-left, top-right, bottom-left, bottom-right).

    Returns:
        ``(M,)`` float32 in ``[0, 1]``; higher is better, ``0.5`` is chance.

    Example:
        >>> maps = torch.zeros(1, 4, 6)       # a mosaic of 2 x 3 tiles
        >>> maps[0, 0, 3:] = 1.0              # all on the top-right tile
        >>> focus(maps, torch.tensor([[False, True, True, False]]))
        tensor([1.])
        >>> focus(torch.zeros(1, 4, 6), torch.tensor([[False, True, True, False]]))  # nothing: chance
        tensor([0.5000])
    """
    maps = as_maps(maps)
    positions = torch.as_tensor(positions, device=maps.device).bool()
    if tuple(positions.shape) != (maps.shape[0], 4):
        raise ValueError(
            f"positions must be ({maps.shape[0]}, 4), one flag per tile of each map, got {tuple(positions.shape)}"
        )
    height, width = maps.shape[-2:]
    top, left = height // 2, width // 2
    mass = maps.clamp_min(0)
    quadrants = [mass[:, :top, :left], mass[:, :top, left:], mass[:, top:, :left], mass[:, top:, left:]]
    sums = torch.stack([q.sum(dim=(1, 2), dtype=torch.float64) for q in quadrants], dim=1)  # (M, 4)
    areas = torch.tensor([q.shape[1] * q.shape[2] for q in quadrants], dtype=torch.float64, device=maps.device)
    total = sums.sum(dim=1)
    inside = (sums * positions).sum(dim=1)
    chance = (areas * positions).sum(dim=1) / (height * width)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), chance).float()
