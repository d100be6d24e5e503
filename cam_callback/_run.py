"""What one CAM run computes and logs, besides the maps themselves.

- images: the input grid (once) and one overlay grid per method, under ``cam/``;
- ``cam_drift/``: each method's drift against the previous and the first run, and the share of changed
  predictions;
- ``cam_localisation/``, ``cam_faithfulness/``, ``cam_sanity/``: the metric scalars asked for, means of
  per-image values (computed on each rank's slice of the batch, see ``_distributed``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torchvision
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._checks import Target
from cam_callback._logging import CamLogWriter
from cam_callback._volumes import outline_panels, volume_input_panels, volume_panels
from cams.overlay import denormalize, overlay
from cams.state import frozen_model

if TYPE_CHECKING:
    from cam_callback.callback import CAMCallback

__all__ = [
    "drift_scalars",
    "engine_targets",
    "grid",
    "log_config_and_input",
    "log_overlays",
    "metric_scalars",
    "per_image_metrics",
    "predictions",
]


def engine_targets(batch: FixedBatch, target: Target, device: torch.device) -> Any:
    """The ``targets`` for :class:`cams.CamEngine`: ``None`` (predicted class), the labels, one class, or the
    user's task target or callable as it is."""
    if not isinstance(target, (str, int)):
        return target
    if target == "pred":
        return None
    if target == "label":
        assert batch.labels is not None
        return batch.labels.to(device)
    return int(target)


def predictions(result: Any, target: Target) -> Tensor | None:
    """Each image's predicted class ``(N,)`` on the maps' device, from the engine's logits (or classes for "pred")."""
    logits = getattr(result, "logits", None)
    if isinstance(logits, Tensor) and logits.dim() == 2:
        return logits.detach().argmax(dim=1)
    classes = getattr(result, "classes", None)
    if target == "pred" and isinstance(classes, Tensor):
        return classes.detach()
    return None


def grid(images: Tensor) -> Tensor:
    """``(N, 3, H, W)`` images as one ``(3, H', W')`` grid, at most 8 per row, on the CPU."""
    return torchvision.utils.make_grid(images.cpu(), nrow=min(8, images.shape[0]), padding=2, pad_value=1.0)


def log_config_and_input(
    writer: CamLogWriter,
    config_text: str,
    images: Tensor,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    step: int,
) -> None:
    """``cam/config`` and ``cam/input`` (the de-normalised images ``(N, C, H, W)``; volumes: their slices
    through the centre), once per session."""
    writer.text("cam/config", config_text, step)
    shown = volume_input_panels(images, mean, std) if images.dim() == 5 else denormalize(images, mean, std)
    writer.image("cam/input", grid(shown), step)


def log_overlays(
    writer: CamLogWriter,
    images: Tensor,
    maps: dict[str, Tensor],
    step: int,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    alpha: float,
    colormap: str,
    target: Any = None,
) -> None:
    """``cam/<method>``: each method's maps ``(N, H, W)`` over the de-normalised images, as a grid.

    Volumes ``(N, C, D, H, W)``: the three slices through each map's peak. A fixed segmentation ``target``
    (:func:`cam_callback._volumes.fixed_target`) adds the outline of its mask beside each overlay.
    """
    if images.dim() == 5:
        for name, cam in maps.items():
            writer.image(f"cam/{name}", grid(volume_panels(images, cam, mean, std, alpha, colormap)), step)
        return
    shown = denormalize(images, mean, std)
    for name, cam in maps.items():
        writer.image(f"cam/{name}", grid(outline_panels(shown, overlay(shown, cam, alpha, colormap), target)), step)


def drift_scalars(
    maps: dict[str, Tensor],
    preds: Tensor | None,
    first: dict[str, Tensor],
    previous: dict[str, Tensor],
    previous_preds: Tensor | None,
) -> dict[str, float]:
    """``cam_drift/<method>/vs_previous``, ``/vs_first`` and ``cam_drift/pred_changed``, where comparable.

    Args:
        maps: this run's maps per method, ``(N, H, W)``.
        preds: this run's predicted classes ``(N,)``, or ``None``.
        first: the first run's maps per method.
        previous: the previous run's maps per method.
        previous_preds: the previous run's predicted classes, or ``None``.
    """
    from cams import metrics

    scalars: dict[str, float] = {}
    for name, cam in maps.items():
        if name in previous and previous[name].shape == cam.shape:
            scalars[f"cam_drift/{name}/vs_previous"] = float(metrics.drift(cam, previous[name]))
        if name in first and first[name].shape == cam.shape:
            scalars[f"cam_drift/{name}/vs_first"] = float(metrics.drift(cam, first[name]))
    if preds is not None and previous_preds is not None and previous_preds.shape == preds.shape:
        scalars["cam_drift/pred_changed"] = float((preds != previous_preds).float().mean())
    return scalars


