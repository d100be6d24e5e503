"""Time (and peak memory of) rollout, gradrollout, AttnLRP and Recipro-CAM against what the issue measures them by.

    python benchmarks/new_methods.py                      # every case, prints a markdown table
    python benchmarks/new_methods.py --cases attnlrp --repeats 5 --no-memory
    python benchmarks/new_methods.py --device cuda        # on a GPU (not run on the project's CPU machine)

Cases (ours, then what it is compared with, in the same process, interleaved; median of ``--repeats`` ≥ 5 timed
calls after one warm-up call of each):
  * ``reciprocam / gradcam``: resnet50 ``layer4``, batch 8, 224²: this library's Grad-CAM (floor: ratio ≤ 3);
  * ``reciprocam / scorecam``: resnet50 ``layer4``, this library's Score-CAM (floor: Score-CAM ≥ 20× slower);
    at ``--scorecam-batch`` (default 1) and ``--scorecam-size`` (default 112²), because Score-CAM's 8 × 2048 full
    resnet50 forwards at batch 8 and 224² take hours on 2 CPU cores; both sides run at that setting;
  * ``rollout / one forward``: torchvision ``vit_b_16``, batch 4 (``--vit-batch``), 224²: one plain forward
    under ``no_grad`` (floor ≤ 1.5);
  * ``gradrollout / forward + backward``: the same, one forward with autograd and one ``autograd.grad`` of the
    class score to the input (floor ≤ 1.5);
  * ``attnlrp / lxt``: Hugging Face ``ViTForImageClassification`` (ViT-B/16 configuration, random weights),
    batch 2 (``--lrp-batch``), 224²: lxt 2.1's AttnLRP (its LayerNorm, GELU and attention patches, one forward and
    one backward, Gradient × Input) (floor ≤ 1.5).
The heads of the random ViTs are redrawn (torchvision's starts at zero, which gives no gradient). Peak memory is
the peak resident set a fresh child process adds while running the case once (``/proc/self/clear_refs``); with
``--device cuda`` every timing waits for the GPU and the peak is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from _memory import peak_added_mib
from torch import nn

from cams import CamEngine

CASES = ("reciprocam / gradcam", "reciprocam / scorecam", "rollout / one forward",
         "gradrollout / forward + backward", "attnlrp / lxt")  # fmt: skip
FLOORS = {"reciprocam / gradcam": "≤ 3", "reciprocam / scorecam": "≥ 20× faster", "rollout / one forward": "≤ 1.5",
          "gradrollout / forward + backward": "≤ 1.5", "attnlrp / lxt": "≤ 1.5"}  # fmt: skip


def lxt_patches() -> Any:
    """lxt 2.1's ``lxt.efficient.patches``, entered without the package ``__init__`` (which imports its language
    models' patch maps, written for transformers 4)."""
    import lxt

    if "lxt.efficient" not in sys.modules:
        folder = Path(lxt.__file__).parent / "efficient"
        spec = importlib.util.spec_from_file_location("lxt.efficient", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])  # fmt: skip
        assert spec is not None
        sys.modules["lxt.efficient"] = importlib.util.module_from_spec(spec)
    return importlib.import_module("lxt.efficient.patches")


def lxt_attnlrp(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> Callable[[], object]:
    """lxt's AttnLRP on a Hugging Face ViT, its patches applied for the call and removed after it."""
    import transformers.models.vit.modeling_vit as modeling_vit
    from transformers.activations import GELUActivation

    patches = lxt_patches()
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"

    def run() -> object:
        saved = [(nn.LayerNorm, "forward", nn.LayerNorm.forward), (GELUActivation, "forward", GELUActivation.forward),
                 (modeling_vit, "eager_attention_forward", modeling_vit.eager_attention_forward)]  # fmt: skip
        try:
            patches.patch_method(patches.layer_norm_forward, nn.LayerNorm)
            patches.patch_method(patches.non_linear_forward, GELUActivation, keep_original=True)
            modeling_vit.eager_attention_forward = patches.wrap_attention_forward(modeling_vit.eager_attention_forward)
            leaf = x.clone().requires_grad_()
            logits = eager(leaf).logits
            (grad,) = torch.autograd.grad(logits[torch.arange(len(x)), classes].sum(), leaf)
            return (leaf * grad).sum(1)
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)
            delattr(GELUActivation, "original_forward")

    return run


