"""Time (and peak memory of) the cams engine against pytorch-grad-cam 1.5.7 in the same run.

    python benchmarks/engine_vs_reference.py            # all cases, prints a markdown table
    python benchmarks/engine_vs_reference.py --quick    # smaller inputs, for a smoke run
    python benchmarks/engine_vs_reference.py --device cuda   # on a GPU: every case on resnet50, batch 32

Cases (the floors of issue 2, measured on the CPU of the machine it runs on):
  * six gradient methods (gradcam, gradcam++, xgradcam, layercam, eigencam, eigengradcam) in ONE engine
    call vs the reference running them one by one: resnet50, batch 8, 224²;
  * ablationcam, resnet18 ``layer4``, batch 2, 224²;
  * scorecam, resnet18 ``layer4``, batch 2, 224².
Timings are medians of ``--repeats`` runs, ours and the reference interleaved. Peak memory is measured in a
fresh child process that builds the model and the input, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), runs the case once and reports the peak resident set above what it held before
the run: what the CAM computation itself adds. With ``--device cuda`` the model and the input live on the
GPU, every timing waits for the GPU (``torch.cuda.synchronize``), every case runs on resnet50 ``layer4`` with
batch 32 (``--model``/``--batch`` choose others), and the peak memory is the GPU's
(``torch.cuda.max_memory_allocated`` above what the child held before the run).
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


def setting(case: str, device: str, net: str | None, batch: int | None) -> tuple[str, str, int, tuple[str, ...]]:
    """A case's model, layer, batch and methods; on CUDA resnet50 and batch 32 unless chosen."""
    default_net, layer, default_batch, methods = CASES[case]
    gpu = device != "cpu"
    return net or ("resnet50" if gpu else default_net), layer, batch or (32 if gpu else default_batch), methods


def build(
    case: str, size: int, device: str = "cpu", net: str | None = None, batch: int | None = None
) -> tuple[torch.nn.Module, str, torch.Tensor, tuple[str, ...]]:
    net, layer, batch, methods = setting(case, device, net, batch)
    torch.manual_seed(0)
    model = getattr(torchvision.models, net)(num_classes=1000).eval().to(device)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
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


def child(case: str, impl: str, size: int, device: str, net: str | None, batch: int | None) -> None:
    """Run one case once in this (fresh) process; print the peak RSS (on CUDA: GPU memory) it adds, in MiB."""
    model, layer, x, methods = build(case, size, device, net, batch)
    run = (ours if impl == "ours" else reference)(model, layer, x, methods)
    gc.collect()
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        print(json.dumps({"peak_mib": (torch.cuda.max_memory_allocated() - start) / 2**20}))
        return
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    run()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def peak_mib(case: str, impl: str, size: int, device: str, net: str | None, batch: int | None) -> float:
    cmd = [sys.executable, __file__, "--child", case, impl, "--size", str(size), "--device", device]
    cmd += (["--model", net] if net else []) + (["--batch", str(batch)] if batch else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_mib"]


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()  # the GPU's work is done, not only queued
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="112² inputs and 1 repeat (smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--no-timing", action="store_true", help="only the peak-memory child processes")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' ('cuda:1', ...)")
    parser.add_argument("--model", help="torchvision model for every case (default: per case; resnet50 on CUDA)")
    parser.add_argument("--batch", type=int, help="batch size for every case (default: per case; 32 on CUDA)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 112, 1
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    if args.device != "cpu":
        torch.cuda.set_device(torch.device(args.device))
    if args.child:
        child(args.child[0], args.child[1], args.size, args.device, args.model, args.batch)
        return

    import pytorch_grad_cam

    where = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    print(f"torch {torch.__version__}, pytorch-grad-cam {getattr(pytorch_grad_cam, '__version__', '1.5.7')}, "
          f"{torch.get_num_threads()} threads, input {args.size}², median of {args.repeats}, device {where}\n")
    print("| case | model, layer, batch | ours (s) | reference (s) | speed-up | peak MiB ours | peak MiB reference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases:
        model, layer, x, methods = build(case, args.size, args.device, args.model, args.batch)
        run_ours, run_ref = ours(model, layer, x, methods), reference(model, layer, x, methods)
        t_ours, t_ref = [math.nan], [math.nan]
        if not args.no_timing:
            run_ours()  # warm-up (also picks up any lazy initialisation)
            t_ours, t_ref = [], []
            for _ in range(args.repeats):
                t_ours.append(timed(run_ours, args.device))
                t_ref.append(timed(run_ref, args.device))
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        if args.no_memory:
            mem_ours = mem_ref = "n/a"
        else:
            mem_ours = f"{peak_mib(case, 'ours', args.size, args.device, args.model, args.batch):.0f}"
            mem_ref = f"{peak_mib(case, 'reference', args.size, args.device, args.model, args.batch):.0f}"
        net, layer, batch, _ = setting(case, args.device, args.model, args.batch)
        ratio = f"**{mr / mo:.1f}×**"
        cells = [case, f"{net} `{layer}`, {batch}", f"{mo:.2f}", f"{mr:.2f}", ratio, mem_ours, mem_ref]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
