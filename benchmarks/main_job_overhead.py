"""The README's main job (``examples/cluttered_digits.py``): what the callback costs, by part, at its defaults.

Runs the main job once per method set (default: the example's own ``gradcam xgradcam scorecam``, then
``gradcam xgradcam``), each in its own process with the example's defaults (4 epochs of 5,000 canvases, 32
fixed canvases, the noise floor, the baselines), reads what the callback logged to TensorBoard and prints one
markdown table: the final ``cam_cost/overhead`` (the CAM runs' share of the fit's wall time), and per run the
median seconds of each part (``cam_cost/explain/shared``, ``cam_cost/explain/<method>``,
``cam_cost/measure/<name>``, and ``cam_cost/logging``, which the background worker spends beside training).

Run: ``python benchmarks/main_job_overhead.py [--sets "gradcam xgradcam scorecam" "gradcam xgradcam"]
[--epochs 4] [--train-size 5000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def run(methods: list[str], epochs: int, train_size: int, folder: Path) -> tuple[dict[str, list[float]], float]:
    """The main job with ``methods`` in its own process; every ``cam_cost/...`` series it logged, and its time."""
    command = [sys.executable, str(ROOT / "examples" / "cluttered_digits.py"), "--methods", *methods,
               "--epochs", str(epochs), "--train-size", str(train_size), "--root-dir", str(folder)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    seconds = time.perf_counter() - started
    (log_dir,) = (folder / "lightning_logs").iterdir()
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith("cam_cost/")]
    return {tag: [e.value for e in events.Scalars(tag)] for tag in tags}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["gradcam xgradcam scorecam", "gradcam xgradcam"],
                        help="method sets, each one quoted string")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=5000)
    args = parser.parse_args()
    rows = []
    for methods in (s.split() for s in args.sets):
        with tempfile.TemporaryDirectory() as folder:
            series, seconds = run(methods, args.epochs, args.train_size, Path(folder))
        parts = {tag[len("cam_cost/"):]: statistics.median(values) for tag, values in series.items()
                 if tag != "cam_cost/overhead"}  # fmt: skip
        rows.append((methods, series["cam_cost/overhead"][-1], seconds, parts))
        print(f"{' '.join(methods)}: overhead {series['cam_cost/overhead'][-1]:.3f}, {seconds:.0f} s", flush=True)
    print(f"\nmain job, {args.epochs} epochs of {args.train_size} canvases, 32 fixed canvases, "
          f"{os.cpu_count()} CPU cores\n")
    print("| methods | final `cam_cost/overhead` | whole script (s) | median seconds per run, by part |")
    print("|---|---:|---:|---|")
    for methods, overhead, seconds, parts in rows:
        cells = ", ".join(f"{name} {value:.2f}" for name, value in sorted(parts.items(), key=lambda kv: -kv[1]))
        print(f"| {', '.join(methods)} | {overhead:.3f} | {seconds:.0f} | {cells} |")


if __name__ == "__main__":
    main()
