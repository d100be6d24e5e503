"""Checkpoint -> model, for :func:`cam_callback.explain`: which CAMCallback summary to read, and the module rebuilt.

A checkpoint written by a ``Trainer`` with a :class:`~cam_callback.CAMCallback` carries
``checkpoint["cam_callback"]`` (one callback) or ``checkpoint["cam_callbacks"][name]`` (several): the module class,
the explained layers, the methods, the input size, the normalisation (:func:`cam_state`). The module is rebuilt from
``checkpoint["hyper_parameters"]`` as ``LightningModule.load_from_checkpoint`` does and gets
``checkpoint["state_dict"]`` (:func:`build_model`); a class defined in a training script is loaded from the script's
file (:mod:`cam_callback._module_class`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cam_callback._module_class import find_class, load_class
from cams.io import InputError
from cams.names import close_matches

__all__ = ["STATES_KEY", "STATE_KEY", "SUPPORTED_VERSIONS", "build_model", "cam_state", "instantiate", "load_weights",
           "state_dict_of"]  # fmt: skip

STATE_KEY = "cam_callback"
STATES_KEY = "cam_callbacks"  # name -> summary, one per CAMCallback of the Trainer
SUPPORTED_VERSIONS = (1,)


def cam_state(checkpoint: Mapping[str, Any], where: str, callback: str | None = None) -> dict[str, Any] | None:
    """The summary of the CAMCallback named ``callback`` (or of the only one) in ``checkpoint``."""
    summaries = checkpoint.get(STATES_KEY)
    if not isinstance(summaries, Mapping) or not summaries:  # a checkpoint of one callback, before names
        summaries = {} if checkpoint.get(STATE_KEY) is None else {None: checkpoint[STATE_KEY]}
    if callback is None and len(summaries) > 1:
        raise InputError(
            f"{where} holds the summaries of {len(summaries)} CAMCallbacks {sorted(map(str, summaries))}; "
            "choose one with callback= (command line: --callback NAME)"
        )
    if callback is not None and None not in summaries and callback not in summaries:
        raise InputError(
            f"{where}: callback={callback!r} is not one of the checkpoint's CAMCallbacks "
            f"{sorted(map(str, summaries))}{close_matches(callback, [str(k) for k in summaries])}"
        )
    key = callback if callback in summaries else next(iter(summaries), None)
    state = summaries.get(key)
    if state is None:
        return None
    if not isinstance(state, Mapping):
        raise InputError(f"{where}: checkpoint['{STATE_KEY}'] is a {type(state).__name__}, not a dict")
    version = state.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise InputError(
            f"{where}: checkpoint['{STATE_KEY}'] has version {version!r}; this cam-callback reads "
            f"version {', '.join(map(str, SUPPORTED_VERSIONS))} (upgrade cam-callback)"
        )
    return dict(state)


def state_dict_of(checkpoint: Mapping[str, Any], where: str) -> Mapping[str, torch.Tensor]:
    state_dict = checkpoint.get("state_dict")
    if isinstance(state_dict, Mapping):
        return state_dict
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint  # a bare torch.save(model.state_dict())
    raise InputError(f"{where}: the checkpoint has no 'state_dict' (the model weights); keys: {sorted(checkpoint)}")


def instantiate(cls: type[nn.Module], checkpoint: Mapping[str, Any], where: str) -> nn.Module:
    """``cls(**hyper_parameters)`` as ``LightningModule.load_from_checkpoint`` does (weights not loaded)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping):
        hparams = dict(vars(hparams)) if hasattr(hparams, "__dict__") else {}
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = {p.name for p in named}
    args_name = checkpoint.get("hparams_name")
    if args_name and args_name in names:
        kwargs: dict[str, Any] = {args_name: dict(hparams)}
    elif any(p.kind == p.VAR_KEYWORD for p in params):
        kwargs = dict(hparams)
    else:
        kwargs = {k: v for k, v in hparams.items() if k in names}
    missing = [p.name for p in named if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise InputError(
            f"{where}: cannot rebuild {cls.__qualname__}: its constructor needs {missing}, which the "
            "checkpoint's 'hyper_parameters' lack (call self.save_hyperparameters() in __init__), "
            "or pass model= an instance"
        )
    try:
        model = cls(**kwargs)
    except Exception as exc:
        raise InputError(
            f"{where}: {cls.__qualname__}(**hyper_parameters) failed: {type(exc).__name__}: {exc}"
        ) from exc
    return model


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    strict = bool(getattr(model, "strict_loading", True))
    result = model.load_state_dict(state_dict, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        detail = ", ".join(
            f"{label} {keys[:3]}{'...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise InputError(f"{where}: the checkpoint's weights do not fit {type(model).__qualname__}: {detail}")


def build_model(
    checkpoint: dict[str, Any], state: Mapping[str, Any] | None, model: Any, ckpt: str | os.PathLike[str], where: str
) -> nn.Module:
    if isinstance(model, nn.Module):
        load_weights(model, state_dict_of(checkpoint, where), where)
        return model
    if isinstance(model, type) and issubclass(model, nn.Module):
        cls = model
    elif isinstance(model, (str, os.PathLike)):
        default = state.get("module_class") if state is not None else None
        default_name = default.rsplit(".", 1)[-1] if isinstance(default, str) else None
        cls = load_class(os.fspath(model), "model= (--model-class)", default_name)
    elif model is not None:
        raise TypeError(
            f"model must be an nn.Module instance or class, or a 'path/to/script.py:ClassName' or "
            f"'package.module.ClassName' string; got {type(model).__name__}"
        )
    elif state is None:
        raise InputError(
            f"{where}: the checkpoint has no '{STATE_KEY}' state (it was not saved by a Trainer with a "
            "CAMCallback), so the model is unknown: name its LightningModule class (command line: "
            "--model-class path/to/script.py:ClassName or package.module.ClassName; Python: model=, which "
            "also takes the class or an instance)"
        )
    else:
        cls = find_class(state, ckpt, f"{where}: checkpoint['{STATE_KEY}']")
    net = instantiate(cls, checkpoint, where)
    hook = getattr(net, "configure_model", None)
    if callable(hook):
        hook()
    hook = getattr(net, "on_load_checkpoint", None)
    if callable(hook):
        hook(checkpoint)
    load_weights(net, state_dict_of(checkpoint, where), where)
    return net
