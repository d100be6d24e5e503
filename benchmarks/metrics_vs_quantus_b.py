"""Time (and peak memory of) the robustness, randomisation and faithfulness measures of ``cams.metrics`` against
Quantus 0.6.0, in the same run, on the same inputs and the same random draws.

    python benchmarks/metrics_vs_quantus_b.py                     # every case, 64 images of 224² and of 56², CPU
    python benchmarks/metrics_vs_quantus_b.py --sizes 56 --cases mprt irof --repeats 5
    python benchmarks/metrics_vs_quantus_b.py --device cuda       # ours on the GPU (Quantus stays on NumPy + CPU)

Issue 21, part B: the cases of :data:`CASES` have the structure of ``benchmarks/metrics_vs_quantus.py`` (part A),
``(name, ours, peer, inputs)``, and go at the end of its list; the measuring code is imported from that file.

The model is a small CNN (two strided 3 x 3 convolutions, 8 and 16 channels, pooling, 10 classes; random weights,
no download): a forward costs little next to what each library does around it, which is what is compared. The
maps the measures that explain again compare are Grad-CAM's at the second convolution, from
:class:`cams.CamEngine` on both sides (Quantus' ``explain_func`` calls it); the faithfulness cases score
bilinearly upsampled 7 x 7 noise scaled to ``[0, 1]`` (distinct values: Quantus sorts with an unstable sort).
Settings are Quantus' defaults where they run in seconds, else smaller and the same on both sides (in the case
list). The pixel-step measures and IROF run on one-channel images (see :func:`gray_inputs`). Every random draw
(noise, subsets, replacement values, other classes) is made once, in the inputs, and handed to both sides (Quantus'
``np.random`` functions read from it during its call), so ``max |ours − peer|`` compares the same numbers; drawing
them is then outside both timings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from _memory import peak_added_mib
from metrics_vs_quantus import _numpy, built, medians, timed  # part A's measuring code
from torch import nn

from cams import CamEngine, metrics

Inputs = dict[str, Any]


class Case(NamedTuple):
    """One comparison: the same measure by us and by the peer, from the same inputs."""

    name: str
    ours: Callable[[Inputs], Any]
    peer: Callable[[Inputs], Any]
    inputs: Callable[[int, int, str], Inputs]
    peer_core: Callable[[Inputs], Any] | None = None


# ------------------------------------------------------------------------------------------------ inputs
LAYER = "2"
SAMPLES = 10  # robustness: perturbed copies per image (Quantus: 200)
SMOOTH = 5  # Smooth MPRT: copies averaged (Quantus: 50)
STEPS = 16  # pixel flipping, monotonicity, sensitivity-n: steps of HW / 16 pixels (Quantus: 1 element a step)
RUNS, SUBSET = 20, 224  # faithfulness correlation: subsets of 224 pixels (Quantus: 100 runs of 224 elements)
FORWARD = 64  # images per scoring forward on our side (Quantus forwards the whole batch of 64 at each step)


def small_cnn(channels: int = 3) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
        ).eval()  # fmt: skip


def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
    """Quantus' explain function: the engine's Grad-CAM at LAYER, ``(B, 1, H, W)``."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    return CamEngine(model, LAYER)(x, targets=torch.as_tensor(np.asarray(targets)))["gradcam"][:, None].numpy()


def smooth_maps(batch: int, size: int, seed: int = 3) -> torch.Tensor:
    """Bilinearly upsampled 7 x 7 noise, min-max scaled to [0, 1] per map (distinct values)."""
    coarse = torch.randn(batch, 1, 7, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low)


def model_inputs(batch: int, size: int, device: str, channels: int = 3) -> Inputs:
    """The model, images, their classes, Grad-CAM maps and smooth maps; every draw both sides share; NumPy twins."""
    model = small_cnn(channels).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    with torch.no_grad():
        y = model(x.to(device)).argmax(1).cpu()
    cam = CamEngine(model, LAYER)(x.to(device), targets=y.to(device))["gradcam"].cpu()
    maps = smooth_maps(batch, size)
    pixels = size * size
    d: Inputs = {
        "model": model, "x": x.to(device), "y": y.to(device), "cam": cam.to(device), "maps": maps.to(device),
        "xn": x.numpy(), "yn": y.numpy(), "camn": cam.numpy()[:, None], "mapsn": maps.numpy()[:, None],
        "shape": f"{batch} images {size}², {channels} channel{'s' * (channels > 1)}",
    }  # fmt: skip
    d["uniform"] = torch.rand(SAMPLES, *x.shape, generator=g) * 0.4 - 0.2
    d["gauss"] = torch.randn(SAMPLES, *x.shape, generator=g) * 0.1
    d["normal"] = torch.randn(SMOOTH - 1, *x.shape, generator=g)
    d["subsets"] = torch.rand(batch, RUNS, pixels, generator=g).topk(SUBSET, dim=2).indices
    step = pixels // STEPS
    d["step"], d["draws"] = step, torch.rand(math.ceil(pixels / step), 4, batch, generator=g)
    return d


