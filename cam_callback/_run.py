"""One CAM run: explain the fixed batch, gather it, and turn it into the run's scalars.

:func:`explain_run` is the whole computation of a run, on every process, from values the callback hands it (its
settings, the fixed batch, the engine, the measures that run, the map history); it logs nothing and changes
nothing it is given. Step by step:

1. each process explains its slice of the fixed batch (:func:`cam_callback._distributed.rows_for`; the whole
   batch for targets that cannot be split) with global rank zero's buffers, and asks every measure for its
   values per image on that slice (:meth:`cam_callback.measures.Measure.per_image`);
2. the maps, the predictions and the per-image values are gathered onto every process (``all_gather``), so
   every process holds the whole batch's, on the CPU;
3. every process computes the same scalars from them: the drift against the history (maps that carry no
   information left out), each measure's reduction of its per-image values, what the measures read from the
   whole batch's maps (:meth:`~cam_callback.measures.Measure.on_batch`), the share of blank maps
   (:mod:`cam_callback._health`); and what each part cost on global rank zero, in seconds:
   ``cam_cost/explain/shared`` (the engine's shared forward and backward), ``cam_cost/explain/<method>`` (a
   method's weighing and the inputs it was first to need, e.g. Score-CAM's masked forwards) and
   ``cam_cost/measure/<name>``; the callback adds ``cam_cost/overhead`` and, from the background image log,
   ``cam_cost/logging``.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._checks import TargetSpec
from cam_callback._distributed import gather_rows, rank_zero_buffers, rows_for, share, splits, take_rows, together
from cam_callback._health import cause_reasons, health_codes, health_scalars
from cam_callback._history import MapHistory
from cam_callback._logging import CamLogWriter
from cam_callback._publish import warn
from cam_callback._settings import CAMSettings
from cam_callback._volumes import fixed_target
from cam_callback.measures import Baselines, Measure, Slice, Whole, baseline_maps
from cams.health import DegenerateMapWarning

__all__ = ["Failures", "RunResult", "engine_targets", "explain_run", "predictions"]


@dataclass(frozen=True)
class RunResult:
    """What one run computed, the same on every process.

    Attributes:
        maps: method -> the whole fixed batch's maps ``(N, H, W)`` (volumes ``(N, D, H, W)``) on the CPU.
        preds: each image's predicted class ``(N,)``, or ``None`` when the output has no class scores.
        fixed: the target with its choices made explicit (a task target's predicted mask, for the outlines).
        scalars: tag -> value: drift, every measure and the share of blank maps.
        layers: the explained layers' dotted names.
        seconds: this process's wall time per part: ``explain/shared`` (the engine's shared pass),
            ``explain/<method>``, ``measure/<name>`` (for the ``cam_cost/...`` scalars).
        health: method -> each image's cause code ``(N,)`` long, 0 where the map carries information
            (:data:`cam_callback._health.CAUSE_CODES`).
        reasons: method -> cause -> the engine's reason, from this process's images.
    """

    maps: dict[str, Tensor]
    preds: Tensor | None
    fixed: Any
    scalars: dict[str, float]
    layers: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    health: dict[str, Tensor] = field(default_factory=dict)
    reasons: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def blank(self) -> dict[str, Tensor]:
        """method -> ``(N,)`` bool: the maps that carry no information."""
        return {method: codes != 0 for method, codes in self.health.items()}


class Failures:
    """What happens to a run that fails after the fit-start probe passed (or whose images failed to be written).

    ``on_error="raise"`` re-raises it; ``"warn"`` reports each distinct failure once, with its traceback, and the
    run is skipped (training goes on).

    Example:
        >>> import warnings
        >>> failures = Failures("warn")
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     for _ in range(2):
        ...         with failures.guard(step=3):
        ...             raise ValueError("no")
        >>> len(seen)
        1
    """

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.reported: set[str] = set()

    @contextlib.contextmanager
    def guard(self, step: int, writer: CamLogWriter | None = None, log_step: int | None = None) -> Iterator[None]:
        """Run the block; a failure in it is raised or reported (see the class docstring), and noted in ``writer``'s
        record at ``log_step`` (default ``step``, the global step the message names)."""
        try:
            yield
        except Exception as err:
            if self.on_error == "raise":
                raise
            key = f"{type(err).__name__}: {err}"
            if key not in self.reported:
                self.reported.add(key)
                message = (
                    f"CAMCallback: the CAM run at global step {step} failed and was skipped (training goes on; pass "
                    "on_error='raise' to stop instead). Further identical failures are skipped silently.\n"
                    f"{traceback.format_exc()}"
                )
                warn(writer, message, RuntimeWarning, step if log_step is None else log_step, "failed")


def engine_targets(batch: FixedBatch, target: TargetSpec, device: torch.device) -> Any:
    """The ``targets`` for :class:`cams.CamEngine`: ``None`` (predicted class), the labels, one class, or the
    user's task target or callable as it is."""
    if not isinstance(target, (str, int)):
        return target
    if target == "pred":
        return None
    if target == "label":
        assert batch.labels is not None
        return batch.labels.to(device)
    return int(target)


def predictions(result: Any, target: TargetSpec) -> Tensor | None:
    """Each image's predicted class ``(N,)`` on the maps' device, from the engine's logits (or classes for "pred")."""
    logits = getattr(result, "logits", None)
    if isinstance(logits, Tensor) and logits.dim() == 2:
        return logits.detach().argmax(dim=1)
    classes = getattr(result, "classes", None)
    if target == "pred" and isinstance(classes, Tensor):
        return classes.detach()
    return None


