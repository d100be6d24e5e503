"""Where a run's scalars go: the loggers, at the step of Lightning's own metrics, and ``trainer.callback_metrics``.

The loggers get every scalar from the callback's writer (each logger's own key rules, the callback's name in
the tag) at :func:`log_step`: the step Lightning logs its own metrics of that moment at, so an epoch's
``val_loss``, its CAM scalars and its images share one step. ``trainer.callback_metrics`` gets the same
tags: runs at the end of a validation epoch (or of a training epoch) put them there with
``pl_module.log(..., logger=False, on_epoch=True)``, where ``ModelCheckpoint(monitor=...)`` and
``EarlyStopping(monitor=...)`` read them; with several processes every rank computes them from the gathered
maps and per-image values (:mod:`cam_callback._distributed`), so every rank logs the same values (a
monitoring callback runs on every rank). Runs Lightning gives no
epoch-level logging slot to (the baseline before the first step, runs every ``n`` steps) go into every rank's
``trainer.callback_metrics`` directly.

The callback's warnings go out through :func:`warn`: Lightning's ``rank_zero_warn``, and a line with their step
in the callback's record (:mod:`cam_callback._record`), where ``cam-callback report`` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from cam_callback._logging import CamLogWriter, prefixed
from cam_callback.measures.shortcut import ShortcutWarning

__all__ = ["EPOCH_END_HOOKS", "log_step", "publish", "say_verdict", "warn"]

EPOCH_END_HOOKS = frozenset({"on_validation_epoch_end", "on_train_epoch_end"})
"""Hooks whose runs fill ``callback_metrics`` through ``pl_module.log`` (Lightning allows epoch-level logging there)."""


def log_step(trainer: Trainer, hook: str) -> int:
    """The step Lightning logs the metrics of ``hook`` at.

    Lightning counts logging steps in ``fit_loop.epoch_loop._batches_that_stepped`` (its own
    ``LearningRateMonitor`` and ``DeviceStatsMonitor`` log at it); at the end of a training epoch the
    epoch metrics go one step back (``fit_loop.on_advance_end``). That is ``global_step - 1`` after an epoch
    for a single optimizer, and 0 before the first step. Falls back to ``trainer.global_step``.
    """
    stepped = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
    if not isinstance(stepped, int):
        return int(trainer.global_step)
    if hook == "on_train_epoch_end":
        stepped -= 1
    return max(stepped, 0)


def publish(
    trainer: Trainer,
    pl_module: LightningModule,
    writer: CamLogWriter | None,
    scalars: Mapping[str, float],
    step: int,
    hook: str,
    name: str | None = None,
) -> None:
    """Log ``scalars`` where the loggers, Lightning and its callbacks see them (see the module docstring).

    Args:
        trainer: the Trainer.
        pl_module: the LightningModule (its ``log`` is used at the end of epochs).
        writer: rank 0's writer; ``None`` on other ranks.
        scalars: tag -> value.
        step: the step from :func:`log_step`.
        hook: the hook the run happened in.
        name: the callback's name in its tags (``cam_drift/<name>/...``), or ``None``.
    """
    if not scalars:
        return
    if writer is not None:
        writer.scalars(scalars, step)
        writer.flush()
    tagged = {prefixed(tag, name): float(value) for tag, value in scalars.items()}
    if hook in EPOCH_END_HOOKS:
        distributed = trainer.world_size > 1
        for key, value in tagged.items():
            pl_module.log(
                key,
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=False,
                logger=False,  # the writer logs them, with each logger's own key rules
                sync_dist=distributed,  # identical on every rank: "max" gives it back exactly
                reduce_fx="max",
                batch_size=1,
            )
        return
    trainer.callback_metrics.update({key: torch.tensor(value) for key, value in tagged.items()})


def warn(writer: CamLogWriter | None, message: str | None, category: type[Warning], step: int, kind: str) -> None:
    """Warn with ``message`` on global rank zero and note it, with its ``step``, in the callback's record.

    Args:
        writer: rank 0's writer (its record gets the line); ``None`` on other ranks.
        message: the warning's words; ``None`` notes an event of ``kind`` without warning again (a further run
            skipped under ``max_overhead``).
        category: the warning's class (``ShortcutWarning``, ``UserWarning``, ...).
        step: the logging step the warning belongs to.
        kind: what the report calls it: ``"shortcut"``, ``"skipped"``, ``"failed"``, ...
    """
    if message is not None:
        rank_zero_warn(message, category=category, stacklevel=5)
    if writer is not None:
        writer.record.warning(step, kind, message)


def say_verdict(writer: CamLogWriter | None, verdict: str, message: str, step: int) -> None:
    """Say a verdict of :meth:`cam_callback.measures.ShortcutWatch.check` on global rank zero: ``"shortcut"`` as a
    :class:`~cam_callback.measures.ShortcutWarning` (noted in the record), ``"salient"`` as the quieter note
    (Lightning's INFO log, not a warning: attention on a region the model does not rely on)."""
    if verdict == "shortcut":
        warn(writer, message, ShortcutWarning, step, "shortcut")
    elif verdict == "salient":
        rank_zero_info(message)
