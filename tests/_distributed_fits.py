"""Fits with CAMCallback in several CPU processes (gloo), for ``test_callback_distributed.py``.

Lightning's ``ddp`` launcher starts the other ranks by re-running the command line, so each scenario is
this file run as a script (``python _distributed_fits.py SCENARIO OUT``); every rank saves what it saw to
``OUT/rank<r>.pt``. The ``engine`` scenario starts its two processes itself (no Lightning).

Scenarios:

- ``ddp2``: DDP on 2 processes, 5 images (a slice of 3 and one of 2 + padding), boxes and faithfulness,
  baselines, the noise floor and the axioms, a run every 2 training steps (after a training forward, when
  each rank's BatchNorm statistics differ).
- ``ddp3``: DDP on 3 processes, 4 images (rank 2 explains padding only), ``every_n_epochs=2`` over 4 epochs;
  rank 2 alone finds a run due after epoch 0 (the others must follow), rank 1 alone fails the run after
  epoch 1 (every rank must skip it, with rank 1's message in rank 0's warning).
- ``ddp2task``: DDP on 2 processes with a task target (``MultiLabelTarget()``, which chooses its classes
  per image from the output): every rank explains the whole batch.
- ``fsdp2``: ``ModelParallelStrategy`` with FSDP2 (``fully_shard`` in ``configure_model``) on 2 processes
  (FSDP2 never synchronises the ranks' BatchNorm statistics).
- ``engine``: ``CamEngine`` on a ``fully_shard``-ed model on 2 processes, every method, against the maps
  of the same model unsharded.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

SCENARIOS: dict[str, dict[str, Any]] = {
    "ddp2": {"world": 2, "num_images": 5, "max_epochs": 2, "every_n_epochs": 1, "every_n_steps": 2},
    "ddp3": {"world": 3, "num_images": 4, "max_epochs": 4, "every_n_epochs": 2, "due_alone": (2, 0), "fail": (1, 1)},
    "ddp2task": {"world": 2, "num_images": 3, "max_epochs": 1, "every_n_epochs": 1},
    "fsdp2": {"world": 2, "num_images": 3, "max_epochs": 2, "every_n_epochs": 1},
}
DDP_METHODS = ("gradcam", "layercam")
FSDP_METHODS = ("gradcam", "eigencam")  # eigencam: a forward without a backward
ENGINE_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam", "scorecam", "ablationcam")


def callback_options(scenario: str) -> dict[str, Any]:
    """The CAMCallback arguments of a scenario (the single-process replay in the test uses the same)."""
    from cam_callback.measures import Localisation
    from cams.targets import MultiLabelTarget

    setting = SCENARIOS[scenario]
    methods = FSDP_METHODS if scenario == "fsdp2" else DDP_METHODS
    # the measures that run the model, per image on each rank's slice (ROAD's imputation noise is drawn per
    # slice, so it is left out of the comparison with one process)
    measures: list[Any] = [Localisation(tolerance=1), "noise_floor", "baselines", "faithfulness"]
    return {
        "methods": list(methods),
        "num_images": setting["num_images"],
        "every_n_epochs": setting["every_n_epochs"],
        "every_n_steps": setting.get("every_n_steps"),
        "target": MultiLabelTarget() if scenario == "ddp2task" else "label",
        "measures": [*measures, "axioms"] if scenario == "ddp2" else measures,
    }


def _recorder() -> Any:
    from _helpers import RecordingLogger

    return RecordingLogger()


def fit(scenario: str, out: Path) -> None:
    """One fit of ``scenario``; every rank saves its callback's state, runs and what it logged."""
    import lightning as L
    from conftest import TRAINER_DEFAULTS, QuadrantData, TinyNet

    import cam_callback._run as run_module
    import cam_callback.callback as callback_module
    from cam_callback import CAMCallback

    setting = SCENARIOS[scenario]
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    explain_rows = run_module._explain_rows

    def recorded_rows(trainer: Any, pl_module: Any, engine: Any, settings: Any, batch: Any, measures: Any,
                      rows: torch.Tensor) -> Any:  # fmt: skip
        cam.slices += 1
        cam.rows.append(rows.tolist())
        failing_rank, failing_epoch = setting.get("fail", (-1, -1))
        if trainer.global_rank == failing_rank and trainer.current_epoch == failing_epoch:
            raise ValueError(f"injected failure on rank {trainer.global_rank}")
        return explain_rows(trainer, pl_module, engine, settings, batch, measures, rows)

    run_module._explain_rows = recorded_rows  # each rank explains its slice through it

    class Recording(CAMCallback):
        """CAMCallback that keeps the weights each run explained (the replay explains the same)."""

        weights: list[dict[str, torch.Tensor]]
        rows: list[list[int]]
        slices = 0

        def _explain_and_log(self, trainer: Any, pl_module: Any, hook: str) -> dict[str, float]:
            snapshot = _full_state(pl_module)
            scalars = super()._explain_and_log(trainer, pl_module, hook)
            self.weights.append(snapshot)  # after success only: a skipped run logged nothing
            return scalars

    if "due_alone" in setting:  # one rank alone thinks a run is due after this epoch
        rank, epoch = setting["due_alone"]
        due = callback_module.due_after_epoch

        def due_here(trainer: Any, every_n_epochs: int, every_n_steps: int | None) -> bool:
            alone = trainer.global_rank == rank and trainer.current_epoch == epoch
            return alone or due(trainer, every_n_epochs, every_n_steps)

        callback_module.due_after_epoch = due_here

    cam = Recording(**callback_options(scenario))
    cam.weights, cam.rows = [], []
    recorder = _recorder()
    if scenario == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy: Any = ModelParallelStrategy(data_parallel_size=setting["world"], tensor_parallel_size=1)
        model: Any = _sharded_tiny_net()
    else:
        strategy, model = "ddp", TinyNet()
    options = dict(TRAINER_DEFAULTS, strategy=strategy, devices=setting["world"], max_epochs=setting["max_epochs"])
    options["deterministic"] = scenario != "fsdp2"  # FSDP2's collectives on gloo have no deterministic mode
    trainer = L.Trainer(callbacks=[cam], logger=recorder, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=QuadrantData(as_dict=True))
    state = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "runs": cam.runs,
        "slices": cam.slices,
        "rows": cam.rows,
        "fixed_images": cam.fixed_images,
        "fixed_labels": cam.fixed_labels,
        "first_maps": cam.first_maps,
        "last_maps": cam.last_maps,
        "layer_names": cam.layer_names,
        "weights": cam.weights,
        "scalars": recorder.run_calls(),
        "images": recorder.images_by_tag(),
        "warnings": [str(w.message) for w in caught if "CAMCallback" in str(w.message)],
    }
    if scenario == "fsdp2":
        state["still_sharded"] = _all_sharded(model)
        state["final_weights"] = _full_state(model)
    torch.save(state, out / f"rank{trainer.global_rank}.pt")


