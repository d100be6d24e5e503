"""``CAMCallback``: watch where an image classifier looks while it trains, in TensorBoard."""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torchvision
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

import cams
from cam_callback._batch import BatchToImages, FixedBatch, take_first
from cam_callback._logging import CamLogWriter
from cams.overlay import colorize, denormalize, overlay
from cams.state import frozen_model, rng_guard

__all__ = ["CAMCallback"]

LayerSpec = str | nn.Module
Target = Literal["pred", "label"] | int

#: version of ``checkpoint["cam_callback"]`` and of the callback's ``state_dict``.
CHECKPOINT_VERSION = 1


class CAMCallback(Callback):
    """Log class activation maps of a fixed batch of images while a model trains.

    At the start of fitting the callback picks a fixed batch once (the first ``num_images`` samples of
    the first validation dataloader's dataset, or the ``images`` you pass) and keeps it on the CPU. It
    explains that batch before the first training step (the baseline), then at the end of every
    ``every_n_epochs``-th validation epoch (or every ``every_n_steps`` optimizer steps), and logs, at
    ``trainer.global_step``:

    - ``cam/input``: the de-normalised input images (once per fit), ``cam/<method>``: overlays of each
      method's maps, as one image grid each;
    - ``cam_drift/<method>/vs_previous`` and ``cam_drift/<method>/vs_first``: ``1 - mean cosine
      similarity`` between this run's maps (B, H, W) and the previous/first run's
      (:func:`cams.metrics.drift`); ``cam_drift/pred_changed``: share of images whose predicted class
      changed since the previous run;
    - with boxes or masks: ``cam_localisation/<method>/pointing_game`` and ``/energy``; with
      ``faithfulness=True``: ``cam_faithfulness/<method>/{average_drop, increase_in_confidence,
      deletion_auc, insertion_auc}``; with ``sanity_check=True``: ``cam_sanity/<method>/spearman``
      (rank correlation with the maps of a re-initialised copy: high means the map ignores the weights);
    - ``cam/config``: the run's configuration, once, as text.

    TensorBoard loggers get images through ``logger.experiment``; other loggers with a ``log_image``
    method (W&B) get the grids through it; with no such logger PNGs go under ``<trainer.log_dir>/cams/``
    and a warning says so. Only global rank zero computes and logs, on the unwrapped LightningModule.
    The maps never change training: no ``.grad`` writes, no hooks left behind, modes, BatchNorm buffers
    and the global RNG as found (the :mod:`cams` engine guarantees it). ``trainer.validate`` with the
    callback attached explains the batch once at the end of validation.

    Args:
        method: one CAM method name (``"gradcam"``, ``"xgradcam"``, ``"gradcam++"``, ``"scorecam"``, ...;
            see :data:`cams.METHODS`; aliases like ``"Grad-CAM++"`` work).
        methods: several method names instead of ``method``, computed from one shared forward/backward
            pass.
        every_n_epochs: explain at the end of the validation of every n-th epoch (at the end of the
            training epoch when the Trainer has no validation).
        every_n_steps: explain every n optimizer steps instead of per epoch.
        num_images: how many samples of the validation data to explain (ignored with ``images``).
        images: the images to explain instead: a ``(N, C, H, W)`` tensor (normalised as the model expects),
            or ``(images, labels)``.
        target_layer: the layer(s) to explain: a dotted name relative to the LightningModule
            (``"model.layer4"``), a module, or a list; ``None`` picks the last layer with a 4-D output of
            spatial size > 1.
        target: which class each map explains: ``"pred"`` (the model's current prediction), ``"label"``
            (the sample's label from the batch) or a fixed class index.
        aug_smooth: average maps over flipped and rescaled copies (6x the cost).
        eigen_smooth: keep the first principal component of the weighted activations.
        mean: per-channel normalisation mean to undo for display (default: ``datamodule.mean`` when it
            exists, else each image is min-max scaled).
        std: per-channel normalisation std, as ``mean``.
        batch_to_images: ``fn(batch)`` returning images, ``(images, labels)`` or a dict with the keys
            ``image``/``label``/``boxes``/``masks``, for dataloaders whose batches are not a tensor, a
            tuple or such a dict.
        reshape_transform: passed to :class:`cams.CamEngine` (for transformers' token outputs).
        boxes: ``(N, 4)`` object boxes ``x0, y0, x1, y1`` in pixels for the fixed batch (else taken
            from the batch's ``"boxes"`` key when present).
        masks: ``(N, H, W)`` object masks for the fixed batch (else from the batch's ``"masks"`` key).
        pointing_tolerance: pixels around the object that still count as a hit in the pointing game
            (15 as in Zhang et al. for 224² images; use a smaller value for small images).
        faithfulness: also log Average Drop, Increase in Confidence and deletion/insertion AUC.
        sanity_check: also log the parameter-randomisation similarity of each method's maps.
        alpha: weight of the colour map in the overlays, in ``[0, 1]``.
        colormap: OpenCV colour map name for the overlays (``"jet"``, ``"turbo"``, ``"viridis"``, ...).
        on_error: ``"warn"`` reports a failing CAM run once, with its traceback, and skips it;
            ``"raise"`` stops training with the error.

    Raises:
        ValueError: for an unknown method (with close matches) or an invalid argument value.
        TypeError: for an argument of the wrong type.
        MisconfigurationException: at ``setup`` when there is nothing to explain (no validation data
            and no ``images``) or the target layer does not exist (with close matches; checked at fit
            start instead for modules that build layers in ``setup``/``configure_model``); before the first
            training step when ``target="label"`` but the batch has no labels.
        TypeError: before the first training step when a validation batch has no image tensor (pass
            ``batch_to_images``).

    Example:
        >>> from cam_callback import CAMCallback
        >>> callback = CAMCallback(methods=["gradcam", "xgradcam"], num_images=4)
        >>> callback.methods
        ('gradcam', 'xgradcam')
        >>> CAMCallback(method="gradcamm")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: method='gradcamm' is not a known CAM method; did you mean 'gradcam'...

        In a training script::

            trainer = Trainer(max_epochs=10, callbacks=[CAMCallback(method="xgradcam")])
            trainer.fit(model, datamodule=datamodule)  # then: tensorboard --logdir lightning_logs
    """

    def __init__(
        self,
        method: str = "gradcam",
        *,
        methods: Sequence[str] | None = None,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        num_images: int = 8,
        images: Tensor | tuple[Tensor, Tensor] | None = None,
        target_layer: LayerSpec | Sequence[LayerSpec] | None = None,
        target: Target = "pred",
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_to_images: BatchToImages | None = None,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        pointing_tolerance: int = 15,
        faithfulness: bool = False,
        sanity_check: bool = False,
        alpha: float = 0.5,
        colormap: str = "jet",
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__()
        self.methods: tuple[str, ...] = _check_methods(method, methods)
        self.every_n_epochs = _check_positive_int("every_n_epochs", every_n_epochs)
        self.every_n_steps = (
            None if every_n_steps is None else _check_positive_int("every_n_steps", every_n_steps)
        )
        self.num_images = _check_positive_int("num_images", num_images)
        if isinstance(pointing_tolerance, bool) or not isinstance(pointing_tolerance, int) or pointing_tolerance < 0:
            raise ValueError(
                f"CAMCallback(pointing_tolerance={pointing_tolerance!r}): expected pixels >= 0, e.g. 15"
            )
        self.pointing_tolerance = pointing_tolerance
        self.target: Target = _check_target(target)
        self.target_layer = _check_layers(target_layer)
        for name, flag in (
            ("aug_smooth", aug_smooth),
            ("eigen_smooth", eigen_smooth),
            ("faithfulness", faithfulness),
            ("sanity_check", sanity_check),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"CAMCallback({name}={flag!r}): expected True or False")
        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth
        self.faithfulness = faithfulness
        self.sanity_check = sanity_check
        self.mean, self.std = _check_mean_std(mean, std)
        if batch_to_images is not None and not callable(batch_to_images):
            raise TypeError(
                f"CAMCallback(batch_to_images={batch_to_images!r}): expected a function of the batch"
            )
        self.batch_to_images = batch_to_images
        self.reshape_transform = reshape_transform
        if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"CAMCallback(alpha={alpha!r}): expected a number in [0, 1], e.g. 0.5")
        self.alpha = float(alpha)
        colorize(torch.zeros(1, 1, 1), colormap)  # raises ValueError naming the known colour maps
        self.colormap = colormap
        if on_error not in ("warn", "raise"):
            raise ValueError(f"CAMCallback(on_error={on_error!r}): expected 'warn' or 'raise'")
        self.on_error = on_error
        self._user_batch = _check_images(images, boxes, masks, self.target)
        self._boxes = None if boxes is None else torch.as_tensor(boxes)
        self._masks = None if masks is None else torch.as_tensor(masks)

        # resumable state (state_dict / load_state_dict)
        self._batch: FixedBatch | None = None
        self._first: dict[str, Tensor] = {}
        self._previous: dict[str, Tensor] = {}
        self._previous_preds: Tensor | None = None
        self._layer_names: list[str] | None = None
        self.runs = 0
        self._last_step = -1
        # per fit/validate session
        self._engine: Any = None
        self._engine_module: nn.Module | None = None
        self._writer: CamLogWriter | None = None
        self._logged_input = False
        self._reported: set[str] = set()
        self._defer_layer_check = False
        self._session_mean: tuple[float, ...] | None = self.mean
        self._session_std: tuple[float, ...] | None = self.std

    # ------------------------------------------------------------------ public read-only views
    @property
    def state_key(self) -> str:
        """Unique per configuration, so several ``CAMCallback`` instances keep separate state."""
        return self._generate_state_key(
            methods=list(self.methods),
            target_layer=_layer_key(self.target_layer),
            target=self.target,
            aug_smooth=self.aug_smooth,
            eigen_smooth=self.eigen_smooth,
        )

    @property
    def fixed_images(self) -> Tensor | None:
        """The fixed batch ``(N, C, H, W)`` on the CPU (``None`` until chosen, and on ranks other than 0)."""
        return None if self._batch is None else self._batch.images

    @property
    def fixed_labels(self) -> Tensor | None:
        """The fixed batch's labels ``(N,)`` when the data had them."""
        return None if self._batch is None else self._batch.labels

    @property
    def first_maps(self) -> dict[str, Tensor]:
        """The first run's maps per method, ``(N, H, W)`` float32 in ``[0, 1]`` on the CPU."""
        return dict(self._first)

    @property
    def last_maps(self) -> dict[str, Tensor]:
        """The latest run's maps per method, ``(N, H, W)`` float32 in ``[0, 1]`` on the CPU."""
        return dict(self._previous)

    @property
    def layer_names(self) -> list[str] | None:
        """Dotted names (relative to the LightningModule) of the explained layers, once resolved."""
        return None if self._layer_names is None else list(self._layer_names)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in (TrainerFn.FITTING, TrainerFn.VALIDATING):
            return
        self._setup(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._defer_layer_check:
            return
        self._check_target_layers(pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._ensure_val_dataloaders(trainer)  # every rank: Lightning's data setup has a barrier
        if not trainer.is_global_zero:
            return
        self._start(trainer, pl_module, baseline=True)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.VALIDATING or not trainer.is_global_zero:
            return
        self._start(trainer, pl_module, baseline=False)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self._due_after_validation(trainer):
            return
        self._run(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.enable_validation or not self._due_after_epoch(trainer):
            return
        self._run(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not self._due_after_step(trainer):
            return
        self._run(trainer, pl_module)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._engine = self._engine_module = None  # the engine holds the model: let it go with the Trainer
        self._writer = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "batch": None if self._batch is None else self._batch.to_state(),
            "first": dict(self._first),
            "previous": dict(self._previous),
            "previous_preds": self._previous_preds,
            "layer_names": self._layer_names,
            "runs": self.runs,
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("batch") is not None:
            self._batch = FixedBatch.from_state(state_dict["batch"])
        self._first = dict(state_dict.get("first", {}))
        self._previous = dict(state_dict.get("previous", {}))
        self._previous_preds = state_dict.get("previous_preds")
        self._layer_names = state_dict.get("layer_names")
        self.runs = int(state_dict.get("runs", 0))
        self._last_step = int(state_dict.get("last_step", -1))

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["cam_callback"] = self._checkpoint_summary(pl_module)

    # ------------------------------------------------------------------ helpers: setup
    def _setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Trainer-level checks (every rank, so every rank fails alike) and per-session state."""
        if stage == TrainerFn.FITTING and self._user_batch is None and not trainer.enable_validation:
            raise MisconfigurationException(
                "CAMCallback has no images to explain: the Trainer has no validation data (no val "
                "dataloader, no `validation_step`, or `limit_val_batches=0`) and `images` was not given. "
                "Pass `CAMCallback(images=x)` with a (N, C, H, W) tensor, or give the Trainer val data."
            )
        self._defer_layer_check = is_overridden("configure_model", pl_module) or is_overridden(
            "setup", pl_module
        )
        if not self._defer_layer_check:
            self._check_target_layers(pl_module)
        self._session_mean, self._session_std = self.mean, self.std
        datamodule = getattr(trainer, "datamodule", None)
        if self.mean is None and datamodule is not None:
            dm_mean, dm_std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            if dm_mean is not None and dm_std is not None:
                self._session_mean, self._session_std = _check_mean_std(dm_mean, dm_std, "datamodule.")
        log_dir = trainer.log_dir  # every rank: it broadcasts
        self._engine = self._engine_module = None
        self._logged_input = False
        self._writer = None
        if trainer.is_global_zero:
            self._writer = CamLogWriter(trainer.loggers, log_dir)
            if self._writer.png_dir is not None:
                rank_zero_warn(
                    "CAMCallback: no logger takes images (TensorBoardLogger or one with `log_image`); "
                    f"the CAM grids are written as PNG files under {self._writer.png_dir}",
                    category=UserWarning,
                )

    def _check_target_layers(self, pl_module: LightningModule) -> None:
        if self.target_layer is None:
            return
        modules = set(pl_module.modules())
        for layer in self.target_layer:
            if isinstance(layer, str):
                try:
                    cams.find_layer(pl_module, layer)
                except ValueError as err:
                    raise MisconfigurationException(
                        f"CAMCallback(target_layer={layer!r}) is not a layer of "
                        f"{type(pl_module).__name__}: {err}"
                    ) from err
            elif layer not in modules:
                raise MisconfigurationException(
                    f"CAMCallback(target_layer={type(layer).__name__}(...)) is not a submodule of "
                    f"{type(pl_module).__name__}; pass one of its modules or a dotted name such as 'layer4'"
                )

    def _ensure_val_dataloaders(self, trainer: Trainer) -> None:
        """Load the val dataloaders now if the sanity check did not (as the first validation would).

        Every rank must take the same branch (Lightning's data setup holds a barrier), so the
        condition uses only what all ranks share.
        """
        if self._user_batch is None and trainer.val_dataloaders is None and trainer.enable_validation:
            with rng_guard():
                trainer.fit_loop.epoch_loop.val_loop.setup_data()

    def _start(self, trainer: Trainer, pl_module: LightningModule, baseline: bool) -> None:
        """Choose the fixed batch once; explain it before the first training step unless resuming."""
        if self._batch is None:
            self._batch = self._choose_batch(trainer)
        if baseline and not self._first:
            self._run(trainer, pl_module)

    def _choose_batch(self, trainer: Trainer) -> FixedBatch:
        if self._user_batch is not None:
            batch = self._user_batch
        else:
            loaders = trainer.val_dataloaders
            if isinstance(loaders, Mapping):
                loaders = next(iter(loaders.values()), None)
            elif isinstance(loaders, (list, tuple)):
                loaders = loaders[0] if loaders else None
            if loaders is None:
                raise MisconfigurationException(
                    "CAMCallback found no validation dataloader to take its fixed batch from; pass `images=`."
                )
            batch = take_first(loaders, self.num_images, self.batch_to_images)
        boxes = self._boxes if self._boxes is not None else batch.boxes
        masks = self._masks if self._masks is not None else batch.masks
        try:
            batch = FixedBatch(batch.images, batch.labels, boxes, masks)
        except ValueError as err:
            raise MisconfigurationException(
                f"CAMCallback(boxes=/masks=) do not fit the fixed batch: {err}"
            ) from err
        if self.target == "label" and batch.labels is None:
            raise MisconfigurationException(
                "CAMCallback(target='label') but the fixed batch has no class labels: yield (x, y) batches "
                "or a dict with a 'label' key, pass images=(x, y), or use target='pred' or a class index."
            )
        return batch

    # ------------------------------------------------------------------ helpers: schedule
    def _due_after_validation(self, trainer: Trainer) -> bool:
        if trainer.state.fn == TrainerFn.VALIDATING:
            return True
        return self.every_n_steps is None and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _due_after_epoch(self, trainer: Trainer) -> bool:
        return self.every_n_steps is None and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _due_after_step(self, trainer: Trainer) -> bool:
        step = trainer.global_step
        return (
            self.every_n_steps is not None
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_step
        )

    # ------------------------------------------------------------------ helpers: one run
    def _run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """One CAM run; a failure is reported once and skipped (``on_error="warn"``) or raised."""
        try:
            with torch.inference_mode(False):  # what is kept must not be an inference tensor
                self._explain_and_log(trainer, pl_module)
        except Exception as err:
            if self.on_error == "raise":
                raise
            key = f"{type(err).__name__}: {err}"
            if key not in self._reported:
                self._reported.add(key)
                rank_zero_warn(
                    f"CAMCallback: the CAM run at global step {trainer.global_step} failed and was skipped "
                    f"(training goes on; pass on_error='raise' to stop instead). Further identical failures "
                    f"are skipped silently.\n{traceback.format_exc()}",
                    category=RuntimeWarning,
                )

    def _explain_and_log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._batch is None:
            self._batch = self._choose_batch(trainer)
        if self._writer is None:
            self._writer = CamLogWriter(trainer.loggers, None)
        batch, writer, step = self._batch, self._writer, trainer.global_step
        plugin = trainer.precision_plugin
        x = plugin.convert_input(batch.images.to(pl_module.device))
        engine = self._get_engine(pl_module)
        with plugin.forward_context():
            result = engine(
                x,
                methods=self.methods,
                targets=self._targets(batch, x.device),
                aug_smooth=self.aug_smooth,
                eigen_smooth=self.eigen_smooth,
            )
        self._layer_names = list(engine.layer_names) or None
        maps = {m: result[m].detach().float().cpu() for m in self.methods}
        preds = _predictions(result, self.target)

        if not self._logged_input:
            writer.text("cam/config", self._config_markdown(), step)
            writer.image(
                "cam/input",
                self._grid(denormalize(batch.images, self._session_mean, self._session_std)),
                step,
            )
            self._logged_input = True
        shown = denormalize(batch.images, self._session_mean, self._session_std)
        for name, cam in maps.items():
            writer.image(f"cam/{name}", self._grid(overlay(shown, cam, self.alpha, self.colormap)), step)

        scalars = self._drift_scalars(maps, preds)
        scalars.update(self._metric_scalars(trainer, pl_module, x, result))
        writer.scalars(scalars, step)
        writer.flush()

        for name, cam in maps.items():
            self._first.setdefault(name, cam)
        self._previous = maps
        self._previous_preds = preds
        self._last_step = step
        self.runs += 1

    def _get_engine(self, pl_module: LightningModule) -> Any:
        if self._engine is None or self._engine_module is not pl_module:
            layers = self._layer_names or self.target_layer  # restored names keep a resumed run's layer
            self._engine = cams.CamEngine(
                pl_module, target_layers=layers, reshape_transform=self.reshape_transform
            )
            self._engine_module = pl_module
        return self._engine

    def _targets(self, batch: FixedBatch, device: torch.device) -> int | Tensor | None:
        if self.target == "pred":
            return None
        if self.target == "label":
            assert batch.labels is not None
            return batch.labels.to(device)
        return int(self.target)

    def _grid(self, images: Tensor) -> Tensor:
        return torchvision.utils.make_grid(
            images.cpu(), nrow=min(8, images.shape[0]), padding=2, pad_value=1.0
        )

    def _drift_scalars(self, maps: dict[str, Tensor], preds: Tensor | None) -> dict[str, float]:
        from cams import metrics

        scalars: dict[str, float] = {}
        for name, cam in maps.items():
            if name in self._previous and self._previous[name].shape == cam.shape:
                scalars[f"cam_drift/{name}/vs_previous"] = float(metrics.drift(cam, self._previous[name]))
            if name in self._first and self._first[name].shape == cam.shape:
                scalars[f"cam_drift/{name}/vs_first"] = float(metrics.drift(cam, self._first[name]))
        if (
            preds is not None
            and self._previous_preds is not None
            and self._previous_preds.shape == preds.shape
        ):
            scalars["cam_drift/pred_changed"] = float((preds != self._previous_preds).float().mean())
        return scalars

    def _metric_scalars(
        self, trainer: Trainer, pl_module: LightningModule, x: Tensor, result: Any
    ) -> dict[str, float]:
        """Localisation, faithfulness and sanity scalars: extra forwards only when asked for."""
        assert self._batch is not None
        batch = self._batch
        if batch.boxes is None and batch.masks is None and not self.faithfulness and not self.sanity_check:
            return {}
        from cams import metrics

        scalars: dict[str, float] = {}
        boxes = None if batch.boxes is None else batch.boxes.to(x.device)
        masks = None if batch.masks is None else batch.masks.to(x.device)
        classes = result.classes
        for name in self.methods:
            cam = result[name].detach().float()
            if boxes is not None or masks is not None:
                pointing = metrics.pointing_game(cam, boxes=boxes, masks=masks, tolerance=self.pointing_tolerance)
                energy = metrics.energy_pointing_game(cam, boxes=boxes, masks=masks)
                scalars[f"cam_localisation/{name}/pointing_game"] = float(torch.nanmean(pointing.float()))
                scalars[f"cam_localisation/{name}/energy"] = float(torch.nanmean(energy.float()))
            if self.faithfulness:
                with frozen_model(pl_module), torch.no_grad(), trainer.precision_plugin.forward_context():
                    scores = metrics.faithfulness(pl_module, x, cam, targets=classes)
                for key, value in scores.items():
                    scalars[f"cam_faithfulness/{name}/{key}"] = float(value.float().mean())
            if self.sanity_check:
                with frozen_model(pl_module), trainer.precision_plugin.forward_context():
                    similarity = metrics.sanity_check(
                        pl_module,
                        x,
                        self._layer_names or None,
                        method=name,
                        targets=classes,
                        reshape_transform=self.reshape_transform,
                    )
                scalars[f"cam_sanity/{name}/spearman"] = float(similarity.float().mean())
        return scalars

    # ------------------------------------------------------------------ helpers: what is written down
    def _config(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "target_layers": self._layer_names
            if self._layer_names is not None
            else _layer_key(self.target_layer),
            "target": self.target,
            "num_images": None if self._batch is None else len(self._batch),
            "input_size": None if self._batch is None else list(self._batch.images.shape[1:]),
            "every_n_epochs": None if self.every_n_steps is not None else self.every_n_epochs,
            "every_n_steps": self.every_n_steps,
            "aug_smooth": self.aug_smooth,
            "eigen_smooth": self.eigen_smooth,
            "mean": None if self._session_mean is None else list(self._session_mean),
            "std": None if self._session_std is None else list(self._session_std),
            "pointing_tolerance": self.pointing_tolerance,
            "faithfulness": self.faithfulness,
            "sanity_check": self.sanity_check,
            "drift": "1 - mean cosine similarity (cams.metrics.drift)",
        }

    def _config_markdown(self) -> str:
        rows = "\n".join(
            f"| {key} | {', '.join(map(str, value)) if isinstance(value, list) else value} |"
            for key, value in self._config().items()
        )
        return f"CAMCallback configuration\n\n| setting | value |\n|---|---|\n{rows}"

    def _checkpoint_summary(self, pl_module: LightningModule) -> dict[str, Any]:
        """The ``checkpoint["cam_callback"]`` dict that ``cam_callback.explain`` reads."""
        cls = type(pl_module)
        if self._layer_names is not None:
            layers: list[str] = list(self._layer_names)
        elif self.target_layer is not None:
            layers = _layer_names_of(pl_module, self.target_layer)
        else:
            layers = []
        return {
            "version": CHECKPOINT_VERSION,
            "module_class": f"{cls.__module__}.{cls.__qualname__}",
            "target_layers": layers,
            "methods": list(self.methods),
            "input_size": None if self._batch is None else [int(v) for v in self._batch.images.shape[1:]],
            "mean": None if self._session_mean is None else list(self._session_mean),
            "std": None if self._session_std is None else list(self._session_std),
            "target": self.target,
            "aug_smooth": self.aug_smooth,
            "eigen_smooth": self.eigen_smooth,
        }


# ---------------------------------------------------------------------- argument checks
def _check_methods(method: str, methods: Sequence[str] | None) -> tuple[str, ...]:
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


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"CAMCallback({name}={value!r}): expected a positive integer, e.g. 1")
    return value


def _check_target(target: Any) -> Target:
    if isinstance(target, str):
        if target not in ("pred", "label"):
            raise ValueError(
                f"CAMCallback(target={target!r}): expected 'pred' (the model's prediction), 'label' (the "
                "sample's label) or a class index"
            )
        return target  # type: ignore[return-value]
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"CAMCallback(target={target!r}): expected 'pred', 'label' or a class index >= 0")
    return target


def _check_layers(target_layer: Any) -> list[LayerSpec] | None:
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
            "CAMCallback(target_layer=[]): give a layer name, a module, a list of them, or None (auto)"
        )
    for layer in layers:
        if not isinstance(layer, (str, nn.Module)):
            raise TypeError(
                f"CAMCallback(target_layer={layer!r}): expected a dotted layer name such as 'layer4', "
                "a module, or a list of them"
            )
    return layers


def _check_mean_std(
    mean: Any, std: Any, prefix: str = ""
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
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


def _check_images(images: Any, boxes: Any, masks: Any, target: Target) -> FixedBatch | None:
    if images is None:
        return None
    labels = None
    if isinstance(images, (tuple, list)):
        if len(images) != 2 or not isinstance(images[0], Tensor):
            raise TypeError(
                "CAMCallback(images=...): expected a (N, C, H, W) tensor or an (images, labels) pair"
            )
        images, labels = images
    if not isinstance(images, Tensor):
        raise TypeError(f"CAMCallback(images={type(images).__name__}): expected a (N, C, H, W) tensor")
    if images.dim() == 3:
        images = images[None]
    try:
        batch = FixedBatch(images, labels, boxes, masks)
    except ValueError as err:
        raise ValueError(f"CAMCallback(images=/boxes=/masks=): {err}") from err
    if target == "label" and batch.labels is None:
        raise ValueError(
            "CAMCallback(target='label') needs labels: pass images=(images, labels) or use target='pred'"
        )
    return batch


def _layer_key(layers: list[LayerSpec] | None) -> list[str] | None:
    if layers is None:
        return None
    return [layer if isinstance(layer, str) else type(layer).__name__ for layer in layers]


def _layer_names_of(pl_module: nn.Module, layers: list[LayerSpec]) -> list[str]:
    names = {module: name for name, module in pl_module.named_modules()}
    return [layer if isinstance(layer, str) else names.get(layer, type(layer).__name__) for layer in layers]


def _predictions(result: Any, target: Target) -> Tensor | None:
    """Each image's predicted class ``(N,)`` on the CPU, from the engine's logits (or classes for "pred")."""
    logits = getattr(result, "logits", None)
    if isinstance(logits, Tensor) and logits.dim() == 2:
        return logits.detach().argmax(dim=1).cpu()
    classes = getattr(result, "classes", None)
    if target == "pred" and isinstance(classes, Tensor):
        return classes.detach().cpu()
    return None
