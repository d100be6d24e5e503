"""Where the callback's images, scalars and configuration text go: each logger through its own API.

- TensorBoard: ``logger.experiment.add_image`` / ``add_text`` (no separate writer).
- MLflow: ``MlflowClient.log_image(run_id, image, key=tag, step=step)`` and ``log_text`` on the logger's
  own run (its artifacts, with a step slider in the MLflow UI).
- Comet: ``experiment.log_image(image, name=tag, step=step)`` and ``experiment.log_text``.
- Other loggers with a ``log_image(key, images, step)`` method (W&B's ``WandbLogger``, ...): the grids
  through it.
- Scalars: every logger's ``log_metrics``.
- No logger that can take images: PNGs (and, without any logger, a ``scalars.csv``) under
  ``<run directory>/cams/``: the first logger's own version folder (``log_dir``, else
  ``save_dir/name/version``), or, without loggers, a new ``<default_root_dir>/lightning_logs/version_<n>/``
  per run (where a default TensorBoard logger would have written it); never a folder shared between runs, and
  never a folder named like the package at the root (run from this repository's root, that would be the
  ``cams`` package's own source folder).
- The callback's own record (:mod:`cam_callback._record`, what ``cam-callback report`` reads beside the images
  and scalars): ``cam_record.jsonl`` beside TensorBoard's event files, else in the PNG folder.

Drawing and encoding a run's images is the largest part of a run on a small model, so global rank zero hands
them to a :class:`BackgroundLog`: one worker thread, a bounded queue, jobs in the order given; the callback
flushes it at the end of ``fit``/``validate``, on an exception, before its state is saved and before it reads
the timeline, and a failure in the worker is raised at the next run or flush, on every rank alike.

A writer with a ``name`` puts it after the tag's first part (``cam/<name>/gradcam``,
``cam_drift/<name>/gradcam/vs_first``), so several callbacks in one Trainer never write the same tag.
"""

from __future__ import annotations

import csv
import inspect
import queue
import re
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.loggers.tensorboard import TensorBoardLogger as _FabricTensorBoardLogger
from lightning.pytorch.loggers import CometLogger, Logger, MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from cam_callback._record import RunRecord
from cams.overlay import save_png, to_uint8

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

__all__ = [
    "BackgroundLog",
    "CamLogWriter",
    "destination",
    "mlflow_key",
    "png_folder",
    "png_run_dir",
    "prefixed",
    "record_folder",
]


def _is_tensorboard(logger: Logger) -> bool:
    return isinstance(logger, _FabricTensorBoardLogger)


def _takes_images(logger: Logger) -> bool:
    return (
        _is_tensorboard(logger)
        or isinstance(logger, (MLFlowLogger, CometLogger))
        or callable(getattr(logger, "log_image", None))
    )


def _png_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", tag)


def png_folder(tag: str) -> str:
    """The PNG fallback's folder for the images of ``tag`` (its part after ``cam/``, in safe characters).

    Example:
        >>> png_folder("cam/gradcam++/timeline"), png_folder("cam/ood/input")
        ('gradcam++_timeline', 'ood_input')
    """
    return _png_name(tag.split("/", 1)[-1])


def prefixed(tag: str, name: str | None) -> str:
    """``tag`` with ``name`` after its first part: ``prefixed("cam/gradcam", "val") == "cam/val/gradcam"``.

    Example:
        >>> prefixed("cam_drift/gradcam/vs_first", "ood"), prefixed("cam/input", None)
        ('cam_drift/ood/gradcam/vs_first', 'cam/input')
    """
    if not name:
        return tag
    root, _, rest = tag.partition("/")
    return f"{root}/{name}/{rest}" if rest else f"{root}/{name}"


def _run_folder(logger: Logger) -> Path | None:
    """The logger's own folder for this run: ``log_dir`` (TensorBoard, CSV), else ``save_dir/name/version``."""
    log_dir = getattr(logger, "log_dir", None)
    if isinstance(log_dir, (str, Path)):
        return Path(log_dir)
    if logger.save_dir is None:
        return None
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(logger.save_dir) / str(logger.name or "default") / version


