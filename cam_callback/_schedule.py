"""When a CAM run is due, in terms of what Lightning's fit loop actually runs.

- ``every_n_steps``: after every n-th optimizer step (``trainer.global_step``), whatever the validation.
- ``every_n_epochs``: once per n-th training epoch, after all of that epoch's work: at the end of the
  validation Lightning runs after the epoch's last training batch when there is one, else at the end of
  the training epoch. Mid-epoch validations (``val_check_interval < 1`` or an interval in batches or time)
  do not count, and epochs without validation (``check_val_every_n_epoch > 1``, no validation data) are
  explained at their end all the same, so the schedule never depends on the validation settings.
- ``trainer.validate``: one run at the end of validation, unless it would only repeat the latest point
  (the same weights to the same loggers, e.g. ``validate`` right after ``fit``): see :class:`LastRun`.

:func:`never_fires` names fits in which the schedule can log nothing after the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

__all__ = [
    "LastRun",
    "due_after_epoch",
    "due_after_step",
    "due_after_validation",
    "never_fires",
    "weights_fingerprint",
]


def due_after_validation(trainer: Trainer, every_n_epochs: int, every_n_steps: int | None) -> bool:
    """At the end of a validation: always under ``trainer.validate``; while fitting, only the validation
    that follows the epoch's last training batch, on the epoch schedule."""
    if trainer.state.fn == TrainerFn.VALIDATING:
        return True
    ends_epoch = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
    return ends_epoch and due_after_epoch(trainer, every_n_epochs, every_n_steps)


def due_after_epoch(trainer: Trainer, every_n_epochs: int, every_n_steps: int | None) -> bool:
    """At the end of every ``every_n_epochs``-th epoch, unless runs are counted in steps."""
    return every_n_steps is None and (trainer.current_epoch + 1) % every_n_epochs == 0


def due_after_step(trainer: Trainer, every_n_steps: int | None, last_step: int) -> bool:
    """After every ``every_n_steps``-th optimizer step, once per step (``last_step``: the latest run's)."""
    step = trainer.global_step
    return every_n_steps is not None and step > 0 and step % every_n_steps == 0 and step != last_step


def weights_fingerprint(module: nn.Module) -> Tensor:
    """``(2,)`` float64 on the CPU: the sum and the sum of squares of a sample of every parameter and buffer.

    Each tensor is read at up to 4,096 evenly strided elements: an optimizer step or a loaded checkpoint
    changes them all, so two equal fingerprints mean the same weights for any practical purpose, at a cost
    that hardly grows with the model (ResNet-50 on a loaded 2-core CPU: 30 ms instead of 300 ms of float64
    copies). Used to tell a repeated explanation from a new one. Sharded parameters (FSDP2's ``DTensor``) count
    with this rank's shard: no collective.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> torch.equal(weights_fingerprint(net), weights_fingerprint(net))
        True
    """
    tensors = [_local(t.detach()) for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if not tensors:
        return torch.zeros(2, dtype=torch.float64)
    device = tensors[0].device
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    samples = [_strided(t).to(dtype) for t in tensors]
    sums = [torch.stack([v.sum(), v.square().sum()]).to(device) for v in samples]
    return torch.stack(sums).sum(dim=0).cpu().double()  # one transfer


def _strided(t: Tensor, most: int = 4096) -> Tensor:
    """Up to ``most`` evenly strided elements of ``t``, flattened."""
    flat = t.reshape(-1)
    return flat[:: max(1, flat.numel() // most)]


def _local(t: Tensor) -> Tensor:
    """This rank's shard of a ``DTensor``; any other tensor as it is."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


@dataclass
class LastRun:
    """The latest run: its global step, the weights it explained and where it logged them (``state_dict``'d).

    Attributes:
        step: ``trainer.global_step`` of the latest run (or skipped run); ``-1`` before any.
        fingerprint: :func:`weights_fingerprint` of the weights it explained, or ``None``.
        destination: where it logged (``cam_callback._logging.destination``), or ``None``.
    """

    step: int = -1
    fingerprint: Tensor | None = None
    destination: str | None = None

    def repeated_by(self, fingerprint: Tensor, destination: str) -> bool:
        """Whether a run now would repeat this one: the same weights, logged to the same place.

        Example:
            >>> last = LastRun(3, torch.tensor([1.0, 2.0], dtype=torch.float64), "tb:0")
            >>> last.repeated_by(torch.tensor([1.0, 2.0], dtype=torch.float64), "tb:0"), last.repeated_by(
            ...     torch.tensor([1.0, 2.0], dtype=torch.float64), "tb:1")
            (True, False)
        """
        return (
            self.fingerprint is not None
            and destination == self.destination
            and torch.equal(fingerprint, self.fingerprint.to(fingerprint.dtype))
        )


def never_fires(trainer: Trainer, every_n_epochs: int, every_n_steps: int | None) -> str | None:
    """Why this fit can log nothing after the baseline (``None`` when it can), from the Trainer's limits.

    Call once the training dataloader is set up (``on_train_start``): the number of optimizer steps per
    epoch is ``ceil(num_training_batches / accumulate_grad_batches)``. Early stopping and ``max_time``
    cannot be foreseen and are not counted.
    """
    batches = float(trainer.num_training_batches)
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else math.inf
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
    max_steps = trainer.max_steps if trainer.max_steps >= 0 else math.inf
    limits = f"max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}, {per_epoch} optimizer steps per epoch"
    if every_n_steps is not None:
        steps = min(max_steps, per_epoch * max_epochs) if per_epoch > 0 else 0.0
        if steps < every_n_steps:
            return (
                f"CAMCallback(every_n_steps={every_n_steps}) will log nothing after the baseline: this fit runs "
                f"at most {steps} optimizer steps ({limits}); use every_n_steps <= {max(int(steps), 1)}"
            )
        return None
    if per_epoch == 0:
        epochs: float = 0
    else:  # a fit stopped by max_steps still ends its last, partial epoch
        epochs = min(max_epochs, math.ceil(max_steps / per_epoch) if math.isfinite(max_steps) else math.inf)
    if epochs < every_n_epochs:
        return (
            f"CAMCallback(every_n_epochs={every_n_epochs}) will log nothing after the baseline: this fit ends at "
            f"most {epochs} training epochs ({limits}); use every_n_epochs <= {max(int(epochs), 1)} or every_n_steps"
        )
    return None