def gray_inputs(batch: int, size: int, device: str) -> Inputs:
    """One channel, with skimage's superpixels of every image as Quantus makes them. Quantus' IROF breaks on more
    channels, and its pixel-step measures want ``features_in_step`` (elements of ``C H W``) to divide ``H W``: for
    ``C = 3`` no step of whole pixels does at 224² or 56²; with one channel an element is a pixel."""
    from quantus.helpers import utils

    d = model_inputs(batch, size, device, channels=1)
    d["segments"] = np.stack([utils.get_superpixel_segments(np.moveaxis(x, 0, -1).astype("double"), "slic")
                              for x in d["xn"]])  # fmt: skip
    return d


@contextlib.contextmanager
def feeding(name: str, values: Callable[[int, tuple, dict], np.ndarray]) -> Iterator[None]:
    """``np.random.<name>`` returns ``values(call, args, kwargs)`` during the block: Quantus reads our draws."""
    original, calls = getattr(np.random, name), iter(range(10**9))
    setattr(np.random, name, lambda *args, **kwargs: values(next(calls), args, kwargs))
    try:
        yield
    finally:
        setattr(np.random, name, original)


def _q(name: str, **options: Any) -> Any:
    import quantus

    return getattr(quantus, name)(disable_warnings=True, **options)


def _call(d: Inputs, metric: Any, maps: str = "camn", **extra: Any) -> Any:
    return metric(model=d["model"], x_batch=d["xn"], y_batch=d["yn"], a_batch=d[maps], explain_func=explain_func,
                  device="cpu", **extra)  # fmt: skip


def _sample(noise: torch.Tensor) -> Callable[[int, tuple, dict], np.ndarray]:
    return lambda i, args, kwargs: noise[i].double().numpy().reshape(kwargs["size"])


# ------------------------------------------------------------------------------------------- robustness
def _robustness(name: str, function: str, noise: str, quantus_name: str, numpy_name: str) -> Case:
    def ours(d: Inputs) -> torch.Tensor:
        return getattr(metrics, function)(d["model"], d["x"], LAYER, targets=d["y"], nr_samples=SAMPLES,
                                          noise=d[noise])  # fmt: skip

    def peer(d: Inputs) -> Any:
        with feeding(numpy_name, _sample(d[noise])):
            return _call(d, _q(quantus_name, nr_samples=SAMPLES))

    return Case(name, ours, peer, model_inputs)


# ---------------------------------------------------------------------------------------- randomisation
def _layers(scores: dict) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float64) for k, v in scores.items() if k != "original"])


def _ours_mprt(d: Inputs) -> np.ndarray:
    return _layers(metrics.mprt(d["model"], d["x"], LAYER, targets=d["y"]))


def _peer_mprt(d: Inputs) -> np.ndarray:
    with torch.random.fork_rng():
        return _layers(_call(d, _q("MPRT")))


def _ours_smooth(d: Inputs) -> np.ndarray:
    return _layers(metrics.smooth_mprt(d["model"], d["x"], LAYER, targets=d["y"], nr_samples=SMOOTH, noise=d["normal"]))


def _peer_smooth(d: Inputs) -> np.ndarray:
    import quantus

    noise, explain = d["normal"], quantus.explain
    quantus.explain = explain_func  # Quantus' SmoothMPRT calls quantus.explain, not its explain_func
    try:
        with torch.random.fork_rng(), feeding("randn", lambda i, a, k: noise[i % (SMOOTH - 1)].double().numpy()):
            return _layers(_smooth_call(d))
    finally:
        quantus.explain = explain


def _smooth_call(d: Inputs) -> Any:
    metric = _q("SmoothMPRT", nr_samples=SMOOTH)
    return metric(model=d["model"], x_batch=d["xn"], y_batch=d["yn"], a_batch=None, explain_func=explain_func,
                  device="cpu")  # fmt: skip


def _ours_empr(d: Inputs) -> torch.Tensor:
    return metrics.efficient_mprt(d["model"], d["x"], LAYER, targets=d["y"])


