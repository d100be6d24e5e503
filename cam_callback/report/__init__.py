"""``cam-callback report``: one self-contained HTML page per fit (or several side by side), from what the
callback logged.

:func:`build_report` reads each run folder (:mod:`cam_callback.report.source`: the callback's record, TensorBoard's
event files or the PNG folder, a ``CSVLogger``'s metrics) and writes one page (:mod:`cam_callback.report.page`):
per method the attention timeline, charts over the training steps (drift with the noise floor as a band,
localisation, faithfulness and shortcut scores beside the centre and random baselines, degenerate maps), a strip
per fixed image with its predicted class at each run; Lightning's accuracy and loss; every warning the callback
gave, with its step; the configuration with the versions of torch, Lightning and cam-callback. The images are
embedded, the charts inline SVG: the file opens from disk, loads nothing and can be attached anywhere.
``CAMCallback(report=True)`` writes ``cam_report.html`` into the run's folder at the end of ``fit``
(:func:`write_fit_report`).

Example:
    >>> from cam_callback.report import build_report
    >>> build_report(["/nonexistent/run"], "report.html")
    Traceback (most recent call last):
    ...
    cams.io.InputError: RUN_DIR '/nonexistent/run' does not exist
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from cam_callback._logging import CamLogWriter
from cam_callback.report.page import render_page
from cam_callback.report.source import RunData, Source, find_sources, read_source
from cams.io import InputError, check_output_file, write_file

__all__ = ["RunData", "build_report", "check_report", "read_runs", "report_file_name", "write_fit_report"]


def report_file_name(name: str | None) -> str:
    """The page ``report=True`` writes for a callback named ``name``.

    Example:
        >>> report_file_name(None), report_file_name("ood")
        ('cam_report.html', 'cam_report-ood.html')
    """
    return "cam_report.html" if not name else f"cam_report-{name}.html"


def read_runs(run_dirs: Sequence[str | os.PathLike[str]] | Sequence[Source]) -> list[RunData]:
    """Every callback's data in the run folders, in order (a folder of run folders gives each of them).

    Raises:
        InputError: a folder with no callback data, a corrupt record, event file or image.
    """
    if not run_dirs:
        raise InputError("give at least one RUN_DIR")
    sources = [s for d in run_dirs for s in ([d] if isinstance(d, Source) else find_sources(d))]
    runs = [read_source(source) for source in sources]
    labels = [run.label for run in runs]
    for run in runs:  # two folders of one name (version_0 of two experiments): name them by their parent too
        if labels.count(run.label) > 1:
            run.label = f"{run.folder.parent.name}/{run.label}"
    return runs


def build_report(
    run_dirs: Sequence[str | os.PathLike[str]] | Sequence[Source],
    output: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Read the runs and write their report to ``output``, whole or not at all.

    Args:
        run_dirs: run folders (``lightning_logs/version_0``, a PNG folder, or a folder of run folders).
        output: the HTML file to write (its folders are created).
        title: the page's title (default: the runs' names).

    Returns:
        The path written.

    Raises:
        InputError: ``output`` cannot be written (checked before anything is read), or as :func:`read_runs`.
    """
    check_output_file(output)
    page = render_page(read_runs(run_dirs), title)
    return write_file(output, page.encode("utf-8"))


def check_report(trainer: Trainer, report: bool) -> None:
    """``report=True`` needs a folder of the run's own to read the callback's data from and to write the page
    into: a TensorBoard logger's, or the PNG folder without an image logger (call on every rank).

    Raises:
        MisconfigurationException: the loggers keep their files elsewhere (MLflow, Comet, W&B only).
    """
    if not report or CamLogWriter(trainer.loggers, None).record.path is not None:
        return
    kinds = ", ".join(type(logger).__name__ for logger in trainer.loggers)
    raise MisconfigurationException(
        f"CAMCallback(report=True): the report is made from TensorBoard's event files or the callback's PNG folder, "
        f"and this Trainer's loggers ({kinds}) keep their images elsewhere; add a TensorBoardLogger to the loggers, "
        "or leave report=False and look at the runs in those loggers' own pages"
    )


def write_fit_report(writer: CamLogWriter, on_error: str) -> Path | None:
    """At the end of ``fit`` (global rank zero): the report of this callback's run, into the run's folder.

    A report that cannot be made is reported with a warning (``on_error="warn"``) or raised (``"raise"``);
    training has finished either way.
    """
    writer.flush()
    record = writer.record.path
    if record is None or not record.is_file():
        rank_zero_warn("CAMCallback(report=True): no CAM run was logged in this fit, so there is no report to write")
        return None
    out = record.parent / report_file_name(writer.name)
    try:
        path = build_report([Source(record.parent, record, writer.name)], out)
    except (InputError, OSError) as err:
        if on_error == "raise":
            raise
        rank_zero_warn(f"CAMCallback(report=True): the report could not be written to {out}: {err}")
        return None
    rank_zero_info(f"CAMCallback: the run's report is {path}")
    return path