def png_run_dir(trainer: Trainer) -> Path:
    """Where PNGs go when no logger takes images: ``<run folder>/cams``, a folder of this run only.

    The run folder is the first logger's own (see the module docstring); without loggers it is a new
    ``<default_root_dir>/lightning_logs/version_<n>`` (the next free ``n``, as Lightning's default logger numbers
    its runs), so two runs never share files. Call on global rank zero only.

    Example:
        >>> import tempfile
        >>> from lightning.pytorch import Trainer
        >>> root = tempfile.mkdtemp()
        >>> png_run_dir(Trainer(logger=False, default_root_dir=root)).relative_to(root).as_posix()
        'lightning_logs/version_0/cams'
    """
    for logger in trainer.loggers:
        folder = _run_folder(logger)
        if folder is not None:
            return folder / "cams"
    root = Path(trainer.default_root_dir) / "lightning_logs"
    taken = {int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()} if root.is_dir() else set()
    return root / f"version_{max(taken, default=-1) + 1}" / "cams"


def record_folder(loggers: Sequence[Logger], png_dir: Path | None) -> Path | None:
    """Where the callback's record (and ``report=True``'s page) goes: the first TensorBoard logger's ``log_dir``,
    else the PNG folder, else nowhere (``None``: the loggers keep their files elsewhere, as MLflow's do)."""
    for logger in loggers:
        if _is_tensorboard(logger):
            return Path(logger.log_dir)
    return png_dir


def destination(loggers: Sequence[Logger], png_dir: Path | None) -> str:
    """A text naming where a writer's output lands (each logger's run, the PNG folder): equal for the same run."""
    parts = [f"{type(lg).__name__}:{_run_folder(lg) or lg.name}:{lg.version}" for lg in loggers]
    if png_dir is not None:
        parts.append(f"png:{png_dir}")
    return "|".join(parts)


