"""The callback in a job of several processes: who explains which images, how the results reach every rank,
and how the ranks decide and fail together.

Every rank holds the same fixed batch: global rank 0 chooses it and :func:`share` broadcasts it. A run
splits the batch's ``N`` images into ``world_size`` contiguous slices of ``k = ceil(N / world_size)`` rows
(:func:`rows_for`); a slice that runs past the end repeats the last image, so every rank explains exactly
``k`` images. Equal shapes are what ``all_gather`` needs, and they give every rank the same number of
forwards, hence the same sequence of the collectives that a model with sharded parameters runs inside
its forward and backward. Each rank explains its slice on its own device, then :func:`gather_rows`
collects the per-image results (maps, predictions, per-image metrics) with ``trainer.strategy.all_gather``,
in rank order, drops the padding and moves them to the CPU: every rank then holds the whole batch's maps,
which are exactly a single process's, and global rank 0 alone logs them. A target other than
``"pred"``, ``"label"`` or a class index (a task target from :mod:`cams.targets`, a callable) may hold
per-image state that a slice cannot carry (classes, masks or boxes per image, choices made from the
output); with such a target every rank explains the whole batch (:func:`splits`) and nothing is gathered.

The ranks' parameters are the same model (replicated, or shards of one), but their buffers need not be:
FSDP2 never synchronises BatchNorm statistics, and DDP copies rank 0's at the start of each forward through
its wrapper, after which a training forward updates each rank's own. So during a run every rank explains
with global rank 0's buffers, the ones a checkpoint saves (:func:`rank_zero_buffers`), and gets its own
back afterwards.

A rank that waits in a collective the others never enter hangs the job, so:

- every rank runs the same collectives in the same order: the hooks decide from what all ranks share
  (``trainer.global_step``, the epoch, the callback's own state, which every rank updates alike);
  once-per-epoch decisions are also reduced (:func:`agree`), a decision only rank 0 can make is
  broadcast (:func:`share`);
- a failure is raised together (:func:`together`): each rank runs its part, an error flag is gathered, and
  when any rank failed every rank raises (its own error, or one naming the failing rank and its message);
- :func:`check_strategy` refuses at ``setup``, in one message, the strategies under which the explaining
  forward cannot run on the LightningModule itself.

With one process none of this costs anything: no collective is called.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from cam_callback._batch import FixedBatch

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

__all__ = [
    "agree",
    "check_strategy",
    "gather_rows",
    "rank_zero_buffers",
    "rows_for",
    "share",
    "splits",
    "take_rows",
    "together",
]

T = TypeVar("T")


def rows_for(n: int, world_size: int, rank: int) -> Tensor:
    """The indices of the images rank ``rank`` explains: ``k = ceil(n / world_size)`` of them.

    Rank ``r`` takes rows ``r k, ..., r k + k - 1``; indices past ``n - 1`` repeat ``n - 1`` (padding that
    :func:`gather_rows` drops), so every rank gets ``k`` rows and the slices, in rank order, start with
    rows ``0, ..., n - 1``.

    Example:
        >>> [rows_for(5, 3, rank).tolist() for rank in range(3)]
        [[0, 1], [2, 3], [4, 4]]
        >>> [rows_for(4, 3, rank).tolist() for rank in range(3)]
        [[0, 1], [2, 3], [3, 3]]
        >>> rows_for(4, 1, 0).tolist()
        [0, 1, 2, 3]
    """
    if n < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rows_for: expected n >= 1 and 0 <= rank < world_size; got {n=}, {world_size=}, {rank=}")
    k = math.ceil(n / world_size)
    return torch.arange(rank * k, rank * k + k).clamp_max(n - 1)


def splits(target: Any) -> bool:
    """Whether the ranks can share out the images for ``target``: ``"pred"``, ``"label"`` (the labels are cut
    with the images) and a class index can; task targets and callables explain the whole batch on every rank.

    Example:
        >>> splits("pred"), splits(3), splits(lambda output: output[:, 0])
        (True, True, False)
    """
    return isinstance(target, (str, int))


def take_rows(batch: FixedBatch, rows: Tensor) -> FixedBatch:
    """The images (with their labels, boxes, masks and spurious regions) at ``rows`` of ``batch``, on the CPU."""
    return FixedBatch(
        batch.images[rows],
        labels=None if batch.labels is None else batch.labels[rows],
        boxes=None if batch.boxes is None else batch.boxes[rows],
        masks=None if batch.masks is None else batch.masks[rows],
        spurious=None if batch.spurious is None else batch.spurious[rows],
    )


def gather_rows(trainer: Trainer, parts: Mapping[str, Tensor], n: int, split: bool = True) -> dict[str, Tensor]:
    """Every rank's ``(k, ...)`` tensors as the whole batch's ``(n, ...)``, on the CPU of every rank.

    Call on every rank with the same keys, shapes and dtypes (the slices of :func:`rows_for` give them);
    one ``trainer.strategy.all_gather`` per key, in sorted key order. The rows come in rank order, so
    row ``i`` of the result is image ``i`` of the fixed batch; the padding is dropped. With one process,
    or ``split=False`` (every rank explained the whole batch), the tensors are only moved to the CPU.
    """
    gathered: dict[str, Tensor] = {}
    for key in sorted(parts):
        part = parts[key]
        if split and trainer.world_size > 1:
            stacked = trainer.strategy.all_gather(part.contiguous())  # (world_size, k, ...)
            part = stacked.reshape(-1, *part.shape[1:])
        gathered[key] = part[:n].cpu()
    return gathered


def together(trainer: Trainer, work: Callable[[], T], error: type[Exception] = RuntimeError) -> T:
    """Run ``work()`` on this rank; when it failed on any rank, raise on every rank.

    The rank that failed raises its own exception; the others raise ``error`` naming the first failing
    global rank and its message (one ``all_gather`` of a flag; one broadcast only after a failure).
    Call on every rank. A collective inside ``work`` (a sharded model's forward gathers its parameters)
    that some ranks reach and others do not, because they failed before it, still hangs: what comes
    before it must fail on every rank alike (the fit-start probe checks the configuration that way).

    Raises:
        Exception: ``work``'s own exception on the ranks where it failed, ``error`` on the others.
    """
    failure: Exception | None = None
    result: Any = None
    try:
        result = work()
    except Exception as err:
        failure = err
    if trainer.world_size > 1:
        strategy = trainer.strategy
        flag = torch.tensor([failure is not None], dtype=torch.int32, device=strategy.root_device)
        flags = strategy.all_gather(flag).reshape(-1).tolist()
        if any(flags):
            first = flags.index(1)
            text = None if failure is None else f"{type(failure).__name__}: {failure}"
            message = strategy.broadcast(text, src=first)
            if failure is None:
                raise error(f"CAMCallback failed on global rank {first}: {message}")
    if failure is not None:
        raise failure
    return result  # type: ignore[no-any-return]


def agree(trainer: Trainer, decision: bool) -> bool:
    """Whether any rank decided yes (``trainer.strategy.reduce_boolean_decision``); call on every rank."""
    if trainer.world_size == 1:
        return decision
    return bool(trainer.strategy.reduce_boolean_decision(decision, all=False))


def share(trainer: Trainer, obj: T) -> T:
    """Global rank 0's ``obj`` on every rank (``trainer.strategy.broadcast``); call on every rank."""
    if trainer.world_size == 1:
        return obj
    return trainer.strategy.broadcast(obj, src=0)


@contextlib.contextmanager
def rank_zero_buffers(trainer: Trainer, module: nn.Module) -> Iterator[None]:
    """Give every rank global rank 0's buffers (BatchNorm statistics, ...) inside, its own back on exit.

    One broadcast on entry (call on every rank); the buffers are copied in place, so no tensor the
    model or an optimizer holds is replaced. With one process, or no buffers, it does nothing.
    """
    buffers = dict(module.named_buffers())
    if trainer.world_size == 1 or not buffers:
        yield
        return
    theirs = share(trainer, {name: b.detach().cpu() for name, b in buffers.items()} if trainer.is_global_zero else None)
    own = {} if trainer.is_global_zero else {name: b.detach().clone() for name, b in buffers.items()}
    try:
        with torch.no_grad():
            for name in own:
                buffers[name].copy_(theirs[name])
        yield
    finally:
        with torch.no_grad():
            for name, value in own.items():
                buffers[name].copy_(value)


def check_strategy(trainer: Trainer, sanity: bool) -> None:
    """Refuse the strategies under which the callback cannot explain on the LightningModule itself.

    The callback runs the LightningModule's own forward (hooks on its layers) and one backward to the
    captured activations on every rank. Supported: one device, DDP and its variants (``ddp_spawn``,
    ``ddp_notebook``, ...), DeepSpeed ZeRO stages 1 and 2 (parameters replicated), and
    ``ModelParallelStrategy`` with FSDP2 (``fully_shard`` in ``configure_model``: the parameters are
    gathered by hooks on the sharded modules themselves) and ``tensor_parallel_size=1``.

    Raises:
        MisconfigurationException: for ``FSDPStrategy`` (FSDP1 gathers parameters only in its wrapper's
            forward), DeepSpeed ZeRO stage 3 (it gathers partitioned parameters in hooks that DeepSpeed's
            engine drives for its own training passes), tensor parallelism (a layer's output may hold only
            this rank's part of the channels or tokens), and the ``"sanity"`` measure with sharded parameters
            (the check re-initialises a deep copy of the model).
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    fsdp2 = "use ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1) with fully_shard"
    if isinstance(strategy, FSDPStrategy):
        raise MisconfigurationException(
            "CAMCallback does not support FSDPStrategy (torch's FullyShardedDataParallel, FSDP1): it gathers the "
            "parameters only inside its wrapper's forward, and the callback explains through the LightningModule's "
            f"own forward, which would see the flat shards. For sharded parameters {fsdp2} (FSDP2) in "
            "configure_model; or use strategy='ddp'; or remove the callback."
        )
    if isinstance(strategy, DeepSpeedStrategy):
        stage = (getattr(strategy, "config", None) or {}).get("zero_optimization", {}).get("stage", 0)
        if stage == 3:
            raise MisconfigurationException(
                "CAMCallback does not support DeepSpeed ZeRO stage 3: DeepSpeed gathers the partitioned "
                "parameters in hooks its engine drives for its own training passes, and the callback's explaining "
                f"forward and backward run outside them. Use ZeRO stage 1 or 2 (parameters replicated), or {fsdp2} "
                "(FSDP2) in configure_model; or remove the callback."
            )
    if isinstance(strategy, ModelParallelStrategy):
        tensor_parallel = strategy.device_mesh["tensor_parallel"].size()
        if tensor_parallel > 1:
            raise MisconfigurationException(
                f"CAMCallback does not support tensor parallelism (ModelParallelStrategy with a tensor-parallel "
                f"size of {tensor_parallel}): a target layer's output may hold only this rank's part of the "
                f"channels or tokens, and its maps would be wrong. For sharded parameters {fsdp2} (FSDP2)."
            )
        if sanity:
            raise MisconfigurationException(
                "CAMCallback(measures=[..., 'sanity']) needs a model it can deep-copy and re-initialise; under "
                "ModelParallelStrategy the parameters are sharded. Leave 'sanity' out, or run "
                "cams.metrics.sanity_check on the gathered model after training."
            )
