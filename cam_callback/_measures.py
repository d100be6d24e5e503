"""The measures a run logs beside the maps' own numbers, so each number can be read against something.

- Baselines (``baselines=True``): a centre map and a seeded random map (:func:`cams.metrics.centre_map`,
  :func:`cams.metrics.random_map`) scored exactly as the methods' maps, under the pseudo-method names
  ``baseline_centre`` and ``baseline_random``: ``cam_localisation/baseline_*/...``,
  ``cam_shortcut/baseline_*/...``, ``cam_faithfulness/baseline_*/...``.
- ``cam_shortcut/<method>/...`` with spurious regions (:mod:`cam_callback._shortcut`).
- ROAD (``road=True``): ``cam_faithfulness/<method>/road_morf``, ``road_lerf``, ``road_combined``
  (:func:`cams.metrics.road`, noise seeded).
- XGrad-CAM's axioms (``axioms=True``): ``cam_axioms/<method>/conservation`` and ``/sensitivity``
  (:func:`cams.metrics.axioms`; relative errors, 0 when the axiom holds).
- The drift noise floor (``noise_floor=eps``): ``cam_drift/<method>/noise_floor``, the drift between the
  maps of the fixed batch and of the same batch plus Gaussian noise of ``eps`` times its pixel standard
  deviation (seeded, its own generator), with the same weights and the same classes. Drift between runs
  well above it is the model changing; drift near it is noise.

The measures that run the model (the baselines' faithfulness, ROAD, axioms, the noise floor) are per-image
values, computed by each process for its slice of the fixed batch and gathered like the maps
(:mod:`cam_callback._distributed`); the baseline maps and the noise-floor perturbation are drawn for the whole
batch and sliced, so they are the same images whatever the number of processes. ROAD's imputation noise is
drawn per call, hence per slice: with several processes its values differ from one process's by that noise
(``noise=0.01`` of the image range). The measures that read only maps (the baselines' localisation, the
shortcut energies, whose ratio is taken over the whole batch) are computed from the gathered maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._run import localisation, model_scores
from cam_callback._shortcut import shortcut_scalars

if TYPE_CHECKING:
    from cam_callback.callback import CAMCallback

__all__ = ["BASELINES", "NOISE_SEED", "baseline_maps", "map_measures", "per_image_measures"]

BASELINES = ("baseline_centre", "baseline_random")
"""The pseudo-method names the baseline maps are logged under."""
NOISE_SEED = 0
"""Seed of the generators of the random baseline map and the noise-floor perturbation."""
RANDOM_CELLS = 7
"""Grid side of the random baseline map before upsampling (a ResNet's 7 x 7 at 224²)."""


def baseline_maps(shape: tuple[int, ...], device: torch.device) -> dict[str, Tensor]:
    """The centre and seeded random maps ``(N, H, W)`` (``(N, D, H, W)``) for maps of that shape, on ``device``."""
    from cams import metrics

    generator = torch.Generator().manual_seed(NOISE_SEED)
    return {
        "baseline_centre": metrics.centre_map(shape, device=device),
        "baseline_random": metrics.random_map(shape, generator=generator, cells=RANDOM_CELLS, device=device),
    }


def _localisation(name: str, cam: Tensor, batch: FixedBatch, tolerance: int) -> dict[str, float]:
    boxes = None if batch.boxes is None or batch.masks is not None else batch.boxes.to(cam.device)
    masks = None if batch.masks is None else batch.masks.to(cam.device)
    values = localisation(cam, boxes, masks, tolerance)
    return {f"cam_localisation/{name}/{key}": float(torch.nanmean(value)) for key, value in values.items()}


def _wants_baselines(callback: CAMCallback, batch: FixedBatch) -> bool:
    has_object = batch.boxes is not None or batch.masks is not None
    return callback.baselines and (has_object or callback.faithfulness or callback.road)


def map_measures(callback: CAMCallback, maps: dict[str, Tensor]) -> dict[str, float]:
    """What reads the whole batch's maps only: the baselines' localisation and the shortcut energies.

    Args:
        callback: the callback (settings and the fixed batch).
        maps: each method's maps of the whole fixed batch, ``(N, H, W)`` (``(N, D, H, W)``), on the CPU.
    """
    batch = callback._batch
    assert batch is not None
    shape = tuple(next(iter(maps.values())).shape)
    base = baseline_maps(shape, torch.device("cpu")) if _wants_baselines(callback, batch) else {}
    scalars: dict[str, float] = {}
    if batch.boxes is not None or batch.masks is not None:
        for name, cam in base.items():
            scalars.update(_localisation(name, cam, batch, callback.pointing_tolerance))
    if batch.spurious is not None:
        scalars.update(shortcut_scalars({**maps, **base}, batch))
    return scalars


def per_image_measures(
    callback: CAMCallback,
    trainer: Trainer,
    pl_module: LightningModule,
    engine: Any,
    rows: Tensor,
    x: Tensor,
    result: Any,
    targets: Any,
    target: Any = None,
) -> dict[str, Tensor]:
    """The measures that run the model, per image: ``tag -> (k,)`` for the fixed batch's ``rows``.

    Args:
        callback: the callback (settings, the whole fixed batch, resolved layers).
        trainer: the Trainer, for its precision plugin.
        pl_module: the model.
        engine: the callback's :class:`cams.CamEngine` (the noise floor explains the perturbed images again).
        rows: which images of the fixed batch ``x`` holds (this process's slice; all of them with one process).
        x: those images as the model takes them, on its device.
        result: the engine's result for ``x``.
        targets: the targets the run explained.
        target: the task target the maps explain, its choices fixed (``None``: the classes of ``result``).
    """
    from cams import metrics

    batch = callback._batch
    assert batch is not None
    maps = {name: result[name].detach().float() for name in callback.methods}
    whole = (len(batch), *next(iter(maps.values())).shape[1:])
    base = {}
    if _wants_baselines(callback, batch) and (callback.faithfulness or callback.road):
        base = {name: cam[rows.to(cam.device)].to(x.device) for name, cam in baseline_maps(whole, x.device).items()}
    classes = result.classes if target is None else target

    values: dict[str, Tensor] = {}
    if callback.faithfulness:
        for name, cam in base.items():
            for key, value in model_scores(metrics.faithfulness, trainer, pl_module, x, cam, classes).items():
                values[f"cam_faithfulness/{name}/{key}"] = value
    if callback.road:
        for name, cam in {**maps, **base}.items():
            for key, value in model_scores(metrics.road, trainer, pl_module, x, cam, classes).items():
                values[f"cam_faithfulness/{name}/road_{key}"] = value
    if callback.axioms:
        layer = (callback._layer_names or [None])[0]
        for name in callback.methods:
            if layer is None or _projects(name):
                continue
            with trainer.precision_plugin.forward_context():
                errors = metrics.axioms(pl_module, x, layer, method=name, targets=classes)
            for key, value in errors.items():
                values[f"cam_axioms/{name}/{key}"] = value.float()
    if callback.noise_floor is not None:
        values.update(_noise_floor(callback, trainer, engine, rows, x, result, targets))
    return values


def _projects(name: str) -> bool:
    """Whether a method projects on a principal component (no channel sum, so no axioms)."""
    import cams

    return cams.get_method(name).project


def _noise_floor(
    callback: CAMCallback, trainer: Trainer, engine: Any, rows: Tensor, x: Tensor, result: Any, targets: Any
) -> dict[str, Tensor]:
    """``cam_drift/<method>/noise_floor`` per image: ``1 -`` the cosine similarity of each map with the map of
    the same image plus seeded Gaussian noise of ``noise_floor`` times the fixed batch's pixel standard
    deviation (the noise is drawn for the whole batch and sliced), explaining the same classes."""
    from cams import metrics

    batch = callback._batch
    assert batch is not None and callback.noise_floor is not None
    sigma = callback.noise_floor * float(trainer.precision_plugin.convert_input(batch.images).float().std())
    generator = torch.Generator(device=x.device).manual_seed(NOISE_SEED)
    noise = torch.randn((len(batch), *x.shape[1:]), generator=generator, device=x.device, dtype=torch.float32)
    noisy = (x.detach().float() + sigma * noise[rows.to(x.device)]).to(x.dtype)
    classes = result.classes if result.classes is not None else targets
    with trainer.precision_plugin.forward_context():
        again = engine(
            noisy,
            methods=callback.methods,
            targets=classes,
            aug_smooth=callback.aug_smooth,
            eigen_smooth=callback.eigen_smooth,
        )
    return {
        f"cam_drift/{name}/noise_floor": 1.0 - metrics.cosine_similarity(again[name].float(), result[name].float())
        for name in callback.methods
    }