class CamLogWriter:
    """Send one run's outputs to the Trainer's loggers (call on global rank zero only).

    Args:
        loggers: ``trainer.loggers``.
        png_dir: where PNGs go when no logger takes images (see :func:`png_run_dir`); ignored otherwise.
        name: the callback's name, put into every tag (see :func:`prefixed`); ``None`` for plain tags.

    Example:
        >>> import tempfile
        >>> writer = CamLogWriter([], Path(tempfile.mkdtemp()) / "cams")
        >>> writer.png_dir is not None
        True
    """

    def __init__(self, loggers: Sequence[Logger], png_dir: str | Path | None, name: str | None = None) -> None:
        self.loggers = list(loggers)
        self.name = name
        self.tensorboard = [lg for lg in self.loggers if _is_tensorboard(lg)]
        self.mlflow = [lg for lg in self.loggers if isinstance(lg, MLFlowLogger)]
        self.comet = [lg for lg in self.loggers if isinstance(lg, CometLogger)]
        self.image_loggers = [
            lg
            for lg in self.loggers
            if not _is_tensorboard(lg)
            and not isinstance(lg, (MLFlowLogger, CometLogger))
            and callable(getattr(lg, "log_image", None))
        ]
        takes_images = any(_takes_images(lg) for lg in self.loggers)
        self.png_dir: Path | None = None if takes_images else Path(png_dir or "cams")
        self.destination = destination(self.loggers, self.png_dir)
        """Where this writer's output lands (:func:`destination`): equal for two writers of the same run."""
        self.record = RunRecord(record_folder(self.loggers, self.png_dir), name)
        """The callback's own record (:mod:`cam_callback._record`); its ``path`` is ``None`` without a folder."""

    def resolve(self) -> None:
        """Create the loggers' lazy state (MLflow's run, Comet's experiment, TensorBoard's writer) on this thread,
        so a background thread writing images never creates it a second time.

        MLflow's client looks up a run's artifact store once and caches it; looked up from the background thread,
        it reads every metric file of the run while the main thread may be creating one (MLflow's file store then
        fails with "Metric ... is malformed. No data found."). Looking it up here fills that cache (MLflow 2.x and
        3.x: ``TrackingServiceClient._get_artifact_repo``; tests/test_callback_loggers.py checks the worker never
        reads the run).
        """
        for logger in (*self.tensorboard, *self.mlflow, *self.comet):
            _ = logger.experiment
        for logger in self.mlflow:
            tracking = getattr(logger.experiment, "_tracking_client", None)
            if hasattr(tracking, "_get_artifact_repo"):
                tracking._get_artifact_repo(logger.run_id)

    @classmethod
    def open(cls, trainer: Trainer, name: str | None = None) -> CamLogWriter:
        """The writer for ``trainer``'s loggers (global rank zero), PNGs in :func:`png_run_dir` without an image
        logger; it warns once when it falls back to PNG files."""
        writer = cls(trainer.loggers, png_run_dir(trainer), name)
        if writer.png_dir is not None:
            rank_zero_warn(
                "CAMCallback: no logger takes images (TensorBoard, MLflow, Comet or one with `log_image`); "
                f"the CAM grids are written as PNG files under {writer.png_dir}",
                category=UserWarning,
            )
        return writer

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        """Log one ``(3, H, W)`` image under ``tag``: float in ``[0, 1]``, or uint8 (taken as it is)."""
        tag = prefixed(tag, self.name)
        if grid.dtype == torch.uint8:
            grid = grid.detach().cpu()
            array = grid.permute(1, 2, 0).contiguous().numpy()  # (H, W, 3) uint8
        else:
            grid = grid.detach().float().clamp(0, 1).cpu()
            array = to_uint8(grid[None])[0]  # (H, W, 3) uint8
        for logger in self.tensorboard:  # uint8 as it is: no float round trip before TensorBoard's PNG encoder
            logger.experiment.add_image(tag, array, global_step=step, dataformats="HWC")
        for logger in self.mlflow:
            _mlflow_image(logger, array, tag, step)
        for logger in self.comet:
            logger.experiment.log_image(array, name=tag, step=step, image_channels="last")
        for logger in self.image_loggers:
            logger.log_image(key=tag, images=[array], step=step)  # type: ignore[attr-defined]
        if self.png_dir is not None:
            folder = self.png_dir / png_folder(tag)
            name = "input.png" if tag.endswith("/input") else _free_name(folder, f"step_{step:07d}")
            save_png(folder / name, array)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log scalars to every logger (a CSV in the PNG folder when there is no logger)."""
        if not values:
            return
        self.record.scalars(step, values)
        values = {prefixed(tag, self.name): value for tag, value in values.items()}
        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.log_metrics({mlflow_key(tag): value for tag, value in values.items()}, step=step)
            else:
                logger.log_metrics(dict(values), step=step)
        if not self.loggers and self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            path = self.png_dir / "scalars.csv"
            new = not path.exists()
            with path.open("a", newline="") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(["step", "tag", "value"])
                writer.writerows([step, tag, value] for tag, value in values.items())

    def text(self, tag: str, text: str, step: int) -> None:
        """Log a markdown text once (TensorBoard ``add_text``, an MLflow artifact, Comet's text tab, or a file)."""
        tag = prefixed(tag, self.name)
        for logger in self.tensorboard:
            logger.experiment.add_text(tag, text, global_step=step)
        for logger in self.mlflow:
            logger.experiment.log_text(logger.run_id, text, f"{mlflow_key(tag)}.md")
        for logger in self.comet:
            logger.experiment.log_text(text, step=step, metadata={"tag": tag})
        if self.png_dir is not None:
            path = self.png_dir / f"{_png_name(tag.split('/', 1)[-1])}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")

    def flush(self) -> None:
        """Flush TensorBoard writers so the run is visible at once."""
        for logger in self.tensorboard:
            experiment: Any = logger.experiment
            if callable(getattr(experiment, "flush", None)):
                experiment.flush()


