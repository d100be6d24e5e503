"""Time (and peak memory of) the cams engine against its peers in the same run.

    python benchmarks/engine_vs_reference.py            # all cases, prints a markdown table
    python benchmarks/engine_vs_reference.py --quick    # smaller inputs, for a smoke run
    python benchmarks/engine_vs_reference.py --cases cam legrad --no-memory
    python benchmarks/engine_vs_reference.py --device cuda   # on a GPU: batch 32 (``--model``, ``--batch``)

Cases (measured on the CPU of the machine it runs on):
  * six gradient methods (gradcam, gradcam++, xgradcam, layercam, eigencam, eigengradcam) in ONE engine
    call vs pytorch-grad-cam 1.5.7 running them one by one: resnet50, batch 8, 224²;
  * ablationcam and scorecam, resnet18 ``layer4``, batch 2, 224², vs pytorch-grad-cam;
  * every method added from pytorch-grad-cam 1.5.7 or torchcam 0.5.0, against the library that has it
    (torchcam's cases say so in their name), at the peer's defaults except where the case says (SS-CAM and
    IS-CAM: 2 samples instead of 35 and 10, so that a CPU run takes minutes, not hours; the cost of both
    sides is linear in it; DFF with 5 concepts at batch 8 and 4 at batch 2).
Timings are medians of ``--repeats`` runs after one warm-up run of each, ours and the peer interleaved.
Peak memory is measured in a fresh child process that builds the model and the input, resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``), runs the case once and reports the peak resident set above
what it held before the run: what the CAM computation itself adds. With ``--device cuda`` the model and the
input live on the GPU, every timing waits for the GPU (``torch.cuda.synchronize``), every case runs with batch
32 (CNN cases on resnet50; ``--model``/``--batch`` choose others), and the peak memory is the GPU's
(``torch.cuda.max_memory_allocated`` above what the child held before the run).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torchvision
from _memory import peak_added_mib

GRADIENT_SIX = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam")
PGC, TORCHCAM = "pytorch-grad-cam", "torchcam"


@dataclass(frozen=True)
class Case:
    """One comparison: ``methods`` in one engine call vs the peer computing each of them."""

    net: str
    layers: tuple[str, ...]
    batch: int
    methods: tuple[str, ...]
    peer: str = PGC
    options: dict[str, Any] = field(default_factory=dict)  # the same options on both sides


# fmt: off
CASES: dict[str, Case] = {
    "six gradient methods": Case("resnet50", ("layer4",), 8, GRADIENT_SIX),
    "ablationcam": Case("resnet18", ("layer4",), 2, ("ablationcam",)),
    "scorecam": Case("resnet18", ("layer4",), 2, ("scorecam",)),
    # pytorch-grad-cam's methods
    "fullgrad": Case("resnet50", ("layer4",), 2, ("fullgrad",)),
    "kpcacam": Case("resnet50", ("layer4",), 8, ("kpcacam",)),
    "fem": Case("resnet50", ("layer4",), 8, ("fem",)),
    "shapleycam": Case("resnet50", ("layer4",), 8, ("shapleycam",)),
    "finercam": Case("resnet50", ("layer4",), 8, ("finercam",)),
    "segeigencam": Case("resnet50", ("layer4",), 8, ("segeigencam",)),
    "randomcam": Case("resnet50", ("layer4",), 8, ("randomcam",)),
    "sobel": Case("resnet50", ("layer4",), 8, ("sobel",)),
    "refinecam": Case("resnet50", ("layer3", "layer4"), 8, ("refinecam",)),
    "sess": Case("resnet18", ("layer4",), 1, ("sess",)),
    "dff": Case("resnet50", ("layer4",), 8, ("dff",), options={"n_components": 5}),
    "dff (batch 2, 4 concepts)": Case("resnet50", ("layer4",), 2, ("dff",), options={"n_components": 4}),
    # torchcam's methods
    "cam": Case("resnet50", ("layer4",), 8, ("cam",), TORCHCAM),
    "smoothgradcampp": Case("resnet50", ("layer4",), 8, ("smoothgradcampp",), TORCHCAM),
    "sscam": Case("resnet18", ("layer4",), 1, ("sscam",), TORCHCAM, {"num_samples": 2}),
    "iscam": Case("resnet18", ("layer4",), 1, ("iscam",), TORCHCAM, {"num_samples": 2}),
    "legrad": Case("vit_b_16", tuple(f"encoder.layers.encoder_layer_{i}" for i in (8, 9, 10, 11)), 8, ("legrad",),
                   TORCHCAM),
    "refinecam (torchcam)": Case("resnet50", ("layer3", "layer4"), 8, ("refinecam",), TORCHCAM),
}
# fmt: on


def setting(case: str, device: str = "cpu", net: str | None = None, batch: int | None = None) -> Case:
    """A case as it runs on ``device``: on CUDA batch 32 and resnet50 for the CNN cases, unless chosen."""
    spec = CASES[case]
    gpu = device != "cpu"
    cnn = spec.net.startswith("resnet")
    net = net or ("resnet50" if gpu and cnn else spec.net)
    return replace(spec, net=net, batch=batch or (32 if gpu else spec.batch))


def build(
    case: str, size: int, device: str = "cpu", net: str | None = None, batch: int | None = None
) -> tuple[torch.nn.Module, Case, torch.Tensor]:
    spec = setting(case, device, net, batch)
    torch.manual_seed(0)
    extra = {"image_size": size} if spec.net.startswith("vit") else {}
    model = getattr(torchvision.models, spec.net)(num_classes=1000, **extra).eval().to(device)
    x = torch.randn(spec.batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    return model, spec, x


def ours(model: torch.nn.Module, spec: Case, x: torch.Tensor) -> Callable[[], object]:
    from cams import CamEngine, get_method
    from cams.dff import deep_feature_factorization

    if spec.methods == ("dff",):
        k = spec.options["n_components"]
        return lambda: deep_feature_factorization(model, x, spec.layers[0], k, head=model.fc)
    engine = CamEngine(model, list(spec.layers))
    methods = [get_method(m).with_options(**spec.options) for m in spec.methods]
    return lambda: engine(x, methods=methods)  # default chunk sizes


def reference(model: torch.nn.Module, spec: Case, x: torch.Tensor) -> Callable[[], object]:
    return (_pytorch_grad_cam if spec.peer == PGC else _torchcam)(model, spec, x)


def _pytorch_grad_cam(model: torch.nn.Module, spec: Case, x: torch.Tensor) -> Callable[[], object]:
    import numpy as np
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.sobel_cam import sobel_cam

    from cams import find_layer

    classes = {
        "gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
        "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM, "kpcacam": pgc.KPCA_CAM, "fem": pgc.FEM,
        "shapleycam": pgc.ShapleyCAM, "finercam": pgc.FinerCAM, "segeigencam": pgc.SegEigenCAM,
        "randomcam": pgc.RandomCAM, "sess": pgc.SESS,
    }  # fmt: skip
    layers = [find_layer(model, name) for name in spec.layers]

    def release(cam: Any) -> None:
        for base in getattr(cam, "base_cam_per_layer", None) or [getattr(cam, "base_cam", cam)]:
            base.activations_and_grads.gradients = []  # ShapleyCAM keeps views its own release cannot detach
            base.activations_and_grads.release()

    def run() -> None:
        for m in spec.methods:  # the reference computes one method per call
            if m == "sobel":
                images = (x - x.amin()) / (x.amax() - x.amin()) * 255
                for image in images.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8):
                    sobel_cam(image)
                continue
            if m == "dff":
                dff = pgc.DeepFeatureFactorization(model, layers[0], computation_on_concepts=model.fc)
                dff(x, spec.options["n_components"])
                dff.activations_and_grads.release()
                continue
            if m == "fullgrad":
                cam = pgc.FullGrad(model, [])
            elif m == "refinecam":
                cam = pgc.RefineCAM(model, layers)
            else:
                cam = classes[m](model, layers)
            try:
                cam(x, targets=None)
            finally:
                release(cam)
            model.zero_grad(set_to_none=True)

    return run


def _torchcam(model: torch.nn.Module, spec: Case, x: torch.Tensor) -> Callable[[], object]:
    import torchcam.methods as tc

    logging.getLogger("torchcam").setLevel(logging.ERROR)
    classes = {"cam": tc.CAM, "smoothgradcampp": tc.SmoothGradCAMpp, "sscam": tc.SSCAM, "iscam": tc.ISCAM,
               "legrad": tc.LeGrad, "refinecam": tc.RefineCAM}  # fmt: skip
    size = tuple(x.shape[1:])

    def run() -> None:
        for m in spec.methods:
            layers = list(spec.layers) if len(spec.layers) > 1 or m == "legrad" else spec.layers[0]
            kwargs = dict(spec.options)
            if m != "legrad":
                kwargs["input_shape"] = size
            with classes[m](model, layers, **kwargs) as extractor:
                # torchcam's call pattern: the user's forward (with autograd for the gradient methods), then the
                # extractor with the predicted classes
                grad = m in ("smoothgradcampp", "legrad", "refinecam")
                with torch.set_grad_enabled(grad):
                    scores = model(x)
                extractor(class_idx=scores.argmax(dim=1).tolist(), scores=scores)
            model.zero_grad(set_to_none=True)

    return run


def child(case: str, impl: str, size: int, device: str, net: str | None, batch: int | None) -> None:
    """Run one case once in this (fresh) process; print the peak RSS (on CUDA: GPU memory) it adds, in MiB."""
    model, spec, x = build(case, size, device, net, batch)
    run = (ours if impl == "ours" else reference)(model, spec, x)
    print(json.dumps({"peak_mib": peak_added_mib(run, device)}))


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--no-timing", action="store_true", help="only the peak-memory child processes")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' ('cuda:1', ...)")
    parser.add_argument("--model", help="torchvision model for every case (default: per case; resnet50 on CUDA)")
    parser.add_argument("--batch", type=int, help="batch size for every case (default: per case; 32 on CUDA)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
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
    import torchcam

    where = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    print(f"torch {torch.__version__}, pytorch-grad-cam {getattr(pytorch_grad_cam, '__version__', '1.5.7')}, "
          f"torchcam {torchcam.__version__}, {torch.get_num_threads()} threads, input {args.size}², median of "
          f"{args.repeats}, device {where}\n")  # fmt: skip
    print("| case | model, layer, batch | ours (s) | reference (s) | speed-up | peak MiB ours | peak MiB reference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases:
        model, spec, x = build(case, args.size, args.device, args.model, args.batch)
        run_ours, run_ref = ours(model, spec, x), reference(model, spec, x)
        t_ours, t_ref = [math.nan], [math.nan]
        if not args.no_timing:
            run_ours()  # warm-up of both (also picks up any lazy initialisation)
            run_ref()
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
        layer = " + ".join(f"`{name.replace('encoder.layers.encoder_layer_', 'block ')}`" for name in spec.layers)
        ratio = f"**{mr / mo:.1f}×**"
        label = case if spec.peer == PGC or "torchcam" in case else f"{case} (torchcam)"
        cells = [label, f"{spec.net} {layer}, {spec.batch}", f"{mo:.2f}", f"{mr:.2f}", ratio, mem_ours, mem_ref]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
