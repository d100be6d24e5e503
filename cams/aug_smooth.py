"""``aug_smooth``: the six test-time augmentations of the reference (horizontal flip × 0.9, 1, 1.1), and back.

The engine stacks the six augmented copies of a batch into one forward (:func:`augment`), gives every copy
the batch's targets (:func:`repeat_targets`), and averages the six maps once the flipped ones are flipped
back (:func:`deaugment`); the classes and scores it reports are those of the plain copy (:func:`plain_rows`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cams.targets import Target, Targets, select_rows

__all__ = ["AUG_FACTORS", "COPIES", "augment", "deaugment", "plain_rows", "repeat_targets"]

#: the factors each copy, unflipped and flipped, is multiplied by
AUG_FACTORS = (0.9, 1.0, 1.1)
#: augmented copies of the batch: unflipped and flipped, one per factor
COPIES = 2 * len(AUG_FACTORS)


def augment(x: torch.Tensor) -> torch.Tensor:
    """The six augmented copies of ``x`` (B, C, *spatial) stacked → (6B, C, *spatial): unflipped then flipped,
    each multiplied by 0.9, 1 and 1.1.

    Example:
        >>> augment(torch.tensor([[[[1.0, 2.0]]]]))[:, 0, 0].mul(10).round().tolist()
        [[9.0, 18.0], [10.0, 20.0], [11.0, 22.0], [18.0, 9.0], [20.0, 10.0], [22.0, 11.0]]
    """
    return torch.cat([_augment(x, flip, f) for flip in (False, True) for f in AUG_FACTORS])


def _augment(x: torch.Tensor, flip: bool, factor: float) -> torch.Tensor:
    return (x.flip(-1) if flip else x) * factor


def plain_rows(batch: int) -> slice:
    """The rows of the un-augmented copy (no flip, factor 1) among the six stacked copies of ``batch`` rows.

    Example:
        >>> plain_rows(4)
        slice(4, 8, None)
    """
    return slice(batch, 2 * batch)


def deaugment(maps: torch.Tensor, batch: int) -> torch.Tensor:
    """The mean of the six copies' maps (6B, *spatial), the flipped ones flipped back → (B, *spatial); undoes
    :func:`augment` on maps that follow the input.

    Example:
        >>> deaugment(augment(torch.tensor([[[[1.0, 3.0]]]]))[:, 0], 1).tolist()
        [[[1.0, 3.0]]]
    """
    per_aug = maps.view(2, len(AUG_FACTORS), batch, *maps.shape[1:])
    unflipped = torch.stack([per_aug[0], per_aug[1].flip(-1)])
    return unflipped.mean(dim=(0, 1))


def repeat_targets(targets: Targets, batch: int, times: int = COPIES) -> Targets:
    """Targets for the ``times`` stacked augmented copies of ``batch`` images: per-image targets repeated, the rest
    as given (a :class:`~cams.targets.Target` gets a fresh copy per augmented copy).

    Raises:
        ValueError: a target tied to the unflipped image's geometry (a given mask or given boxes).

    Example:
        >>> repeat_targets([3, 5], batch=2, times=3)
        [3, 5, 3, 5, 3, 5]
    """
    if isinstance(targets, Target):
        if targets.geometric:
            raise ValueError(
                f"aug_smooth flips the input horizontally, but targets={targets!r} is tied to the unflipped "
                "image (a given mask or given boxes); pass aug_smooth=False, or let the target choose from the "
                "model's output (SegmentationTarget(category) without mask=, DetectionTarget() without boxes=)"
            )
        return _Repeated(targets, batch, times)
    if targets is None or isinstance(targets, (int, np.integer)) or callable(targets):
        return targets
    if isinstance(targets, (torch.Tensor, np.ndarray)):
        flat = torch.as_tensor(targets).reshape(-1)
        return flat.repeat(times) if flat.numel() == batch else targets
    seq = list(targets)  # type: ignore[arg-type]
    return seq * times if len(seq) == batch else seq


class _Repeated(Target):
    """A user's :class:`~cams.targets.Target` for ``batch`` images, applied to ``times`` stacked copies.

    Each copy has its own fresh target, so a target that chooses from the output (classes above a
    threshold, a predicted mask) chooses from that copy's own forward, as ``targets=None`` does.
    """

    def __init__(self, target: Target, batch: int, times: int) -> None:
        self.batch = batch
        self.copies = [target.fresh() for _ in range(times)]
        self.classes = None if target.classes is None else target.classes.repeat(times)

    def __call__(self, output: Any, images: torch.Tensor) -> torch.Tensor:
        copy = images // self.batch
        if bool((copy == copy[0]).all()):
            return self.copies[int(copy[0])](output, images % self.batch)
        scores: list[torch.Tensor] = []
        order: list[torch.Tensor] = []
        for k in copy.unique().tolist():
            rows = (copy == k).nonzero()[:, 0]
            scores.append(self.copies[k](select_rows(output, rows), images[rows] % self.batch))
            order.append(rows)
        return torch.cat(scores)[torch.argsort(torch.cat(order))]