def _free_name(folder: Path, stem: str) -> str:
    """``<stem>.png``, or ``<stem>_1.png``, ... when taken: two runs at one step (the baseline and the first
    epoch's run when an epoch is a single optimizer step) both keep their image."""
    name, n = f"{stem}.png", 0
    while (folder / name).exists():
        n += 1
        name = f"{stem}_{n}.png"
    return name


def mlflow_key(tag: str) -> str:
    """``tag`` in the characters MLflow keys allow (``+`` becomes ``p``: ``gradcam++`` -> ``gradcampp``).

    Lightning's ``MLFlowLogger`` would drop the ``+`` and make ``gradcam++`` collide with ``gradcam``.

    Example:
        >>> mlflow_key("cam_drift/gradcam++/vs_first")
        'cam_drift/gradcampp/vs_first'
    """
    return re.sub(r"[^a-zA-Z0-9_/. -]", lambda m: "p" if m.group() == "+" else "_", tag)


def _mlflow_image(logger: MLFlowLogger, array: Any, tag: str, step: int) -> None:
    """An image on the logger's MLflow run: keyed and stepped (MLflow >= 2.15), else a PNG artifact."""
    client: Any = logger.experiment
    key = mlflow_key(tag)
    if "key" in inspect.signature(client.log_image).parameters:
        client.log_image(logger.run_id, array, key=key, step=step)
    else:  # an older MLflow: one artifact per image
        client.log_image(logger.run_id, array, artifact_file=f"{key}/step_{step:07d}.png")


class BackgroundLog:
    """Run jobs (a run's image logging) on one worker thread, in the order submitted, with at most ``depth``
    waiting: :meth:`submit` blocks when the queue is full, so nothing is dropped and memory stays bounded.

    A job that raises is remembered (with its traceback) and the jobs after it still run; :meth:`check` raises
    the first remembered failure once, :meth:`flush` waits for every job and then does the same.

    Args:
        depth: jobs that may wait at once (a run is one job).

    Example:
        >>> log = BackgroundLog()
        >>> done = []
        >>> for i in range(3):
        ...     log.submit(lambda i=i: done.append(i))
        >>> log.flush(); done
        [0, 1, 2]
        >>> log.close()
    """

    def __init__(self, depth: int = 4) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._failure: tuple[BaseException, str] | None = None
        self._thread: threading.Thread | None = None
        self.seconds = 0.0
        """Wall time the worker spent in jobs so far."""

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (blocks while ``depth`` jobs wait)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="cam-callback-log", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                started = time.perf_counter()
                job()
                self.seconds += time.perf_counter() - started
            except BaseException as err:  # remembered, raised on the main thread by check()
                if self._failure is None:
                    self._failure = (err, traceback.format_exc())
            finally:
                self._jobs.task_done()

    def check(self) -> None:
        """Raise the first failure of a job since the last check (``RuntimeError`` with its traceback), if any."""
        if self._failure is not None:
            err, trace = self._failure
            self._failure = None
            raise RuntimeError(f"CAMCallback: logging a run's images failed in the background: "
                               f"{type(err).__name__}: {err}\n{trace}") from err  # fmt: skip

    def wait(self) -> None:
        """Wait until every job submitted so far has run."""
        if self._thread is not None:
            self._jobs.join()

    def flush(self) -> None:
        """:meth:`wait`, then :meth:`check`."""
        self.wait()
        self.check()

    def close(self) -> None:
        """Flush and stop the worker (a later :meth:`submit` starts a new one)."""
        try:
            self.flush()
        finally:
            if self._thread is not None and self._thread.is_alive():
                self._jobs.put(None)
                self._thread.join()
            self._thread = None
