"""The report's charts: which scalars are drawn together, and the geometry of each chart as inline SVG.

A :class:`ChartSpec` names the tags one chart draws (``{m}`` stands for the method) and how; :func:`layout`
turns the values of one run into a :class:`ChartView` (pixel positions of the axes' ticks, each series'
polylines and points, the legend) that ``templates/chart.svg.j2`` writes as SVG. The ranges are given from
outside, so the charts of several runs side by side share their axes.

Why SVG written here rather than matplotlib's SVG backend or a chart library: the page must draw without a
network and stay small with many charts; a chart here is a few kilobytes of text the browser renders crisply
at any zoom, each point carries its value as a tooltip (``<title>``), and each series names itself
(``data-series``, ``data-count``) so a test can count what is drawn. matplotlib writes 30-60 KB per chart with
its glyphs as paths and no such hooks; an embedded chart library would add a few hundred KB of JavaScript.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "METHOD_CHARTS",
    "RUN_CHARTS",
    "ChartSpec",
    "ChartView",
    "Line",
    "SeriesView",
    "layout",
    "metric_charts",
    "nice_ticks",
    "value_range",
]

#: colours of the methods, in the order of the configuration (also the colours of Lightning's metrics)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_STYLES = {  # style -> (colour or None for the chart's own, dash pattern)
    "main": (None, ""),
    "second": (None, "6 3"),
    "centre": ("#7f7f7f", "5 3"),
    "random": ("#a0a000", "2 3"),
    "band": ("#b8b8b8", ""),
    "threshold": ("#d62728", "4 4"),
}
WIDTH, HEIGHT = 440, 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 34, 40


@dataclass(frozen=True)
class Line:
    """One series of a chart: the tag it reads (``{m}``: the method), its legend label and its style
    (``"main"``, ``"second"``, ``"centre"``, ``"random"``, ``"band"``: an area from the bottom to the values)."""

    tag: str
    label: str
    style: str = "main"


@dataclass(frozen=True)
class ChartSpec:
    """One chart: what it draws and on which scale.

    Attributes:
        key: its name on the page (``data-chart``).
        title: what it shows, in words.
        unit: the y axis's label.
        lines: its series.
        scale: ``"linear"`` or ``"log"`` (drift spans the noise floor's 1e-5 to a change's 0.5).
        share: values are shares, drawn on ``[0, 1]``.
        threshold: a horizontal line at this value (the shortcut ratio), or ``None``.
    """

    key: str
    title: str
    unit: str
    lines: tuple[Line, ...]
    scale: str = "linear"
    share: bool = False
    threshold: float | None = None


def _scored(key: str, tag: str, title: str, unit: str, share: bool = True) -> ChartSpec:
    """A measure scored for the method and for the centre and random baseline maps."""
    centre = Line(tag.replace("{m}", "baseline_centre"), "centre map", "centre")
    random = Line(tag.replace("{m}", "baseline_random"), "random map", "random")
    return ChartSpec(key, title, unit, (Line(tag, "{m}"), centre, random), share=share)


_DRIFT = (
    Line("cam_drift/{m}/noise_floor", "noise floor", "band"),
    Line("cam_drift/{m}/vs_previous", "vs previous run"),
    Line("cam_drift/{m}/vs_first", "vs first run", "second"),
)
_AXIOMS = (
    Line("cam_axioms/{m}/conservation", "conservation"),
    Line("cam_axioms/{m}/sensitivity", "sensitivity", "second"),
)
_FAITHFUL = "cam_faithfulness/{m}/"

METHOD_CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec("drift", "Drift of the maps (band: the noise floor)", "1 − cosine similarity (log)", _DRIFT, "log"),
    _scored("pointing_game", "cam_localisation/{m}/pointing_game", "Pointing game: the peak on the object",
            "share of images"),
    _scored("energy", "cam_localisation/{m}/energy", "Energy on the object", "share of the map's mass"),
    _scored("shortcut", "cam_shortcut/{m}/energy", "Energy on the spurious region", "share of the map's mass"),
    ChartSpec("shortcut_ratio", "Spurious region vs object (warns above the line)", "ratio of the shares",
              (Line("cam_shortcut/{m}/vs_object", "{m}"),), threshold=1.0),
    _scored("average_drop", _FAITHFUL + "average_drop", "Average drop", "share of the score"),
    _scored("increase_in_confidence", _FAITHFUL + "increase_in_confidence", "Increase in confidence",
            "share of images"),
    _scored("deletion_auc", _FAITHFUL + "deletion_auc", "Deletion AUC (lower is better)", "area under the curve"),
    _scored("insertion_auc", _FAITHFUL + "insertion_auc", "Insertion AUC (higher is better)", "area under the curve"),
    _scored("road", _FAITHFUL + "road_combined", "ROAD, combined", "score difference", share=False),
    ChartSpec("axioms", "XGrad-CAM's axioms", "relative error", _AXIOMS),
    ChartSpec("sanity", "Sanity check: similarity to a re-initialised model (low is good)", "Spearman correlation",
              (Line("cam_sanity/{m}/spearman", "{m}"),)),
    ChartSpec("degenerate", "Maps that carry no information", "share of images",
              (Line("cam_health/{m}/degenerate", "{m}"),), share=True),
)
"""The charts of each method, in page order; one is drawn only when a run logged one of its tags."""

RUN_CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec("pred_changed", "Predictions changed since the previous run", "share of images",
              (Line("cam_drift/pred_changed", "changed"),), share=True),
    ChartSpec("overhead", "Training wall time spent in CAM runs", "share of the wall time",
              (Line("cam_cost/overhead", "overhead"),), share=True),
)
"""The charts of the run as a whole."""


def metric_charts(tags: Sequence[str]) -> list[ChartSpec]:
    """Charts of Lightning's own scalars: accuracies together, losses together, any other one on its own.

    Example:
        >>> charts = metric_charts(["val_acc", "train_loss", "train_acc", "lr"])
        >>> [(c.key, [line.tag for line in c.lines]) for c in charts]
        [('accuracy', ['train_acc', 'val_acc']), ('loss', ['train_loss']), ('metric_lr', ['lr'])]
    """
    groups: dict[str, list[str]] = {"accuracy": [], "loss": []}
    others = []
    for tag in sorted(tags):
        kind = "accuracy" if "acc" in tag.lower() else "loss" if "loss" in tag.lower() else None
        (groups[kind] if kind else others).append(tag)
    charts = [ChartSpec(kind, kind.capitalize(), kind, tuple(Line(t, t) for t in found))
              for kind, found in groups.items() if found]
    return charts + [ChartSpec(f"metric_{t}", t, t, (Line(t, t),)) for t in others]


# ------------------------------------------------------------------------------------------------ geometry
def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (about ``count`` of them, steps of 1, 2, 2.5 or 5 x 10^k).

    Example:
        >>> nice_ticks(0, 0.43), nice_ticks(0, 140, 4)
        ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [0.0, 50.0, 100.0, 150.0])
    """
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9 or len(ticks) < 2:
        ticks.append(float(round(value, 12)))
        value += step
    if ticks[-1] < high - 1e-12:
        ticks.append(float(round(value, 12)))
    return ticks


