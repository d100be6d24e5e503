"""Per-rank time of one CAMCallback run under DDP on the CPU (gloo), for world sizes 1, 2 and 3.

Each world size is one short fit (``strategy="ddp"``, ``accelerator="cpu"``, one thread per rank) of a
ResNet-18 (10 classes, random init) on random ``--size`` (128) square images, with
``CAMCallback(methods=["gradcam", "xgradcam", "layercam"], num_images=24, every_n_steps=1)`` logging to
TensorBoard: the baseline and one run after each of ``--steps`` steps. Every rank times each of its
runs (the first, which warms up, is left out) and reports medians of:

- ``run``: the whole run on that rank (wall), from the shared decision to the updated state;
- ``explain``: its slice of ``ceil(num_images / world)`` images through the engine, wall and thread CPU time
  (CPU time is what a busy shared machine disturbs least);
- ``gather``: collecting every rank's maps and per-image values (``all_gather``) and moving them to the CPU;
- ``log``: rank 0 handing the run's images to its background writer (the other ranks: 0);
- ``log (background)``: rank 0's background worker drawing, encoding and writing them, off the run's path.

The rest of ``run`` is waiting for the slowest rank, the error flags, rank 0's buffers and the weights'
fingerprint; no rank waits for rank 0's image logging.

Run: ``OMP_NUM_THREADS=1 python benchmarks/callback_ddp.py [--worlds 1 2 3] [--steps 8] [--size 128]
[--num-images 24]``.
The world sizes run one after another, each in its own processes (Lightning's launcher starts the
ranks by re-running this script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import cam_callback._run as run_module
from cam_callback import CAMCallback

METHODS = ["gradcam", "xgradcam", "layercam"]


class ResNet18(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TimedCAMCallback(CAMCallback):
    """CAMCallback that times, on every rank, each run, its slice's explanation and rank 0's logging."""

    def __init__(self, num_images: int) -> None:
        super().__init__(methods=METHODS, num_images=num_images, every_n_steps=1, target_layers="net.layer4")
        self.times: list[dict[str, float]] = []

    def _explain_and_log(self, *args: Any) -> Any:
        self.times.append({"explain": 0.0, "explain_cpu": 0.0, "gather": 0.0, "log": 0.0})
        start = time.perf_counter()
        try:
            return super()._explain_and_log(*args)
        finally:
            self.times[-1]["run"] = time.perf_counter() - start

    def _log_images(self, *args: Any) -> None:
        start = time.perf_counter()
        super()._log_images(*args)
        self.times[-1]["log"] += time.perf_counter() - start


def _timed(module: Any, name: str, key: str, cpu_key: str | None = None) -> None:
    """Add the wall (and thread CPU) time of every call of ``module.name`` to the current run's ``key``."""
    function = getattr(module, name)

    def timed(*args: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args)
        finally:
            CALLBACK[0].times[-1][key] += time.perf_counter() - start
            if cpu_key is not None:
                CALLBACK[0].times[-1][cpu_key] += time.thread_time() - cpu

    setattr(module, name, timed)


CALLBACK: list[TimedCAMCallback] = []


def rank_main(world: int, steps: int, size: int, num_images: int, out: Path) -> None:
    """One fit on ``world`` CPU processes; each rank writes its run times to ``out/rank<r>.json``."""
    _timed(run_module, "_explain_rows", "explain", "explain_cpu")
    _timed(run_module, "gather_rows", "gather")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    L.seed_everything(0, verbose=False)
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(96, 3, size, size, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    train = DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=8)
    val = DataLoader(TensorDataset(images[64:], labels[64:]), batch_size=32)
    callback = TimedCAMCallback(num_images)
    CALLBACK.append(callback)
    with tempfile.TemporaryDirectory() as logs:
        logger = TensorBoardLogger(logs)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=world,
            strategy="ddp" if world > 1 else "auto",
            max_steps=steps,
            limit_val_batches=1,
            logger=logger,
            callbacks=[callback],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(ResNet18(), train_dataloaders=train, val_dataloaders=val)
        background = [0.0] * len(callback.times)
        if trainer.is_global_zero:  # what the background worker logged as each run's cam_cost/logging
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
            events.Reload()
            background = [e.value for e in events.Scalars("cam_cost/logging")]
    for run, seconds in zip(callback.times, background, strict=False):
        run["log_background"] = seconds
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"world": world, "times": callback.times}))


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in runs[1:]) * 1000  # ms; the first run warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=8, help="training steps per fit (one run after each)")
    parser.add_argument("--size", type=int, default=128, help="image side")
    parser.add_argument("--num-images", type=int, default=24, help="CAMCallback(num_images=...)")
    parser.add_argument("--rank-of", type=int, help=argparse.SUPPRESS)  # internal: run one fit of this world size
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_of is not None:
        rank_main(args.rank_of, args.steps, args.size, args.num_images, args.out)
        return

    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, 1 thread per rank, ResNet-18 on {args.size}², "
          f"methods {METHODS}, num_images={args.num_images}; medians over {args.steps} runs (ms)\n")
    print("| world size | images per rank | rank | run (wall) | explain (wall) | explain (CPU) | gather | log | "
          "log (background) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as folder:
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
            command = [sys.executable, __file__, "--rank-of", str(world), "--steps", str(args.steps), "--out", folder,
                       "--size", str(args.size), "--num-images", str(args.num_images)]
            subprocess.run(command, check=True, env=env, capture_output=True, text=True)
            for path in sorted(Path(folder).glob("rank*.json")):
                runs = json.loads(path.read_text())["times"]
                per_rank = -(-args.num_images // world)
                cells = [world, per_rank, path.stem[4:], *(f"{median(runs, k):.0f}" for k in
                         ("run", "explain", "explain_cpu", "gather", "log", "log_background"))]  # fmt: skip
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