def _redraw_head(head: nn.Linear) -> None:
    with torch.no_grad():
        head.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))


def build(case: str, device: str, args: argparse.Namespace) -> tuple[str, Callable[[], object], Callable[[], object]]:
    """``(setting, ours, compared)`` for ``case``: two callables doing one call each."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if case.startswith("reciprocam"):
        model = torchvision.models.resnet50(num_classes=1000).eval().to(device)
        batch, size = (args.batch, 224) if case.endswith("gradcam") else (args.scorecam_batch, args.scorecam_size)
        x = torch.randn(batch, 3, size, size, generator=generator).to(device)
        engine = CamEngine(model, "layer4")
        other = "gradcam" if case.endswith("gradcam") else "scorecam"
        return (f"resnet50 `layer4`, {batch} × {size}²", lambda: engine(x, methods="reciprocam"),
                lambda: engine(x, methods=other))  # fmt: skip
    if "rollout" in case:
        model = torchvision.models.vit_b_16().eval().to(device)
        _redraw_head(model.heads.head)
        x = torch.randn(args.vit_batch, 3, 224, 224, generator=generator).to(device)
        engine = CamEngine(model)
        setting = f"torchvision vit_b_16, {args.vit_batch} × 224²"
        if case.startswith("rollout"):

            def forward() -> object:
                with torch.no_grad():
                    return model(x)

            return setting, lambda: engine(x, methods="rollout"), forward

        def forward_backward() -> object:
            leaf = x.clone().requires_grad_()
            logits = model(leaf)
            return torch.autograd.grad(logits.max(dim=1).values.sum(), leaf)

        return setting, lambda: engine(x, methods="gradrollout"), forward_backward
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval().to(device)
    x = torch.randn(args.lrp_batch, 3, 224, 224, generator=generator).to(device)
    with torch.no_grad():
        classes = model(x).logits.argmax(1)
    engine = CamEngine(model)
    return (f"Hugging Face ViT-B/16, {args.lrp_batch} × 224²", lambda: engine(x, methods="attnlrp", targets=classes),
            lxt_attnlrp(model, x, classes))  # fmt: skip


def child(case: str, side: int, device: str, args: argparse.Namespace) -> None:
    """Run one side of a case once in this fresh process; print the peak memory it adds, in MiB."""
    _, ours, compared = build(case, device, args)
    run = (ours, compared)[side]
    print(json.dumps({"peak_mib": peak_added_mib(run, device)}))


def peak_mib(case: str, side: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--child", case, str(side), "--device", args.device]
    for option in ("batch", "scorecam_batch", "scorecam_size", "vit_batch", "lrp_batch"):
        cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return float(json.loads(out)["peak_mib"])


def timed(fn: Callable[[], object], device: str) -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="batch of the reciprocam / gradcam case")
    parser.add_argument("--vit-batch", type=int, default=4, help="batch of the rollout cases")
    parser.add_argument("--lrp-batch", type=int, default=2, help="batch of the attnlrp case")
    parser.add_argument("--scorecam-batch", type=int, default=1)
    parser.add_argument("--scorecam-size", type=int, default=112)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    if args.child:
        child(args.child[0], int(args.child[1]), args.device, args)
        return
    if args.repeats < 5:
        parser.error(f"--repeats {args.repeats}: the house takes the median of at least 5 timed calls")
    where = torch.cuda.get_device_name() if args.device != "cpu" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, median of {args.repeats} after a warm-up, interleaved\n")
    print("| case (ours / compared) | model, input | ours (s) | compared (s) | ratio | floor | peak MiB ours | "
          "peak MiB compared |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for case in args.cases:
        setting, ours, compared = build(case, args.device, args)
        ours(), compared()  # warm-up
        t_ours, t_other = [], []
        for _ in range(args.repeats):
            t_ours.append(timed(ours, args.device))
            t_other.append(timed(compared, args.device))
        mo, mc = statistics.median(t_ours), statistics.median(t_other)
        ratio = f"**{mc / mo:.0f}× faster**" if case.endswith("scorecam") else f"**{mo / mc:.2f}**"
        mem = ("n/a", "n/a") if args.no_memory else tuple(f"{peak_mib(case, s, args):.0f}" for s in (0, 1))
        cells = [case, setting, f"{mo:.3f}", f"{mc:.3f}", ratio, FLOORS[case], *mem]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
