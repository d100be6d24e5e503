"""One fit's data for the report, read from what the callback logged; nothing re-runs the model.

A run folder is what a ``CAMCallback`` wrote into during one ``fit``: a TensorBoard logger's ``log_dir``
(``lightning_logs/version_0``: its event files and the callback's record ``cam_record.jsonl``), or the PNG
folder the callback writes without an image logger (``<log_dir>/cams``, ``<root>/cams/version_0``: PNGs per tag,
the record). :func:`find_sources` finds the callbacks' data in a folder (or in its subfolders, one level down:
``lightning_logs`` holds ``version_0``, ``version_1``, ...); :func:`read_source` reads one into a
:class:`RunData`:

- the runs, their titles, predicted classes, scalars and the warnings with their steps from the record
  (:mod:`cam_callback._record`); without one (a log of cam-callback 0.2) the runs are the steps of the overlay
  images, their scalars TensorBoard's, and the page says what is not known;
- the overlay grids of every run, the latest timeline image and the input grid from TensorBoard's event files
  (:mod:`cam_callback.report.events`) or the PNG files;
- Lightning's own scalars (``train_loss``, ``val_acc``, ...) from the event files, or from a ``CSVLogger``'s
  ``metrics.csv``.

A folder written by several fits (a fixed ``version=`` run again) holds several sessions: the latest is read,
and the page says how many earlier ones it left out.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cam_callback._logging import png_folder, prefixed
from cam_callback._record import read_record
from cam_callback.report.events import EVENT_GLOB, Keep, Logged, read_events
from cams.io import InputError

__all__ = ["CamRun", "RunData", "Source", "Warned", "find_sources", "read_source"]

_IGNORED_METRICS = frozenset({"epoch", "hp_metric", "step"})


@dataclass(frozen=True)
class Source:
    """Where one callback's data of one fit lie: its folder, its record (or ``None``) and its name."""

    folder: Path
    record: Path | None
    name: str | None = None


@dataclass
class CamRun:
    """One CAM run: its logging step, title, each fixed image's predicted class and its scalars."""

    step: int
    title: str
    preds: list[int] | None = None
    scalars: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Warned:
    """A warning the callback gave: at which step, what kind, in which words (``None``: noted, not warned)."""

    step: int
    kind: str
    message: str | None


@dataclass
class RunData:
    """One callback's data of one fit, as the report shows it.

    Attributes:
        label: how the page names the fit (its folder's name, with the callback's name).
        folder: where it was read from.
        name: the callback's tag name, or ``None``.
        config: the ``cam/config`` values (strings for a log without a record).
        labels: the fixed images' true classes, or ``None``.
        runs: the CAM runs, oldest first.
        warnings: the warnings with their steps.
        metrics: Lightning's own scalars, tag -> ``[(step, value), ...]``.
        grids: method -> each run's overlay grid (encoded PNG, ``None`` where none was found), as ``runs``.
        timelines: method -> the latest ``cam/<method>/timeline`` image (encoded PNG).
        input_grid: the ``cam/input`` image, or ``None``.
        notes: what the page must say it does not know, or what it left out.
    """

    label: str
    folder: Path
    name: str | None
    config: dict[str, Any]
    labels: list[int] | None
    runs: list[CamRun]
    warnings: list[Warned]
    metrics: dict[str, list[tuple[int, float]]]
    grids: dict[str, list[bytes | None]]
    timelines: dict[str, bytes]
    input_grid: bytes | None
    notes: list[str]

    @property
    def methods(self) -> list[str]:
        """The methods explained, in the configuration's order."""
        methods = self.config.get("methods") or list(self.grids)
        return [str(m) for m in methods]

    @property
    def num_images(self) -> int | None:
        """How many fixed images each run explained (``None`` when not known)."""
        for run in self.runs:
            if run.preds is not None:
                return len(run.preds)
        if self.labels is not None:
            return len(self.labels)
        value = self.config.get("num_images")
        return int(value) if isinstance(value, (int, str)) and str(value).isdigit() else None


# ------------------------------------------------------------------------------------------------ finding
def _event_files(folder: Path) -> list[Path]:
    """The folder's event files, oldest first (their names start with the time they were opened)."""

    def opened(path: Path) -> tuple[int, str]:
        parts = path.name.split(".")
        return (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0, path.name)

    return sorted((p for p in folder.glob(EVENT_GLOB) if p.is_file()), key=opened)


