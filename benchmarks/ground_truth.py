"""Ground truth: which CAM method finds the pixels that matter, on data where they are known by construction.

Popular attribution methods often do not beat a random map or an edge detector on ground-truth tasks
(XAI-TRIS: Clark, Wilming and Haufe 2024, https://arxiv.org/abs/2306.12816), and attribution follows how
salient a region is rather than whether the model relies on it (Clark et al. 2026,
https://arxiv.org/abs/2602.09238). This benchmark generates its data (nothing is downloaded), trains a small CNN
and a small ViT on each scenario (seeded), and scores every method of the engine (:data:`cams.METHODS`, so a new
method is measured as soon as it lands) on held-out images, beside three baselines that know nothing of the model:
a seeded random map, a centre map and the image's Sobel edges.

Scenarios, all 64 x 64, one channel:

- XAI-TRIS-style tetrominoes on white Gaussian noise (https://github.com/braindatalab/xai-tris, their 64 x 64
  setting: a T for class 0, an L for class 1, cells of 8 pixels, blurred with sigma 1.5, signal and background
  each scaled to unit norm):
  ``linear`` (``x = a s + (1 - a) b``, each class's shape at its own fixed place),
  ``multiplicative`` (``x = (1 - a s) * b``: the shape changes the noise's variance, not its mean),
  ``translations_rotations`` (cells of 4 pixels, a random place and quarter turn, additive),
  ``xor`` (both shapes at fixed places, each with a random sign; the class is whether the signs differ: no single
  pixel is informative). The ground truth is the shapes' cells.
- ``focus``: mosaics of 2 x 2 cluttered-digit tiles (``examples/cluttered_digits.py``'s generator at 32 x 32)
  after Arias-Duart et al. 2022 (https://arxiv.org/abs/2109.15035): trained on mosaics whose four tiles show one
  class, scored on mosaics with two tiles of the target class and two of two other classes; the ground truth is
  the two target tiles (the energy on them is the paper's Focus).
- The watermark scenarios of the salience study, on a two-class task (a horizontal or a vertical bar at a random
  place is the object) with a bright 5 x 5 square: ``watermark_absent`` (no square; a phantom region at a random
  place is "removed"), ``watermark_dependent`` (the square on every class-1 image, in every split) and
  ``watermark_independent`` (on half the images at random, whatever the class). The ground truth is the bar; the
  square's region is scored for attention, and the model's reliance on it is measured by the intervention of
  ``cam_callback.measures.reliance`` (the callback's ``cam_shortcut/reliance_vs_control``), to set beside the
  default ``Shortcut(reliance=0.1)``.

Measures (:data:`MEASURES`, a dict of functions: a new measure of ``cams.metrics`` plugs in by name):
``energy`` and ``pointing_game`` on the ground truth (localisation, higher is better), ROAD's ``road``
combined score (faithfulness, higher is better) and ``mprt``, the Spearman similarity of the map to that of a
copy whose target layer and everything after it are re-initialised (:func:`cams.metrics.sanity_check`; lower is
better, 1 means the map ignores the weights). Each cell is the mean over the seeds (and ± their standard
deviation) of the mean over the explained images.

Run::

    .venv/bin/python benchmarks/ground_truth.py --quick          # 1 seed, fewer images and methods: minutes
    .venv/bin/python benchmarks/ground_truth.py                  # 3 seeds, every scenario and method: hours
    .venv/bin/python benchmarks/ground_truth.py --json out.json  # also keep every number

It prints markdown tables (accuracy, one per measure, the watermark scenarios' attention and reliance) and the
time it took. ``run()`` is importable (``tests/test_ground_truth.py`` runs a reduced version).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "examples"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import cams  # noqa: E402
from cam_callback.measures.reliance import reliance  # noqa: E402
from cams import metrics  # noqa: E402
from cams.ops import gaussian_blur  # noqa: E402

SIZE = 64
TETRIS = ("linear", "multiplicative", "translations_rotations", "xor")
WATERMARKS = ("watermark_absent", "watermark_dependent", "watermark_independent")
SCENARIOS = (*TETRIS, "focus", *WATERMARKS)
MODELS = ("cnn", "vit")
BASELINES = ("baseline_random", "baseline_centre", "sobel")
"""Maps that know nothing of the model: a seeded random map, a centre map, the image's Sobel edges (the engine's
``sobel``, scored as a baseline)."""
QUICK_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam", "randomcam")
"""The methods of ``--quick`` (plus the baselines)."""
ALPHA = {"linear": 0.1, "multiplicative": 0.6, "translations_rotations": 0.6, "xor": 0.35}
"""Signal weight per tetromino scenario: XAI-TRIS's 64 x 64 white-noise values (0.03, 0.2, 0.575, 0.35) raised
where needed so that both small models learn the task from a few thousand images in a few epochs."""


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Data:
    """One split of a scenario.

    Attributes:
        images: ``(N, 1, 64, 64)`` float32, standardised.
        labels: ``(N,)`` int64.
        truth: ``(N, 64, 64)`` bool, the pixels that carry the class.
        spurious: ``(N, 64, 64)`` bool, the watermark's region (watermark scenarios), else ``None``.
        marked: ``(N,)`` bool, the images that show the watermark (watermark scenarios).
    """

    images: Tensor
    labels: Tensor
    truth: Tensor
    spurious: Tensor | None = None
    marked: Tensor | None = None

    def take(self, count: int) -> Data:
        rows = slice(0, count)
        pick = (lambda t: None if t is None else t[rows])  # noqa: E731
        return Data(self.images[rows], self.labels[rows], self.truth[rows], pick(self.spurious), pick(self.marked))


def _tetromino(shape: str, cell: int) -> Tensor:
    cells = {"t": [[1, 0], [1, 1], [1, 0]], "l": [[1, 0], [1, 0], [1, 1]]}[shape]
    return torch.tensor(cells, dtype=torch.float32).repeat_interleave(cell, 0).repeat_interleave(cell, 1)


def _place(canvas: Tensor, pattern: Tensor, row: int, col: int, value: float = 1.0) -> None:
    canvas[row : row + pattern.shape[0], col : col + pattern.shape[1]] = pattern * value


def _unit(t: Tensor) -> Tensor:
    return t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)


def tetris(kind: str, n: int, generator: torch.Generator, alpha: float | None = None) -> Data:
    """An XAI-TRIS-style scenario (see the module docstring): ``n`` images, balanced classes."""
    alpha = ALPHA[kind] if alpha is None else alpha
    labels = torch.randperm(n, generator=generator) % 2
    signal = torch.zeros(n, SIZE, SIZE)
    truth = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    shapes = (_tetromino("t", 8), _tetromino("l", 8))
    places = ((8, 8), (32, 40))
    for i, label in enumerate(labels.tolist()):
        if kind in ("linear", "multiplicative"):
            _place(signal[i], shapes[label], *places[label])
        elif kind == "translations_rotations":
            pattern = torch.rot90(_tetromino("tl"[label], 4), int(torch.randint(4, (1,), generator=generator)))
            row = int(torch.randint(SIZE - pattern.shape[0] + 1, (1,), generator=generator))
            col = int(torch.randint(SIZE - pattern.shape[1] + 1, (1,), generator=generator))
            _place(signal[i], pattern, row, col)
        elif kind == "xor":
            signs = (torch.randint(2, (2,), generator=generator) * 2 - 1).tolist()
            if (signs[0] != signs[1]) != bool(label):
                signs[1] = -signs[1]
            for shape, place, sign in zip(shapes, places, signs, strict=True):
                _place(signal[i], shape, *place, value=float(sign))
        else:
            raise ValueError(f"kind={kind!r}: expected one of {TETRIS}")
        truth[i] = signal[i] != 0
    signal = gaussian_blur(signal[:, None], kernel_size=9, sigma=1.5, border="zeros")[:, 0]
    background = torch.randn(n, SIZE, SIZE, generator=generator)
    if kind == "multiplicative":
        images = _unit(1 - alpha * signal) * _unit(background)
    else:
        images = alpha * _unit(signal) + (1 - alpha) * _unit(background)
    return Data(images[:, None], labels, truth)


def bars(kind: str, n: int, generator: torch.Generator) -> Data:
    """A watermark scenario: a 3 x 20 bar (class 0 horizontal, class 1 vertical) at a random place on noise, and a
    bright 5 x 5 square as the watermark (absent, class-dependent or class-independent; module docstring)."""
    labels = torch.randperm(n, generator=generator) % 2
    images = 0.3 * torch.randn(n, SIZE, SIZE, generator=generator)
    truth = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    spurious = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    marked = torch.zeros(n, dtype=torch.bool)
    flip = torch.rand(n, generator=generator) < 0.5
    for i, label in enumerate(labels.tolist()):
        h, w = (20, 3) if label else (3, 20)
        row = int(torch.randint(SIZE - h + 1, (1,), generator=generator))
        col = int(torch.randint(SIZE - w + 1, (1,), generator=generator))
        images[i, row : row + h, col : col + w] += 1.0
        truth[i, row : row + h, col : col + w] = True
        while True:  # the square (or the phantom region) never touches the bar
            r, c = (int(v) for v in torch.randint(SIZE - 5 + 1, (2,), generator=generator))
            grown = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            grown[max(r - 2, 0) : r + 7, max(c - 2, 0) : c + 7] = True
            if not (grown & truth[i]).any():
                break
        present = {"watermark_absent": False, "watermark_dependent": bool(label),
                   "watermark_independent": bool(flip[i])}[kind]  # fmt: skip
        if present:
            images[i, r : r + 5, c : c + 5] = 2.0
        marked[i] = present
        spurious[i] = grown
    return Data(images[:, None], labels, truth, spurious, marked)


def focus(n: int, generator: torch.Generator, train: bool, seed: int) -> Data:
    """Focus mosaics of cluttered digits (module docstring): 10 classes, the label the target class."""
    from cluttered_digits import make_canvases, upscaled_digits

    digits, digit_labels = upscaled_digits(scale=2)  # 16 x 16
    order = np.random.default_rng(seed).permutation(len(digits))
    pool = order[: int(0.6 * len(order))] if train else order[int(0.6 * len(order)) :]
    rng = np.random.default_rng([seed, 1 if train else 2])
    tiles, tile_labels, _, _ = make_canvases(digits[pool], digit_labels[pool], 4 * n + 200, rng, canvas=32,
                                             fragments=(2, 5), fragment_size=(5, 9))  # fmt: skip
    by_class = [np.flatnonzero(tile_labels == c) for c in range(10)]
    tiles_t = torch.from_numpy(tiles)
    images = torch.zeros(n, SIZE, SIZE)
    truth = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    labels = torch.randint(10, (n,), generator=generator)
    for i, label in enumerate(labels.tolist()):
        if train:
            classes = [label] * 4
        else:
            others = [c for c in torch.randperm(10, generator=generator).tolist() if c != label][:2]
            classes = [label, label, *others]
            classes = [classes[j] for j in torch.randperm(4, generator=generator).tolist()]
        for quarter, c in enumerate(classes):
            pick = by_class[c][int(torch.randint(len(by_class[c]), (1,), generator=generator))]
            row, col = 32 * (quarter // 2), 32 * (quarter % 2)
            images[i, row : row + 32, col : col + 32] = tiles_t[pick]
            truth[i, row : row + 32, col : col + 32] = c == label
    return Data(images[:, None], labels, truth)


def make_data(scenario: str, n_train: int, n_test: int, seed: int) -> tuple[Data, Data]:
    """The training and held-out splits of a scenario, standardised with the training split's statistics."""
    generator = torch.Generator().manual_seed(seed)
    if scenario in TETRIS:
        train, test = tetris(scenario, n_train, generator), tetris(scenario, n_test, generator)
    elif scenario in WATERMARKS:
        train, test = bars(scenario, n_train, generator), bars(scenario, n_test, generator)
    elif scenario == "focus":
        train, test = focus(n_train, generator, True, seed), focus(n_test, generator, False, seed)
    else:
        raise ValueError(f"scenario={scenario!r}: expected one of {SCENARIOS}")
    mean, std = float(train.images.mean()), float(train.images.std())
    for split in (train, test):
        split.images = (split.images - mean) / std
    return train, test


