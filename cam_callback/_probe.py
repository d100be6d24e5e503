"""The fit-start probe: explain one image of the fixed batch before training, or fail at once.

A model the callback cannot explain (no layer with a feature map, a target layer that outputs ``(B, C)``,
an output the target cannot read, a class index out of range, images the model cannot take, ...) would
otherwise surface only at the first CAM run, as one warning followed by an empty images tab. The probe
runs the engine itself, with the callback's methods and target, on the first image of the fixed batch
(the engine leaves the model exactly as found: modes, BatchNorm statistics, ``.grad``, hooks and the
global RNG), and turns any failure into a ``MisconfigurationException`` carrying the engine's own message
and the callback's configuration. It checks nothing the engine does not: what the engine can explain
passes, except a target layer whose feature map has a single position (``1×1``, ``1×1×1``) at the batch's
size, which can only ever give constant maps (:mod:`cams.health`): that fails too, with the engine's reason
naming the layer, its shape and the layer to explain instead. Blank maps that training can change (no positive
evidence or a zero gradient at random initialisation) are left to the runs, which report them. Later failures
(a run that breaks after some training) are left to ``on_error``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._checks import layer_key
from cam_callback._run import engine_targets
from cam_callback._settings import CAMSettings
from cam_callback.measures import Measure, active_measures
from cams.health import DegenerateMapWarning

__all__ = ["check_channels", "check_labels", "check_single_position", "probe", "probe_model"]


def probe_model(
    trainer: Trainer,
    pl_module: LightningModule,
    engine: Any,
    settings: CAMSettings,
    batch: FixedBatch,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Measure, ...]:
    """Check the measures and the display normalisation against the fixed batch, then :func:`probe` the model.

    Runs on every rank with the fixed batch chosen and shared (a sharded model's forward needs every rank;
    the same image gives every rank the same outcome), on the model's device, under the Trainer's precision
    (as a CAM run does). With ``target="label"`` every label is checked against the model's classes.

    Args:
        trainer: the Trainer (its precision plugin).
        pl_module: the model.
        engine: the callback's :class:`cams.CamEngine` on ``pl_module``.
        settings: the callback's settings.
        batch: the fixed batch.
        mean, std: the display normalisation of this session (the callback's, else the datamodule's).

    Returns:
        The measures that run on this batch (:func:`cam_callback.measures.active_measures`).

    Raises:
        MisconfigurationException: a measure asked for that the batch cannot serve, or from
            :func:`check_channels`, :func:`probe`, :func:`check_single_position` or :func:`check_labels`.
    """
    try:
        measures = active_measures(settings.measures, settings.required, batch)
    except ValueError as err:
        raise MisconfigurationException(str(err)) from err
    source = "mean=/std=" if settings.mean is not None else "datamodule.mean/.std"
    check_channels(batch.images, mean, std, source)
    plugin = trainer.precision_plugin
    x = plugin.convert_input(batch.images.to(pl_module.device))

    def explain(images: Tensor, targets: Any) -> Any:
        with torch.inference_mode(False), plugin.forward_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateMapWarning)  # the runs report blank maps, once
            return engine(
                images, settings.methods, targets, aug_smooth=settings.aug_smooth, eigen_smooth=settings.eigen_smooth
            )

    layers = layer_key(settings.target_layers)
    described = (
        f"methods={list(settings.methods)}, target={settings.target!r}, "
        f"target_layers={layers[0] if layers and len(layers) == 1 else layers}"
    )
    origin = "images=" if settings.user_batch is not None else "the validation data"
    targets = engine_targets(batch, settings.target, x.device)
    result = probe(explain, x, targets, type(pl_module).__name__, described, origin)
    check_single_position(result, type(pl_module).__name__, described, tuple(x[:1].shape))
    logits = getattr(result, "logits", None)
    if settings.target == "label" and batch.labels is not None and isinstance(logits, Tensor):
        check_labels(batch.labels, int(logits.shape[1]), type(pl_module).__name__, origin)
    return measures


def check_single_position(result: Any, model_name: str, settings: str, shape: tuple[int, ...]) -> None:
    """A target layer whose feature map has a single position gives constant maps whatever the weights: stop.

    Raises:
        MisconfigurationException: with the engine's reason (the layer, its shape, the layer to explain instead).
    """
    for method, reasons in (getattr(result, "degenerate", None) or {}).items():
        found = next((r for r in reasons if r is not None and r.cause == "single_position"), None)
        if found is not None:
            raise MisconfigurationException(
                f"CAMCallback cannot explain {model_name} ({settings}): every {method} map would be blank: "
                f"{found.reason}.\nFound before training by explaining the first image of the fixed batch (shape "
                f"{shape}); no training step ran. Pass CAMCallback(target_layers=...) with that layer, or larger "
                "images."
            )


def check_labels(labels: Tensor, num_classes: int, model_name: str, source: str) -> None:
    """Every label of the fixed batch must be a class of the model (``target="label"``).

    The probe explains one image; a label out of range further on would fail every run, and with several
    processes on the one rank whose slice holds it. Checked here, on every rank alike, before training.

    Raises:
        MisconfigurationException: naming the first image with a label out of range.

    Example:
        >>> import torch
        >>> check_labels(torch.tensor([0, 3, 1]), 4, "Net", "images=")
        >>> check_labels(torch.tensor([0, 4]), 4, "Net", "images=")
        Traceback (most recent call last):
        ...
        lightning.fabric.utilities.exceptions.MisconfigurationException: CAMCallback(target='label'): image 1 ...
    """
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise MisconfigurationException(
            f"CAMCallback(target='label'): image {i} of the fixed batch (from {source}) has label "
            f"{int(labels[i])}, but {model_name} outputs {num_classes} classes (0..{num_classes - 1}); "
            f"{bad.numel()} of {labels.numel()} labels are out of range. Fix the labels, or use target='pred'."
        )


def check_channels(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None, source: str) -> None:
    """The display normalisation must have one value, or one per channel of ``images`` ``(N, C, ...)``.

    Args:
        images: the fixed batch.
        mean: the normalisation to undo for display (or ``None``).
        std: as ``mean``.
        source: where ``mean``/``std`` came from, for the message (``"mean=/std="`` or
            ``"datamodule.mean/.std"``).

    Raises:
        MisconfigurationException: naming the channel count, the values and what to pass instead.

    Example:
        >>> import torch
        >>> check_channels(torch.zeros(2, 3, 4, 4), (0.5,), (0.2,), "mean=/std=")  # one value: every channel
        >>> check_channels(torch.zeros(2, 1, 4, 4), (0.4, 0.4, 0.4), (0.2,) * 3, "mean=/std=")
        Traceback (most recent call last):
        ...
        lightning.fabric.utilities.exceptions.MisconfigurationException: CAMCallback: the fixed batch has 1 channel ...
    """
    channels = int(images.shape[1])
    for values in (mean, std):
        if values is not None and len(values) not in (1, channels):
            raise MisconfigurationException(
                f"CAMCallback: the fixed batch has {channels} channel{'s' if channels != 1 else ''} "
                f"(shape {tuple(images.shape)}) but {source} give {len(values)} values (mean={list(mean or [])}, "
                f"std={list(std or [])}); undoing them would tint every overlay and `explain` would refuse the "
                f"checkpoint. Pass CAMCallback(mean=..., std=...) with {channels} value"
                f"{'s' if channels != 1 else ''} (or one for all channels), as the images were normalised."
            )


def probe(
    explain: Callable[[Tensor, Any], Any],
    images: Tensor,
    targets: Any,
    model_name: str,
    settings: str,
    source: str,
) -> Any:
    """Run ``explain(images[:1], targets)`` once and return its result; on failure raise ``MisconfigurationException``.

    A model that fails on one image but explains the whole batch (a ``squeeze()`` in its forward, say)
    passes: the probe then retries on all images before it concludes.

    Args:
        explain: ``(x, targets) -> maps``, the callback's engine call (with its methods, smoothing,
            device and precision).
        images: the fixed batch ``(N, C, H, W)`` (or ``(N, C, D, H, W)``) as the model takes it.
        targets: the engine's ``targets`` for all ``N`` images (``None``, an int or an ``(N,)`` tensor).
        model_name: the LightningModule's class name, for the message.
        settings: the callback's settings that the engine used, e.g. ``"method='gradcam', target=12"``.
        source: where the images came from, e.g. ``"the first validation dataloader"``.

    Raises:
        MisconfigurationException: with the engine's error and what was tried.
    """
    try:
        return explain(images[:1], _first(targets))
    except Exception as err:  # any failure of the engine or of the model's forward
        error: Exception = err
    if images.shape[0] > 1:
        try:
            return explain(images, targets)
        except Exception:
            pass  # the whole batch fails too: report the first image's error, the one the message describes
    raise MisconfigurationException(
        f"CAMCallback cannot explain {model_name} ({settings}): {type(error).__name__}: {error}\n"
        f"Found before training by explaining the first image of the fixed batch (shape "
        f"{tuple(images[:1].shape)}, from {source}); no training step ran. Fix the argument named above, or "
        "remove the callback."
    ) from error


def _first(targets: Any) -> Any:
    """The targets of the first image: per-image tensors are cut, ``None`` and ints apply to any batch."""
    if isinstance(targets, Tensor) and targets.dim() > 0:
        return targets[:1]
    return targets
