"""``CAMCallback``: watch where an image classifier looks while it trains, in TensorBoard.

The class holds the hooks and the state; the rest lives beside it: argument and setup checks in
``_checks``, the fixed batch in ``_batch``, the schedule in ``_schedule``, what a run logs in ``_run``,
where it goes in ``_logging``, and the configuration and checkpoint summary in ``_summary``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

import cams
from cam_callback._batch import BatchToImages, FixedBatch, choose_batch, ensure_val_dataloaders
from cam_callback._checks import (
    LayerSpec,
    Target,
    check_alpha,
    check_batch_to_images,
    check_colormap,
    check_flag,
    check_images,
    check_layers,
    check_mean_std,
    check_methods,
    check_on_error,
    check_pointing_tolerance,
    check_positive_int,
    check_target,
    check_target_layers,
    check_trainer_has_images,
    layer_key,
    session_mean_std,
    target_key,
)
from cam_callback._logging import CamLogWriter
from cam_callback._run import (
    drift_scalars,
    engine_targets,
    log_config_and_input,
    log_overlays,
    metric_scalars,
    predictions,
)
from cam_callback._schedule import due_after_epoch, due_after_step, due_after_validation
from cam_callback._summary import CHECKPOINT_VERSION, checkpoint_summary, config, config_markdown

__all__ = ["CAMCallback"]


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
            (the sample's label from the batch), a fixed class index, or a callable ``output -> (N,)`` scores
            for outputs without readable logits (logits are read from tensors, Hugging Face outputs, dicts
            with ``"logits"``/``"out"`` and tuples; see :func:`cams.targets.logits_of`).
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
        self.methods: tuple[str, ...] = check_methods(method, methods)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.every_n_steps = None if every_n_steps is None else check_positive_int("every_n_steps", every_n_steps)
        self.num_images = check_positive_int("num_images", num_images)
        self.pointing_tolerance = check_pointing_tolerance(pointing_tolerance)
        self.target: Target = check_target(target)
        self.target_layer = check_layers(target_layer)
        self.aug_smooth = check_flag("aug_smooth", aug_smooth)
        self.eigen_smooth = check_flag("eigen_smooth", eigen_smooth)
        self.faithfulness = check_flag("faithfulness", faithfulness)
        self.sanity_check = check_flag("sanity_check", sanity_check)
        self.mean, self.std = check_mean_std(mean, std)
        self.batch_to_images = check_batch_to_images(batch_to_images)
        self.reshape_transform = reshape_transform
        self.alpha = check_alpha(alpha)
        self.colormap = check_colormap(colormap)
        self.on_error = check_on_error(on_error)
        self._user_batch = check_images(images, boxes, masks, self.target)
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
            target_layer=layer_key(self.target_layer),
            target=target_key(self.target),
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
        check_target_layers(pl_module, self.target_layer)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ensure_val_dataloaders(trainer, self._user_batch)  # every rank: Lightning's data setup has a barrier
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
        if (
            trainer.sanity_checking
            or not trainer.is_global_zero
            or not due_after_validation(trainer, self.every_n_epochs, self.every_n_steps)
        ):
            return
        self._run(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (
            not trainer.is_global_zero
            or trainer.enable_validation
            or not due_after_epoch(trainer, self.every_n_epochs, self.every_n_steps)
        ):
            return
        self._run(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not due_after_step(trainer, self.every_n_steps, self._last_step):
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
        checkpoint["cam_callback"] = checkpoint_summary(self, pl_module)

    # ------------------------------------------------------------------ helpers
    def _setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Trainer-level checks (every rank, so every rank fails alike) and per-session state."""
        check_trainer_has_images(trainer, stage, self._user_batch)
        self._defer_layer_check = is_overridden("configure_model", pl_module) or is_overridden(
            "setup", pl_module
        )
        if not self._defer_layer_check:
            check_target_layers(pl_module, self.target_layer)
        datamodule = getattr(trainer, "datamodule", None)
        self._session_mean, self._session_std = session_mean_std(self.mean, self.std, datamodule)
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

    def _start(self, trainer: Trainer, pl_module: LightningModule, baseline: bool) -> None:
        """Choose the fixed batch once; explain it before the first training step unless resuming."""
        if self._batch is None:
            self._batch = self._choose_batch(trainer)
        if baseline and not self._first:
            self._run(trainer, pl_module)

    def _choose_batch(self, trainer: Trainer) -> FixedBatch:
        return choose_batch(
            trainer, self._user_batch, self.num_images, self.batch_to_images, self._boxes, self._masks, self.target
        )

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
        """Explain the fixed batch, log images and scalars, and remember the maps for the next drift."""
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
                targets=engine_targets(batch, self.target, x.device),
                aug_smooth=self.aug_smooth,
                eigen_smooth=self.eigen_smooth,
            )
        self._layer_names = list(engine.layer_names) or None
        maps = {m: result[m].detach().float().cpu() for m in self.methods}
        preds = predictions(result, self.target)

        mean, std = self._session_mean, self._session_std
        if not self._logged_input:
            log_config_and_input(writer, config_markdown(config(self)), batch.images, mean, std, step)
            self._logged_input = True
        log_overlays(writer, batch.images, maps, step, mean, std, self.alpha, self.colormap)
        scalars = self._drift_scalars(maps, preds)
        scalars.update(metric_scalars(self, trainer, pl_module, x, result))
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
            self._engine = cams.CamEngine(pl_module, target_layers=layers, reshape_transform=self.reshape_transform)
            self._engine_module = pl_module
        return self._engine

    def _drift_scalars(self, maps: dict[str, Tensor], preds: Tensor | None) -> dict[str, float]:
        return drift_scalars(maps, preds, self._first, self._previous, self._previous_preds)
