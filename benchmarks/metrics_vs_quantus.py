"""Time (and peak memory of) the ``cams.metrics`` measures against Quantus 0.6.0 and pytorch-grad-cam 1.5.7, in
the same run, on the same inputs.

    python benchmarks/metrics_vs_quantus.py                       # every case, 64 maps of 224² and of 56², CPU
    python benchmarks/metrics_vs_quantus.py --sizes 56 --cases auc focus --repeats 5
    python benchmarks/metrics_vs_quantus.py --device cuda         # ours on the GPU (the peers stay on NumPy)
    python benchmarks/metrics_vs_quantus.py --run-cost            # each callback measure's cost in one run

Each case is ``(name, ours, peer, inputs[, peer_core])``: ``inputs(batch, size, device)`` builds the shared
inputs once per size (a dict), ``ours(inputs)`` and ``peer(inputs)`` compute the same measure from them, and the
optional ``peer_core(inputs)`` is the peer's arithmetic alone (for Quantus: ``evaluate_batch`` on the maps it
would have normalised, without ``__call__``'s input checks, whose ``len(set(a_batch.flatten().tolist()))``
dominates its time on large batches). The maps are shaped like real CAMs: 7 x 7 Gaussian noise upsampled
bilinearly, ReLU'd (a third of each map exactly zero, as after a CAM's ReLU) and scaled to peak at 1; the objects
are one random box per image (5-40 % of it).

Timings are medians of ``--repeats`` calls (default 5) after one warm-up call of each, ours and the peer
interleaved, in wall seconds and in CPU seconds of the process (every thread's): on a shared machine the CPU
time is what the load disturbs least, and with ``--threads 1`` it is the work itself. ``max |ours - peer|`` is
over the images (``nan`` where both are ``nan`` counts as equal). Peak memory is measured in a fresh child
process that builds the inputs, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the case
once and reports the peak resident set above what it held before the call (on CUDA:
``torch.cuda.max_memory_allocated`` above what it held).

``--run-cost`` measures something else: what each of the callback's measures adds to one run, in CPU seconds
and as a multiple of the run's own engine call (Grad-CAM of 8 images of 224² on a randomly initialised
resnet18, ``layer4``), with the measure given the same :class:`~cam_callback.measures.Slice` a run hands it.

Another engineer's cases (robustness, randomisation, faithfulness) go at the end of :data:`CASES`, under their
own heading.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from _memory import peak_added_mib
from torch import nn

from cams import metrics

Inputs = dict[str, Any]


class Case(NamedTuple):
    """One comparison: the same measure by us and by the peer, from the same inputs."""

    name: str
    ours: Callable[[Inputs], Any]
    peer: Callable[[Inputs], Any]
    inputs: Callable[[int, int, str], Inputs]
    peer_core: Callable[[Inputs], Any] | None = None


# ------------------------------------------------------------------------------------------------ inputs
def cam_like_maps(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(B, size, size)`` maps like upsampled, ReLU'd CAMs, each peaking at exactly 1."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, 7, 7, generator=gen)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    maps = (maps - maps.flatten(1).quantile(0.33, dim=1).view(-1, 1, 1)).clamp_min(0)
    return maps / maps.amax(dim=(1, 2), keepdim=True)


def box_masks(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    """One random box per image (sides a quarter to two thirds of the image) as ``(B, size, size)`` bool."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(batch):
        h, w = torch.randint(size // 4, size * 2 // 3, (2,), generator=gen).tolist()
        y, x = (int(torch.randint(0, size - side, (1,), generator=gen)) for side in (h, w))
        masks[i, y : y + h, x : x + w] = True
    return masks


def map_inputs(batch: int, size: int, device: str) -> Inputs:
    """Maps, objects and (unused by the measures, needed by Quantus' signature) images, ours and NumPy's."""
    maps, masks = cam_like_maps(batch, size), box_masks(batch, size)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    positions = torch.rand(batch, 4, generator=torch.Generator().manual_seed(2)).argsort(dim=1) < 2  # Focus' tiles
    return {
        "maps": maps.to(device), "masks": masks.to(device), "positions": positions.to(device),
        "a": maps[:, None].numpy(), "s": masks[:, None].numpy().astype(np.float32), "x": x,
        "y": np.zeros(batch, dtype=int), "p": [tuple(int(v) for v in row) for row in positions],
        "shape": f"{batch} maps {size}²",
    }  # fmt: skip


class _Pool(nn.Module):
    """What Quantus' Focus is handed as its model (it asserts one; with maps given it does not run it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _quantus(metric: Any, needs_model: bool = False, **call: Any) -> Callable[[Inputs], np.ndarray]:
    """Quantus' ``metric`` (built lazily, ``disable_warnings=True``) called as a user calls it on the inputs."""

    def run(d: Inputs) -> np.ndarray:
        extra = {"custom_batch": d["p"]} if call.get("custom") else {"s_batch": d["s"]}
        scores = metric()(model=_Pool() if needs_model else None, x_batch=d["x"], y_batch=d["y"], a_batch=d["a"],
                          channel_first=True, **extra)  # fmt: skip
        return np.asarray(scores, dtype=np.float64)

    return run


def _quantus_core(metric: Any, custom: bool = False) -> Callable[[Inputs], np.ndarray]:
    """Quantus' ``evaluate_batch`` alone, on the maps as its ``general_preprocess`` would normalise them."""

    def run(d: Inputs) -> np.ndarray:
        m = metric()
        a = m.normalise_func(d["a"]) if m.normalise else d["a"]
        a = np.abs(a) if m.abs else a
        extra = {"c_batch": d["p"]} if custom else {"s_batch": d["s"]}
        return np.asarray(m.evaluate_batch(a_batch=a, x_batch=d["x"], **extra), dtype=np.float64)

    return run


def _metric(name: str, **options: Any) -> Callable[[], Any]:
    """A function making Quantus' metric ``name`` with ``options`` and its warnings off."""

    def make() -> Any:
        import quantus

        return getattr(quantus, name)(disable_warnings=True, **options)

    return make


def _quantus_case(name: str, ours: Callable[[Inputs], Any], metric: str, custom: bool = False, **options: Any) -> Case:
    make = _metric(metric, **options)
    return Case(name, ours, _quantus(make, needs_model=custom, custom=custom), map_inputs, _quantus_core(make, custom))


# ---------------------------------------------------------------------------------------------- ARCC
def _evidence_model() -> nn.Module:
    """Class 0 scores the images' mean brightness, class 1 its opposite."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0], model[0].weight[1] = 4 / 3, -4 / 3
    return model


def _channel_mean_map(images: torch.Tensor) -> torch.Tensor:
    """A stand-in for the method both sides re-run for coherency: the min-max scaled channel mean."""
    mean = images.detach().mean(dim=1)
    flat = mean.flatten(1)
    low, high = flat.min(dim=1).values.view(-1, 1, 1), flat.max(dim=1).values.view(-1, 1, 1)
    return (mean - low) / (high - low)


def arcc_inputs(batch: int, size: int, device: str) -> Inputs:
    batch = min(batch, 8)  # pytorch-grad-cam solves one sparse system per image and percentile, on the CPU
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return {"model": _evidence_model().to(device), "x": x.to(device), "maps": _channel_mean_map(x).to(device),
            "classes": [0] * batch, "shape": f"{batch} images {size}², noise-free ROAD"}  # fmt: skip


def _ours_arcc(d: Inputs) -> torch.Tensor:
    return metrics.arcc(d["model"], d["x"], d["maps"], _channel_mean_map, targets=d["classes"], noise=0.0)["arcc"]


def _grad_cam_arcc(d: Inputs) -> np.ndarray:
    import pytorch_grad_cam.metrics.road as road
    from pytorch_grad_cam.metrics.arcc import ARCC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    class NoiseFree(road.NoisyLinearImputer):
        def __init__(self, noise: float = 0.0) -> None:
            super().__init__(noise=0.0)

    imputer, road.NoisyLinearImputer = road.NoisyLinearImputer, NoiseFree
    try:
        model, x = copy.deepcopy(d["model"]).cpu(), d["x"].cpu()
        return ARCC(base_method=lambda input_tensor, targets: _channel_mean_map(input_tensor).numpy())(
            x, d["maps"].cpu().numpy(), [ClassifierOutputSoftmaxTarget(c) for c in d["classes"]], model)
    finally:
        road.NoisyLinearImputer = imputer


# ------------------------------------------------------------------------------------------------ cases
def _on(name: str, **options: Any) -> Callable[[Inputs], torch.Tensor]:
    function = getattr(metrics, name)
    return lambda d: function(d["maps"], masks=d["masks"], **options)


def _of(name: str, **options: Any) -> Callable[[Inputs], torch.Tensor]:
    function = getattr(metrics, name)
    return lambda d: function(d["maps"], **options)


# fmt: off
CASES: list[Case] = [
    # --- localisation (Quantus' localisation family), complexity, and pytorch-grad-cam's ARCC ---
    _quantus_case("pointing_game", _on("pointing_game", tolerance=0), "PointingGame"),
    _quantus_case("energy_pointing_game", _on("energy_pointing_game"), "RelevanceMassAccuracy"),
    _quantus_case("top_k_intersection", _on("top_k_intersection", k=1000), "TopKIntersection", k=1000),
    _quantus_case("relevance_rank_accuracy", _on("relevance_rank_accuracy"), "RelevanceRankAccuracy"),
    _quantus_case("attribution_localisation", _on("attribution_localisation"), "AttributionLocalisation"),
    _quantus_case("auc", _on("roc_auc"), "AUC"),
    _quantus_case("focus", lambda d: metrics.focus(d["maps"], d["positions"]), "Focus", custom=True),
    _quantus_case("sparseness", _of("sparseness", epsilon=1e-7), "Sparseness"),
    _quantus_case("complexity", _of("complexity"), "Complexity"),
    _quantus_case("effective_complexity", _of("effective_complexity"), "EffectiveComplexity"),
    Case("arcc (pytorch-grad-cam)", _ours_arcc, _grad_cam_arcc, arcc_inputs),
    # --- robustness, randomisation, faithfulness (issue 21, part B): append below ---
]
# fmt: on
BY_NAME = {case.name: case for case in CASES}


# -------------------------------------------------------------------------------------------- measuring
def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def timed(function: Callable[[], Any], device: str) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all its threads) of one call."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    function()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


@functools.lru_cache(maxsize=8)
def built(inputs: Callable[[int, int, str], Inputs], batch: int, size: int, device: str) -> Inputs:
    return inputs(batch, size, device)


def child(name: str, side: str, batch: int, size: int, device: str) -> None:
    """Run one side of one case once in this (fresh) process; print the peak memory it adds, in MiB."""
    case = BY_NAME[name]
    d = case.inputs(batch, size, device)
    run = {"ours": case.ours, "peer": case.peer, "core": case.peer_core}[side]
    print(json.dumps({"peak_mib": peak_added_mib(lambda: run(d), device)}))


def peak_mib(name: str, side: str, batch: int, size: int, device: str) -> float:
    cmd = [sys.executable, __file__, "--child", name, side, "--batch", str(batch), "--sizes", str(size),
           "--device", device, "--threads", str(torch.get_num_threads())]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_mib"]


RUN_COST_MEASURES = ("localisation", "top_k_intersection", "relevance_rank_accuracy", "attribution_localisation",
                     "auc", "focus", "sparseness", "complexity", "effective_complexity", "adcc", "arcc",
                     "faithfulness")  # fmt: skip


def run_cost(device: str) -> None:
    """Print each callback measure's CPU seconds in one run, and as a multiple of the run's engine call."""
    import torchvision

    from cam_callback._batch import FixedBatch
    from cam_callback.measures import Slice, baseline_maps, resolve_measures
    from cams import CamEngine

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).eval().to(device)
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    engine = CamEngine(model, "layer4")

    def explain(images: torch.Tensor, targets: Any) -> Any:
        return engine(images, methods=["gradcam"], targets=targets)

    def cpu_seconds(function: Callable[[], Any]) -> float:
        return timed(function, device)[1]

    result = explain(x.to(device), None)  # also the warm-up: each measure is then timed once
    engine_s = cpu_seconds(lambda: explain(x.to(device), None))
    batch = FixedBatch(x, labels=labels, boxes=torch.tensor([[40.0, 40.0, 160.0, 180.0]] * 8))
    part = Slice(model=model, x=x.to(device), batch=batch, rows=torch.arange(8), images=x,
                 maps={"gradcam": result["gradcam"]}, classes=result.classes, engine_classes=result.classes,
                 targets=None, explain=explain, layers=["layer4"], labels=labels,
                 baselines=baseline_maps((8, 224, 224), torch.device(device)))  # fmt: skip
    print(f"one run's engine call (Grad-CAM, resnet18 layer4, 8 images 224², {device}): {engine_s:.3f} s CPU\n")
    print("| measure | CPU s per run | × the engine call |")
    print("|---|---:|---:|")
    for measure in resolve_measures(list(RUN_COST_MEASURES)):
        seconds = cpu_seconds(lambda m=measure: m.per_image(part))
        print(f"| `{measure.name}` | {seconds:.3f} | {seconds / engine_s:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 56])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(BY_NAME), choices=list(BY_NAME))
    parser.add_argument("--device", default="cpu", help="where ours runs: 'cpu' or 'cuda'")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--run-cost", action="store_true", help="each callback measure's cost in one run")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.sizes[0], args.device)
        return
    if args.run_cost:
        run_cost(args.device)
        return

    import pytorch_grad_cam
    import quantus

    print(f"torch {torch.__version__}, quantus {quantus.__version__}, pytorch-grad-cam "
          f"{getattr(pytorch_grad_cam, '__version__', '1.5.7')}, {torch.get_num_threads()} threads, ours on "
          f"{args.device}, median of {args.repeats} after a warm-up\n")  # fmt: skip
    print("| measure | inputs | ours (s) | peer (s) | speed-up | ours CPU (s) | peer CPU (s) | CPU speed-up | "
          "peer's arithmetic alone, CPU (s) | CPU speed-up | max \\|ours − peer\\| | peak MiB ours | peak MiB peer |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for name in args.cases:
            case = BY_NAME[name]
            d = built(case.inputs, args.batch, size, args.device)
            run_ours, run_peer = functools.partial(case.ours, d), functools.partial(case.peer, d)
            difference = np.nanmax(np.abs(_numpy(run_ours()) - _numpy(run_peer())))  # the warm-up calls
            ours_t, peer_t = [], []
            for _ in range(args.repeats):
                ours_t.append(timed(run_ours, args.device))
                peer_t.append(timed(run_peer, "cpu"))
            (wo, co), (wp, cp) = medians(ours_t), medians(peer_t)
            core = "—", "—"
            if case.peer_core is not None:
                run_core = functools.partial(case.peer_core, d)
                run_core()
                _, cc = medians([timed(run_core, "cpu") for _ in range(args.repeats)])
                core = f"{cc:.4f}", f"{cc / co:.1f}×"
            memory = ("n/a", "n/a") if args.no_memory else tuple(
                f"{peak_mib(name, side, args.batch, size, args.device):.0f}" for side in ("ours", "peer"))
            cells = [name, d["shape"], f"{wo:.4f}", f"{wp:.3f}", f"**{wp / wo:.0f}×**", f"{co:.4f}", f"{cp:.3f}",
                     f"**{cp / co:.0f}×**", *core, f"{difference:.1e}" if math.isfinite(difference) else "nan",
                     *memory]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