def _records(folder: Path) -> list[Path]:
    found = sorted(folder.glob("cam_record*.jsonl"))
    if not found and (folder / "cams").is_dir():  # a CSVLogger's folder: the callback's PNG folder is cams/
        found = sorted((folder / "cams").glob("cam_record*.jsonl"))
    return found


def _name_of(record: Path) -> str | None:
    stem = record.name.removesuffix(".jsonl")
    return stem[len("cam_record-") :] if stem.startswith("cam_record-") else None


def _sources_in(folder: Path) -> list[Source]:
    records = _records(folder)
    if records:
        return [Source(record.parent, record, _name_of(record)) for record in records]
    if _event_files(folder):
        return [Source(folder, None, None)]
    return []


def find_sources(path: str | Path) -> list[Source]:
    """The callbacks' data in a run folder, or in its subfolders when it has none itself.

    Raises:
        InputError: the folder does not exist, or neither it nor its subfolders hold a record or event files.
    """
    folder = Path(path)
    if not folder.exists():
        raise InputError(f"RUN_DIR '{path}' does not exist")
    if not folder.is_dir():
        raise InputError(f"RUN_DIR '{path}' is not a folder: give a run's log folder, e.g. lightning_logs/version_0")
    found = _sources_in(folder)
    if not found:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            found += _sources_in(sub)
    if not found:
        raise InputError(
            f"RUN_DIR '{path}' holds no CAMCallback data: no cam_record.jsonl and no TensorBoard event file "
            "(events.out.tfevents.*) in it or in its subfolders; give the log folder of a run trained with a "
            "CAMCallback, e.g. lightning_logs/version_0"
        )
    return found


# ------------------------------------------------------------------------------------------------ reading
def read_source(source: Source) -> RunData:
    """Read one callback's data of one fit (see the module docstring).

    Raises:
        InputError: a corrupt record or event file, or a folder whose files hold no CAM run of a callback.
    """
    notes: list[str] = []
    name = source.name
    entries = _latest_session(read_record(source.record), notes) if source.record is not None else []
    events = _event_files(source.folder)
    logged = _latest_files(events, name, notes) if events else Logged()
    if source.record is None and not logged.images and not logged.scalars:
        raise InputError(f"RUN_DIR '{source.folder}' holds no CAMCallback data: its event files have no cam/ tag")
    config, labels = _config(entries, logged, name)
    if source.record is not None:
        runs, warnings = _runs_from_record(entries)
    else:
        runs, warnings = _runs_from_events(logged, name, config), []
        notes.append("no cam_record.jsonl (a log of cam-callback 0.2?): the warnings and the predicted classes were "
                     "not recorded; the runs are the steps of the overlay images")  # fmt: skip
    if not runs:
        raise InputError(f"RUN_DIR '{source.folder}' holds no CAMCallback run yet: the record has no run line")
    methods = [str(m) for m in config.get("methods") or []] or _methods_in(logged, name)
    if events:
        images = {tag: logged.images.get(tag, []) for tag in _image_tags(methods, name)}
        metrics = {tag: values for tag, values in logged.scalars.items() if _is_lightning_metric(tag)}
    else:
        images = {tag: _png_files(source.folder / png_folder(tag)) for tag in _image_tags(methods, name)}
        images[prefixed("cam/input", name)] = _png_input(source.folder / png_folder(prefixed("cam/input", name)))
        metrics = _csv_metrics(source.folder, notes)
    grids = {m: _align(runs, images[prefixed(f"cam/{m}", name)]) for m in methods}
    timelines = {m: found[-1][1] for m in methods if (found := images[prefixed(f"cam/{m}/timeline", name)])}
    inputs = images[prefixed("cam/input", name)]
    input_grid = inputs[-1][1] if inputs else None
    if not any(grid is not None for values in grids.values() for grid in values):
        notes.append("no overlay images were found beside the record: the logger keeps them elsewhere")
    notes += logged.notes
    warnings += _degenerate(runs, methods, warnings)
    folder_name = source.folder.parent.name if source.folder.name == "cams" else source.folder.name  # a CSVLogger's
    label = folder_name if name is None else f"{folder_name} · {name}"
    return RunData(label, source.folder, name, config, labels, runs, warnings, metrics, grids, timelines,
                   input_grid, notes)  # fmt: skip


