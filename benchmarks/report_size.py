"""How large is the report of a long run, and how long does it take to build? Prints a markdown table.

The issue's floor: a run with 100 CAM runs and 32 fixed images gives a report under 15 MB, built in under 20 s.
The run is synthetic (``tests/_report_runs.py``: written by the callback's own writer, TensorBoard logger,
overlays, timelines, record and scalars of every run; no training), with ``--methods`` methods of 64 x 64
images. The build (read the event files and the record, cut and encode the tiles, draw the charts, render and
write the page) is timed ``--repeats`` times after a warm-up; the median is reported with the peak memory of
one build (``tracemalloc``: Python's allocations, images included).

Run: ``.venv/bin/python benchmarks/report_size.py [--runs 100] [--images 32] [--methods gradcam xgradcam]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _report_runs import write_run  # noqa: E402

from cam_callback.report import build_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="CAM runs (default 100)")
    parser.add_argument("--images", type=int, default=32, help="fixed images (default 32)")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "xgradcam"], help="methods (default two)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed builds after a warm-up (default 5)")
    parser.add_argument("--keep", default=None, help="write the synthetic run here, or reuse it when it is there")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        logs = Path(args.keep or Path(tmp) / "logs")
        run = logs / "run"
        made = "reused from " + str(logs)
        if not (run / "cam_record.jsonl").is_file():
            run = write_run(logs, runs=args.runs, images=args.images, methods=args.methods, size=args.size,
                            shortcut=True)
            made = f"written in {time.perf_counter() - started:.0f} s"
        logged = sum(p.stat().st_size for p in run.iterdir() if p.is_file())
        out = Path(tmp) / "report.html"
        build_report([run], out)  # warm-up
        times, cpu = [], []
        for _ in range(args.repeats):
            started, process = time.perf_counter(), time.process_time()
            build_report([run], out)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - process)
        tracemalloc.start()
        build_report([run], out)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        size = out.stat().st_size
    print(f"synthetic run: {args.runs} CAM runs x {args.images} images x {len(args.methods)} methods "
          f"({args.size}x{args.size}), {logged / 1e6:.0f} MB of logs, {made}\n")
    print(f"| CAM runs | fixed images | methods | logs | report | floor | build, wall (median of {args.repeats}) "
          "| build, CPU | floor | peak memory |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.runs} | {args.images} | {len(args.methods)} | {logged / 1e6:.0f} MB | {size / 1e6:.1f} MB | "
          f"< 15 MB | {statistics.median(times):.1f} s | {statistics.median(cpu):.1f} s | < 20 s | "
          f"{peak / 1e6:.0f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
