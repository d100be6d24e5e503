"""The callback's checks: its constructor arguments in ``__init__``, the Trainer and the model in ``setup``.

Every message names the argument and the value given, and says what would be accepted. Also here: how
the target layers are named (``layer_key`` for the ``state_key`` and the config, ``layer_names_of`` for
the checkpoint) and the display normalisation a session uses (``session_mean_std``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

import cams
import cams.targets
from cam_callback._batch import (
    BATCH_KEYS,
    BOX_KEYS,
    IMAGE_KEYS,
    LABEL_KEYS,
    MASK_KEYS,
    SPURIOUS_KEYS,
    BatchToImages,
    FixedBatch,
    first_key,
)
from cams.targets.spec import FORMS as TARGET_FORMS

__all__ = [
    "LayerSpec",
    "TargetSpec",
    "check_batch_to_images",
    "check_flag",
    "check_images",
    "check_layers",
    "check_max_overhead",
    "check_mean_std",
    "check_methods",
    "check_name",
    "check_on_error",
    "check_positive_int",
    "check_target",
    "check_target_layers",
    "check_trainer_has_images",
    "instance_names",
    "layer_key",
    "layer_names_of",
    "session_mean_std",
    "target_key",
]

LayerSpec = str | nn.Module
TargetSpec = Literal["pred", "label"] | int | cams.targets.Target | Callable[[Any], Tensor] | str
"""What ``CAMCallback(target=...)`` takes; text other than ``"pred"``/``"label"`` is a form of
:func:`cams.targets.parse_target` (``"seg:1"``, ``"multilabel:all"``: what a LightningCLI YAML file can say)."""


# ---------------------------------------------------------------------- constructor arguments
def check_methods(method: str, methods: Sequence[str] | None) -> tuple[str, ...]:
    """The canonical names of ``method`` or ``methods``, without repeats, in the order given."""
    if methods is None:
        if not isinstance(method, str):
            raise TypeError(
                f"CAMCallback(method={method!r}): expected one method name; use methods=[...] for several"
            )
        names: Sequence[str] = [method]
        argument = "method"
    else:
        if method != "gradcam":
            raise ValueError(
                f"CAMCallback(method={method!r}, methods={methods!r}): give `method` or `methods`, not both"
            )
        if isinstance(methods, str) or not isinstance(methods, Sequence):
            raise TypeError(
                f"CAMCallback(methods={methods!r}): expected a list of method names, e.g. ['gradcam']"
            )
        if not methods:
            raise ValueError("CAMCallback(methods=[]): give at least one method name, e.g. ['gradcam']")
        names = methods
        argument = "methods"
    resolved: list[str] = []
    for name in names:
        spec = cams.get_method(name, argument=argument)
        if spec.name not in resolved:
            resolved.append(spec.name)
    return tuple(resolved)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"CAMCallback({name}={value!r}): expected a positive integer, e.g. 1")
    return value


def check_target(target: Any) -> TargetSpec:
    if isinstance(target, cams.targets.Target) or (callable(target) and not isinstance(target, (str, int))):
        return target  # a task target (segmentation, multi-label, ...) or a callable output -> (N,) scores
    expected = (
        "expected 'pred' (the model's prediction), 'label' (the sample's label), a class index >= 0, a target "
        "from cams.targets (SegmentationTarget(3), MultiLabelTarget(), ...) or its text form ("
        f"{', '.join(TARGET_FORMS[1:])}), or a callable output -> (N,) scores"
    )
    if isinstance(target, str):
        if target in ("pred", "label"):
            return target  # type: ignore[return-value]
        try:  # the one parser of explain, the command line and the engine
            parsed = cams.targets.parse_target(target)
        except ValueError as err:
            raise ValueError(f"CAMCallback(target={target!r}): {expected} ({err})") from err
        return "pred" if parsed is None else parsed
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"CAMCallback(target={target!r}): {expected}")
    return target


def check_layers(target_layer: Any) -> list[LayerSpec] | None:
    """``target_layers`` as a non-empty list of names and modules, or ``None`` (automatic)."""
    if target_layer is None:
        return None
    if isinstance(target_layer, (str, nn.Module)):
        layers = [target_layer]
    elif isinstance(target_layer, Sequence):
        layers = list(target_layer)
    else:
        layers = [target_layer]  # rejected below with the type named
    if not layers:
        raise ValueError(
            "CAMCallback(target_layers=[]): give a layer name, a module, a list of them, or None (auto)"
        )
    for layer in layers:
        if not isinstance(layer, (str, nn.Module)):
            raise TypeError(
                f"CAMCallback(target_layers={layer!r}): expected a dotted layer name such as 'layer4', "
                "a module, or a list of them"
            )
    return layers


def check_flag(name: str, flag: Any) -> bool:
    if not isinstance(flag, bool):
        raise TypeError(f"CAMCallback({name}={flag!r}): expected True or False")
    return flag


def check_mean_std(
    mean: Any, std: Any, prefix: str = ""
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Both per-channel normalisation sequences as float tuples, or both ``None``."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError(
            f"CAMCallback: give both {prefix}mean and {prefix}std or neither; got mean={mean!r}, std={std!r}"
        )
    m = tuple(float(v) for v in torch.as_tensor(mean, dtype=torch.float64).flatten().tolist())
    s = tuple(float(v) for v in torch.as_tensor(std, dtype=torch.float64).flatten().tolist())
    if len(m) != len(s) or not m:
        raise ValueError(f"CAMCallback: {prefix}mean={mean!r} and {prefix}std={std!r} differ in length")
    if any(not (v > 0 and math.isfinite(v)) for v in s):
        raise ValueError(f"CAMCallback({prefix}std={std!r}): every value must be positive")
    return m, s


def check_batch_to_images(batch_to_images: Any) -> BatchToImages | None:
    if batch_to_images is not None and not callable(batch_to_images):
        raise TypeError(f"CAMCallback(batch_to_images={batch_to_images!r}): expected a function of the batch")
    return batch_to_images



def check_on_error(on_error: Any) -> Literal["warn", "raise"]:
    if on_error not in ("warn", "raise"):
        raise ValueError(f"CAMCallback(on_error={on_error!r}): expected 'warn' or 'raise'")
    return on_error  # type: ignore[no-any-return]





def check_max_overhead(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < float(value) <= 1):
        raise ValueError(
            f"CAMCallback(max_overhead={value!r}): expected a fraction of the training wall time in (0, 1], "
            "e.g. 0.05, or None for no limit"
        )
    return float(value)


def check_images(images: Any, target: TargetSpec) -> tuple[FixedBatch | None, dict[str, Tensor]]:
    """The user's ``images=``: a fixed batch to explain, and/or regions for the validation data's images.

    ``images`` is ``None`` (the first validation samples), a ``(N, C, H, W)`` (or volumes ``(N, C, D, H, W)``)
    tensor, an ``(images, labels)`` pair, or a mapping with the keys of dict batches (see
    :mod:`cam_callback._batch`): ``"image"``, ``"label"``, ``"boxes"``, ``"masks"``, ``"spurious_mask"``. A
    mapping without an image key gives regions for the first validation samples instead.

    Returns:
        ``(batch, regions)``: the fixed batch (``None`` when taken from the validation data) and the regions
        ``{"boxes", "masks", "spurious"}`` given for the validation data's images (empty otherwise).

    Raises:
        TypeError: not one of these forms.
        ValueError: shapes that do not fit, spurious regions without an object, ``target="label"`` without
            labels.
    """
    if images is None:
        return None, {}
    labels = boxes = masks = spurious = None
    if isinstance(images, Mapping):
        unknown = sorted(str(k) for k in images if k not in BATCH_KEYS)
        if unknown:
            raise TypeError(
                f"CAMCallback(images={{...}}): unknown key(s) {unknown}; the keys are those of dict batches: "
                f"images {'/'.join(IMAGE_KEYS)}, labels {'/'.join(LABEL_KEYS)}, boxes {'/'.join(BOX_KEYS)}, masks "
                f"{'/'.join(MASK_KEYS)}, spurious regions {'/'.join(SPURIOUS_KEYS)}"
            )
        labels, boxes, masks = (first_key(images, keys) for keys in (LABEL_KEYS, BOX_KEYS, MASK_KEYS))
        spurious = first_key(images, SPURIOUS_KEYS)
        images = first_key(images, IMAGE_KEYS)
        if images is None:
            if labels is not None:
                raise ValueError("CAMCallback(images={'label': ...}): labels need their images; add the 'image' key")
            regions = {"boxes": boxes, "masks": masks, "spurious": spurious}
            return None, {key: torch.as_tensor(value) for key, value in regions.items() if value is not None}
    elif isinstance(images, (tuple, list)):
        if len(images) != 2 or not isinstance(images[0], Tensor):
            raise TypeError(
                "CAMCallback(images=...): expected a (N, C, H, W) tensor, an (images, labels) pair or a dict "
                "{'image': ..., 'label': ..., 'boxes': ..., 'masks': ..., 'spurious_mask': ...}"
            )
        images, labels = images
    if not isinstance(images, Tensor):
        raise TypeError(f"CAMCallback(images={type(images).__name__}): expected a (N, C, H, W) tensor")
    if images.dim() == 3:
        images = images[None]
    try:
        batch = FixedBatch(images, labels, boxes, masks, spurious)
    except ValueError as err:
        raise ValueError(f"CAMCallback(images=...): {err}") from err
    if batch.spurious is not None and batch.boxes is None and batch.masks is None:
        raise ValueError(
            "CAMCallback(images={..., 'spurious_mask': ...}) compares attention on the spurious region with "
            "attention on the object: give the object's 'boxes' or 'masks' too"
        )
    if target == "label" and batch.labels is None:
        raise ValueError(
            "CAMCallback(target='label') needs labels: pass images=(images, labels) or use target='pred'"
        )
    return batch, {}


def check_name(name: Any) -> str | None:
    """``None``, or a name usable inside a tag and a file name (letters, digits, ``_ . + -``)."""
    if name is None:
        return None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ValueError(
            f"CAMCallback(name={name!r}): expected a short name of letters, digits, '_', '.', '+' or '-', "
            "e.g. 'val' or 'ood'"
        )
    return name


# ---------------------------------------------------------------------- the Trainer and the model, at setup
def instance_names(configs: Sequence[tuple[str | None, str]]) -> list[str]:
    """One distinct name per CAMCallback of a Trainer, from ``(name=, name derived from the configuration)``.

    A ``name=`` given is kept (two equal ones are an error); a derived name that another instance already
    has gets ``-2``, ``-3``, ... in the order of ``trainer.callbacks``.

    Raises:
        MisconfigurationException: two callbacks were given the same ``name``.

    Example:
        >>> instance_names([(None, "gradcam"), ("ood", "gradcam"), (None, "gradcam")])
        ['gradcam', 'ood', 'gradcam-2']
    """
    given = [name for name, _ in configs if name is not None]
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        raise MisconfigurationException(
            f"Several CAMCallbacks in one Trainer have name={repeated[0]!r}; give each a different name"
        )
    names: list[str] = []
    for name, derived in configs:
        if name is None:
            name, count = derived, 1
            while name in names or name in given:
                count += 1
                name = f"{derived}-{count}"
        names.append(name)
    return names


def check_trainer_has_images(trainer: Trainer, stage: str, user_batch: FixedBatch | None) -> None:
    """Fitting needs validation data or the user's ``images`` to take the fixed batch from."""
    if stage == TrainerFn.FITTING and user_batch is None and not trainer.enable_validation:
        raise MisconfigurationException(
            "CAMCallback has no images to explain: the Trainer has no validation data (no val "
            "dataloader, no `validation_step`, or `limit_val_batches=0`) and `images` was not given. "
            "Pass `CAMCallback(images=x)` with a (N, C, H, W) tensor, or give the Trainer val data."
        )


