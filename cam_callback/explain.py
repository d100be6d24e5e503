"""Post-hoc explanations from a checkpoint: ``explain(ckpt, img) -> Explanation``.

This module chooses the methods and the target and runs the engine; the result type is in ``_explanation``,
checkpoint -> model in ``_checkpoint``, pictures -> tensor in ``_pictures``.

A checkpoint written by a ``Trainer`` that had a :class:`~cam_callback.CAMCallback` carries everything
needed: ``checkpoint["cam_callback"]`` names the LightningModule class, the explained layers, the CAM
methods, the input size and the normalisation; ``checkpoint["hyper_parameters"]`` rebuilds the module
and ``checkpoint["state_dict"]`` holds its weights. A Trainer with several CAMCallbacks writes one such
summary per callback name under ``checkpoint["cam_callbacks"]``; ``callback=`` chooses one. For any other
checkpoint pass ``model=``.

The class is imported by its name; a class defined in a training script (``__main__.Net`` while it
trained) is loaded from the script's file, which the checkpoint also records
(:mod:`cam_callback._module_class`), or from the file ``model="path/to/train.py:Net"`` names.

Loading is safe by default: ``torch.load(weights_only=True)`` accepts tensors and plain Python
containers only. A checkpoint whose hyperparameters hold other objects (a ``pathlib.Path``, a numpy
scalar, a custom config class, ...) is refused with an :class:`UnsafeCheckpointError`; pass
``trusted=True`` (command line: ``--trusted``) only for files you trust, since full unpickling can run
arbitrary code. Importing the module class named in the checkpoint also runs that module's code, so
use checkpoints from people you trust either way.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from cam_callback._checkpoint import build_model, cam_state
from cam_callback._explanation import Explanation
from cam_callback._legacy import accepts_old_spellings, explain_arguments
from cam_callback._pictures import ImageInput, Preprocess, input_channels, prepare_images
from cam_callback._settings import CAMDisplay
from cams import CamEngine, get_method
from cams.engine import find_layer
from cams.io import InputError, UnsafeCheckpointError, load_checkpoint
from cams.overlay import overlay, to_uint8
from cams.passes import Progress
from cams.state import frozen_model
from cams.targets import ClassTarget, Target, parse_target, resolve_targets

__all__ = ["Explanation", "InputError", "Preprocess", "UnsafeCheckpointError", "explain", "load_checkpoint"]


def _methods(method: str | Sequence[str] | None, state: Mapping[str, Any] | None) -> list[str]:
    """The canonical names of ``method`` (one or several), else the checkpoint's methods, else ``gradcam``."""
    asked = [method] if isinstance(method, str) else list(method or [])
    if not asked:
        asked = list(state.get("methods") or ["gradcam"]) if state else ["gradcam"]
    names = []
    for name in asked:
        try:
            names.append(get_method(name).name)
        except ValueError as exc:
            raise InputError(f"method: {exc}") from exc
    return list(dict.fromkeys(names))


def _target(
    model: nn.Module, x: torch.Tensor, target: Any, state: Mapping[str, Any] | None, softmax: bool = False
) -> Any:
    """The target to explain (an explicit one, else the checkpoint's class or task target, else ``None`` =
    predicted), checked on one image, so a bad class or a target that does not fit the model fails here, named.
    With ``softmax`` a class target is resolved to a :class:`cams.targets.ClassTarget` scoring probabilities.
    """
    saved = state.get("target") if state is not None else None
    if target is None and (isinstance(saved, int) or (isinstance(saved, str) and saved not in ("pred", "label"))):
        target = saved
    if isinstance(target, str):
        try:
            target = parse_target(target)
        except ValueError as exc:
            if target != saved:
                raise InputError(f"target: {exc}") from exc
            raise InputError(
                f"target: the checkpoint's callback explained {saved}, which explain cannot rebuild from text; "
                "pass target= (command line: --target or --class-id)"
            ) from exc
    if softmax and isinstance(target, Target) and not isinstance(target, ClassTarget):
        raise InputError(
            f"score='probability' (--score probability) is for class targets; {target!r} scores its own way"
        )
    if target is None and not softmax:
        return None
    with torch.no_grad(), frozen_model(model):
        out = model(x if target is None else x[:1])  # the predicted classes need every image
    try:
        logits = out if isinstance(out, torch.Tensor) and out.dim() == 2 else None
        resolved = resolve_targets(target, x.shape[0], logits, softmax=softmax)
        if isinstance(target, Target):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the real call warns, once
                resolved(out, torch.zeros(1, dtype=torch.long))
    except (TypeError, ValueError) as exc:
        raise InputError(f"target: {exc}") from exc
    return resolved if softmax else target


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device (try 'cpu' or 'cuda')") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine; use 'cpu'")
    return dev


