"""The callback's own record of a fit: what a report needs that the loggers' images and scalars do not say.

Global rank zero appends one JSON object per line to ``cam_record.jsonl`` (``cam_record-<name>.jsonl`` for a
callback with a name) in the run's folder: beside TensorBoard's event files (the TensorBoard logger's
``log_dir``), else in the PNG folder (:func:`cam_callback._logging.png_run_dir`). Loggers that keep their
files elsewhere (MLflow, Comet, W&B) get no record. Each line is written and flushed at once, so a record cut
short by a killed process keeps every line before the cut. ``cam-callback report``
(:mod:`cam_callback.report`) reads it; nothing re-runs the model.

Lines, by ``"type"`` (every line has ``"step"``, the logging step of the images and scalars at that moment):

- ``"config"``: once per destination, before the first run's line: ``"config"`` (the ``cam/config`` table's
  values, with the versions of torch, Lightning and cam-callback), ``"name"`` (the callback's tag name or
  ``null``), ``"labels"`` (the fixed images' true classes, or ``null``), ``"version"`` (of this format);
- ``"run"``: one per CAM run whose images were logged: ``"title"`` (the timeline row's, ``"epoch 2\\nstep 93"``),
  ``"preds"`` (each fixed image's predicted class, or ``null``);
- ``"scalars"``: the scalars logged at that step (tag -> value, tags without the callback's name; NaN and
  infinities as Python's ``json`` writes them);
- ``"warning"``: a warning the callback gave: ``"kind"`` (``"shortcut"``, ``"skipped"``, ``"failed"``, ...) and
  ``"message"`` (``null`` for what is noted without a new warning: a further run skipped under the budget).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cams.io import InputError

__all__ = ["RECORD_VERSION", "RunRecord", "read_record", "record_file_name"]

RECORD_VERSION = 1
"""Version of the record's format (the ``"version"`` of its ``"config"`` lines)."""
_TYPES = frozenset({"config", "run", "scalars", "warning"})


def record_file_name(name: str | None) -> str:
    """The record's file name for a callback named ``name`` (``None``: the plain name).

    Example:
        >>> record_file_name(None), record_file_name("ood")
        ('cam_record.jsonl', 'cam_record-ood.jsonl')
    """
    return "cam_record.jsonl" if not name else f"cam_record-{name}.jsonl"


class RunRecord:
    """Append the callback's record of a fit, line by line (global rank zero only).

    Args:
        folder: the run's folder (created at the first line), or ``None`` for no record (every method does nothing).
        name: the callback's tag name, or ``None``.

    Example:
        >>> import tempfile
        >>> record = RunRecord(Path(tempfile.mkdtemp()), None)
        >>> record.run(0, "before training", [3, 1])
        >>> record.scalars(0, {"cam_cost/overhead": 1.0})
        >>> [line["type"] for line in read_record(record.path)]
        ['run', 'scalars']
    """

    def __init__(self, folder: str | Path | None, name: str | None = None) -> None:
        self.name = name
        self.path: Path | None = None if folder is None else Path(folder) / record_file_name(name)
        self._lock = threading.Lock()  # the image worker and the main thread both add lines

    def config(self, step: int, config: Mapping[str, Any], labels: Sequence[int] | None) -> None:
        """The configuration (``cam/config``'s values) and the fixed images' labels."""
        labels = None if labels is None else [int(v) for v in labels]
        self._write({"type": "config", "step": step, "version": RECORD_VERSION, "name": self.name,
                     "config": dict(config), "labels": labels})  # fmt: skip

    def run(self, step: int, title: str, preds: Sequence[int] | None) -> None:
        """One CAM run whose images were logged: its title and each fixed image's predicted class."""
        self._write({"type": "run", "step": step, "title": title,
                     "preds": None if preds is None else [int(v) for v in preds]})  # fmt: skip

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """The scalars logged at ``step`` (without the callback's name in their tags)."""
        if values:
            self._write({"type": "scalars", "step": step, "values": {k: float(v) for k, v in values.items()}})

    def warning(self, step: int, kind: str, message: str | None) -> None:
        """A warning the callback gave at ``step`` (``message=None``: noted, not warned again)."""
        self._write({"type": "warning", "step": step, "kind": kind, "message": message})

    def _write(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        entry["time"] = round(time.time(), 3)
        line = json.dumps(entry) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)


def read_record(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a record, checked; a last line cut short (a killed process) is dropped.

    Raises:
        InputError: the file cannot be read, or a line (not the last) is not a record line; the message names
            the file and the line.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "cam_record.jsonl"
        >>> _ = path.write_text('{"type": "run", "step": 0, "title": "t", "preds": null}\\n{"type": "sca')
        >>> [line["type"] for line in read_record(path)]
        ['run']
        >>> _ = path.write_text('not json\\n{"type": "run", "step": 0}\\n')
        >>> read_record(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cams.io.InputError: ...cam_record.jsonl' line 1 is not a CAMCallback record line (Expecting value...)
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the callback's record '{path}': {err}") from err
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            problem = _problem(entry)
        except json.JSONDecodeError as err:
            if number == len(lines):  # no newline after it: cut short while it was written
                break
            problem = str(err)
        if problem is not None:
            raise InputError(f"'{path}' line {number} is not a CAMCallback record line ({problem})")
        entries.append(entry)
    return entries


def _problem(entry: Any) -> str | None:
    """What is wrong with one parsed line, or ``None``."""
    if not isinstance(entry, dict) or entry.get("type") not in _TYPES:
        return f"expected an object with a type in {sorted(_TYPES)}"
    step = entry.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return f"its step is {step!r}, not a whole number"
    if entry["type"] == "scalars":
        values = entry.get("values")
        if not isinstance(values, dict) or not all(isinstance(v, (int, float)) for v in values.values()):
            return "its values are not tag -> number"
    if entry["type"] == "run" and not isinstance(entry.get("title"), str):
        return "a run line without a title"
    if entry["type"] == "config" and not isinstance(entry.get("config"), dict):
        return "a config line without a config"
    return None

