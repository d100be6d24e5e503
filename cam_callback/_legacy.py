"""Old spellings of arguments: each keeps working for a release, with a ``DeprecationWarning`` naming the new one.

0.3 grouped ``CAMCallback``'s 32 arguments (measures into ``measures=``, display options into
``display=CAMDisplay(...)``, regions into ``images={...}``) and ``explain``'s 20 (``preprocess=Preprocess(...)``,
``display=``, one ``method`` for one or several). :func:`accepts_old_spellings` lets a function keep its new
signature (what ``inspect.signature``, the docs and LightningCLI see) while it still takes the old keywords: they
are translated into the new ones before the call. A keyword that was never an argument still fails with
Python's own ``TypeError``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from cam_callback._pictures import Preprocess
from cam_callback._settings import CAMDisplay
from cam_callback.measures import DEFAULT_MEASURES, Localisation, NoiseFloor, Shortcut, resolve_measures
from cams.io import InputError

__all__ = ["CALLBACK_RENAMES", "EXPLAIN_RENAMES", "accepts_old_spellings", "callback_arguments", "explain_arguments"]

F = TypeVar("F", bound=Callable[..., Any])
Translate = Callable[[dict[str, Any], dict[str, Any]], Callable[[Any], None] | None]

CALLBACK_RENAMES: dict[str, str] = {
    "target_layer": "target_layers=",
    "boxes": "images={'image': x, 'boxes': ...} (or images={'boxes': ...} for the validation images)",
    "masks": "images={'image': x, 'masks': ...} (or images={'masks': ...} for the validation images)",
    "spurious_masks": "images={'image': x, 'spurious_mask': ...} (or images={'spurious_mask': ...})",
    "pointing_tolerance": "measures=[..., Localisation(tolerance=...)]",
    "shortcut_ratio": "measures=[..., Shortcut(ratio=...)]",
    "noise_floor": "measures=[..., NoiseFloor(sigma=...)] (leave it out for none)",
    "baselines": "measures=[..., 'baselines'] (leave it out for none)",
    "faithfulness": "measures=[..., 'faithfulness']",
    "road": "measures=[..., 'road']",
    "axioms": "measures=[..., 'axioms']",
    "sanity_check": "measures=[..., 'sanity']",
    "alpha": "display=CAMDisplay(alpha=...)",
    "colormap": "display=CAMDisplay(colormap=...)",
    "timeline_rows": "display=CAMDisplay(timeline_rows=...)",
}
"""``CAMCallback``'s old keyword -> its new spelling (0.2 -> 0.3)."""

EXPLAIN_RENAMES: dict[str, str] = {
    "methods": "method=[...] (one name or a list)",
    "target_layer": "target_layers=",
    "input_size": "preprocess=Preprocess(input_size=...)",
    "mean": "preprocess=Preprocess(mean=...)",
    "std": "preprocess=Preprocess(std=...)",
    "device": "preprocess=Preprocess(device=...)",
    "alpha": "display=CAMDisplay(alpha=...)",
    "colormap": "display=CAMDisplay(colormap=...)",
}
"""``explain``'s old keyword -> its new spelling (0.2 -> 0.3)."""


def accepts_old_spellings(translate: Translate) -> Callable[[F], F]:
    """Decorate ``fn`` so that keywords outside its signature go through ``translate(new, old)`` first.

    ``translate`` moves the ``old`` keywords into ``new`` (warning for each) and may return a function that is
    called with ``fn``'s first argument after ``fn`` returned (to adjust what the old spelling meant).
    """

    def decorate(fn: F) -> F:
        params = inspect.signature(fn).parameters
        positional = [p.name for p in params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            old = {key: kwargs.pop(key) for key in list(kwargs) if key not in params}
            if not old:
                return fn(*args, **kwargs)
            if len(args) > len(positional):
                return fn(*args, **kwargs)  # Python's own error for too many positional arguments
            kwargs.update(zip(positional, args, strict=False))  # the translation sees every value by its name
            after = translate(kwargs, old)
            result = fn(**kwargs)
            if after is not None:
                after(kwargs[positional[0]])
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _warn(owner: str, key: str, value: Any, renames: Mapping[str, str]) -> None:
    if key not in renames:
        raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}")
    shown = f"<tensor of shape {tuple(value.shape)}>" if hasattr(value, "shape") else repr(value)
    warnings.warn(
        f"{owner}({key}={shown}) is deprecated since 0.3 and will be removed: pass {renames[key]}",
        DeprecationWarning,
        stacklevel=4,
    )