@accepts_old_spellings(explain_arguments)
def explain(
    ckpt: str | os.PathLike[str],
    img: ImageInput,
    method: str | Sequence[str] | None = None,
    *,
    target: int | Sequence[int] | torch.Tensor | str | Any | None = None,
    target_layers: str | Sequence[str] | None = None,
    score: Literal["logit", "probability"] = "logit",
    aug_smooth: bool | None = None,
    eigen_smooth: bool | None = None,
    model: nn.Module | type[nn.Module] | str | None = None,
    trusted: bool = False,
    callback: str | None = None,
    preprocess: Preprocess | None = None,
    display: CAMDisplay | None = None,
    progress: Progress | None = None,
) -> Explanation:
    """Class activation maps for ``img`` from the model saved in ``ckpt``.

    Everything not given is read from the checkpoint's ``cam_callback`` state (written by
    :class:`~cam_callback.CAMCallback`): the module class, the layers, the methods, the input size,
    the normalisation, the target and the smoothing.

    Args:
        ckpt: checkpoint path (``Trainer.save_checkpoint`` / ``ModelCheckpoint``).
        img: a path, a list of paths, a PIL image, an ``H×W×3`` uint8 array (or a list of those), or a
            tensor. Pictures are converted to the model's channel count (grayscale ↔ RGB; the alpha of
            RGBA is dropped), resized (bilinear) to the checkpoint's ``input_size`` and normalised with
            its ``mean``/``std``. A float ``(B, C, H, W)`` tensor is taken as model input, already
            normalised (only resized if needed); a uint8 tensor is treated as raw pixels.
        method: one CAM method name or a list (``"gradcam++"``, aliases like ``"GradCAM++"`` accepted);
            ``None``: the checkpoint's methods (else ``gradcam``).
        target: what to explain: a class (an int, or one per image); a text form of
            :func:`cams.targets.parse_target` (``"seg:3"``: class 3 of a segmentation model over its
            predicted mask, ``"multilabel:3"``, ``"multilabel:all"``: every class above probability 0.5,
            ``"multilabel:all@0.3"``); or a target from :mod:`cams.targets`. ``None``: the checkpoint's
            target if it is a class or such a form, else each image's predicted class.
        target_layers: dotted layer name(s), relative to the model; ``None``: the checkpoint's layers
            (else the engine's automatic choice).
        score: what the maps explain: ``"logit"``, the class's raw output (default, like the callback
            and pytorch-grad-cam), or ``"probability"``, its softmax probability (which also weighs the
            other classes down). Both are reported (:attr:`Explanation.scores`, ``.probabilities``).
        aug_smooth: test-time augmentation smoothing; ``None``: as the checkpoint's callback was set.
        eigen_smooth: principal-component smoothing; ``None``: as the checkpoint's callback was set.
        model: needed when the checkpoint lacks the ``cam_callback`` state: an ``nn.Module`` instance
            (the checkpoint's weights are loaded into it, in place), a class rebuilt from the
            checkpoint's ``hyper_parameters`` like ``load_from_checkpoint`` does, or a
            ``"path/to/script.py:ClassName"`` / ``"package.module.ClassName"`` string.
        trusted: load the checkpoint with full unpickling (``weights_only=False``). Only for files you
            trust; the default safe loading refuses hyperparameters that are not plain data.
        callback: the name of the CAMCallback whose summary to use, for a checkpoint written by a Trainer
            with several (``checkpoint["cam_callbacks"]``); not needed with one.
        preprocess: :class:`Preprocess`: ``input_size``, ``mean``, ``std`` overrides (``None``: the
            checkpoint's) and the ``device`` (default ``"cpu"``).
        display: :class:`~cam_callback.CAMDisplay`: the overlays' ``alpha`` and ``colormap`` (its
            ``timeline_rows`` are not used here).
        progress: ``progress(step, done, total)`` for the long passes of Score-CAM and Ablation-CAM
            (see :class:`cams.CamEngine`); the command line prints them (:class:`cams.io.ProgressPrinter`).

    The 0.2 spellings (``methods=``, ``input_size=``, ``mean=``, ``std=``, ``device=``, ``alpha=``,
    ``colormap=``, ``target_layer=``) keep working for a release with a ``DeprecationWarning``.

    Returns:
        An :class:`Explanation`: ``.maps[method]`` ``(B, H, W)`` float32 in ``[0, 1]``, ``.overlays``,
        ``.classes``, ``.scores``, ``.save(dir)``.

    Raises:
        FileNotFoundError: ``ckpt`` or an image path does not exist.
        UnsafeCheckpointError: safe loading refused the checkpoint (see ``trusted``).
        InputError: anything else a user can fix (a ``ValueError``); the message names the piece.

    Example:
        >>> e = explain("run/last.ckpt", "cat.jpg", "gradcam++")  # doctest: +SKIP
        >>> e.maps["gradcam++"].shape, e.classes  # doctest: +SKIP
        (torch.Size([1, 32, 32]), tensor([3]))
        >>> e.save("explanations")  # doctest: +SKIP
    """
    where = f"checkpoint '{ckpt}'"
    preprocess = preprocess or Preprocess()
    display = display or CAMDisplay()
    dev = _device(preprocess.device)
    checkpoint = load_checkpoint(ckpt, trusted=trusted)
    state = cam_state(checkpoint, where, callback)
    names = _methods(method, state)
    input_size = preprocess.input_size
    if input_size is None and state is not None and state.get("input_size") is not None:
        input_size = state["input_size"]
    if input_size is not None and len(input_size) == 4:
        raise InputError(
            f"input_size {list(input_size)}: the model takes volumes (C, D, H, W), and explain reads 2-D images; "
            "explain volumes with cams.CamEngine(model)(x) on a (B, C, D, H, W) tensor"
        )
    if input_size is not None and len(input_size) != 3:
        raise InputError(f"input_size must be (C, H, W); got {list(input_size)}")
    mean, std = preprocess.mean, preprocess.std
    if mean is None and std is None and state is not None:
        mean, std = state.get("mean"), state.get("std")
    if score not in ("logit", "probability"):
        raise InputError(f"score={score!r}: expected 'logit' or 'probability'")
    layers: list[str] | None
    if target_layers is not None:
        layers = [target_layers] if isinstance(target_layers, str) else list(target_layers)
    else:
        layers = list(state["target_layers"]) if state is not None and state.get("target_layers") else None
    if aug_smooth is None:
        aug_smooth = bool(state.get("aug_smooth", False)) if state is not None else False
    if eigen_smooth is None:
        eigen_smooth = bool(state.get("eigen_smooth", False)) if state is not None else False

    net = build_model(checkpoint, state, model, ckpt, where)
    del checkpoint
    x, shown, stems = prepare_images(img, input_size, mean, std, input_channels(net))
    net.to(dev)
    x = x.to(dev)

    for name in layers or []:
        try:
            find_layer(net, name)
        except ValueError as exc:
            raise InputError(f"target_layers: {exc}") from exc
    classes = _target(net, x, target, state, softmax=score == "probability")

    engine = CamEngine(net, target_layers=layers)
    result = engine(
        x,
        methods=tuple(names),
        targets=classes,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        progress=progress,
    )
    maps = {name: result[name].detach().float().cpu() for name in names}
    overlays = {
        name: to_uint8(overlay(shown, maps[name], alpha=display.alpha, colormap=display.colormap)) for name in names
    }
    classes_out = (
        result.classes.detach().cpu().long()
        if result.classes is not None
        else torch.full((x.shape[0],), -1, dtype=torch.long)
    )
    logits, probabilities = _class_scores(result.logits, classes_out, result.scores, classes)
    return Explanation(
        maps=maps,
        overlays=overlays,
        images=to_uint8(shown),
        classes=classes_out,
        scores=logits,
        names=stems,
        target_layers=list(engine.layer_names),
        colormap=display.colormap,
        probabilities=probabilities,
        score=score,
        target=_describe_target(classes),
    )


def _class_scores(
    logits: torch.Tensor | None, classes: torch.Tensor, scores: torch.Tensor | None, target: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score, probability)`` per image, ``(B,)`` float32 each: a class's logit and softmax probability;
    a task target's own score (its probability NaN); NaN where there is none."""
    nan = torch.full((len(classes),), float("nan"))
    if isinstance(target, Target) and not isinstance(target, ClassTarget):
        return (nan if scores is None else scores.detach().float().cpu()), nan.clone()
    if logits is None or logits.dim() != 2 or bool((classes < 0).any()):
        return nan, nan.clone()
    logits = logits.detach().float().cpu()
    rows = torch.arange(len(classes))
    return logits[rows, classes], logits.softmax(dim=1)[rows, classes]


def _describe_target(target: Any) -> str:
    """``""`` for class targets, else the target's text form (or repr) for :attr:`Explanation.target`."""
    if not isinstance(target, Target) or isinstance(target, ClassTarget):
        return ""
    spec = getattr(target, "spec", None)
    return spec if isinstance(spec, str) else repr(target)
