"""The callback's settings: checked once, when it is built, and frozen.

:class:`CAMDisplay` groups how the maps are shown (like Lightning's ``RichProgressBarTheme`` groups a progress
bar's styles); :class:`CAMSettings` is everything ``CAMCallback(...)`` was given, checked (each message names the
argument, the value and what would be accepted, see :mod:`cam_callback._checks`). The parts of the callback
take the values they need from it; nothing in it changes after construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from cam_callback._batch import BatchToImages, FixedBatch
from cam_callback._checks import (
    LayerSpec,
    TargetSpec,
    check_batch_to_images,
    check_flag,
    check_images,
    check_layers,
    check_max_overhead,
    check_mean_std,
    check_methods,
    check_name,
    check_on_error,
    check_positive_int,
    check_target,
)
from cam_callback.measures import DEFAULT_MEASURES, Measure, Setting, resolve_measures
from cams.overlay import colorize

__all__ = ["CAMDisplay", "CAMSettings", "build_settings"]


@dataclass(frozen=True)
class CAMDisplay:
    """How the callback shows the maps: the overlays' colour map and weight, and the timeline's length.

    Args:
        alpha: weight of the colour map in the overlays, in ``[0, 1]``.
        colormap: OpenCV colour map name (``"jet"``, ``"turbo"``, ``"viridis"``, ...).
        timeline_rows: how many of the latest runs the ``cam/<method>/timeline`` image shows beside the first;
            ``None`` for no timeline.

    Raises:
        ValueError: a value out of range or an unknown colour map (with the known ones).

    Example:
        >>> CAMDisplay(alpha=0.4, colormap="turbo")
        CAMDisplay(alpha=0.4, colormap='turbo', timeline_rows=8)
        >>> CAMDisplay(alpha=2)
        Traceback (most recent call last):
        ...
        ValueError: CAMDisplay(alpha=2): expected a number in [0, 1], e.g. 0.5
    """

    alpha: float = 0.5
    colormap: str = "jet"
    timeline_rows: int | None = 8

    def __post_init__(self) -> None:
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"CAMDisplay(alpha={alpha!r}): expected a number in [0, 1], e.g. 0.5")
        object.__setattr__(self, "alpha", float(alpha))
        try:
            colorize(torch.zeros(1, 1, 1), self.colormap)
        except ValueError as err:
            raise ValueError(f"CAMDisplay(colormap={self.colormap!r}): {err}") from err
        rows = self.timeline_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(
                f"CAMDisplay(timeline_rows={rows!r}): expected how many of the latest runs to show beside the first, "
                "e.g. 8, or None for no timeline"
            )


@dataclass(frozen=True)
class CAMSettings:
    """Everything a ``CAMCallback`` was built with, checked (see ``CAMCallback`` for each argument).

    Attributes beyond the arguments: ``user_batch``, the fixed batch made from ``images=`` (``None`` when it is
    taken from the validation data); ``regions``, boxes/masks/spurious regions given for the validation data's
    images; ``required``, the names of the measures asked for explicitly (a fixed batch that cannot serve one
    stops the fit before training; the others run where the batch allows); ``images_digest``, a digest of
    ``images=`` for the callback's ``state_key``.
    """

    methods: tuple[str, ...]
    target_layers: list[LayerSpec] | None = None
    target: TargetSpec = "pred"
    reshape_transform: Callable[[Tensor], Tensor] | None = None
    aug_smooth: bool = False
    eigen_smooth: bool = False
    user_batch: FixedBatch | None = None
    regions: Mapping[str, Tensor] = field(default_factory=dict)
    num_images: int = 8
    batch_to_images: BatchToImages | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    every_n_epochs: int = 1
    every_n_steps: int | None = None
    max_overhead: float | None = None
    measures: tuple[Measure, ...] = ()
    required: frozenset[str] = frozenset()
    display: CAMDisplay = field(default_factory=CAMDisplay)
    on_error: Literal["warn", "raise"] = "warn"
    name: str | None = None
    report: bool = False
    images_digest: str | None = None

    def measure(self, name: str) -> Measure | None:
        """The measure of that name, if it is measured."""
        return next((m for m in self.measures if m.name == name), None)


def build_settings(
    method: str,
    methods: Sequence[str] | None,
    target_layers: Any,
    target: Any,
    reshape_transform: Any,
    aug_smooth: Any,
    eigen_smooth: Any,
    images: Any,
    num_images: Any,
    batch_to_images: Any,
    mean: Any,
    std: Any,
    every_n_epochs: Any,
    every_n_steps: Any,
    max_overhead: Any,
    measures: Sequence[str | Measure] | None,
    display: Any,
    on_error: Any,
    name: Any,
    report: Any = False,
) -> CAMSettings:
    """Check ``CAMCallback``'s arguments and freeze them (see ``CAMCallback`` for each).

    Raises:
        ValueError, TypeError: naming the argument, the value and what would be accepted.
    """
    names = check_methods(method, methods)
    layers = check_layers(target_layers)
    target = check_target(target)
    if reshape_transform is not None and not callable(reshape_transform):
        raise TypeError(f"CAMCallback(reshape_transform={reshape_transform!r}): expected a function of a tensor")
    if display is None:
        display = CAMDisplay()
    elif not isinstance(display, CAMDisplay):
        raise TypeError(f"CAMCallback(display={display!r}): expected a cam_callback.CAMDisplay(alpha=..., ...)")
    chosen = resolve_measures(DEFAULT_MEASURES if measures is None else measures)
    for measure in chosen:
        measure.check(Setting(names, layers))
    user_batch, regions = check_images(images, target)
    mean, std = check_mean_std(mean, std)
    every_n_steps = None if every_n_steps is None else check_positive_int("every_n_steps", every_n_steps)
    return CAMSettings(
        methods=names,
        target_layers=layers,
        target=target,
        reshape_transform=reshape_transform,
        aug_smooth=check_flag("aug_smooth", aug_smooth),
        eigen_smooth=check_flag("eigen_smooth", eigen_smooth),
        user_batch=user_batch,
        regions=regions,
        num_images=check_positive_int("num_images", num_images),
        batch_to_images=check_batch_to_images(batch_to_images),
        mean=mean,
        std=std,
        every_n_epochs=check_positive_int("every_n_epochs", every_n_epochs),
        every_n_steps=every_n_steps,
        max_overhead=check_max_overhead(max_overhead),
        measures=chosen,
        required=frozenset() if measures is None else frozenset(m.name for m in chosen),
        display=display,
        on_error=check_on_error(on_error),
        name=check_name(name),
        report=check_flag("report", report),
        images_digest=None if user_batch is None else digest(user_batch.images),
    )


def digest(images: Tensor) -> str:
    """A short, stable digest of a tensor's values (the ``state_key`` of ``images=``).

    Example:
        >>> digest(torch.zeros(2, 3)) == digest(torch.zeros(2, 3)), len(digest(torch.ones(1)))
        (True, 12)
    """
    raw = images.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes()
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:12]

