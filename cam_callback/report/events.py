"""TensorBoard event files, read for a report: scalars, images and texts by tag, in the order written.

An event file is a sequence of records (``uint64`` length, masked CRC-32C of the length, the serialised
``Event`` protocol buffer, masked CRC-32C of it); the ``Event`` is parsed with TensorBoard's own protocol
buffers (:mod:`tensorboard.compat.proto.event_pb2`). TensorBoard's ``EventAccumulator`` reads the same files, but
without TensorFlow installed its reader computes every CRC in pure Python (under 1 MB/s here), and a callback's
run logs its timeline images at every run: a log of 100 CAM runs holds hundreds of MB and would take minutes.
This reader checks the CRC of every record's length and of every record under :data:`CHECKED_BYTES` (scalars,
texts, small images) and leaves the large images to the PNG decoder's own checksums, which verify each chunk
of the images the report uses.

A record cut short at the end of the file (a run still being written) ends the reading, as in TensorBoard; a
checksum that does not match, or a record that does not parse, is an :class:`~cams.io.InputError` naming the
file and the byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from cams.io import InputError

__all__ = ["CHECKED_BYTES", "EVENT_GLOB", "Logged", "read_event_file", "read_events"]

EVENT_GLOB = "events.out.tfevents.*"
"""The names of TensorBoard's event files."""
CHECKED_BYTES = 1 << 16
"""Records up to this size get their data CRC checked (pure Python, ~1 MB/s); larger ones are images."""

Keep = Literal["all", "last", "none"]


@dataclass
class Logged:
    """What a folder's event files hold, by tag, in the order written.

    Attributes:
        scalars: tag -> ``[(step, value), ...]``.
        images: tag -> ``[(step, encoded image), ...]`` (only the last one for tags kept ``"last"``).
        texts: tag -> ``[(step, text), ...]`` (TensorBoard's text plugin, e.g. ``cam/config``).
        notes: what the reader noticed but could read past (a record cut short at the end of a file).
    """

    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    images: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_event_file(path: str | Path, notes: list[str] | None = None) -> Iterator[event_pb2.Event]:
    """The events of one file, in order (see the module docstring for the checks).

    Args:
        path: an ``events.out.tfevents.*`` file.
        notes: where to say that the file ends in a record cut short (ignored when ``None``).

    Raises:
        InputError: the file cannot be read, a checksum does not match or a record does not parse.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as err:
        raise InputError(f"cannot read the TensorBoard event file '{path}': {err}") from err
    with handle:
        offset = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) == 12 and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise _corrupt(path, offset, "the checksum of a record's length does not match")
            length = struct.unpack("<Q", header[:8])[0] if len(header) == 12 else 0
            data = handle.read(length)
            footer = handle.read(4)
            if len(header) < 12 or len(data) < length or len(footer) < 4:
                if notes is not None:
                    notes.append(f"{path.name} ends in a record cut short at byte {offset} (still being written?)")
                return
            if len(data) <= CHECKED_BYTES and struct.unpack("<I", footer)[0] != masked_crc32c(data):
                raise _corrupt(path, offset, "the checksum of a record does not match")
            try:
                yield event_pb2.Event.FromString(data)
            except DecodeError as err:
                raise _corrupt(path, offset, f"a record is not a TensorBoard event ({err})") from err
            offset += 16 + len(data)


def _corrupt(path: Path, offset: int, what: str) -> InputError:
    return InputError(f"the TensorBoard event file '{path}' is corrupt at byte {offset}: {what}")


def read_events(paths: list[Path], keep: Callable[[str], Keep]) -> Logged:
    """Read event files in order into one :class:`Logged`.

    Args:
        paths: event files (one run's, oldest first).
        keep: which images to keep for a tag: ``"all"``, the ``"last"`` one, or ``"none"``.

    Raises:
        InputError: as :func:`read_event_file`.
    """
    logged = Logged()
    decisions: dict[str, Keep] = {}
    plugins: dict[str, str] = {}  # the plugin a tag's first value named (later values may leave it out)
    for path in paths:
        for event in read_event_file(path, logged.notes):
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                tag, step = value.tag, int(event.step)
                plugin = value.metadata.plugin_data.plugin_name or plugins.get(tag, "")
                plugins.setdefault(tag, plugin)
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    logged.scalars.setdefault(tag, []).append((step, float(value.simple_value)))
                elif kind == "image":
                    choice = decisions.setdefault(tag, keep(tag))
                    if choice == "none":
                        continue
                    kept = logged.images.setdefault(tag, [])
                    if choice == "last":
                        kept.clear()
                    kept.append((step, value.image.encoded_image_string))
                elif kind == "tensor" and plugin == "text" and value.tensor.string_val:
                    text = value.tensor.string_val[0].decode("utf-8", errors="replace")
                    logged.texts.setdefault(tag.removesuffix("/text_summary"), []).append((step, text))
                elif kind == "tensor" and plugin == "scalars" and value.tensor.float_val:
                    logged.scalars.setdefault(tag, []).append((step, float(value.tensor.float_val[0])))
    return logged