def _full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole state dict on the CPU (sharded tensors gathered: a collective, on every rank)."""
    from torch.distributed.tensor import DTensor

    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
        for k, v in module.state_dict().items()
    }


def _all_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in module.parameters())


def _sharded_tiny_net() -> Any:
    from conftest import TinyNet
    from torch.distributed.fsdp import fully_shard

    class ShardedTinyNet(TinyNet):
        """TinyNet whose convolutions and the rest are sharded over the data-parallel ranks (FSDP2)."""

        def configure_model(self) -> None:
            mesh = self.device_mesh["data_parallel"]
            fully_shard(self.features[0], mesh=mesh)
            fully_shard(self.features[3], mesh=mesh)
            fully_shard(self, mesh=mesh)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return ShardedTinyNet()


# ---------------------------------------------------------------------- the engine on FSDP2, without Lightning
def _engine_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip


def _engine_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from cams import CamEngine

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = torch.randn(2 * world, 3, 12, 12, generator=torch.Generator().manual_seed(1))
        plain = _engine_net().train()
        expected = CamEngine(plain, "3")(x, methods=ENGINE_METHODS)
        model = _engine_net().train()
        fully_shard(model[0])
        fully_shard(model[3])
        fully_shard(model)
        shards = {n: p.to_local().clone() for n, p in model.named_parameters()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        mine = slice(2 * rank, 2 * rank + 2)
        got = CamEngine(model, "3")(x[mine], methods=ENGINE_METHODS)
        result = {
            "max_diff": {m: float((got[m] - expected[m][mine]).abs().max()) for m in ENGINE_METHODS},
            "classes_equal": bool(torch.equal(got.classes, expected.classes[mine])),
            "sharded": all(isinstance(p, DTensor) for p in model.parameters()),
            "shards_equal": all(
                isinstance(p, DTensor) and torch.equal(shards[n], p.to_local()) for n, p in model.named_parameters()
            ),
            "buffers_equal": all(torch.equal(buffers[n], b) for n, b in model.named_buffers()),
            "grads_none": all(p.grad is None for p in model.parameters()),
            "training": all(m.training for m in model.modules()),
        }
        loss = model(x[mine]).sum()  # and training goes on: a step with its gradient reduce-scatter
        loss.backward()
        result["trains"] = all(isinstance(p.grad, DTensor) for p in model.parameters())
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def engine(out: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:  # a free port: other test sessions may run beside this one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_engine_rank, args=(2, port, str(out)), nprocs=2)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    name, folder = sys.argv[1], Path(sys.argv[2])
    engine(folder) if name == "engine" else fit(name, folder)