def value_range(values: Sequence[float], spec: ChartSpec) -> tuple[float, float]:
    """The y range of a chart holding ``values`` (every run's, for a shared axis).

    Example:
        >>> spec = METHOD_CHARTS[0]
        >>> value_range([2e-5, 0.3], spec), value_range([0.2, 0.4], METHOD_CHARTS[1])
        ((1e-05, 1.0), (0.0, 1.0))
    """
    finite = [v for v in values if math.isfinite(v)]
    if spec.scale == "log":
        positive = [v for v in finite if v > 0] or [1e-3, 1.0]
        return 10.0 ** math.floor(math.log10(min(positive))), 10.0 ** math.ceil(math.log10(max(positive)) + 1e-12)
    if spec.share:
        return 0.0, max(1.0, max(finite, default=1.0))
    extra = [spec.threshold] if spec.threshold is not None else []
    low, high = min([0.0, *finite, *extra]), max([*finite, *extra], default=1.0)
    ticks = nice_ticks(low, high)
    return ticks[0], ticks[-1]


@dataclass
class SeriesView:
    """One drawn series: polylines (``"x,y x,y ..."``), its points ``(x, y, tooltip)`` and its look."""

    key: str
    label: str
    colour: str
    dash: str
    band: bool
    segments: list[str] = field(default_factory=list)
    points: list[tuple[float, float, str]] = field(default_factory=list)
    area: str = ""


