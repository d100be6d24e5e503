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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback._shortcut import shortcut_scalars
from cams.state import frozen_model

if TYPE_CHECKING:
    from cam_callback.callback import CAMCallback

__all__ = ["BASELINES", "NOISE_SEED", "baseline_maps", "measure_scalars", "noise_floor_scalars"]

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
    from cams import metrics

    boxes = None if batch.boxes is None or batch.masks is not None else batch.boxes.to(cam.device)
    masks = None if batch.masks is None else batch.masks.to(cam.device)
    pointing = metrics.pointing_game(cam, boxes=boxes, masks=masks, tolerance=tolerance)
    energy = metrics.energy_pointing_game(cam, boxes=boxes, masks=masks)
    return {
        f"cam_localisation/{name}/pointing_game": float(torch.nanmean(pointing.float())),
        f"cam_localisation/{name}/energy": float(torch.nanmean(energy.float())),
    }


def measure_scalars(
    callback: CAMCallback, trainer: Trainer, pl_module: LightningModule, x: Tensor, result: Any, target: Any = None
) -> dict[str, float]:
    """Baselines, shortcut energies, ROAD and axioms for one run (each only when it applies).

    Args:
        callback: the callback (settings, fixed batch, resolved layers).
        trainer: the Trainer, for its precision plugin's forward context.
        pl_module: the model.
        x: the fixed batch ``(N, C, H, W)`` as the model takes it.
        result: the engine's result for ``x``.
        target: the task target the maps explain, its choices fixed (``None``: the classes of ``result``).
    """
    from cams import metrics

    batch = callback._batch
    assert batch is not None
    maps = {name: result[name].detach().float() for name in callback.methods}
    has_object = batch.boxes is not None or batch.masks is not None
    wants_baselines = callback.baselines and (has_object or callback.faithfulness or callback.road)
    base = baseline_maps(tuple(next(iter(maps.values())).shape), x.device) if wants_baselines else {}
    classes = result.classes if target is None else target
    context = trainer.precision_plugin.forward_context

    scalars: dict[str, float] = {}
    if has_object:
        for name, cam in base.items():
            scalars.update(_localisation(name, cam, batch, callback.pointing_tolerance))
    if batch.spurious is not None:
        scalars.update(shortcut_scalars({**maps, **base}, batch))
    if callback.faithfulness:
        for name, cam in base.items():
            with frozen_model(pl_module), torch.no_grad(), context():
                scores = metrics.faithfulness(pl_module, x, cam, targets=classes)
            for key, value in scores.items():
                scalars[f"cam_faithfulness/{name}/{key}"] = float(value.float().mean())
    if callback.road:
        for name, cam in {**maps, **base}.items():
            with frozen_model(pl_module), torch.no_grad(), context():
                scores = metrics.road(pl_module, x, cam, targets=classes)
            for key, value in scores.items():
                scalars[f"cam_faithfulness/{name}/road_{key}"] = float(value.float().mean())
    if callback.axioms:
        layer = (callback._layer_names or [None])[0]
        for name in callback.methods:
            if layer is None or _projects(name):
                continue
            with context():
                errors = metrics.axioms(pl_module, x, layer, method=name, targets=classes)
            for key, value in errors.items():
                scalars[f"cam_axioms/{name}/{key}"] = float(torch.nanmean(value.float()))
    return scalars


def _projects(name: str) -> bool:
    """Whether a method projects on a principal component (no channel sum, so no axioms)."""
    import cams

    return cams.get_method(name).project


def noise_floor_scalars(
    callback: CAMCallback, trainer: Trainer, engine: Any, x: Tensor, result: Any, targets: Any
) -> dict[str, float]:
    """``cam_drift/<method>/noise_floor``: drift of the maps under a tiny seeded perturbation of ``x``.

    Args:
        callback: the callback (``noise_floor``, methods, smoothing settings).
        trainer: the Trainer, for its precision plugin's forward context.
        engine: the callback's :class:`cams.CamEngine`.
        x: the fixed batch as the model takes it.
        result: the engine's result for ``x``.
        targets: the targets the run explained (the same classes are explained on the perturbed copy).
    """
    from cams import metrics

    assert callback.noise_floor is not None
    generator = torch.Generator(device=x.device).manual_seed(NOISE_SEED)
    sigma = callback.noise_floor * float(x.detach().float().std())
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    noisy = (x.detach().float() + sigma * noise).to(x.dtype)
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
        f"cam_drift/{name}/noise_floor": float(metrics.drift(again[name].float(), result[name].float()))
        for name in callback.methods
    }