def _image_tags(methods: list[str], name: str | None) -> list[str]:
    """The callback's image tags: the input, and each method's overlays and timeline."""
    tags = [prefixed("cam/input", name)]
    for method in methods:
        tags += [prefixed(f"cam/{method}", name), prefixed(f"cam/{method}/timeline", name)]
    return tags


def _png_input(folder: Path) -> list[tuple[int, bytes]]:
    path = folder / "input.png"
    return [(0, path.read_bytes())] if path.is_file() else []


def _latest_session(entries: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """The entries of the latest fit: a configuration at or before the last run's step starts a new one (a
    resumed fit's configuration comes after its last run, and continues it)."""
    sessions: list[list[dict[str, Any]]] = [[]]
    last = -math.inf
    for entry in entries:
        if entry["type"] == "config" and any(e["type"] == "run" for e in sessions[-1]) and entry["step"] <= last:
            sessions.append([])
        if entry["type"] == "run":
            last = entry["step"]
        sessions[-1].append(entry)
    if len(sessions) > 1:
        notes.append(f"the folder holds {len(sessions) - 1} earlier fit(s) logged into it; this is the latest")
    return sessions[-1]


def _keep(tag: str) -> Keep:
    """Which images of a tag to keep: every overlay grid, the latest timeline, nothing but the callback's."""
    if not tag.startswith("cam/"):
        return "none"
    return "last" if tag.endswith("/timeline") else "all"


def _cam_image_steps(logged: Logged, name: str | None) -> list[int]:
    skip = (prefixed("cam/input", name),)
    return [step for tag, images in logged.images.items() if tag not in skip and not tag.endswith("/timeline")
            for step, _ in images]  # fmt: skip


def _latest_files(paths: list[Path], name: str | None, notes: list[str]) -> Logged:
    """The event files of the latest fit, merged: a file whose first overlay image is at or before the last one
    so far starts a new fit (a resumed fit's file continues the steps)."""
    sessions: list[list[Logged]] = [[]]
    last = -math.inf
    for path in paths:
        logged = read_events([path], _keep)
        steps = _cam_image_steps(logged, name)
        if steps and sessions[-1] and min(steps) <= last:
            sessions.append([])
        last = max([last, *steps])
        sessions[-1].append(logged)
    if len(sessions) > 1:
        notes.append(f"the event files hold {len(sessions) - 1} earlier fit(s) logged into this folder; this is "
                     "the latest")  # fmt: skip
    merged = Logged()
    for logged in sessions[-1]:
        for target, source in ((merged.scalars, logged.scalars), (merged.texts, logged.texts)):
            for tag, values in source.items():
                target.setdefault(tag, []).extend(values)
        for tag, images in logged.images.items():
            if tag.endswith("/timeline"):
                merged.images[tag] = list(images)
            else:
                merged.images.setdefault(tag, []).extend(images)
        merged.notes += logged.notes
    return merged


def _config(entries: list[dict[str, Any]], logged: Logged, name: str | None) -> tuple[dict[str, Any], list | None]:
    """The configuration and labels: the record's latest config line, else the ``cam/config`` text's table."""
    configs = [e for e in entries if e["type"] == "config"]
    if configs:
        return dict(configs[-1]["config"]), configs[-1].get("labels")
    texts = logged.texts.get(prefixed("cam/config", name))
    if not texts:
        return {}, None
    table: dict[str, Any] = {}
    for line in texts[-1][1].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and cells[0] not in ("setting", "---"):
            table[cells[0]] = cells[1]
    if "methods" in table:
        table["methods"] = [m.strip() for m in str(table["methods"]).split(",") if m.strip()]
    return table, None


def _runs_from_record(entries: list[dict[str, Any]]) -> tuple[list[CamRun], list[Warned]]:
    runs: list[CamRun] = []
    warnings: list[Warned] = []
    for entry in entries:
        if entry["type"] == "run":
            runs.append(CamRun(entry["step"], entry["title"], entry.get("preds")))
        elif entry["type"] == "scalars":
            if not runs or runs[-1].step != entry["step"]:  # scalars of a run that logged no images
                runs.append(CamRun(entry["step"], f"step {entry['step']}"))
            runs[-1].scalars.update(entry["values"])
        elif entry["type"] == "warning":
            warnings.append(Warned(entry["step"], str(entry.get("kind", "warning")), entry.get("message")))
    return runs, warnings


def _methods_in(logged: Logged, name: str | None) -> list[str]:
    head = prefixed("cam/", name).rstrip("/") + "/"
    found = [tag[len(head) :] for tag in logged.images if tag.startswith(head)]
    return [m for m in found if m and "/" not in m and m != "input"]


def _runs_from_events(logged: Logged, name: str | None, config: dict[str, Any]) -> list[CamRun]:
    """Without a record: one run per overlay image of the first method, TensorBoard's scalars at its step."""
    methods = [str(m) for m in config.get("methods") or []] or _methods_in(logged, name)
    images = logged.images.get(prefixed(f"cam/{methods[0]}", name), []) if methods else []
    runs = [CamRun(step, f"step {step}") for step, _ in images]
    at: dict[int, list[CamRun]] = {}
    for run in runs:
        at.setdefault(run.step, []).append(run)
    for tag, values in logged.scalars.items():
        if not tag.startswith("cam"):
            continue
        seen: Counter[int] = Counter()
        for step, value in values:  # the k-th value at a step belongs to the k-th run at that step
            if seen[step] < len(at.get(step, [])):
                at[step][seen[step]].scalars[_without_name(tag, name)] = value
            seen[step] += 1
    return runs


def _without_name(tag: str, name: str | None) -> str:
    if not name:
        return tag
    root, _, rest = tag.partition("/")
    return f"{root}/{rest.removeprefix(name + '/')}" if rest.startswith(name + "/") else tag


def _align(runs: list[CamRun], images: list[tuple[int, bytes]]) -> list[bytes | None]:
    """Each run's image: of the images at a run's step, the newest as many as there are runs at that step (a
    folder written into twice keeps the older ones first), in order; ``None`` where there is none."""
    at: dict[int, list[bytes]] = {}
    for step, data in images:
        at.setdefault(step, []).append(data)
    count = Counter(run.step for run in runs)
    used: Counter[int] = Counter()
    out: list[bytes | None] = []
    for run in runs:
        found = at.get(run.step, [])
        newest = found[-count[run.step] :] if len(found) >= count[run.step] else found
        index = used[run.step]
        used[run.step] += 1
        out.append(newest[index] if index < len(newest) else None)
    return out


_PNG_STEP = re.compile(r"^step_(\d+)(?:_(\d+))?\.png$")


def _png_files(folder: Path) -> list[tuple[int, bytes]]:
    """The PNG fallback's images of one tag, ``[(step, bytes), ...]`` in the order written."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _PNG_STEP.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2) or 0), path))
    return [(step, path.read_bytes()) for step, _, path in sorted(found)]


def _is_lightning_metric(tag: str) -> bool:
    return not tag.startswith(("cam/", "cam_")) and tag not in _IGNORED_METRICS


def _csv_metrics(folder: Path, notes: list[str]) -> dict[str, list[tuple[int, float]]]:
    """A ``CSVLogger``'s ``metrics.csv`` beside the PNG folder (or in it), tag -> ``[(step, value), ...]``."""
    for path in (folder / "metrics.csv", folder.parent / "metrics.csv"):
        if path.is_file():
            break
    else:
        return {}
    metrics: dict[str, list[tuple[int, float]]] = {}
    try:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = row.get("step")
                if not step or not step.strip().lstrip("-").isdigit():
                    continue
                for tag, value in row.items():
                    if tag and value not in (None, "") and _is_lightning_metric(tag):
                        metrics.setdefault(tag, []).append((int(step), float(value)))
    except (OSError, ValueError, csv.Error) as err:
        notes.append(f"{path} could not be read ({err}): no training metrics shown")
        return {}
    return metrics


def _degenerate(runs: list[CamRun], methods: list[str], said: list[Warned]) -> list[Warned]:
    """A warning for each run whose ``cam_health/<method>/degenerate`` share is above 0, unless the record has
    one for that step."""
    noted = {(w.step, w.kind) for w in said}
    found = []
    for run in runs:
        for method in methods:
            share = run.scalars.get(f"cam_health/{method}/degenerate")
            if share is not None and share > 0 and (run.step, "degenerate") not in noted:
                found.append(Warned(run.step, "degenerate", f"{share:.0%} of {method}'s maps carried no information "
                                    f"at {run.title.splitlines()[0]} (cam_health/{method}/degenerate)"))  # fmt: skip
    return found