def callback_arguments(new: dict[str, Any], old: dict[str, Any]) -> Callable[[Any], None] | None:
    """Translate ``CAMCallback``'s 0.2 keywords (see :data:`CALLBACK_RENAMES`) into ``new``."""
    for key, value in old.items():
        _warn("CAMCallback", key, value, CALLBACK_RENAMES)
    if "target_layer" in old:
        if new.get("target_layers") is not None:
            raise ValueError(
                f"CAMCallback(target_layers={new['target_layers']!r}, target_layer={old['target_layer']!r}): the "
                "two are one argument under two names; give only target_layers"
            )
        new["target_layers"] = old["target_layer"]
    regions = {k: old[k] for k in ("boxes", "masks", "spurious_masks") if old.get(k) is not None}
    if regions:
        images = new.get("images")
        if isinstance(images, Mapping):
            merged: dict[str, Any] = dict(images)
        elif isinstance(images, (tuple, list)) and len(images) == 2:
            merged = {"image": images[0], "label": images[1]}
        else:
            merged = {} if images is None else {"image": images}
        merged.update({"spurious_mask" if k == "spurious_masks" else k: v for k, v in regions.items()})
        new["images"] = merged
    display = {k: old[k] for k in ("alpha", "colormap", "timeline_rows") if k in old}
    if display:
        new["display"] = replace(new.get("display") or CAMDisplay(), **display)

    given = new.get("measures")
    measures = list(resolve_measures(DEFAULT_MEASURES if given is None else given))
    required: set[str] = set()

    def put(measure: Any, on: bool = True) -> None:
        kept = [m for m in measures if m.name != measure.name]
        at = next((i for i, m in enumerate(measures) if m.name == measure.name), len(kept))
        measures[:] = kept[:at] + ([measure] if on else []) + kept[at:]
        if on:
            required.add(measure.name)

    if "pointing_tolerance" in old:
        put(Localisation(tolerance=old["pointing_tolerance"]))
        required.discard("localisation")  # as before: scored where the batch has objects
    if "shortcut_ratio" in old:
        put(Shortcut(ratio=old["shortcut_ratio"]))
        required.discard("shortcut")
    if "noise_floor" in old:
        sigma = old["noise_floor"]
        put(NoiseFloor() if sigma is None else NoiseFloor(sigma), on=sigma is not None)
    for key, name in (("baselines", "baselines"), ("faithfulness", "faithfulness"), ("road", "road"),
                      ("axioms", "axioms"), ("sanity_check", "sanity")):  # fmt: skip
        if key in old:
            if not isinstance(old[key], bool):
                raise TypeError(f"CAMCallback({key}={old[key]!r}): expected True or False")
            put(resolve_measures([name])[0], old[key])
    required.discard("baselines")  # as before: scored where a measure scores them
    if any(k in old for k in ("pointing_tolerance", "shortcut_ratio", "noise_floor", "baselines", "faithfulness",
                              "road", "axioms", "sanity_check")):  # fmt: skip
        new["measures"] = measures
        if given is None:  # the defaults stay automatic; what the old flags asked for is required
            def keep_automatic(callback: Any) -> None:
                callback._settings = replace(callback._settings, required=frozenset(required))

            return keep_automatic
    return None


def explain_arguments(new: dict[str, Any], old: dict[str, Any]) -> Callable[[Any], None] | None:
    """Translate ``explain``'s 0.2 keywords (see :data:`EXPLAIN_RENAMES`) into ``new``."""
    for key, value in old.items():
        _warn("explain", key, value, EXPLAIN_RENAMES)
    if old.get("methods") is not None:
        methods = [old["methods"]] if isinstance(old["methods"], str) else list(old["methods"])
        method = new.get("method")
        new["method"] = [*([method] if isinstance(method, str) else list(method or [])), *methods]
    if old.get("target_layer") is not None:
        if new.get("target_layers") is not None:
            raise InputError("target_layers and target_layer are one argument under two names; give target_layers")
        new["target_layers"] = old["target_layer"]
    preprocess = {k: old[k] for k in ("input_size", "mean", "std", "device") if old.get(k) is not None}
    if preprocess:
        new["preprocess"] = replace(new.get("preprocess") or Preprocess(), **preprocess)
    display = {k: old[k] for k in ("alpha", "colormap") if k in old}
    if display:
        new["display"] = replace(new.get("display") or CAMDisplay(), **display)
    return None