# ---------------------------------------------------------------------------------------------- models
def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """Four conv blocks, two poolings (a 16 x 16 feature map, ``features``), global average pooling, linear."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*_block(1, 16), nn.MaxPool2d(2), *_block(16, 32), nn.MaxPool2d(2),
                                      *_block(32, 64), *_block(64, 64))  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def small_vit(classes: int) -> nn.Module:
    """timm's ``VisionTransformer``: 8 x 8 patches (64 tokens), width 64, 4 blocks of 4 heads, the tokens averaged
    before the classifier (no class token, so CAM's global-average-pooling assumption holds); attention computed
    explicitly (not fused), so that second-order methods (ShapleyCAM) can differentiate it twice."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=SIZE, patch_size=8, in_chans=1, num_classes=classes, embed_dim=64, depth=4,
                            num_heads=4, mlp_ratio=2.0, class_token=False, global_pool="avg",
                            fc_norm=False)  # fmt: skip
    for block in vit.blocks:
        block.attn.fused_attn = False
    return vit


def make_model(kind: str, classes: int) -> nn.Module:
    if kind == "cnn":
        return SmallCNN(classes)
    if kind == "vit":
        return small_vit(classes)
    raise ValueError(f"model={kind!r}: expected one of {MODELS}")


def train_model(kind: str, data: Data, classes: int, seed: int, epochs: int, batch_size: int = 64) -> nn.Module:
    """Train from a seeded initialisation with Adam and a one-cycle schedule; returned in eval mode."""
    torch.manual_seed(seed)
    model = make_model(kind, classes)
    lr = 3e-3 if kind == "cnn" else 1e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05 if kind == "vit" else 0.0)
    steps = epochs * math.ceil(len(data.labels) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(data.labels), generator=order).split(batch_size):
            loss = F.cross_entropy(model(data.images[rows]), data.labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(model: nn.Module, data: Data) -> float:
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in data.images.split(256)])
    return float((predicted == data.labels).float().mean())