def _peer_empr(d: Inputs) -> Any:
    with torch.random.fork_rng():
        return _call(d, _q("EfficientMPRT"))


def _off(d: Inputs) -> torch.Tensor:
    state = np.random.get_state()
    np.random.seed(42)  # Quantus' RandomLogit: np.random.seed(seed), then randint(0, K - 1) per image
    draw = torch.from_numpy(np.random.randint(0, 9, len(d["yn"])))
    np.random.set_state(state)
    return (draw + (draw >= d["y"].cpu()).long()).to(d["x"].device)


def _ours_logit(d: Inputs) -> torch.Tensor:
    return metrics.random_logit(d["model"], d["x"], LAYER, targets=d["y"], maps=d["cam"], off_classes=_off(d),
                                flat=True)  # fmt: skip


def _peer_logit(d: Inputs) -> Any:
    state = np.random.get_state()
    try:
        return _call(d, _q("RandomLogit", num_classes=10))
    finally:
        np.random.set_state(state)


# ----------------------------------------------------------------------------------------- faithfulness
def _stable() -> contextlib.AbstractContextManager[None]:
    """Quantus' argsort made stable (ties ordered as ours; the maps have none, the patches of zeros may)."""
    original = np.argsort

    @contextlib.contextmanager
    def patch() -> Iterator[None]:
        np.argsort = functools.partial(original, kind="stable")
        try:
            yield
        finally:
            np.argsort = original

    return patch()


def _ours_flipping(d: Inputs) -> torch.Tensor:
    return metrics.pixel_flipping(d["model"], d["x"], d["maps"], d["y"], features_in_step=d["step"],
                                  batch_size=FORWARD)["curve"]  # fmt: skip


def _peer_flipping(d: Inputs) -> Any:
    with _stable():
        return _call(d, _q("PixelFlipping", features_in_step=d["step"]), maps="mapsn")


def _patch(d: Inputs) -> int:
    return d["x"].shape[-1] // 8


def _ours_region(d: Inputs) -> torch.Tensor:
    return metrics.region_perturbation(d["model"], d["x"], d["maps"], d["y"], patch_size=_patch(d),
                                       regions_evaluation=16, batch_size=FORWARD)["curve"]  # fmt: skip


def _peer_region(d: Inputs) -> Any:
    with _stable():
        return _call(d, _q("RegionPerturbation", patch_size=_patch(d), regions_evaluation=16), maps="mapsn")


def _ours_selectivity(d: Inputs) -> torch.Tensor:
    return metrics.selectivity(d["model"], d["x"], d["maps"], d["y"], patch_size=_patch(d), batch_size=FORWARD)["curve"]


def _peer_selectivity(d: Inputs) -> Any:
    with _stable():
        return _call(d, _q("Selectivity", patch_size=_patch(d)), maps="mapsn")


def _quantus_area(curve: torch.Tensor) -> torch.Tensor:
    """Quantus' IROF area (L - trapz(p_1 .. p_L), unit steps) from our curve p_0 .. p_L."""
    p = curve.double()
    return (p.shape[1] - 1) - ((p[:, 2:] + p[:, 1:-1]) / 2).sum(dim=1)


def _ours_irof(d: Inputs) -> torch.Tensor:
    return metrics.irof(d["model"], d["x"], d["maps"], d["y"], baseline=0.0, batch_size=FORWARD)["irof"]  # own SLIC


def _ours_irof_segments(d: Inputs) -> torch.Tensor:
    curve = metrics.irof(d["model"], d["x"], d["maps"], d["y"], segments=torch.from_numpy(d["segments"]),
                         baseline=0.0, batch_size=FORWARD)["curve"]  # fmt: skip
    return _quantus_area(curve)


def _peer_irof(d: Inputs) -> Any:
    import numpy

    numpy.trapz = numpy.trapezoid  # numpy 2.4 removed trapz, which Quantus 0.6.0 calls
    return _call(d, _q("IROF", perturb_baseline=0.0, return_aggregate=False), maps="mapsn")


def _peer_irof_segments(d: Inputs) -> Any:
    from quantus.helpers import utils

    segments, original = iter(d["segments"]), utils.get_superpixel_segments
    utils.get_superpixel_segments = lambda img, segmentation_method: next(segments)
    try:
        return _peer_irof(d)
    finally:
        utils.get_superpixel_segments = original


def _ours_correlation(d: Inputs) -> torch.Tensor:
    return metrics.faithfulness_correlation(d["model"], d["x"], d["maps"], d["y"], subsets=d["subsets"],
                                            batch_size=FORWARD)  # fmt: skip


