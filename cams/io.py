"""Files at the edge: reading images and checkpoints, writing results all-or-nothing, one-line errors.

Everything that touches the file system or the command line lives here, shared by ``python -m cams``
(:mod:`cams.cli`), :func:`cam_callback.explain` and ``cam-callback explain``:

- :class:`InputError` (and :class:`UnsafeCheckpointError`): bad input a user can fix; the command lines
  print its one-line message and exit with code 2.
- Reading: :func:`read_image`, :func:`load_state_dict`, :func:`load_checkpoint` (safe
  ``torch.load(weights_only=True)`` unless trusted).
- Writing: :func:`encode_image`, :func:`npy_bytes`, :func:`check_output_dir`, :func:`write_files` (a set of
  files lands together or not at all), :func:`check_output_file` and :func:`write_file` (one file, whole or
  not at all).
- Command lines: :class:`OneLineParser` (usage errors on one line), :func:`exit_code`, :func:`close_matches`,
  :class:`ProgressPrinter` (how far Score-CAM and Ablation-CAM are, on stderr).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np
import torch

from cams.names import close_matches

__all__ = [
    "InputError",
    "OneLineParser",
    "ProgressPrinter",
    "UnsafeCheckpointError",
    "check_output_dir",
    "check_output_file",
    "class_scores",
    "close_matches",
    "encode_image",
    "exit_code",
    "first_line",
    "load_checkpoint",
    "load_state_dict",
    "npy_bytes",
    "read_image",
    "write_file",
    "write_files",
]


class InputError(ValueError):
    """Bad input a user can fix (a path, a name, a number); the command lines print it and exit with 2.

    The message is one line naming the argument, the bad value and, where possible, a suggestion.
    """



class UnsafeCheckpointError(InputError):
    """The checkpoint holds objects ``torch.load(weights_only=True)`` refuses; ``trusted=True`` opts out."""



def read_image(path: str | os.PathLike[str], what: str = "image") -> Any:
    """Open an image file with Pillow, fully decoded → ``PIL.Image.Image`` (mode as stored).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names ``what`` and the path).
        InputError: ``path`` is a folder or not an image Pillow can decode.

    Example:
        >>> read_image("/nonexistent.png")
        Traceback (most recent call last):
        ...
        FileNotFoundError: image '/nonexistent.png': no such file
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} '{p}': no such file")
    if p.is_dir():
        raise InputError(f"{what} '{p}' is a folder, not an image file")
    try:
        with Image.open(p) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what} '{p}' is not an image Pillow can read ({reason})") from exc


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode one (H, W, 3) uint8 RGB array as ``"PNG"`` or ``"JPEG"`` (quality 95) bytes.

    Example:
        >>> encode_image(np.zeros((4, 4, 3), np.uint8), "PNG")[:4]
        b'\\x89PNG'
    """
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8; got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    options = {"quality": 95} if fmt.upper() in ("JPG", "JPEG") else {}
    Image.fromarray(image).save(buf, format="JPEG" if fmt.upper() == "JPG" else fmt.upper(), **options)
    return buf.getvalue()


def check_output_dir(path: str | os.PathLike[str], flag: str = "--output-dir") -> Path:
    """Fail early (before any computing) if ``path`` cannot become the output folder.

    Example:
        >>> check_output_dir("/tmp/some-results").name
        'some-results'
    """
    out = Path(path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} '{path}' exists and is not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{flag} '{path}': '{parent}' is a file, not a folder")
            break
    return out


def write_files(output_dir: str | os.PathLike[str], files: Mapping[str, bytes]) -> list[Path]:
    """Write ``files`` (name → bytes) into ``output_dir`` all together, never half of them.

    Everything is first written into a temporary folder next to ``output_dir`` (same file system);
    a new ``output_dir`` is then that folder renamed, an existing one receives each file by
    ``os.replace``. On any error the temporary folder is removed and ``output_dir`` is untouched.

    Returns:
        The written paths, in the order of ``files``.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "results"
        >>> [p.name for p in write_files(out, {"a.txt": b"1", "b.txt": b"2"})]
        ['a.txt', 'b.txt']
    """
    out = check_output_dir(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage: Path | None = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for name, data in files.items():
            (stage / name).write_bytes(data)
        if not out.exists():
            umask = os.umask(0)
            os.umask(umask)
            stage.chmod(0o777 & ~umask)  # mkdtemp made it private; a new output folder gets the usual mode
            os.replace(stage, out)
            stage = None
        else:
            for name in files:
                os.replace(stage / name, out / name)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return [out / name for name in files]


def check_output_file(path: str | os.PathLike[str], flag: str = "-o") -> Path:
    """Fail early (before any computing) if ``path`` cannot become the output file: nothing is created.

    Raises:
        InputError: ``path`` is a folder, a folder above it is a file, or the folder it goes into cannot be
            written.

    Example:
        >>> check_output_file("/tmp/report.html").name
        'report.html'
        >>> check_output_file("/tmp")
        Traceback (most recent call last):
        ...
        cams.io.InputError: -o '/tmp' is a folder; give the file to write, e.g. /tmp/report.html
    """
    out = Path(path).expanduser().absolute()
    if out.is_dir():
        raise InputError(f"{flag} '{path}' is a folder; give the file to write, e.g. {Path(path) / 'report.html'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{flag} '{path}': '{parent}' is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{flag} '{path}': cannot write into '{parent}' (permission denied)")
            break
    return out


def write_file(path: str | os.PathLike[str], data: bytes, flag: str = "-o") -> Path:
    """Write one file all-or-nothing: into a temporary file beside it, then renamed over it.

    Missing folders above it are created. On any error the temporary file is removed and ``path`` is as it was.

    Raises:
        InputError: ``path`` cannot be written (:func:`check_output_file`, or the file system refused).

    Example:
        >>> import tempfile
        >>> write_file(Path(tempfile.mkdtemp()) / "out" / "report.html", b"<html>").read_bytes()
        b'<html>'
    """
    out = check_output_file(path, flag)
    temporary: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
        temporary = Path(name)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)  # mkstemp made it private; the file gets the usual mode
        os.replace(temporary, out)
        temporary = None
    except OSError as err:
        raise InputError(f"{flag} '{path}': cannot write it ({err.strerror or err})") from err
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    return out


def load_state_dict(path: str | os.PathLike[str], what: str = "--weight-path") -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` file safely (``torch.load(weights_only=True)``) on the CPU.

    Accepts a bare ``state_dict``, a dict holding one under ``"state_dict"`` or ``"model"`` (a
    Lightning checkpoint's keys keep their attribute prefix), and strips a ``module.`` prefix left by
    ``DataParallel``.

    Raises:
        FileNotFoundError: no such file.
        InputError: not a torch file, a pickled whole model, or no tensors in it.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} '{p}': no such file")
    if p.is_dir():
        raise InputError(f"{what} '{p}' is a folder, not a weights file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError, ...
        if "Weights only load failed" in str(exc) and zipfile.is_zipfile(p):
            raise InputError(
                f"{what} '{p}' holds Python objects, not just tensors (a pickled model?); "
                "save `model.state_dict()` with torch.save and pass that file"
            ) from exc
        raise InputError(f"{what} '{p}' is not a readable torch file ({first_line(exc)})") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{what} '{p}' is not a state_dict (a dict of parameter name to tensor)")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def exit_code(exc: SystemExit) -> int:
    """The process exit code argparse meant by raising ``exc`` (0 for --help, 2 for usage errors)."""
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def first_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` of an exception, for one-line error reports."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def npy_bytes(array: np.ndarray) -> bytes:
    """One array as the bytes of a ``.npy`` file (:func:`numpy.save`)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()



