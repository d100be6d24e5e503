"""The report page: the runs' data turned into what ``templates/report.html.j2`` shows, rendered with Jinja2.

Jinja2 writes the page (it escapes every text it is given, and the page's structure stays in one readable
template instead of Python strings); the charts are inline SVG (:mod:`cam_callback.report.charts`), the images
WebP ``data:`` URIs (:mod:`cam_callback.report.pictures`). The page loads nothing: a Content-Security-Policy
allows only ``data:`` images and its own styles, and it has no script.

Several runs are shown side by side: one column per run in the timelines and charts, each chart's axes shared
by its row (the same steps, the same value range), and for each fixed image one strip per run.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2

from cam_callback._summary import versions
from cam_callback.report.charts import (
    METHOD_CHARTS,
    PALETTE,
    RUN_CHARTS,
    ChartSpec,
    ChartView,
    layout,
    metric_charts,
    value_range,
)
from cam_callback.report.pictures import GAP, TILE, TIMELINE_QUALITY, data_uri, decode, grid_tiles, strip, thumbnail
from cam_callback.report.source import RunData

__all__ = ["Tile", "render_page"]

_KIND_WORDS = {
    "shortcut": "shortcut",
    "skipped": "run skipped (max_overhead)",
    "failed": "run failed",
    "degenerate": "degenerate maps",
}


@dataclass(frozen=True)
class Tile:
    """One fixed image at one CAM run: the run's title, the predicted class, whether it changed or is wrong."""

    title: str
    pred: int | None
    changed: bool
    wrong: bool


@dataclass
class _ChartRow:
    key: str
    title: str
    views: list[tuple[str, ChartView | None]] = field(default_factory=list)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cam_callback.report", "templates"),
        autoescape=jinja2.select_autoescape(("html", "j2", "svg")),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _values(run: RunData, tag: str) -> list[tuple[int, float | None]]:
    """A tag's value at each CAM run (``None``: not logged at that run), or Lightning's metric as logged."""
    if tag in run.metrics:
        return [(step, value) for step, value in run.metrics[tag]]
    return [(r.step, r.scalars.get(tag)) for r in run.runs]


def _series(run: RunData, spec: ChartSpec, method: str | None) -> list[tuple[Any, str, list]]:
    found = []
    for line in spec.lines:
        tag = line.tag.replace("{m}", method or "")
        values = _values(run, tag)
        if any(v is not None for _, v in values):
            found.append((replace(line, tag=tag), line.label.replace("{m}", method or ""), values))
    return found


def _shortcut_ratio(run: RunData) -> float:
    """The ``Shortcut(ratio=...)`` of the run's configuration (1 by default)."""
    for measure in run.config.get("measures") or []:
        match = re.search(r"Shortcut\(ratio=([0-9.eE+-]+)\)", str(measure))
        if match:
            return float(match.group(1))
    return 1.0


def _chart_row(runs: Sequence[RunData], spec: ChartSpec, method: str | None, colour: str) -> _ChartRow | None:
    """One chart per run, on shared axes; ``None`` when no run logged any of its tags."""
    per_run = []
    for run in runs:
        own = replace(spec, threshold=_shortcut_ratio(run)) if spec.threshold is not None else spec
        per_run.append((run, own, _series(run, own, method)))
    if not any(series for _, _, series in per_run):
        return None
    steps = [float(step) for _, _, series in per_run for _, _, values in series for step, _ in values]
    values = [v for _, _, series in per_run for _, _, vals in series for _, v in vals if v is not None]
    x_range = (min(steps), max(steps)) if steps else (0.0, 1.0)
    y_range = value_range(values, spec)
    row = _ChartRow(spec.key, spec.title)
    for run, own, series in per_run:
        view = layout(own, series, x_range, y_range, colour) if series else None
        row.views.append((run.label, view))
    return row


def _short(title: str) -> str:
    """A run's title under a tile: its first line (``"epoch 3"``), ``"before"`` for the baseline."""
    first = title.splitlines()[0] if title else ""
    return "before" if first == "before training" else first


