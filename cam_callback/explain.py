"""Post-hoc explanations from a checkpoint: ``explain(ckpt, img) -> Explanation``.

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

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cam_callback._module_class import find_class, load_class
from cams.io import (
    InputError,
    UnsafeCheckpointError,
    encode_image,
    load_checkpoint,
    npy_bytes,
    read_image,
    write_files,
)
from cams.passes import Progress

__all__ = ["Explanation", "InputError", "UnsafeCheckpointError", "explain", "load_checkpoint"]

STATE_KEY = "cam_callback"
STATES_KEY = "cam_callbacks"  # name -> summary, one per CAMCallback of the Trainer
SUPPORTED_VERSIONS = (1,)

ImageInput = Any
"""A path, a list of paths (or of PIL images / arrays), a PIL image, an ``H×W×3`` uint8 array or a tensor."""


@dataclass
class Explanation:
    """The maps for a batch of images, ready to look at or save.

    Attributes:
        maps: method name → ``(B, H, W)`` float32 tensor in ``[0, 1]`` on the CPU (``H, W`` = the model's
            input size).
        overlays: method name → ``(B, H, W, 3)`` uint8 RGB numpy array, the map blended over the image.
        images: ``(B, H, W, 3)`` uint8 RGB, the images as the model saw them (resized, before normalising).
        classes: ``(B,)`` int64, the class explained for each image (predicted or chosen).
        scores: ``(B,)`` float32, that class's logit: the model's raw output for it (NaN when the output
            is not ``(B, classes)``); for a task target (segmentation, multi-label...) the target's own score.
        probabilities: ``(B,)`` float32, that class's softmax probability over the model's outputs.
        score: which of the two the maps explain: ``"logit"`` (default) or ``"probability"``.
        names: file stems used by :meth:`save` (the image files' stems, else ``image0``, ``image1``, ...).
        target_layers: dotted names of the explained layers.
        colormap: colour map of the heat maps and overlays.
        target: what was explained when it is not one class per image (``"seg:3"``, ``"multilabel:all"``,
            a target's repr); ``""`` for classes. :attr:`classes` is then ``-1`` where no single class applies.

    Example:
        >>> e = Explanation(maps={"gradcam": torch.rand(1, 8, 8)},
        ...                 overlays={"gradcam": np.zeros((1, 8, 8, 3), np.uint8)},
        ...                 images=np.zeros((1, 8, 8, 3), np.uint8), classes=torch.tensor([3]),
        ...                 scores=torch.tensor([1.5]), names=["cat"], target_layers=["layer4"])
        >>> e.methods
        ['gradcam']
        >>> import tempfile
        >>> sorted(p.name for p in e.save(tempfile.mkdtemp()))
        ['cat-gradcam-heatmap.png', 'cat-gradcam-overlay.png', 'explanation.json', 'gradcam.npy']
    """

    maps: dict[str, torch.Tensor] = field(repr=False)
    overlays: dict[str, np.ndarray] = field(repr=False)
    images: np.ndarray = field(repr=False)
    classes: torch.Tensor
    scores: torch.Tensor
    names: list[str]
    target_layers: list[str]
    colormap: str = "jet"
    probabilities: torch.Tensor | None = None
    score: str = "logit"
    target: str = ""

    @property
    def methods(self) -> list[str]:
        """The methods explained, in the order asked for."""
        return list(self.maps)

    def heatmaps(self, method: str) -> np.ndarray:
        """The colour-mapped ``method`` maps → ``(B, H, W, 3)`` uint8 RGB."""
        from cams.overlay import colorize, to_uint8

        return to_uint8(colorize(self.maps[method], self.colormap))

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write PNGs and raw maps into ``directory`` (created if needed) → the written paths.

        Files, for each image stem ``<stem>`` (see :attr:`names`) and method ``<method>``:

        - ``<stem>-<method>-heatmap.png``: the map coloured with :attr:`colormap`;
        - ``<stem>-<method>-overlay.png``: the map over the image;
        - ``<method>.npy``: all maps of the method, float32 ``(B, H, W)`` in :attr:`names` order;
        - ``explanation.json``: names, classes, logits (``scores``), probabilities, which score the maps
          explain, methods and layers.

        All files are written into a temporary folder next to ``directory`` and moved in together, so
        an interrupted save leaves no partial set behind. Existing files of the same names are replaced.
        """
        files: dict[str, bytes] = {}
        for method in self.methods:
            heat = self.heatmaps(method)
            for i, stem in enumerate(self.names):
                files[f"{stem}-{method}-heatmap.png"] = encode_image(heat[i], "PNG")
                files[f"{stem}-{method}-overlay.png"] = encode_image(self.overlays[method][i], "PNG")
        for method in self.methods:
            buf = npy_bytes(self.maps[method].float().numpy())
            files[f"{method}.npy"] = buf
        summary = {
            "names": self.names,
            "classes": [int(c) for c in self.classes],
            "scores": [float(s) for s in self.scores],
            "probabilities": None if self.probabilities is None else [float(p) for p in self.probabilities],
            "score": self.score,
            "methods": self.methods,
            "target_layers": self.target_layers,
        }
        if self.target:
            summary["target"] = self.target
        files["explanation.json"] = (json.dumps(summary, indent=2) + "\n").encode()
        return write_files(directory, files)


# --------------------------------------------------------------------------- checkpoint and model


def _cam_state(checkpoint: Mapping[str, Any], where: str, callback: str | None = None) -> dict[str, Any] | None:
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
        from cams.names import close_matches

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


def _state_dict(checkpoint: Mapping[str, Any], where: str) -> Mapping[str, torch.Tensor]:
    state_dict = checkpoint.get("state_dict")
    if isinstance(state_dict, Mapping):
        return state_dict
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint  # a bare torch.save(model.state_dict())
    raise InputError(f"{where}: the checkpoint has no 'state_dict' (the model weights); keys: {sorted(checkpoint)}")


def _instantiate(cls: type[nn.Module], checkpoint: Mapping[str, Any], where: str) -> nn.Module:
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


def _load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
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


def _build_model(
    checkpoint: dict[str, Any], state: Mapping[str, Any] | None, model: Any, ckpt: str | os.PathLike[str], where: str
) -> nn.Module:
    if isinstance(model, nn.Module):
        _load_weights(model, _state_dict(checkpoint, where), where)
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
    net = _instantiate(cls, checkpoint, where)
    hook = getattr(net, "configure_model", None)
    if callable(hook):
        hook()
    hook = getattr(net, "on_load_checkpoint", None)
    if callable(hook):
        hook(checkpoint)
    _load_weights(net, _state_dict(checkpoint, where), where)
    return net


# --------------------------------------------------------------------------- images


def _as_list(img: Any) -> list[Any]:
    if isinstance(img, (str, os.PathLike)):
        return [img]
    if isinstance(img, (list, tuple)):
        if not img:
            raise InputError("img: an empty list of images")
        return list(img)
    if isinstance(img, np.ndarray) and img.ndim == 4:
        return list(img)
    return [img]


def _to_pil(item: Any, index: int) -> tuple[Any, str | None]:
    """One image (path, PIL image or uint8 array) → (PIL image, file stem or None)."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        return read_image(item, what="image"), Path(item).stem
    if isinstance(item, Image.Image):
        return item, None
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise InputError(
                f"img[{index}]: an array must be H×W, H×W×3 or H×W×4 uint8; got {array.dtype} {item.shape}"
            )
        return Image.fromarray(array), None
    raise InputError(
        f"img[{index}]: {type(item).__name__} is not an image; pass a path, a PIL image, an H×W×3 uint8 "
        "array or a (B, C, H, W) tensor"
    )


def _prepare(
    img: Any,
    input_size: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    model_channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images → ``(x, display, names)``: model input (B, C, H, W), display (B, 3, H, W) in [0, 1], stems."""
    from PIL import Image

    from cams.overlay import denormalize

    channels = int(input_size[0]) if input_size is not None else model_channels
    size = (int(input_size[1]), int(input_size[2])) if input_size is not None else None

    if isinstance(img, torch.Tensor):
        x = img.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise InputError(f"img: a tensor must be (B, C, H, W) or (C, H, W); got shape {tuple(img.shape)}")
        if channels is not None and x.shape[1] != channels:
            raise InputError(f"img: the tensor has {x.shape[1]} channels; the model takes {channels}")
        raw = x.dtype == torch.uint8
        x = x.float() / 255.0 if raw else x.float()
        if size is not None and tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if raw:
            display = _to_rgb(x.clamp(0, 1))
            x = _normalize(x, mean, std)
        else:  # a float tensor is the model's input as it is, already normalised
            display = denormalize(x, mean, std) if mean is not None and std is not None else denormalize(x)
        return x, display, [f"image{i}" for i in range(x.shape[0])]

    items = _as_list(img)
    pictures, names = [], []
    for i, item in enumerate(items):
        picture, stem = _to_pil(item, i)
        pictures.append(picture)
        names.append(stem or f"image{i}")
    if channels is None:
        channels = 1 if all(p.mode in ("L", "I", "I;16", "F", "1") for p in pictures) else 3
    if channels not in (1, 3):
        raise InputError(f"the model takes {channels}-channel input; pass img as a (B, C, H, W) tensor")
    if size is None:
        sizes = {p.size for p in pictures}
        if len(sizes) > 1:
            raise InputError(f"img: images of different sizes {sorted(sizes)} and no input_size to resize to")
        size = (pictures[0].height, pictures[0].width)
    arrays = []
    for picture in pictures:
        picture = picture.convert("L" if channels == 1 else "RGB")
        if (picture.height, picture.width) != size:
            picture = picture.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(picture, dtype=np.float32) / 255.0
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays))
    return _normalize(x, mean, std), _to_rgb(x), _unique(names)