def load_checkpoint(path: str | os.PathLike[str], *, trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, safely unless ``trusted``.

    Args:
        path: a ``.ckpt`` written by ``Trainer.save_checkpoint`` / ``ModelCheckpoint`` (or any
            ``torch.save`` of a dict).
        trusted: ``False`` (default) loads with ``torch.load(weights_only=True)``: tensors and plain
            containers only. ``True`` unpickles everything, which can execute code from the file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds objects safe loading refuses (the message names the first).
        InputError: the file is not a readable torch checkpoint.

    Example:
        >>> import tempfile, pathlib
        >>> f = Path(tempfile.mkdtemp()) / "a.ckpt"
        >>> torch.save({"hyper_parameters": {"root": pathlib.Path("/data")}}, f)
        >>> load_checkpoint(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cams.io.UnsafeCheckpointError: checkpoint '...' holds objects ... refuses (pathlib...); ...
        >>> load_checkpoint(f, trusted=True)["hyper_parameters"]["root"].name
        'data'
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint '{p}': no such file")
    if p.is_dir():
        raise InputError(f"checkpoint '{p}' is a folder, not a checkpoint file")
    try:
        checkpoint = torch.load(p, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError, ...
        text = str(exc)
        if not trusted and "Weights only load failed" in text and zipfile.is_zipfile(p):
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"checkpoint '{p}' holds objects that safe loading (torch.load(weights_only=True)) refuses"
                f"{what}; if you trust this file, pass trusted=True (command line: --trusted)"
            ) from exc
        lines = text.strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise InputError(f"checkpoint '{p}' is not a readable torch checkpoint ({reason})") from exc
    if not isinstance(checkpoint, dict):
        raise InputError(f"checkpoint '{p}' holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def class_scores(logits: torch.Tensor | None, classes: torch.Tensor | None) -> list[str]:
    """``"logit 4.2, probability 0.91"`` per image for its explained class, from ``(B, K)`` outputs.

    The logit is the model's raw output for the class; the probability is its softmax over the ``K``
    outputs. Without ``(B, K)`` outputs or classes, each entry says the score is unknown.

    Example:
        >>> class_scores(torch.tensor([[0.0, 2.0], [1.0, 1.0]]), torch.tensor([1, 0]))
        ['logit 2, probability 0.881', 'logit 1, probability 0.5']
    """
    if logits is None or classes is None or logits.dim() != 2:
        return ["no class score: the output is not (B, classes)"] * (1 if classes is None else len(classes))
    rows = torch.arange(len(classes))
    logit = logits.detach().float().cpu()[rows, classes.cpu()]
    probability = logits.detach().float().cpu().softmax(dim=1)[rows, classes.cpu()]
    return [f"logit {float(v):.4g}, probability {float(p):.3g}" for v, p in zip(logit, probability, strict=True)]


class ProgressPrinter:
    """A ``progress(step, done, total)`` callback for :class:`cams.CamEngine` that prints to a stream.

    On a terminal one line is rewritten in place (at most every ``tty_every`` seconds); elsewhere (a log
    file, a CI console) a new line is printed at most every ``every`` seconds. The first report of a
    step and its last (``done == total``) are always printed, the last with the time it took.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> report = ProgressPrinter(out, every=3600)
        >>> for done in (8, 16, 24, 32):
        ...     report("scorecam on layer4", done, 32)
        >>> print(out.getvalue(), end="")  # doctest: +ELLIPSIS
        scorecam on layer4: 8/32 forwards (25%)
        scorecam on layer4: 32/32 forwards (100%) in ... s
    """

    def __init__(self, stream: TextIO | None = None, every: float = 10.0, tty_every: float = 0.5) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.every = tty_every if self.tty else every
        self._step: str | None = None
        self._start = self._last = 0.0

    def __call__(self, step: str, done: int, total: int) -> None:
        now = time.perf_counter()
        first = step != self._step
        if first:
            self._step, self._start = step, now
        last = done >= total
        if not (first or last or now - self._last >= self.every):
            return
        self._last = now
        line = f"{step}: {done}/{total} forwards ({100 * done // max(total, 1)}%)"
        elapsed = now - self._start
        if last:
            line += f" in {elapsed:.1f} s"
        elif done and not first:
            line += f", {elapsed:.0f} s so far, about {elapsed * (total - done) / done:.0f} s to go"
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if last else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