def per_image_metrics(
    callback: CAMCallback,
    trainer: Trainer,
    pl_module: LightningModule,
    batch: FixedBatch,
    x: Tensor,
    result: Any,
    target: Any = None,
) -> dict[str, Tensor]:
    """Localisation, faithfulness and sanity values per image, ``tag -> (B,)`` on ``x``'s device.

    Every value depends on its own image only, so each rank computes them for its slice of the fixed
    batch and the slices are gathered (:func:`metric_scalars` averages them). Extra forwards run only
    when asked for.

    Args:
        callback: the callback, for its settings and resolved layers.
        trainer: the Trainer, for its precision plugin's forward context.
        pl_module: the model.
        batch: the images explained (the fixed batch or a rank's slice of it), with boxes and masks.
        x: ``batch.images`` as the model takes them, ``(B, C, H, W)`` on its device.
        result: the engine's result for ``x``.
        target: the task target the maps explain, its choices fixed (``None``: the classes of ``result``).
    """
    if batch.boxes is None and batch.masks is None and not callback.faithfulness and not callback.sanity_check:
        return {}
    from cams import metrics

    values: dict[str, Tensor] = {}
    boxes = None if batch.boxes is None else batch.boxes.to(x.device)
    masks = None if batch.masks is None else batch.masks.to(x.device)
    classes = result.classes if target is None else target
    for name in callback.methods:
        cam = result[name].detach().float()
        if boxes is not None or masks is not None:
            for key, value in localisation(cam, boxes, masks, callback.pointing_tolerance).items():
                values[f"cam_localisation/{name}/{key}"] = value
        if callback.faithfulness:
            for key, value in model_scores(metrics.faithfulness, trainer, pl_module, x, cam, classes).items():
                values[f"cam_faithfulness/{name}/{key}"] = value
        if callback.sanity_check:
            with frozen_model(pl_module), trainer.precision_plugin.forward_context():
                similarity = metrics.sanity_check(
                    pl_module,
                    x,
                    callback._layer_names or None,
                    method=name,
                    targets=classes,
                    reshape_transform=callback.reshape_transform,
                )
            values[f"cam_sanity/{name}/spearman"] = similarity.float()
    return values


def localisation(cam: Tensor, boxes: Tensor | None, masks: Tensor | None, tolerance: int) -> dict[str, Tensor]:
    """``pointing_game`` and ``energy`` per image (``nan`` for an image without an object), float32."""
    from cams import metrics

    return {
        "pointing_game": metrics.pointing_game(cam, boxes=boxes, masks=masks, tolerance=tolerance).float(),
        "energy": metrics.energy_pointing_game(cam, boxes=boxes, masks=masks).float(),
    }


def model_scores(
    measure: Any, trainer: Trainer, pl_module: LightningModule, x: Tensor, cam: Tensor, targets: Any
) -> dict[str, Tensor]:
    """``measure(pl_module, x, cam, targets=targets)`` (faithfulness, ROAD: ``name -> (B,)``) with the model
    frozen, without autograd, in the precision plugin's forward context; each value as float32."""
    with frozen_model(pl_module), torch.no_grad(), trainer.precision_plugin.forward_context():
        scores = measure(pl_module, x, cam, targets=targets)
    return {key: value.float() for key, value in scores.items()}


def metric_scalars(values: dict[str, Tensor]) -> dict[str, float]:
    """The batch means of per-image values (:func:`per_image_metrics`, ``_measures.per_image_measures``);
    localisation ignores images without an object and the axioms images where they are undefined (``nan``)."""
    return {tag: float(torch.nanmean(v) if tag.startswith(_NAN_MEAN) else v.mean()) for tag, v in values.items()}


_NAN_MEAN = ("cam_localisation/", "cam_axioms/")