def check_target_layers(pl_module: LightningModule, target_layer: list[LayerSpec] | None) -> None:
    """Each named layer exists in ``pl_module`` (close matches otherwise), each module is one of its own."""
    if target_layer is None:
        return
    modules = set(pl_module.modules())
    for layer in target_layer:
        if isinstance(layer, str):
            try:
                cams.find_layer(pl_module, layer)
            except ValueError as err:
                raise MisconfigurationException(
                    f"CAMCallback(target_layers={layer!r}) is not a layer of {type(pl_module).__name__}: {err}"
                ) from err
        elif layer not in modules:
            raise MisconfigurationException(
                f"CAMCallback(target_layers={type(layer).__name__}(...)) is not a submodule of "
                f"{type(pl_module).__name__}; pass one of its modules or a dotted name such as 'layer4'"
            )


def session_mean_std(
    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, datamodule: Any
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The normalisation to undo for display: the user's, else ``datamodule.mean``/``.std`` when both exist."""
    if mean is None and datamodule is not None:
        dm_mean, dm_std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if dm_mean is not None and dm_std is not None:
            return check_mean_std(dm_mean, dm_std, "datamodule.")
    return mean, std


# ---------------------------------------------------------------------- layer names
def target_key(target: TargetSpec) -> str | int:
    """The target as plain data for the state key, the config and the checkpoint.

    ``"pred"``, ``"label"`` and class indices as they are; task targets by their ``--target`` form
    (``"seg:3"``, which ``explain`` reads back) or their repr; a plain function by its qualified name
    (``"callable:score_of_cats"``: a repr would carry a memory address, and the key must stay the same
    when a run resumes in another process).
    """
    if isinstance(target, (str, int)):
        return target
    spec = getattr(target, "spec", None)
    if isinstance(spec, str):
        return spec
    if not isinstance(target, cams.targets.Target) and hasattr(target, "__qualname__"):
        return f"callable:{target.__qualname__}"
    return repr(target)


def layer_key(layers: list[LayerSpec] | None) -> list[str] | None:
    """The layers as strings: names as given, modules by their class name."""
    if layers is None:
        return None
    return [layer if isinstance(layer, str) else type(layer).__name__ for layer in layers]


def layer_names_of(pl_module: nn.Module, layers: list[LayerSpec]) -> list[str]:
    """The layers' dotted names in ``pl_module`` (a module not found there: its class name)."""
    names = {module: name for name, module in pl_module.named_modules()}
    return [layer if isinstance(layer, str) else names.get(layer, type(layer).__name__) for layer in layers]