def _input_channels(model: nn.Module) -> int | None:
    """The first convolution's ``in_channels``: the channel count pictures get without an ``input_size``."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return None


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def _normalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    if mean is None and std is None:
        return x
    m = torch.as_tensor(mean if mean is not None else 0.0, dtype=x.dtype).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std if std is not None else 1.0, dtype=x.dtype).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, x.shape[1]) or s.shape[1] not in (1, x.shape[1]):
        raise InputError(f"mean/std have {m.shape[1]}/{s.shape[1]} values for {x.shape[1]}-channel images")
    return (x - m) / s


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}-{count + 1}")
    return out


# --------------------------------------------------------------------------- explain


def _methods(method: str | None, methods: Sequence[str] | None, state: Mapping[str, Any] | None) -> list[str]:
    from cams import get_method

    if isinstance(methods, str):
        methods = [methods]
    asked = [*([method] if method else []), *(methods or [])]
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
    import warnings

    from cams.state import frozen_model
    from cams.targets import ClassTarget, Target, parse_target, resolve_targets

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


def explain(
    ckpt: str | os.PathLike[str],
    img: ImageInput,
    method: str | None = None,
    *,
    methods: Sequence[str] | None = None,
    target: int | Sequence[int] | torch.Tensor | str | Any | None = None,
    target_layers: str | Sequence[str] | None = None,
    score: Literal["logit", "probability"] = "logit",
    aug_smooth: bool | None = None,
    eigen_smooth: bool | None = None,
    device: str | torch.device | None = None,
    model: nn.Module | type[nn.Module] | None = None,
    trusted: bool = False,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    callback: str | None = None,
    progress: Progress | None = None,
    target_layer: str | Sequence[str] | None = None,
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
        method: one CAM method (``"gradcam++"``, aliases like ``"GradCAM++"`` accepted).
        methods: more methods; with ``method`` neither given, the checkpoint's methods (else ``gradcam``).
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
        device: ``"cpu"`` (default) or ``"cuda"``...
        model: needed when the checkpoint lacks the ``cam_callback`` state: an ``nn.Module`` instance
            (the checkpoint's weights are loaded into it, in place) or a class rebuilt from the
            checkpoint's ``hyper_parameters`` like ``load_from_checkpoint`` does.
        trusted: load the checkpoint with full unpickling (``weights_only=False``). Only for files you
            trust; the default safe loading refuses hyperparameters that are not plain data.
        input_size: ``(C, H, W)`` override. Without it and without checkpoint state, pictures keep their
            size and get the channel count of the model's first convolution.
        mean: per-channel normalisation override (``None``: the checkpoint's, else none).
        std: per-channel normalisation override.
        alpha: heat-map weight of the overlays.
        colormap: OpenCV colour map name of heat maps and overlays.
        callback: the name of the CAMCallback whose summary to use, for a checkpoint written by a Trainer
            with several (``checkpoint["cam_callbacks"]``); not needed with one.
        progress: ``progress(step, done, total)`` for the long passes of Score-CAM and Ablation-CAM
            (see :class:`cams.CamEngine`); the command line prints them (:class:`cams.io.ProgressPrinter`).
        target_layer: another name for ``target_layers``; give one of the two.

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
    dev = _device(device)
    checkpoint = load_checkpoint(ckpt, trusted=trusted)
    state = _cam_state(checkpoint, where, callback)
    names = _methods(method, methods, state)
    if input_size is None and state is not None and state.get("input_size") is not None:
        input_size = state["input_size"]
    if input_size is not None and len(input_size) == 4:
        raise InputError(
            f"input_size {list(input_size)}: the model takes volumes (C, D, H, W), and explain reads 2-D images; "
            "explain volumes with cams.CamEngine(model)(x) on a (B, C, D, H, W) tensor"
        )
    if input_size is not None and len(input_size) != 3:
        raise InputError(f"input_size must be (C, H, W); got {list(input_size)}")
    if mean is None and std is None and state is not None:
        mean, std = state.get("mean"), state.get("std")
    layers: list[str] | None
    if target_layer is not None:
        if target_layers is not None:
            raise InputError("target_layers and target_layer are one argument under two names; give target_layers")
        target_layers = target_layer
    if score not in ("logit", "probability"):
        raise InputError(f"score={score!r}: expected 'logit' or 'probability'")
    if target_layers is not None:
        layers = [target_layers] if isinstance(target_layers, str) else list(target_layers)
    else:
        layers = list(state["target_layers"]) if state is not None and state.get("target_layers") else None
    if aug_smooth is None:
        aug_smooth = bool(state.get("aug_smooth", False)) if state is not None else False
    if eigen_smooth is None:
        eigen_smooth = bool(state.get("eigen_smooth", False)) if state is not None else False

    net = _build_model(checkpoint, state, model, ckpt, where)
    del checkpoint
    x, display, stems = _prepare(img, input_size, mean, std, _input_channels(net))
    net.to(dev)
    x = x.to(dev)

    from cams import CamEngine, find_layer
    from cams.overlay import overlay, to_uint8

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
    overlays = {name: to_uint8(overlay(display, maps[name], alpha=alpha, colormap=colormap)) for name in names}
    classes_out = (
        result.classes.detach().cpu().long()
        if result.classes is not None
        else torch.full((x.shape[0],), -1, dtype=torch.long)
    )
    logits, probabilities = _class_scores(result.logits, classes_out, result.scores, classes)
    return Explanation(
        maps=maps,
        overlays=overlays,
        images=to_uint8(display),
        classes=classes_out,
        scores=logits,
        names=stems,
        target_layers=list(engine.layer_names),
        colormap=colormap,
        probabilities=probabilities,
        score=score,
        target=_describe_target(classes),
    )


def _class_scores(
    logits: torch.Tensor | None, classes: torch.Tensor, scores: torch.Tensor | None, target: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score, probability)`` per image, ``(B,)`` float32 each: a class's logit and softmax probability;
    a task target's own score (its probability NaN); NaN where there is none."""
    from cams.targets import ClassTarget, Target

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
    from cams.targets import ClassTarget, Target

    if not isinstance(target, Target) or isinstance(target, ClassTarget):
        return ""
    spec = getattr(target, "spec", None)
    return spec if isinstance(spec, str) else repr(target)
