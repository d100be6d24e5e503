"""What the callback writes down about itself: the ``cam/config`` table and ``checkpoint["cam_callback"]``.

``checkpoint["cam_callback"]`` is what :func:`cam_callback.explain` reads to rebuild the model and explain
new images as the callback did; a Trainer with several CAMCallbacks writes one such summary per callback,
keyed by its name, as ``checkpoint["cam_callbacks"][name]`` instead (``explain(..., callback=name)``).
:data:`CHECKPOINT_VERSION` versions the summaries and the callback's ``state_dict``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import lightning
import torch
from lightning.pytorch import LightningModule

from cam_callback._batch import FixedBatch
from cam_callback._checks import instance_names, layer_key, layer_names_of, target_key
from cam_callback._module_class import source_of
from cam_callback._settings import CAMSettings
from cam_callback.measures import Measure, measure_names

__all__ = ["CHECKPOINT_VERSION", "checkpoint_summary", "config", "config_markdown", "derived_name", "session_names",
           "state_fields", "versions"]  # fmt: skip

#: version of ``checkpoint["cam_callback"]`` and of the callback's ``state_dict``.
CHECKPOINT_VERSION = 1


def derived_name(settings: CAMSettings) -> str:
    """A name from the callback's configuration: its methods, then what differs from the defaults.

    Example:
        >>> from cam_callback import CAMCallback
        >>> derived_name(CAMCallback(methods=["gradcam", "xgradcam"], target="label", every_n_steps=50).settings)
        'gradcam+xgradcam-label-every50steps'
    """
    parts = ["+".join(settings.methods)]
    if settings.target_layers is not None:
        parts.append("+".join(layer_key(settings.target_layers) or []))
    if settings.target != "pred":
        target = target_key(settings.target)  # a task target by its text form: "seg:3" -> "seg_3"
        parts.append(f"class{target}" if isinstance(target, int) else target)
    if settings.aug_smooth:
        parts.append("aug")
    if settings.eigen_smooth:
        parts.append("eigen")
    if settings.every_n_steps is not None:
        parts.append(f"every{settings.every_n_steps}steps")
    elif settings.every_n_epochs != 1:
        parts.append(f"every{settings.every_n_epochs}epochs")
    if settings.user_batch is not None:
        parts.append("images")
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))


def session_names(siblings: Sequence[CAMSettings], mine: int) -> tuple[str, str | None]:
    """``(summary name, tag name)`` of the ``mine``-th of a Trainer's CAMCallbacks (``siblings``: their settings).

    A callback alone in its Trainer keeps plain tags unless given a ``name``; with several, each gets its
    ``name`` or one derived from its configuration (:func:`cam_callback._checks.instance_names`).

    Example:
        >>> from cam_callback import CAMCallback
        >>> a, b = CAMCallback().settings, CAMCallback(method="xgradcam").settings
        >>> session_names([a], 0), session_names([a, b], 1)
        (('gradcam', None), ('xgradcam', 'xgradcam'))
    """
    names = instance_names([(s.name, derived_name(s)) for s in siblings])
    if len(siblings) <= 1:
        settings = siblings[mine]
        return settings.name or derived_name(settings), settings.name
    return names[mine], names[mine]


def state_fields(settings: CAMSettings) -> dict[str, Any]:
    """What tells one callback's state from another's in a checkpoint (``CAMCallback.state_key``): the methods,
    layers, target and smoothing, and only what differs from the defaults beyond them (so the keys of 0.1
    configurations are unchanged).

    Example:
        >>> from cam_callback import CAMCallback
        >>> state_fields(CAMCallback(every_n_epochs=2).settings)["every_n_epochs"]
        2
    """
    fields: dict[str, Any] = {
        "methods": list(settings.methods),
        "target_layer": layer_key(settings.target_layers),
        "target": target_key(settings.target),
        "aug_smooth": settings.aug_smooth,
        "eigen_smooth": settings.eigen_smooth,
    }
    if settings.name is not None:
        fields["name"] = settings.name
    if settings.every_n_epochs != 1:
        fields["every_n_epochs"] = settings.every_n_epochs
    if settings.every_n_steps is not None:
        fields["every_n_steps"] = settings.every_n_steps
    if settings.images_digest is not None:
        fields["images"] = settings.images_digest
    elif settings.num_images != 8:
        fields["num_images"] = settings.num_images
    return fields


def config(
    settings: CAMSettings,
    batch: FixedBatch | None,
    layers: Sequence[str] | None,
    layout: Any,
    tag_name: str | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    measures: Sequence[Measure],
) -> dict[str, Any]:
    """The callback's settings and what it resolved, as plain values (the ``cam/config`` table).

    Args:
        settings: the callback's settings.
        batch: the fixed batch (``None`` before it is chosen).
        layers: the explained layers' names, once resolved.
        layout: how the engine read the (first) target layer's output (:class:`cams.layout.Layout`), or ``None``.
        tag_name: the callback's name in its tags, or ``None``.
        mean, std: the display normalisation of this session.
        measures: the measures that run.
    """
    named: dict[str, Any] = {} if tag_name is None else {"name": tag_name}
    display = settings.display
    return named | {
        "methods": list(settings.methods),
        "target_layers": list(layers) if layers is not None else layer_key(settings.target_layers),
        "layout": None if layout is None else str(layout),
        "target": target_key(settings.target),
        "num_images": None if batch is None else len(batch),
        "input_size": None if batch is None else list(batch.images.shape[1:]),
        "every_n_epochs": None if settings.every_n_steps is not None else settings.every_n_epochs,
        "every_n_steps": settings.every_n_steps,
        "aug_smooth": settings.aug_smooth,
        "eigen_smooth": settings.eigen_smooth,
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std),
        "measures": measure_names(measures),
        "spurious_regions": batch is not None and batch.spurious is not None,
        "max_overhead": settings.max_overhead,
        "alpha": display.alpha,
        "colormap": display.colormap,
        "timeline_rows": display.timeline_rows,
        "drift": "1 - mean cosine similarity (cams.metrics.drift)",
        **versions(),
    }


def versions() -> dict[str, str]:
    """The versions of torch, Lightning and cam-callback running (``"unknown"`` for a source tree not installed).

    Example:
        >>> sorted(versions())
        ['cam_callback', 'lightning', 'torch']
    """
    try:
        release = version("cam-callback")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        release = "unknown"
    return {"torch": torch.__version__, "lightning": lightning.__version__, "cam_callback": release}


def config_markdown(settings: dict[str, Any]) -> str:
    """``settings`` (from :func:`config`) as a two-column markdown table (lists comma-separated)."""
    rows = "\n".join(
        f"| {key} | {', '.join(map(str, value)) if isinstance(value, list) else value} |"
        for key, value in settings.items()
    )
    return f"CAMCallback configuration\n\n| setting | value |\n|---|---|\n{rows}"


def checkpoint_summary(
    settings: CAMSettings,
    pl_module: LightningModule,
    layers: Sequence[str] | None,
    batch: FixedBatch | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> dict[str, Any]:
    """The ``checkpoint["cam_callback"]`` dict that ``cam_callback.explain`` reads.

    Args:
        settings: the callback's settings.
        pl_module: the model saved.
        layers: the explained layers' names, once resolved (else the ``target_layers`` given are named).
        batch: the fixed batch, for the input size.
        mean, std: the normalisation of this session.
    """
    cls = type(pl_module)
    if layers is not None:
        names: list[str] = list(layers)
    elif settings.target_layers is not None:
        names = layer_names_of(pl_module, settings.target_layers)
    else:
        names = []
    return {
        "version": CHECKPOINT_VERSION,
        "module_class": f"{cls.__module__}.{cls.__qualname__}",
        **source_of(cls),  # module_file(_relative): a class defined in a script is loaded back from it
        "target_layers": names,
        "methods": list(settings.methods),
        "input_size": None if batch is None else [int(v) for v in batch.images.shape[1:]],
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std),
        "target": target_key(settings.target),
        "aug_smooth": settings.aug_smooth,
        "eigen_smooth": settings.eigen_smooth,
    }
