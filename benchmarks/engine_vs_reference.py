"""Time (and peak memory of) the cams engine against pytorch-grad-cam 1.5.7 in the same run.

    python benchmarks/engine_vs_reference.py            # all cases, prints a markdown table
    python benchmarks/engine_vs_reference.py --quick    # smaller inputs, for a smoke run

Cases (the floors of issue 2, measured on the CPU of the machine it runs on):
  * six gradient methods (gradcam, gradcam++, xgradcam, layercam, eigencam, eigengradcam) in ONE engine
    call vs the reference running them one by one: resnet50, batch 8, 224²;
  * ablationcam, resnet18 ``layer4``, batch 2, 224²;
  * scorecam, resnet18 ``layer4``, batch 2, 224².
Timings are medians of ``--repeats`` runs, ours and the reference interleaved. Peak memory is measured in a
fresh child process that builds the model and the input, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), runs the case once and reports the peak resident set above what it held before
the run: what the CAM computation itself adds.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision

GRADIENT_SIX = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam")
CASES = {
    "six gradient methods": ("resnet50", "layer4", 8, GRADIENT_SIX),
    "ablationcam": ("resnet18", "layer4", 2, ("ablationcam",)),
    "scorecam": ("resnet18", "layer4", 2, ("scorecam",)),
}


def build(case: str, size: int) -> tuple[torch.nn.Module, str, torch.Tensor, tuple[str, ...]]:
    net, layer, batch, methods = CASES[case]
    torch.manual_seed(0)
    model = getattr(torchvision.models, net)(num_classes=1000).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, layer, x, methods


def ours(model: torch.nn.Module, layer: str, x: torch.Tensor, methods: tuple[str, ...]) -> Callable[[], object]:
    from cams import CamEngine

    engine = CamEngine(model, layer)
    return lambda: engine(x, methods=methods)  # default chunk sizes


def reference(model: torch.nn.Module, layer: str, x: torch.Tensor, methods: tuple[str, ...]) -> Callable[[], object]:
    import pytorch_grad_cam as pgc

    from cams import find_layer

    classes = {
        "gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
        "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM,
    }
    target = [find_layer(model, layer)]

    def run() -> None:
        for m in methods:  # the reference computes one method per call
            with classes[m](model, target) as cam:
                cam(input_tensor=x, targets=None)

    return run


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(case: str, impl: str, size: int) -> None:
    """Run one case once in this (fresh) process; print the peak RSS it adds, in MiB."""
    model, layer, x, methods = build(case, size)
    run = (ours if impl == "ours" else reference)(model, layer, x, methods)
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    run()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def peak_mib(case: str, impl: str, size: int) -> float:
    cmd = [sys.executable, __file__, "--child", case, impl, "--size", str(size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_mib"]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="112² inputs and 1 repeat (smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--no-timing", action="store_true", help="only the peak-memory child processes")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 112, 1
    if args.child:
        child(args.child[0], args.child[1], args.size)
        return

    import pytorch_grad_cam

    print(f"torch {torch.__version__}, pytorch-grad-cam {getattr(pytorch_grad_cam, '__version__', '1.5.7')}, "
          f"{torch.get_num_threads()} threads, input {args.size}², median of {args.repeats}\n")
    print("| case | model, layer, batch | ours (s) | reference (s) | speed-up | peak MiB ours | peak MiB reference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases:
        model, layer, x, methods = build(case, args.size)
        run_ours, run_ref = ours(model, layer, x, methods), reference(model, layer, x, methods)
        t_ours, t_ref = [math.nan], [math.nan]
        if not args.no_timing:
            run_ours()  # warm-up (also picks up any lazy initialisation)
            t_ours, t_ref = [], []
            for _ in range(args.repeats):
                t_ours.append(timed(run_ours))
                t_ref.append(timed(run_ref))
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        if args.no_memory:
            mem_ours = mem_ref = "n/a"
        else:
            mem_ours = f"{peak_mib(case, 'ours', args.size):.0f}"
            mem_ref = f"{peak_mib(case, 'reference', args.size):.0f}"
        net, layer, batch, _ = CASES[case]
        ratio = f"**{mr / mo:.1f}×**"
        cells = [case, f"{net} `{layer}`, {batch}", f"{mo:.2f}", f"{mr:.2f}", ratio, mem_ours, mem_ref]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