def layers_for(kind: str, method: str) -> Any:
    """The explained layers: the CNN's last block, the engine's choice on the ViT (``blocks.3.norm1``); the last
    two for methods that combine layers (RefineCAM), the blocks for LeGrad."""
    if method == "legrad" and kind == "vit":
        return [f"blocks.{i}" for i in range(4)]
    if cams.METHODS[method].min_layers > 1:
        return ["features.10", "features.13"] if kind == "cnn" else ["blocks.2.norm1", "blocks.3.norm1"]
    return "features" if kind == "cnn" else None


OPTIONS: dict[str, dict[str, Any]] = {
    "sscam": {"num_samples": 5},
    "iscam": {"num_samples": 5},
    "cam": {"fc_layer": "fc"},
}
"""Method options other than the defaults: fewer noise and integration samples for SS-CAM and IS-CAM (35 and 10 by
default; each sample costs a forward per channel and image), CAM's classifier named."""


def method_for(kind: str, name: str) -> Any:
    options = dict(OPTIONS.get(name, {}))
    if name == "cam" and kind == "vit":
        options["fc_layer"] = "head"
    return cams.get_method(name).with_options(**options) if options else name


# -------------------------------------------------------------------------------------------- measures
@dataclass
class Case:
    """What a measure gets: the trained model, the explained images, their ground truth and classes."""

    model: nn.Module
    kind: str
    x: Tensor
    labels: Tensor
    truth: Tensor
    spurious: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