def explain_run(
    trainer: Trainer,
    pl_module: LightningModule,
    engine: Any,
    settings: CAMSettings,
    batch: FixedBatch,
    measures: Sequence[Measure],
    history: MapHistory,
) -> RunResult:
    """One run on every process (see the module docstring); the same :class:`RunResult` on every process.

    Args:
        trainer: the Trainer (its strategy for the collectives, its precision plugin for the forwards).
        pl_module: the model being trained.
        engine: the callback's :class:`cams.CamEngine` on ``pl_module``.
        settings: the callback's settings (methods, target, smoothing).
        batch: the fixed batch, the same on every process.
        measures: the measures that run on this batch.
        history: the earlier runs' maps, for the drift (read, not changed).
    """
    n = len(batch)
    split = splits(settings.target)
    rows = rows_for(n, trainer.world_size, trainer.global_rank) if split else torch.arange(n)
    # the checkpointed model's BatchNorm statistics on every rank; blank maps are said once, by the callback
    with rank_zero_buffers(trainer, pl_module), warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateMapWarning)
        part, fixed, layers, seconds, reasons = together(
            trainer, lambda: _explain_rows(trainer, pl_module, engine, settings, batch, measures, rows)
        )
    whole = gather_rows(trainer, part, n, split)
    maps = {m: whole[f"map/{m}"] for m in settings.methods}
    preds = whole.get("pred")
    health = {m: whole[f"health/{m}"] for m in settings.methods}

    scalars = history.drift(maps, preds, {m: codes != 0 for m, codes in health.items()})
    scalars.update(health_scalars(health))
    base = _baselines(measures, (n, *next(iter(maps.values())).shape[1:]), torch.device("cpu"))
    for i, measure in enumerate(measures):
        started, prefix = time.perf_counter(), f"metric/{i}/"
        scalars.update(measure.reduce({k[len(prefix) :]: v for k, v in whole.items() if k.startswith(prefix)}))
        scalars.update(measure.on_batch(Whole(batch, maps, base if measure.scores_baselines else {})))
        seconds[f"measure/{measure.name}"] += time.perf_counter() - started
    # what each part cost, global rank zero's (every rank logs the same scalars)
    scalars.update({f"cam_cost/{part}": value for part, value in share(trainer, seconds).items()})
    return RunResult(maps, preds, fixed, scalars, layers, seconds, health, reasons)


def _baselines(measures: Sequence[Measure], shape: tuple[int, ...], device: torch.device) -> dict[str, Tensor]:
    """The baseline maps for the whole batch when ``"baselines"`` runs (and a measure scores them), else ``{}``."""
    wanted = any(isinstance(m, Baselines) for m in measures) and any(m.scores_baselines for m in measures)
    return baseline_maps(shape, device) if wanted else {}


def _explain_rows(
    trainer: Trainer,
    pl_module: LightningModule,
    engine: Any,
    settings: CAMSettings,
    batch: FixedBatch,
    measures: Sequence[Measure],
    rows: Tensor,
) -> tuple[dict[str, Tensor], Any, list[str], dict[str, float], dict[str, dict[str, str]]]:
    """The fixed batch's ``rows`` explained on ``pl_module.device``: ``map/<method>`` ``(k, H, W)``,
    ``health/<method>`` ``(k,)`` cause codes, ``pred`` ``(k,)`` and ``metric/<i>/<tag>`` ``(k,)`` per-image values
    of measure ``i``, on that device; the target with its choices made explicit; the explained layers; the
    seconds each part took here; the engine's reasons for the blank maps (method -> cause -> reason)."""
    part = take_rows(batch, rows)
    plugin = trainer.precision_plugin
    x = plugin.convert_input(part.images.to(pl_module.device))  # the images move to the device once per run
    targets = engine_targets(part, settings.target, x.device)

    def explain(images: Tensor, targets: Any) -> Any:
        with plugin.forward_context():
            return engine(images, methods=settings.methods, targets=targets, aug_smooth=settings.aug_smooth,
                          eigen_smooth=settings.eigen_smooth)  # fmt: skip

    result = explain(x, targets)
    seconds = {f"explain/{part}": value for part, value in (result.seconds or {}).items()}
    fixed = fixed_target(pl_module, x, targets, plugin.forward_context)  # a task target's choices, made explicit
    layers = list(engine.layer_names)
    maps = {m: result[m].detach().float() for m in settings.methods}
    out = {f"map/{m}": cam for m, cam in maps.items()}
    out.update(health_codes(result, settings.methods, x.device))
    preds = predictions(result, settings.target)
    if preds is not None:
        out["pred"] = preds
    whole_shape = (len(batch), *next(iter(maps.values())).shape[1:])
    base = {k: v[rows.to(v.device)] for k, v in _baselines(measures, whole_shape, x.device).items()}
    inputs = Slice(
        model=pl_module,
        x=x,
        batch=part,
        rows=rows,
        images=batch.images,
        maps=maps,
        classes=result.classes if fixed is targets else fixed,
        engine_classes=result.classes,
        targets=targets,
        explain=explain,
        layers=layers,
        baselines=base,
        reshape_transform=settings.reshape_transform,
        forward_context=plugin.forward_context,
        convert_input=plugin.convert_input,
        world_size=trainer.world_size if splits(settings.target) else 1,
        labels=batch.labels,
    )
    for i, measure in enumerate(measures):
        started = time.perf_counter()
        out.update({f"metric/{i}/{tag}": value for tag, value in measure.per_image(inputs).items()})
        seconds[f"measure/{measure.name}"] = time.perf_counter() - started
    return out, fixed, layers, seconds, cause_reasons(result)