def _peer_correlation(d: Inputs) -> Any:
    pixels = d["x"].shape[-1] * d["x"].shape[-2]
    elements = (d["subsets"][..., None] + torch.arange(3) * pixels).flatten(-2).numpy()
    batch = len(d["yn"])
    with feeding("choice", lambda i, a, k: elements[i % batch, i // batch]):
        return _call(d, _q("FaithfulnessCorrelation", nr_runs=RUNS, subset_size=3 * SUBSET, return_aggregate=False),
                     maps="mapsn")  # fmt: skip


def _ours_monotonicity(d: Inputs) -> torch.Tensor:
    return metrics.monotonicity_correlation(d["model"], d["x"], d["maps"], d["y"], nr_samples=4,
                                            features_in_step=d["step"], draws=d["draws"],
                                            batch_size=FORWARD)  # fmt: skip


def _peer_monotonicity(d: Inputs) -> Any:
    draws = d["draws"]
    with _stable(), feeding("uniform", lambda i, a, k: draws[i // 4, i % 4].double().numpy()):
        return _call(d, _q("MonotonicityCorrelation", nr_samples=4, features_in_step=d["step"]), maps="mapsn")


def _ours_sensitivity_n(d: Inputs) -> np.ndarray:
    """Quantus' number (Pearson over the images of the cumulative drop and the last step's mass) from ours."""
    from quantus.functions.similarity_func import correlation_pearson

    step, pixels = d["step"], d["x"].shape[-1] * d["x"].shape[-2]
    order = torch.sort(d["maps"].flatten(1), dim=1, descending=True, stable=True).indices
    steps = int(0.8 * pixels // step)
    result = metrics.sensitivity_n(d["model"], d["x"], d["maps"], d["y"],
                                   subsets=[order[:, None, : (k + 1) * step] for k in range(steps)],
                                   batch_size=FORWARD)  # fmt: skip
    sums = result["sums"][:, :, 0]
    last = torch.diff(sums, dim=1, prepend=torch.zeros_like(sums[:, :1]))
    return correlation_pearson(result["deltas"][:, :, 0].T.cpu().numpy(), last.T.cpu().numpy(), batched=True)


def _peer_sensitivity_n(d: Inputs) -> Any:
    with _stable():
        return _call(d, _q("SensitivityN", features_in_step=d["step"], return_aggregate=False), maps="mapsn")


# ------------------------------------------------------------------------------------------------ cases
# fmt: off
CASES: list[Case] = [
    # --- robustness, randomisation, faithfulness (issue 21, part B) ---
    _robustness("max_sensitivity", "max_sensitivity", "uniform", "MaxSensitivity", "uniform"),
    _robustness("avg_sensitivity", "avg_sensitivity", "uniform", "AvgSensitivity", "uniform"),
    _robustness("local_lipschitz", "local_lipschitz", "gauss", "LocalLipschitzEstimate", "normal"),
    Case("mprt", _ours_mprt, _peer_mprt, model_inputs),
    Case("smooth_mprt", _ours_smooth, _peer_smooth, model_inputs),
    Case("efficient_mprt", _ours_empr, _peer_empr, model_inputs),
    Case("random_logit", _ours_logit, _peer_logit, model_inputs),
    Case("pixel_flipping", _ours_flipping, _peer_flipping, gray_inputs),
    Case("region_perturbation", _ours_region, _peer_region, model_inputs),
    Case("selectivity", _ours_selectivity, _peer_selectivity, model_inputs),
    Case("irof (each its own superpixels)", _ours_irof, _peer_irof, gray_inputs),
    Case("irof (skimage's superpixels)", _ours_irof_segments, _peer_irof_segments, gray_inputs),
    Case("faithfulness_correlation", _ours_correlation, _peer_correlation, model_inputs),
    Case("monotonicity_correlation", _ours_monotonicity, _peer_monotonicity, gray_inputs),
    Case("sensitivity_n (Quantus' definition)", _ours_sensitivity_n, _peer_sensitivity_n, gray_inputs),
]
# fmt: on
BY_NAME = {case.name: case for case in CASES}


# -------------------------------------------------------------------------------------------- measuring
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 56])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(BY_NAME), choices=list(BY_NAME))
    parser.add_argument("--device", default="cpu", help="where ours runs: 'cpu' or 'cuda'")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
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

    import quantus

    print(f"torch {torch.__version__}, quantus {quantus.__version__}, {torch.get_num_threads()} threads, ours on "
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