Measure = Callable[[Case, Tensor, "str | None"], Tensor]
"""``measure(case, maps (N, H, W), method or None for a baseline map) -> (N,)`` values."""


def _road(case: Case, maps: Tensor, method: str | None) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return metrics.road(case.model, case.x, maps, targets=case.labels, generator=generator)["combined"]


def _mprt(case: Case, maps: Tensor, method: str | None) -> Tensor:
    """:func:`cams.metrics.sanity_check` spelt out, so the method keeps its options: the Spearman similarity of each
    map to the map of a copy re-initialised from the explained layer on (:func:`cams.metrics.randomized_copy`)."""
    if method is None:  # a map that does not come from the model has nothing to randomise
        return torch.full((len(maps),), math.nan)
    layers = case.extras["layers"][method]
    randomized = metrics.randomized_copy(case.model, case.x, layers, seed=0)
    other = cams.CamEngine(randomized, layers)(case.x, methods=method_for(case.kind, method), targets=case.labels,
                                               batch_size=256)  # fmt: skip
    return metrics.spearman(maps, other[method])


MEASURES: dict[str, Measure] = {
    "energy": lambda case, maps, method: metrics.energy_pointing_game(maps, masks=case.truth),
    "pointing_game": lambda case, maps, method: metrics.pointing_game(maps, masks=case.truth, tolerance=0).float(),
    "road": _road,
    "mprt": _mprt,
}
"""Measure name -> function; add one (e.g. from ``cams.metrics``) and it gets a column group and a table."""
HIGHER_IS_BETTER = {"energy": True, "pointing_game": True, "road": True, "mprt": False}
TITLES = {
    "energy": "energy on the ground truth (localisation; the map's share on the known pixels, higher is better)",
    "pointing_game": "pointing game (localisation; the map's peak on the known pixels, higher is better)",
    "road": "ROAD combined (faithfulness; (LeRF - MoRF) / 2 of the explained class's probability, higher is better)",
    "mprt": "MPRT Spearman similarity to a re-initialised model (randomisation; lower is better, 1 = ignores weights)",
}


