"""What the callback writes down about itself: the ``cam/config`` table and ``checkpoint["cam_callback"]``.

``checkpoint["cam_callback"]`` is what :func:`cam_callback.explain` reads to rebuild the model and explain
new images as the callback did; a Trainer with several CAMCallbacks writes one such summary per callback,
keyed by its name, as ``checkpoint["cam_callbacks"][name]`` instead (``explain(..., callback=name)``).
:data:`CHECKPOINT_VERSION` versions the summaries and the callback's ``state_dict``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule

from cam_callback._checks import layer_key, layer_names_of, target_key
from cam_callback._module_class import source_of

if TYPE_CHECKING:
    from cam_callback.callback import CAMCallback

__all__ = ["CHECKPOINT_VERSION", "checkpoint_summary", "config", "config_markdown", "derived_name"]

#: version of ``checkpoint["cam_callback"]`` and of the callback's ``state_dict``.
CHECKPOINT_VERSION = 1


def derived_name(callback: CAMCallback) -> str:
    """A name from the callback's configuration: its methods, then what differs from the defaults.

    Example:
        >>> from cam_callback import CAMCallback
        >>> derived_name(CAMCallback(methods=["gradcam", "xgradcam"], target="label", every_n_steps=50))
        'gradcam+xgradcam-label-every50steps'
    """
    parts = ["+".join(callback.methods)]
    if callback.target_layers is not None:
        parts.append("+".join(layer_key(callback.target_layers) or []))
    if callback.target != "pred":
        target = target_key(callback.target)  # a task target by its text form: "seg:3" -> "seg_3"
        parts.append(f"class{target}" if isinstance(target, int) else target)
    if callback.aug_smooth:
        parts.append("aug")
    if callback.eigen_smooth:
        parts.append("eigen")
    if callback.every_n_steps is not None:
        parts.append(f"every{callback.every_n_steps}steps")
    elif callback.every_n_epochs != 1:
        parts.append(f"every{callback.every_n_epochs}epochs")
    if callback._user_batch is not None:
        parts.append("images")
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))


def config(callback: CAMCallback) -> dict[str, Any]:
    """The callback's settings and what it resolved (layers, batch size, normalisation), as plain values."""
    batch = callback._batch
    settings: dict[str, Any] = {} if callback.tag_name is None else {"name": callback.tag_name}
    return settings | {
        "methods": list(callback.methods),
        "target_layers": callback._layer_names
        if callback._layer_names is not None
        else layer_key(callback.target_layers),
        "layout": _layout(callback),
        "target": target_key(callback.target),
        "num_images": None if batch is None else len(batch),
        "input_size": None if batch is None else list(batch.images.shape[1:]),
        "every_n_epochs": None if callback.every_n_steps is not None else callback.every_n_epochs,
        "every_n_steps": callback.every_n_steps,
        "aug_smooth": callback.aug_smooth,
        "eigen_smooth": callback.eigen_smooth,
        "mean": None if callback._session_mean is None else list(callback._session_mean),
        "std": None if callback._session_std is None else list(callback._session_std),
        "pointing_tolerance": callback.pointing_tolerance,
        "faithfulness": callback.faithfulness,
        "sanity_check": callback.sanity_check,
        "spurious_regions": batch is not None and batch.spurious is not None,
        "shortcut_ratio": callback.shortcut_ratio,
        "baselines": callback.baselines,
        "road": callback.road,
        "axioms": callback.axioms,
        "noise_floor": callback.noise_floor,
        "timeline_rows": callback.timeline_rows,
        "max_overhead": callback.max_overhead,
        "drift": "1 - mean cosine similarity (cams.metrics.drift)",
    }


def _layout(callback: CAMCallback) -> str | None:
    """How the engine read the (first) target layer's output, e.g. ``tokens (B, 17, 192): 1 prefix token ...``."""
    layout = getattr(callback._engine, "layout", None)
    return None if layout is None else str(layout)


def config_markdown(settings: dict[str, Any]) -> str:
    """``settings`` (from :func:`config`) as a two-column markdown table (lists comma-separated)."""
    rows = "\n".join(
        f"| {key} | {', '.join(map(str, value)) if isinstance(value, list) else value} |"
        for key, value in settings.items()
    )
    return f"CAMCallback configuration\n\n| setting | value |\n|---|---|\n{rows}"


def checkpoint_summary(callback: CAMCallback, pl_module: LightningModule) -> dict[str, Any]:
    """The ``checkpoint["cam_callback"]`` dict that ``cam_callback.explain`` reads."""
    cls = type(pl_module)
    if callback._layer_names is not None:
        layers: list[str] = list(callback._layer_names)
    elif callback.target_layers is not None:
        layers = layer_names_of(pl_module, callback.target_layers)
    else:
        layers = []
    batch = callback._batch
    return {
        "version": CHECKPOINT_VERSION,
        "module_class": f"{cls.__module__}.{cls.__qualname__}",
        **source_of(cls),  # module_file(_relative): a class defined in a script is loaded back from it
        "target_layers": layers,
        "methods": list(callback.methods),
        "input_size": None if batch is None else [int(v) for v in batch.images.shape[1:]],
        "mean": None if callback._session_mean is None else list(callback._session_mean),
        "std": None if callback._session_std is None else list(callback._session_std),
        "target": target_key(callback.target),
        "aug_smooth": callback.aug_smooth,
        "eigen_smooth": callback.eigen_smooth,
    }
