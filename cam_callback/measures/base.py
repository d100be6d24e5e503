"""What a measure of the callback is, and what each run hands it.

A run explains the fixed batch, then asks every measure for numbers, in two places:

- :meth:`Measure.per_image` gets a :class:`Slice`: the images one process explained (all of them with one
  process), their maps and what the engine returned. It returns values per image, ``tag -> (k,)``; the
  processes' values are gathered like the maps (``cam_callback._distributed``) and :meth:`Measure.reduce`
  turns the whole batch's values into scalars. Measures that run the model (faithfulness, ROAD, the noise
  floor, ...) work here, each process on its own slice.
- :meth:`Measure.on_batch` gets a :class:`Whole`: the whole batch's maps after gathering, on the CPU, for
  the measures that read maps only and need every image at once (the shortcut ratio is taken over the batch).

A measure owns no state between runs and never sees the callback: it gets values and returns values.
Tags follow ``cam_<family>/<method>/<name>``; with ``scores_baselines`` the centre and seeded random
baseline maps (:mod:`cam_callback.measures.baselines`) are scored beside the methods, under the
pseudo-method names ``baseline_centre`` and ``baseline_random``.

To add a measure: subclass :class:`Measure` in a module of this package, give it a ``name``, and register it
in :data:`cam_callback.measures.MEASURES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cam_callback._batch import FixedBatch
from cams.state import frozen_model

__all__ = ["Measure", "Setting", "Slice", "Whole", "model_scores"]


@dataclass(frozen=True)
class Setting:
    """What the callback was asked to explain, for :meth:`Measure.check` (at construction).

    Attributes:
        methods: the canonical method names.
        layers: the ``target_layers`` given (``None``: chosen automatically).
    """

    methods: tuple[str, ...]
    layers: Sequence[Any] | None


@dataclass(frozen=True)
class Slice:
    """One process's share of a run: the images it explained and what the engine gave for them.

    Attributes:
        model: the LightningModule.
        x: the images ``(k, C, H, W)`` (volumes ``(k, C, D, H, W)``) as the model takes them, on its device.
        batch: the same images with their labels, boxes, masks and spurious regions (on the CPU).
        rows: which images of the fixed batch they are, ``(k,)`` long.
        images: the whole fixed batch ``(N, ...)`` on the CPU (draws are made for the whole batch, then sliced,
            so a value does not depend on the number of processes).
        maps: method -> ``(k, H, W)`` (``(k, D, H, W)``) maps in ``[0, 1]`` on ``x``'s device.
        baselines: baseline name -> maps of the same shape on ``x``'s device (empty unless asked for).
        classes: what the maps explain, for the measures that score the model: the engine's ``(k,)`` classes, or
            a task target with its choices made explicit (its predicted mask, its classes above a threshold).
        engine_classes: the engine's ``(k,)`` classes (``None`` for a callable target).
        targets: the ``targets`` the engine was called with.
        explain: ``explain(images, targets) -> CamMaps``, the run's engine call (methods, smoothing) on other
            images of the same shape.
        layers: the explained layers' dotted names.
        reshape_transform: the user's ``reshape_transform`` (``None``: layouts found by the engine).
        forward_context: the Trainer's precision context, entered around every forward a measure runs.
        convert_input: the Trainer's precision conversion of model inputs.
        world_size: how many processes share the fixed batch (each explains ``rows_for(N, world_size, rank)``); a
            measure that works on part of a slice makes every process do the same number of forwards (a sharded
            model's forward is a collective).
        labels: the whole fixed batch's ``(N,)`` labels on the CPU, or ``None`` (Focus builds its mosaics from
            images of the whole batch, as ``images``).
    """

    model: nn.Module
    x: Tensor
    batch: FixedBatch
    rows: Tensor
    images: Tensor
    maps: dict[str, Tensor]
    classes: Any
    engine_classes: Tensor | None
    targets: Any
    explain: Callable[[Tensor, Any], Any]
    layers: list[str]
    baselines: dict[str, Tensor] = field(default_factory=dict)
    reshape_transform: Callable[[Tensor], Tensor] | None = None
    forward_context: Callable[[], AbstractContextManager[Any]] = torch.no_grad
    convert_input: Callable[[Tensor], Tensor] = lambda x: x
    world_size: int = 1
    labels: Tensor | None = None

    def scored(self, baselines: bool) -> dict[str, Tensor]:
        """The maps a measure scores: the methods', and the baselines' when it ``scores_baselines``."""
        return {**self.maps, **self.baselines} if baselines else dict(self.maps)


@dataclass(frozen=True)
class Whole:
    """The whole fixed batch's maps after a run, gathered from every process, on the CPU.

    Attributes:
        batch: the fixed batch.
        maps: method -> ``(N, H, W)`` (``(N, D, H, W)``) maps in ``[0, 1]``.
        baselines: baseline name -> maps of the same shape (empty unless asked for).
    """

    batch: FixedBatch
    maps: dict[str, Tensor]
    baselines: dict[str, Tensor] = field(default_factory=dict)

    def scored(self, baselines: bool) -> dict[str, Tensor]:
        """The maps a measure scores: the methods', and the baselines' when it ``scores_baselines``."""
        return {**self.maps, **self.baselines} if baselines else dict(self.maps)


class Measure:
    """One measure the callback takes at every run (see the module docstring).

    Class attributes:
        name: the measure's name in ``CAMCallback(measures=[...])``.
        scores_baselines: the centre and random baseline maps are scored too (when ``"baselines"`` is measured).
        nan_is_undefined: per-image values may be ``nan`` where the measure is undefined for an image (an image
            without an object); :meth:`reduce` then averages over the others. Otherwise a ``nan`` is a result
            and stays in the mean.
    """

    name: ClassVar[str] = ""
    scores_baselines: ClassVar[bool] = False
    nan_is_undefined: ClassVar[bool] = False

    def check(self, setting: Setting) -> None:
        """Refuse, at construction, a configuration this measure can never serve (raise ``ValueError``)."""

    def problem(self, batch: FixedBatch) -> str | None:
        """Why this measure cannot run on ``batch`` (``None`` when it can); asked before training."""
        return None

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        """Values per image of ``part``: ``tag -> (k,)`` float32 on ``part.x``'s device."""
        return {}

    def reduce(self, values: dict[str, Tensor]) -> dict[str, float]:
        """The whole batch's per-image values (``tag -> (N,)``) as scalars: their means."""
        mean = torch.nanmean if self.nan_is_undefined else torch.mean
        return {tag: float(mean(value.float())) for tag, value in values.items()}

    def on_batch(self, whole: Whole) -> dict[str, float]:
        """Scalars from the whole batch's maps (gathered, on the CPU)."""
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


def model_scores(
    measure: Callable[..., dict[str, Tensor]], part: Slice, cam: Tensor, **options: Any
) -> dict[str, Tensor]:
    """``measure(model, x, cam, targets=classes, **options)`` (faithfulness, ROAD: ``name -> (k,)``) with the
    model frozen, without autograd, in the precision context; each value as float32."""
    with frozen_model(part.model), torch.no_grad(), part.forward_context():
        scores = measure(part.model, part.x, cam, targets=part.classes, **options)
    return {key: value.float() for key, value in scores.items()}