@dataclass
class ChartView:
    """What ``chart.svg.j2`` draws for one chart of one run."""

    key: str
    title: str
    x_label: str
    y_label: str
    width: int
    height: int
    box: tuple[float, float, float, float]  # left, top, right, bottom of the plot area
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    series: list[SeriesView]
    legend: list[tuple[float, float, SeriesView]]
    threshold: tuple[float, str] | None = None


def _format(value: float, step: float) -> str:
    if value == 0:
        return "0"
    mantissa = round(step / 10 ** math.floor(math.log10(step)), 6)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if mantissa == 2.5 else 0)
    return f"{value:.{decimals}f}"


def _power(value: float) -> str:
    exponent = round(math.log10(value))
    return "1" if exponent == 0 else f"1e{exponent}"


def layout(
    spec: ChartSpec,
    series: Sequence[tuple[Line, str, list[tuple[int, float | None]]]],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    colour: str,
) -> ChartView:
    """The geometry of one chart of one run.

    Args:
        spec: the chart.
        series: ``(line, label, [(step, value or None for a gap), ...])`` per series with a value.
        x_range: the steps the x axis spans (shared by the runs shown side by side).
        y_range: the values the y axis spans (shared too).
        colour: the colour of the chart's own series (the method's).
    """
    left, right, bottom = _LEFT, WIDTH - _RIGHT, HEIGHT - _BOTTOM
    places, x, row = [], float(left), 0
    for _, label, _ in series:  # the legend above the plot, in as many rows as it needs
        width = 34 + 6.4 * len(label)
        if x + width > right and x > left:
            x, row = float(left), row + 1
        places.append((x, 14.0 + 14 * row))
        x += width
    top = _TOP + 14 * row
    x_ticks_values = nice_ticks(*x_range, count=5)
    x_low, x_high = x_ticks_values[0], x_ticks_values[-1]
    log = spec.scale == "log"
    y_low, y_high = y_range

    def x_of(step: float) -> float:
        return round(left + (step - x_low) / (x_high - x_low or 1.0) * (right - left), 1)

    def y_of(value: float) -> float:
        if log:
            value = max(value, y_low)
            share = (math.log10(value) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low) or 1.0)
        else:
            share = (value - y_low) / (y_high - y_low or 1.0)
        return round(bottom - share * (bottom - top), 1)

    x_step = x_ticks_values[1] - x_ticks_values[0] if len(x_ticks_values) > 1 else 1.0
    x_ticks = [(x_of(v), _format(v, x_step)) for v in x_ticks_values]
    if log:
        exponents = range(round(math.log10(y_low)), round(math.log10(y_high)) + 1)
        y_ticks = [(y_of(10.0**e), _power(10.0**e)) for e in exponents]
    else:
        y_values = nice_ticks(y_low, y_high)
        y_values = [v for v in y_values if y_low - 1e-12 <= v <= y_high + 1e-12]
        y_step = y_values[1] - y_values[0] if len(y_values) > 1 else 1.0
        y_ticks = [(y_of(v), _format(v, y_step)) for v in y_values]
    views = []
    palette = iter(PALETTE)
    for line, label, values in series:
        own, dash = _STYLES[line.style]
        lightning_metric = spec.key in ("accuracy", "loss") or spec.key.startswith("metric_")
        hue = own or (next(palette) if lightning_metric else colour)
        view = SeriesView(line.tag, label, hue, dash, line.style == "band")
        run: list[str] = []
        for step, value in values:
            if value is None or not math.isfinite(value):
                if run:
                    view.segments.append(" ".join(run))
                run = []
                continue
            x, y = x_of(step), y_of(value)
            run.append(f"{x},{y}")
            view.points.append((x, y, f"{label}: {value:.4g} at step {step}"))
        if run:
            view.segments.append(" ".join(run))
        if view.band and view.points:
            edge = " ".join(f"{x},{y}" for x, y, _ in view.points)
            view.area = f"{view.points[0][0]},{bottom} {edge} {view.points[-1][0]},{bottom}"
        views.append(view)
    legend = [(x, y, view) for (x, y), view in zip(places, views, strict=True)]
    threshold = None
    if spec.threshold is not None and (log or y_low <= spec.threshold <= y_high):
        threshold = (y_of(spec.threshold), f"{spec.threshold:g}")
    box = (left, top, right, bottom)
    return ChartView(spec.key, spec.title, "training step", spec.unit, WIDTH, HEIGHT, box, x_ticks, y_ticks, views,
                     legend, threshold)