def baseline_maps(x: Tensor, seed: int) -> dict[str, Tensor]:
    shape = (x.shape[0], *x.shape[-2:])
    generator = torch.Generator().manual_seed(seed)
    return {"baseline_random": metrics.random_map(shape, generator=generator, cells=8),
            "baseline_centre": metrics.centre_map(shape)}  # fmt: skip


# ------------------------------------------------------------------------------------------------- run
@dataclass
class Results:
    """Every number of a run: ``scores[(scenario, model, method, measure)]`` -> one value per seed, the models'
    accuracies, the watermark scenarios' attention and reliance, the failures and the time."""

    scores: dict[tuple[str, str, str, str], list[float]] = field(default_factory=dict)
    accuracy: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    watermark: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, table: dict[Any, list[float]], key: Any, value: float) -> None:
        table.setdefault(key, []).append(float(value))

    def timed(self, key: str, began: float) -> None:
        """Add the seconds since ``began`` to ``timings[key]`` (``train/<model>``, ``explain/<method>``, ...)."""
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - began


def run(
    scenarios: Sequence[str] = SCENARIOS,
    models: Sequence[str] = MODELS,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    n_train: int = 3000,
    n_test: int = 32,
    n_accuracy: int = 500,
    epochs: int = 8,
    measures: dict[str, Measure] | None = None,
    print_fn: Callable[[str], None] = print,
) -> Results:
    """Train, explain and score (see the module docstring); ``methods=None``: every method of the engine."""
    measures = MEASURES if measures is None else measures
    names = sorted(cams.METHODS) if methods is None else [cams.get_method(m).name for m in methods]
    names = [m for m in names if m != "sobel"]
    settings = dict(scenarios=list(scenarios), models=list(models), methods=names, seeds=list(seeds),
                    n_train=n_train, n_test=n_test, epochs=epochs, measures=list(measures))  # fmt: skip
    results = Results(settings=settings)
    start = time.perf_counter()
    for scenario in scenarios:
        for seed in seeds:
            train, held_out = make_data(scenario, n_train, max(n_test, n_accuracy), seed)
            classes = 10 if scenario == "focus" else 2
            test = held_out.take(n_test)
            for kind in models:
                began = time.perf_counter()
                model = train_model(kind, train, classes, seed, epochs)
                results.timed(f"train/{kind}", began)
                acc = accuracy(model, held_out)
                results.add(results.accuracy, (scenario, kind), acc)
                case = Case(model, kind, test.images, test.labels, test.truth, test.spurious, {"layers": {}})
                maps = baseline_maps(test.images, seed)
                for method in [*names, "sobel"]:
                    clock = time.perf_counter()
                    try:
                        engine = cams.CamEngine(model, layers_for(kind, method))
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            explained = engine(test.images, methods=method_for(kind, method), targets=test.labels,
                                               batch_size=256)  # fmt: skip
                        maps[method] = explained[method]
                        case.extras["layers"][method] = list(engine.layer_names)
                    except Exception as err:  # a method that does not apply to this model (LeGrad on a CNN, ...)
                        results.failures[(kind, method)] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                    results.timed(f"explain/{method}", clock)
                for method, cam in maps.items():
                    source = None if method.startswith("baseline_") else method
                    for measure, score in measures.items():
                        clock = time.perf_counter()
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            value = score(case, cam, source)
                        results.timed(f"{measure}/{method}", clock)
                        results.add(results.scores, (scenario, kind, method, measure), float(torch.nanmean(value)))
                    if test.spurious is not None:
                        on_mark = metrics.energy_pointing_game(cam, masks=test.spurious)
                        results.add(results.watermark, (scenario, kind, f"attention/{method}"), float(on_mark.mean()))
                if test.spurious is not None:
                    _reliance(results, scenario, kind, model, test)
                print_fn(f"  {scenario:<23} seed {seed} {kind}: accuracy {acc:.3f}, "
                         f"{time.perf_counter() - began:.0f} s")  # fmt: skip
    results.seconds = time.perf_counter() - start
    return results


