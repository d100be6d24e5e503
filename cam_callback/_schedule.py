"""When a CAM run is due: after every n-th epoch's validation (or training epoch), or every n optimizer steps.

Each function answers for one hook from the callback's ``every_n_epochs``/``every_n_steps`` and the
Trainer's counters; the callback's hooks add the rank and sanity-check guards.
"""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["due_after_epoch", "due_after_step", "due_after_validation"]


def due_after_validation(trainer: Trainer, every_n_epochs: int, every_n_steps: int | None) -> bool:
    """At the end of a validation epoch: always under ``trainer.validate``, else on the epoch schedule."""
    if trainer.state.fn == TrainerFn.VALIDATING:
        return True
    return due_after_epoch(trainer, every_n_epochs, every_n_steps)


def due_after_epoch(trainer: Trainer, every_n_epochs: int, every_n_steps: int | None) -> bool:
    """At the end of every ``every_n_epochs``-th epoch, unless runs are counted in steps."""
    return every_n_steps is None and (trainer.current_epoch + 1) % every_n_epochs == 0


def due_after_step(trainer: Trainer, every_n_steps: int | None, last_step: int) -> bool:
    """After every ``every_n_steps``-th optimizer step, once per step (``last_step``: the latest run's)."""
    step = trainer.global_step
    return every_n_steps is not None and step > 0 and step % every_n_steps == 0 and step != last_step
