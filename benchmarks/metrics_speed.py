"""Time deletion/insertion AUC (RISE) against one plain forward of the same batch.

    python benchmarks/metrics_speed.py                 # 8 images of 224², 20 steps, resnet18, CPU
    python benchmarks/metrics_speed.py --device cuda --repeats 5

A randomly initialised torchvision resnet18 (no downloads) explains 8 random images; the maps are
random too (the cost does not depend on them). Each measure is timed ``--repeats`` times and the
median reported, with the number of forwards and of images forwarded: deletion and insertion each
score ``B (steps + 1)`` images, ``faithfulness`` scores ``B (2 steps + 2)`` (the originals, the
explanation maps for Average Drop / Increase in Confidence, and both curves), ``--batch-size`` at a
time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from cams import metrics


def _median_seconds(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="most images per forward (default: the library's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).to(device).eval()
    x = torch.randn(args.images, 3, args.size, args.size, generator=generator).to(device)
    maps = torch.rand(args.images, args.size, args.size, generator=generator).to(device)
    b, s, bs = args.images, args.steps, args.batch_size
    chunk = bs if bs is not None else (8 if device.type == "cpu" else 64)  # the library's default

    def plain() -> None:
        with torch.inference_mode():
            model(x)

    cases: list[tuple[str, Callable[[], object], int]] = [
        ("one plain forward", plain, b),
        ("deletion_auc", lambda: metrics.deletion_auc(model, x, maps, steps=s, batch_size=bs), b * (s + 1)),
        ("insertion_auc", lambda: metrics.insertion_auc(model, x, maps, steps=s, batch_size=bs), b * (s + 1)),
        (
            "faithfulness (AD, IC, deletion, insertion)",
            lambda: metrics.faithfulness(model, x, maps, steps=s, batch_size=bs),
            b * (2 * s + 2),
        ),
    ]
    plain()  # warm-up (allocator, kernels)
    results = [(name, rows, _median_seconds(function, args.repeats, device)) for name, function, rows in cases]
    reference = results[0][2]
    deletion_and_insertion = results[1][2] + results[2][2]

    print(
        f"resnet18 (random init), {b} images {args.size}², {s} steps, batch_size {chunk}, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n"
    )
    print("| measure | forwards | images forwarded | median time (s) | × one plain forward |")
    print("|---|---:|---:|---:|---:|")
    for name, rows, seconds in results:
        forwards = 1 if name == "one plain forward" else math.ceil(rows / chunk)
        print(f"| {name} | {forwards} | {rows} | {seconds:.3f} | {seconds / reference:.1f} |")
    print(
        f"\ndeletion + insertion: {deletion_and_insertion:.3f} s = {deletion_and_insertion / reference:.1f} × "
        f"one plain forward ({2 * b * (s + 1)} images scored, {2 * b * (s + 1) / b:.0f} × the batch)"
    )


if __name__ == "__main__":
    main()