def _reliance(results: Results, scenario: str, kind: str, model: nn.Module, test: Data) -> None:
    """The callback's intervention on the images that carry the watermark (the phantom region where absent)."""
    assert test.spurious is not None and test.marked is not None
    rows = test.marked if bool(test.marked.any()) else torch.ones_like(test.marked)
    values = reliance(model, test.images[rows], test.spurious[rows], test.truth[rows], test.labels[rows],
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    for key in ("reliance", "control", "vs_control", "flips"):
        results.add(results.watermark, (scenario, kind, key), float(torch.nanmean(values[key])))


# ---------------------------------------------------------------------------------------------- tables
def _cell(values: list[float] | None, bold: bool = False) -> str:
    if not values or all(math.isnan(v) for v in values):
        return "–"
    finite = [v for v in values if not math.isnan(v)]
    mean = statistics.fmean(finite)
    text = f"{mean:.2f}" if len(finite) < 2 else f"{mean:.2f}±{statistics.stdev(finite):.2f}"
    return f"**{text}**" if bold else text


def _mean(values: list[float] | None) -> float:
    finite = [v for v in values or [] if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def tables(results: Results) -> str:
    """The markdown tables of a run (bold: the method beats every baseline on that scenario, mean over seeds)."""
    s = results.settings
    scenarios, models = s["scenarios"], s["models"]
    rows = [*s["methods"], *BASELINES]
    out = ["| model | " + " | ".join(scenarios) + " |", "|---|" + "---:|" * len(scenarios)]
    for kind in models:
        out.append(f"| {kind} | " + " | ".join(_cell(results.accuracy.get((sc, kind))) for sc in scenarios) + " |")
    text = ["Held-out accuracy (chance: 0.50, focus 0.10):", "", *out]
    for measure in s["measures"]:
        higher = HIGHER_IS_BETTER.get(measure, True)
        text += ["", f"**{measure}**: {TITLES.get(measure, measure)}; each cell " + " / ".join(models) + ".", ""]
        text.append("| method | " + " | ".join(scenarios) + " |")
        text.append("|---|" + "---:|" * len(scenarios))
        for method in rows:
            cells = []
            for sc in scenarios:
                parts = []
                for kind in models:
                    values = results.scores.get((sc, kind, method, measure))
                    base = [_mean(results.scores.get((sc, kind, b, measure))) for b in BASELINES]
                    base = [b for b in base if not math.isnan(b)]
                    mine = _mean(values)
                    beats = bool(base) and method not in BASELINES and not math.isnan(mine) and (
                        mine > max(base) if higher else mine < min(base))
                    parts.append(_cell(values, beats))
                cells.append(" / ".join(parts))
            label = f"*{method}*" if method in BASELINES else method
            text.append(f"| {label} | " + " | ".join(cells) + " |")
    marks = [sc for sc in scenarios if sc in WATERMARKS]
    if marks:
        text += ["", "Watermark scenarios: the model's reliance on the square's region (the callback's intervention; "
                 "reliance_vs_control is what `Shortcut(reliance=...)` is compared with) and the share of each map "
                 "on it; each cell " + " / ".join(models) + ".", ""]  # fmt: skip
        text.append("| | " + " | ".join(marks) + " |")
        text.append("|---|" + "---:|" * len(marks))
        keys = ["reliance", "control", "vs_control", "flips", *(f"attention/{m}" for m in rows)]
        for key in keys:
            cells = [" / ".join(_cell(results.watermark.get((sc, kind, key))) for kind in models) for sc in marks]
            text.append(f"| {key.replace('vs_control', 'reliance_vs_control')} | " + " | ".join(cells) + " |")
    if results.failures:
        text += ["", "Not applicable (the engine's error): " + "; ".join(
            f"{method} on the {kind}: {why}" for (kind, method), why in sorted(results.failures.items()))]
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 16 images, 1,000 training images, 5 epochs, "
                        f"the methods {', '.join(QUICK_METHODS)}")  # fmt: skip
    parser.add_argument("--scenarios", nargs="+", default=None, choices=SCENARIOS)
    parser.add_argument("--models", nargs="+", default=None, choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method of the engine")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, --quick 1)")
    parser.add_argument("--images", type=int, default=None, help="held-out images explained (default 32)")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default 3000, --quick 1000)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8, --quick 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="only 'cpu' is implemented and measured")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("--device: only the CPU run is implemented (no GPU figure has been measured)")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    results = run(
        scenarios=args.scenarios or SCENARIOS,
        models=args.models or MODELS,
        methods=args.methods or (QUICK_METHODS if quick else None),
        seeds=range(args.seeds or (1 if quick else 3)),
        n_train=args.train_size or (1000 if quick else 3000),
        n_test=args.images or (16 if quick else 32),
        n_accuracy=200 if quick else 500,
        epochs=args.epochs or (5 if quick else 8),
    )
    print()
    print(tables(results))
    minutes = results.seconds / 60
    print(f"\nTook {minutes:.1f} min on {platform.machine()} with {torch.get_num_threads()} torch threads "
          f"(torch {torch.__version__}).")  # fmt: skip
    if args.json:
        payload = {"settings": results.settings, "seconds": results.seconds,
                   "scores": {"|".join(k): v for k, v in results.scores.items()},
                   "accuracy": {"|".join(k): v for k, v in results.accuracy.items()},
                   "watermark": {"|".join(k): v for k, v in results.watermark.items()},
                   "failures": {"|".join(k): v for k, v in results.failures.items()},
                   "timings": results.timings}  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