def _strips(run: RunData, method: str) -> list[dict[str, Any]] | None:
    """Per fixed image, its strip over the CAM runs: the strip images and a :class:`Tile` per run; ``None`` when
    no grid of ``method`` could be cut."""
    count = run.num_images
    grids = run.grids.get(method) or []
    if count is None or not any(grids):
        return None
    pictures: list[list[Any]] = [[] for _ in range(count)]
    tiles: list[list[Tile]] = [[] for _ in range(count)]
    previous: list[int] | None = None
    for cam_run, grid in zip(run.runs, grids, strict=False):
        cut = None
        if grid is not None:
            cut = grid_tiles(decode(grid, f"cam/{method} at step {cam_run.step} of {run.label}"), count)
        preds = cam_run.preds
        for i in range(count):
            pred = preds[i] if preds is not None and i < len(preds) else None
            changed = pred is not None and previous is not None and i < len(previous) and previous[i] != pred
            wrong = pred is not None and run.labels is not None and i < len(run.labels) and run.labels[i] != pred
            pictures[i].append(None if cut is None else thumbnail(cut[i]))
            tiles[i].append(Tile(_short(cam_run.title), pred, changed, wrong))
        if preds is not None:
            previous = preds
    shape = next((p.shape for row in pictures for p in row if p is not None), (TILE, TILE, 3))
    strips = []
    for i in range(count):
        parts, start = [], 0
        for uri, size in strip(pictures[i]):
            parts.append({"uri": uri, "tiles": tiles[i][start : start + size]})
            start += size
        strips.append({"parts": parts, "tiles": tiles[i], "height": shape[0], "width": shape[1], "gap": GAP,
                       "changes": sum(t.changed for t in tiles[i])})  # fmt: skip
    return strips


def _images(runs: Sequence[RunData], method: str) -> list[dict[str, Any]]:
    """Per fixed image: its true class(es) and one strip per run, with how often the prediction changed."""
    strips = [(run, _strips(run, method)) for run in runs]
    count = max((len(s) for _, s in strips if s is not None), default=0)
    images = []
    for i in range(count):
        truths = {str(run.labels[i]) for run in runs if run.labels is not None and i < len(run.labels)}
        row = [{"label": run.label, "strip": found[i] if found is not None and i < len(found) else None}
               for run, found in strips]  # fmt: skip
        images.append({"index": i, "truth": " / ".join(sorted(truths)), "strips": row})
    return images


def _config_rows(runs: Sequence[RunData]) -> list[tuple[str, list[str], bool]]:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]

    def text(value: Any) -> str:
        if value is None:
            return "–"
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    rows = []
    for key in keys:
        cells = [text(run.config.get(key)) for run in runs]
        rows.append((key, cells, len(set(cells)) > 1))
    return rows


def _methods(runs: Sequence[RunData]) -> list[str]:
    found: list[str] = []
    for run in runs:
        found += [m for m in run.methods if m not in found]
    return found


def render_page(runs: Sequence[RunData], title: str | None = None) -> str:
    """The report of ``runs`` (read by :func:`cam_callback.report.source.read_source`) as one HTML page.

    Args:
        runs: the runs, in the order of their columns.
        title: the page's title (default: the runs' labels).
    """
    methods = _methods(runs)
    sections = []
    for index, method in enumerate(methods):
        colour = PALETTE[index % len(PALETTE)]
        charts = [row for spec in METHOD_CHARTS if (row := _chart_row(runs, spec, method, colour)) is not None]
        timelines = []
        for run in runs:
            found = run.timelines.get(method)
            picture = None if found is None else decode(found, f"cam/{method}/timeline of {run.label}")
            uri = None if picture is None else data_uri(picture, TIMELINE_QUALITY)
            timelines.append((run.label, uri, None if picture is None else picture.shape[1]))
        images = _images(runs, method)
        sections.append({"name": method, "colour": colour, "charts": charts, "timelines": timelines,
                         "images": images})  # fmt: skip
    run_charts = [row for spec in RUN_CHARTS if (row := _chart_row(runs, spec, None, PALETTE[0])) is not None]
    metric_tags = sorted({tag for run in runs for tag in run.metrics})
    training = [row for spec in metric_charts(metric_tags) if (row := _chart_row(runs, spec, None, PALETTE[0]))]
    inputs = []
    for run in runs:
        picture = None if run.input_grid is None else decode(run.input_grid, f"cam/input of {run.label}")
        inputs.append((run.label, None if picture is None else data_uri(picture, TIMELINE_QUALITY)))
    page = _environment().get_template("report.html.j2").render(
        title=title or "CAM report: " + ", ".join(run.label for run in runs),
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        made_by=versions(),
        runs=runs,
        kinds=_KIND_WORDS,
        inputs=inputs,
        sections=sections,
        run_charts=run_charts,
        training=training,
        config_rows=_config_rows(runs),
    )
    return page
