"""``CAMCallback``: watch where an image classifier looks while it trains, in TensorBoard.

The class holds the hooks and the state; the rest lives beside it: argument and setup checks in
``_checks``, the fixed batch in ``_batch``, the schedule in ``_schedule``, what a run logs in ``_run``
and ``_measures`` (baselines, ROAD, axioms, noise floor), the shortcut watch in ``_shortcut``, the
attention timeline in ``_timeline``, the cost budget in ``_budget``, where scalars go (loggers and
``trainer.callback_metrics``, at Lightning's step) in ``_publish`` and ``_logging``, and the configuration
and checkpoint summary in ``_summary``.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

import cams
from cam_callback._batch import BatchToImages, FixedBatch, choose_batch, ensure_val_dataloaders
from cam_callback._budget import CostBudget
from cam_callback._checks import (
    LayerSpec,
    Target,
    check_alpha,
    check_axioms,
    check_batch_settings,
    check_batch_to_images,
    check_colormap,
    check_flag,
    check_images,
    check_layers,
    check_max_overhead,
    check_mean_std,
    check_methods,
    check_name,
    check_noise_floor,
    check_on_error,
    check_pointing_tolerance,
    check_positive_int,
    check_shortcut_ratio,
    check_target,
    check_target_layers,
    check_timeline_rows,
    check_trainer_has_images,
    instance_names,
    layer_key,
    layers_argument,
    session_mean_std,
    target_key,
)
from cam_callback._distributed import (
    agree,
    check_strategy,
    gather_rows,
    rank_zero_buffers,
    rows_for,
    share,
    splits,
    take_rows,
    together,
)
from cam_callback._logging import CamLogWriter, destination, png_run_dir
from cam_callback._measures import map_measures, per_image_measures
from cam_callback._probe import probe_model
from cam_callback._publish import log_step, publish
from cam_callback._run import (
    drift_scalars,
    engine_targets,
    log_config_and_input,
    log_overlays,
    metric_scalars,
    per_image_metrics,
    predictions,
)
from cam_callback._schedule import (
    due_after_epoch,
    due_after_step,
    due_after_validation,
    never_fires,
    repeats,
    weights_fingerprint,
)
from cam_callback._shortcut import ShortcutWarning, ShortcutWatch
from cam_callback._summary import CHECKPOINT_VERSION, checkpoint_summary, config, config_markdown, derived_name
from cam_callback._timeline import Timeline, log_timeline, render_for, run_title
from cam_callback._volumes import fixed_target

__all__ = ["CAMCallback", "ShortcutWarning"]


class CAMCallback(Callback):
    """Log class activation maps of a fixed batch of images while a model trains.

    At the start of fitting the callback picks a fixed batch once (the first ``num_images`` samples of
    the first validation dataloader's dataset, or the ``images`` you pass) and keeps it on the CPU, then
    probes the model: it explains the first image with the callback's methods and target, and a model it
    cannot explain (no feature-map layer, a target layer with a ``(B, C)`` output, an output the target
    cannot read, a class out of range, images of the wrong shape, ``mean``/``std`` that do not fit the
    channels) stops the fit there with a ``MisconfigurationException``, before any training step. It
    explains the batch before the first training step (the baseline), then after every
    ``every_n_epochs``-th training epoch (at the end of the validation that follows the epoch's last
    batch, or at the end of the epoch when there is none; mid-epoch validations do not count), or every
    ``every_n_steps`` optimizer steps, and logs, at the step Lightning logs its own metrics at (an epoch's
    ``val_loss`` and its CAM scalars and images share one step):

    - ``cam/input``: the de-normalised input images (once per fit), ``cam/<method>``: overlays of each
      method's maps, as one image grid each (volumes ``(N, C, D, H, W)``: the axial, coronal and sagittal
      slices through each map's peak; a segmentation target: the explained mask's outline beside each);
    - ``cam/<method>/timeline``: one image whose rows are the runs so far (the first run and the last
      ``timeline_rows``) and whose columns are the first 8 fixed images, boxes/masks outlined in green,
      spurious regions in magenta, the predicted (and true) class under each tile;
    - ``cam_drift/<method>/vs_previous`` and ``cam_drift/<method>/vs_first``: ``1 - mean cosine
      similarity`` between this run's maps (B, H, W) and the previous/first run's
      (:func:`cams.metrics.drift`); ``cam_drift/<method>/noise_floor``: the drift under a tiny seeded
      perturbation of the input with the same weights (drift near it is noise); ``cam_drift/pred_changed``:
      share of images whose predicted class changed since the previous run;
    - with boxes or masks: ``cam_localisation/<method>/pointing_game`` and ``/energy``; with
      ``faithfulness=True``: ``cam_faithfulness/<method>/{average_drop, increase_in_confidence,
      deletion_auc, insertion_auc}``; with ``road=True``: ``cam_faithfulness/<method>/road_{morf, lerf,
      combined}`` (:func:`cams.metrics.road`); each also for a centre map and a seeded random map, under
      ``baseline_centre`` and ``baseline_random`` in place of ``<method>`` (``baselines=True``);
    - with spurious regions: ``cam_shortcut/<method>/energy`` (share of the map on them) and
      ``/vs_object`` (that share over the share on the object); a :class:`ShortcutWarning` says, once per
      method, when ``vs_object`` exceeds ``shortcut_ratio`` after the baseline;
    - with ``axioms=True``: ``cam_axioms/<method>/conservation`` and ``/sensitivity`` (XGrad-CAM's
      axioms as relative errors, :func:`cams.metrics.axioms`); with ``sanity_check=True``:
      ``cam_sanity/<method>/spearman`` (rank correlation with the maps of a re-initialised copy: high
      means the map ignores the weights);
    - ``cam_cost/overhead``: the share of the training wall time spent in CAM runs so far;
    - ``cam/config``: the run's configuration, once, as text.

    Every scalar is also in ``trainer.callback_metrics`` (under the same tag as in the loggers), so
    ``ModelCheckpoint(monitor="cam_localisation/gradcam/pointing_game", mode="max")`` or
    ``EarlyStopping(monitor="cam_shortcut/gradcam/vs_object", mode="min", divergence_threshold=1.0)`` can
    act on it: runs at the end of an epoch put them there with ``pl_module.log`` (on every rank under DDP,
    with rank 0's values); the baseline and ``every_n_steps`` runs put them into rank 0's
    ``callback_metrics``.

    Each logger gets the images through its own API: TensorBoard ``add_image``, MLflow ``log_image``
    on the logger's run, Comet ``log_image``, others with a ``log_image`` method (W&B) through it; with
    no such logger PNGs go under ``<run folder>/cams/`` (the logger's own version folder, or a new
    ``<default_root_dir>/cams/version_<n>``), and a warning says so. With several processes (DDP,
    ``ModelParallelStrategy`` with FSDP2) every rank explains its share of the fixed batch on its own
    device, on the unwrapped LightningModule; the maps are gathered and global rank zero logs exactly what
    one process would (``FSDPStrategy``, DeepSpeed ZeRO-3 and tensor parallelism are refused at ``setup``).
    The maps never change training: no ``.grad`` writes, no hooks left behind, modes, BatchNorm buffers,
    sharded parameters and the global RNG as found (the :mod:`cams` engine guarantees it).
    ``trainer.validate`` with the callback attached explains the batch once at the end of validation,
    and adds nothing when the same weights were already logged to the same loggers (``validate`` right
    after ``fit``). A schedule that cannot log anything after the baseline within
    ``max_epochs``/``max_steps`` is reported by a warning at fit start.

    Several CAMCallbacks can share a Trainer: each gets a name (``name=``, else one derived from
    its configuration, e.g. ``gradcam+xgradcam-label``) that goes into its tags (``cam/<name>/gradcam``,
    ``cam_drift/<name>/...``) and keys its checkpoint summary ``checkpoint["cam_callbacks"][name]``
    (``explain(..., callback=name)``). A callback alone in its Trainer keeps the plain tags unless
    given a ``name``.

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
            or volumes ``(N, C, D, H, W)``, or ``(images, labels)``.
        target_layers: the layer(s) to explain: a dotted name relative to the LightningModule
            (``"model.layer4"``), a module, or a list; ``None`` picks the last layer with a 4-D output of
            spatial size > 1. The same name as :class:`cams.CamEngine`'s and pytorch-grad-cam's.
        target_layer: accepted as another name for ``target_layers`` (torchcam's); give one of the two.
        target: what each map explains: ``"pred"`` (the model's current prediction), ``"label"``
            (the sample's label from the batch), a fixed class index, a task target from :mod:`cams.targets`
            (``SegmentationTarget(3)``: class 3 over its predicted mask, whose outline is logged beside each
            overlay; ``MultiLabelTarget()``: every class above 0.5; ``DetectionTarget()``, ``EmbeddingTarget``),
            or a callable ``output -> (N,)`` scores.
        aug_smooth: average maps over flipped and rescaled copies (6x the cost).
        eigen_smooth: keep the first principal component of the weighted activations.
        mean: per-channel normalisation mean to undo for display (default: ``datamodule.mean`` when it
            exists, else each image is min-max scaled).
        std: per-channel normalisation std, as ``mean``.
        batch_to_images: ``fn(batch)`` returning images, ``(images, labels)`` or a dict with the keys
            ``image``/``label``/``boxes``/``masks``, for dataloaders whose batches are not a tensor, a
            tuple or such a dict.
        reshape_transform: passed to :class:`cams.CamEngine` (for transformers' token outputs).
        boxes: ``(N, 4)`` object boxes ``x0, y0, x1, y1`` in pixels for the fixed batch (volumes: ``(N, 6)``
            ``x0, y0, z0, x1, y1, z1`` in voxels; else taken from the batch's ``"boxes"`` key when present).
        masks: ``(N, H, W)`` (volumes: ``(N, D, H, W)``) object masks for the fixed batch (else from the
            batch's ``"masks"`` key).
        pointing_tolerance: pixels around the object that still count as a hit in the pointing game
            (15 as in Zhang et al. for 224² images; use a smaller value for small images).
        faithfulness: also log Average Drop, Increase in Confidence and deletion/insertion AUC.
        sanity_check: also log the parameter-randomisation similarity of each method's maps.
        spurious_masks: ``(N, H, W)`` masks of regions the model should not rely on (a watermark, a ruler,
            a hospital tag) in the fixed batch (else taken from the batch's ``"spurious_mask"`` key when
            present; all-zero where an image has none). Needs the object's boxes or masks too.
        shortcut_ratio: warn when the attention on the spurious region exceeds this multiple of the
            attention on the object (``cam_shortcut/<method>/vs_object``).
        baselines: also score a centre map and a seeded random map wherever methods are scored
            (localisation, shortcut, faithfulness, ROAD).
        road: also log ROAD (remove and debias, Rong et al. 2022) per method: ``2 x 9`` imputed copies of
            each image, scored by the model (2-D images).
        axioms: also log XGrad-CAM's conservation and sensitivity errors per channel-sum method (one
            target layer; one forward per channel of the layer).
        noise_floor: size of the input perturbation for ``cam_drift/<method>/noise_floor``, as a fraction
            of the fixed images' pixel standard deviation (``0.01``: below one grey level); ``None`` skips it
            (it costs one more engine call per run).
        timeline_rows: how many of the latest runs the timeline shows beside the first; ``None`` for no
            timeline.
        max_overhead: skip scheduled runs (never the baseline) that would take the CAM runs' share of the
            training wall time over this fraction (e.g. ``0.05``), with one warning; ``None``: no limit.
        alpha: weight of the colour map in the overlays, in ``[0, 1]``.
        colormap: OpenCV colour map name for the overlays (``"jet"``, ``"turbo"``, ``"viridis"``, ...).
        on_error: for a CAM run that fails after the fit-start probe passed: ``"warn"`` reports it once,
            with its traceback, and skips it; ``"raise"`` stops training with the error.
        name: a short name (letters, digits, ``_ . + -``) for this callback's tags and checkpoint summary;
            needed only to tell several CAMCallbacks apart by a name of your choice.

    Raises:
        ValueError: for an unknown method (with close matches) or an invalid argument value (also
            ``spurious_masks`` with ``images`` but without ``boxes``/``masks``, ``axioms=True`` with several
            target layers or only Eigen methods).
        TypeError: for an argument of the wrong type.
        MisconfigurationException: at ``setup`` when there is nothing to explain (no validation data
            and no ``images``) or the target layer does not exist (with close matches; checked at fit
            start instead for modules that build layers in ``setup``/``configure_model``); before the first
            training step when ``target="label"`` but the batch has no labels, when ``mean``/``std`` do not
            fit the images' channels, when the batch has spurious regions but no object boxes/masks, or when
            the probe cannot explain the first image (the engine's message, with the callback's settings).
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
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
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
        spurious_masks: Tensor | None = None,
        shortcut_ratio: float = 1.0,
        baselines: bool = True,
        road: bool = False,
        axioms: bool = False,
        noise_floor: float | None = 0.01,
        timeline_rows: int | None = 8,
        max_overhead: float | None = None,
        alpha: float = 0.5,
        colormap: str = "jet",
        on_error: Literal["warn", "raise"] = "warn",
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.methods: tuple[str, ...] = check_methods(method, methods)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.every_n_steps = None if every_n_steps is None else check_positive_int("every_n_steps", every_n_steps)
        self.num_images = check_positive_int("num_images", num_images)
        self.pointing_tolerance = check_pointing_tolerance(pointing_tolerance)
        self.target: Target = check_target(target)
        self.target_layers = check_layers(layers_argument(target_layers, target_layer))
        self.aug_smooth = check_flag("aug_smooth", aug_smooth)
        self.eigen_smooth = check_flag("eigen_smooth", eigen_smooth)
        self.faithfulness = check_flag("faithfulness", faithfulness)
        self.sanity_check = check_flag("sanity_check", sanity_check)
        self.shortcut_ratio = check_shortcut_ratio(shortcut_ratio)
        self.baselines = check_flag("baselines", baselines)
        self.road = check_flag("road", road)
        self.axioms = check_axioms(check_flag("axioms", axioms), self.methods, self.target_layer)
        self.noise_floor = check_noise_floor(noise_floor)
        self.timeline_rows = check_timeline_rows(timeline_rows)
        self.max_overhead = check_max_overhead(max_overhead)
        self.mean, self.std = check_mean_std(mean, std)
        self.batch_to_images = check_batch_to_images(batch_to_images)
        self.reshape_transform = reshape_transform
        self.alpha = check_alpha(alpha)
        self.colormap = check_colormap(colormap)
        self.on_error = check_on_error(on_error)
        self._user_batch = check_images(images, boxes, masks, self.target, spurious_masks)
        self._boxes = None if boxes is None else torch.as_tensor(boxes)
        self._masks = None if masks is None else torch.as_tensor(masks)
        self._spurious = None if spurious_masks is None else torch.as_tensor(spurious_masks)
        self.name = check_name(name)
        self._images_digest = None if self._user_batch is None else _digest(self._user_batch.images)

        # resumable state (state_dict / load_state_dict)
        self._batch: FixedBatch | None = None
        self._first: dict[str, Tensor] = {}
        self._previous: dict[str, Tensor] = {}
        self._previous_preds: Tensor | None = None
        self._layer_names: list[str] | None = None
        self.runs = 0
        self._last_step = -1
        self._last_fingerprint: Tensor | None = None  # the weights and the loggers of the latest run
        self._last_destination: str | None = None
        self._timeline = None if self.timeline_rows is None else Timeline(self.timeline_rows)
        # per fit/validate session
        self._engine: Any = None
        self._engine_module: nn.Module | None = None
        self._writer: CamLogWriter | None = None
        self._input_logged_to: str | None = None  # destination that got cam/input and cam/config
        self._destination: str | None = None
        self._tag_name: str | None = self.name  # the name in this Trainer's tags (None: plain "cam/...")
        self._summary_name: str = self.name or derived_name(self)
        self._only_one = True  # the only CAMCallback of its Trainer
        self._reported: set[str] = set()
        self._defer_layer_check = False
        self._session_mean: tuple[float, ...] | None = self.mean
        self._session_std: tuple[float, ...] | None = self.std
        self._budget = CostBudget(self.max_overhead)
        self._shortcuts = ShortcutWatch(self.shortcut_ratio)

    # ------------------------------------------------------------------ public read-only views
    @property
    def state_key(self) -> str:
        """Unique per configuration, so several ``CAMCallback`` instances keep separate state."""
        extra: dict[str, Any] = {}  # only what differs from the defaults: keys of 0.1 configurations are unchanged
        if self.name is not None:
            extra["name"] = self.name
        if self.every_n_epochs != 1:
            extra["every_n_epochs"] = self.every_n_epochs
        if self.every_n_steps is not None:
            extra["every_n_steps"] = self.every_n_steps
        if self._images_digest is not None:
            extra["images"] = self._images_digest
        elif self.num_images != 8:
            extra["num_images"] = self.num_images
        return self._generate_state_key(
            methods=list(self.methods),
            target_layer=layer_key(self.target_layers),
            target=target_key(self.target),
            aug_smooth=self.aug_smooth,
            eigen_smooth=self.eigen_smooth,
            **extra,
        )

    @property
    def target_layer(self) -> list[LayerSpec] | None:
        """Alias of :attr:`target_layers` (the engine's and pytorch-grad-cam's name)."""
        return self.target_layers

    @property
    def tag_name(self) -> str | None:
        """The name in this callback's tags (``cam/<name>/gradcam``): ``name=``, or with several CAMCallbacks
        in the Trainer one derived from the configuration; ``None`` (plain ``cam/gradcam``) otherwise."""
        return self._tag_name

    @property
    def fixed_images(self) -> Tensor | None:
        """The fixed batch ``(N, C, H, W)`` on the CPU (``None`` until chosen; every rank holds the same)."""
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

    @property
    def shortcut_alerts(self) -> dict[str, str]:
        """Methods whose :class:`ShortcutWarning` was given this session, with when (``"epoch 2 (global step 40)"``)."""
        return dict(self._shortcuts.alerts)

    @property
    def skipped_runs(self) -> int:
        """Scheduled runs skipped this session because they would have exceeded ``max_overhead``."""
        return self._budget.skipped

    def timeline_image(self, method: str) -> Tensor | None:
        """The ``cam/<method>/timeline`` image as last logged, ``(3, H, W)`` float in [0, 1] (``None`` before a run)."""
        return None if self._timeline is None else render_for(self._timeline, method)

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
        check_target_layers(pl_module, self.target_layers)

    # Every hook runs on every rank and decides from what all ranks share (see ``_distributed``).
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ensure_val_dataloaders(trainer, self._user_batch)  # Lightning's data setup has a barrier
        self._prepare(trainer, pl_module)  # all ranks fail alike
        problem = never_fires(trainer, self.every_n_epochs, self.every_n_steps)
        if problem is not None:
            rank_zero_warn(problem, category=UserWarning)
        self._budget.start()
        if agree(trainer, not self._first):  # the baseline, unless resuming
            self._run(trainer, pl_module, "on_train_start")

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.VALIDATING:
            return
        self._prepare(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not agree(
            trainer, due_after_validation(trainer, self.every_n_epochs, self.every_n_steps)
        ):
            return
        if trainer.state.fn == TrainerFn.VALIDATING and self._repeats(trainer, pl_module):
            return
        self._run(trainer, pl_module, "on_validation_epoch_end")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = (
            trainer.global_step != self._last_step  # not explained after this epoch's validation already
            and due_after_epoch(trainer, self.every_n_epochs, self.every_n_steps)
        )
        if agree(trainer, due):
            self._run(trainer, pl_module, "on_train_epoch_end")

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # no collective per training step: the global step and the latest run's step are the same on every rank
        if due_after_step(trainer, self.every_n_steps, self._last_step):
            self._run(trainer, pl_module, "on_train_batch_end")

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
            "last_fingerprint": self._last_fingerprint,
            "last_destination": self._last_destination,
            "timeline": None if self._timeline is None else self._timeline.state_dict(),
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
        self._last_fingerprint = state_dict.get("last_fingerprint")
        self._last_destination = state_dict.get("last_destination")
        if self._timeline is not None and state_dict.get("timeline") is not None:
            self._timeline.load_state_dict(state_dict["timeline"])

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        summary = checkpoint_summary(self, pl_module)
        if self._only_one:  # the layout explain has always read
            checkpoint["cam_callback"] = summary
        else:  # one summary per CAMCallback: explain(..., callback=name) chooses
            checkpoint.setdefault("cam_callbacks", {})[self._summary_name] = summary

    # ------------------------------------------------------------------ helpers
    def _setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Trainer-level checks (every rank, so every rank fails alike) and per-session state."""
        check_trainer_has_images(trainer, stage, self._user_batch)
        check_strategy(trainer, self.sanity_check)
        self._defer_layer_check = is_overridden("configure_model", pl_module) or is_overridden(
            "setup", pl_module
        )
        if not self._defer_layer_check:
            check_target_layers(pl_module, self.target_layers)
        siblings = [cb for cb in trainer.callbacks if isinstance(cb, CAMCallback)]
        names = instance_names([(cb.name, derived_name(cb)) for cb in siblings])
        self._only_one = len(siblings) <= 1
        mine = [n for cb, n in zip(siblings, names, strict=True) if cb is self]
        self._summary_name = mine[0] if mine else self.name or derived_name(self)
        self._tag_name = self.name if self._only_one else self._summary_name
        datamodule = getattr(trainer, "datamodule", None)
        self._session_mean, self._session_std = session_mean_std(self.mean, self.std, datamodule)
        self._engine = self._engine_module = None
        self._writer = None
        self._destination = None
        self._shortcuts = ShortcutWatch(self.shortcut_ratio)
        if trainer.is_global_zero:
            self._writer = CamLogWriter(trainer.loggers, png_run_dir(trainer), self._tag_name)
            self._destination = destination(trainer.loggers, self._writer.png_dir)
            if self._writer.png_dir is not None:
                rank_zero_warn(
                    "CAMCallback: no logger takes images (TensorBoard, MLflow, Comet or one with `log_image`); "
                    f"the CAM grids are written as PNG files under {self._writer.png_dir}",
                    category=UserWarning,
                )

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Choose the fixed batch once on global rank zero and share it, then probe the model with it on every
        rank (see ``_probe``; a sharded model's forward needs them all); call on every rank: a failure on any
        rank is raised on every rank, before any training step."""

        def choose() -> None:
            if trainer.is_global_zero and self._batch is None:
                self._batch = self._choose_batch(trainer)

        def probe() -> None:
            assert self._batch is not None
            check_batch_settings(self._batch, self.faithfulness, self.road)
            probe_model(self, trainer, pl_module)

        together(trainer, choose, MisconfigurationException)
        self._batch = share(trainer, self._batch)  # the same images on every rank, whatever its data shard
        together(trainer, probe, MisconfigurationException)

    def _repeats(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Whether a run now would repeat the latest one (same weights, same loggers), e.g. validate after fit;
        global rank zero decides (its loggers, its weights or its shard of them) for every rank."""
        same = trainer.is_global_zero and repeats(
            weights_fingerprint(pl_module), self._destination or "", self._last_fingerprint, self._last_destination
        )
        if not share(trainer, same):
            return False
        rank_zero_info(
            f"CAMCallback: the weights have not changed since the run at global step {self._last_step}, which "
            "these loggers already have; nothing new to log"
        )
        return True

    def _choose_batch(self, trainer: Trainer) -> FixedBatch:
        return choose_batch(
            trainer,
            self._user_batch,
            self.num_images,
            self.batch_to_images,
            self._boxes,
            self._masks,
            self.target,
            self._spurious,
        )

    def _run(self, trainer: Trainer, pl_module: LightningModule, hook: str) -> None:
        """One CAM run on every rank, within the cost budget, and its scalars published to the loggers and
        ``callback_metrics`` (see :mod:`cam_callback._publish`); a failure is reported once and skipped
        (``on_error="warn"``) or raised. Call on every rank."""
        fitting = trainer.state.fn == TrainerFn.FITTING and self._budget.started is not None
        if fitting and hook != "on_train_start" and not share(trainer, self._budget.allows()):  # rank 0's clock
            message = self._budget.skip(trainer.global_step)
            if message is not None:
                rank_zero_warn(message, category=UserWarning)
            self._last_step = trainer.global_step
            return
        started = time.perf_counter()
        scalars: dict[str, float] | None = None
        try:
            with torch.inference_mode(False):  # what is kept must not be an inference tensor
                scalars = self._explain_and_log(trainer, pl_module, hook)
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
        if fitting:
            self._budget.record(time.perf_counter() - started)
            self._last_step = trainer.global_step  # on every rank, so every rank takes the same decisions
            if scalars is not None:  # the run happened (on every rank: failures are shared)
                scalars["cam_cost/overhead"] = float(share(trainer, self._budget.share()))
        writer = self._writer if trainer.is_global_zero else None
        publish(trainer, pl_module, writer, scalars or {}, log_step(trainer, hook), hook, self._tag_name)

    def _explain_and_log(self, trainer: Trainer, pl_module: LightningModule, hook: str) -> dict[str, float]:
        """Explain this rank's share of the fixed batch, gather the whole batch's maps and per-image values on
        every rank, log images on global rank zero, remember the maps for the next drift (see ``_distributed``);
        return the run's scalars (the same on every rank: they are computed from the gathered tensors)."""
        assert self._batch is not None  # chosen and shared by _prepare, before any run
        step, n = log_step(trainer, hook), len(self._batch)
        split = splits(self.target)
        rows = rows_for(n, trainer.world_size, trainer.global_rank) if split else torch.arange(n)
        with rank_zero_buffers(trainer, pl_module):  # the checkpointed model's BatchNorm statistics on every rank
            part, fixed = together(trainer, lambda: self._explain_rows(trainer, pl_module, rows))
        whole = gather_rows(trainer, part, n, split)
        maps = {m: whole[f"map/{m}"] for m in self.methods}
        preds = whole.get("pred")
        values = {key[len("metric/") :]: v for key, v in whole.items() if key.startswith("metric/")}
        scalars = self._drift_scalars(maps, preds)
        scalars.update(metric_scalars(values))
        scalars.update(map_measures(self, maps))
        together(
            trainer,
            lambda: self._log(trainer, maps, preds, fixed, step, hook) if trainer.is_global_zero else None,
        )
        if hook != "on_train_start" and self._batch.spurious is not None:  # the baseline's weights are random
            title = run_title(trainer, hook, step).split("\n")[0]
            when = f"{title} (global step {trainer.global_step})"
            for message in self._shortcuts.check(scalars, self.methods, when):  # the same on every rank
                rank_zero_warn(message, category=ShortcutWarning)

        for name, cam in maps.items():
            self._first.setdefault(name, cam)
        self._previous = maps
        self._previous_preds = preds
        self._last_step = trainer.global_step
        self._last_fingerprint = weights_fingerprint(pl_module)
        self._last_destination = self._destination
        self.runs += 1
        return scalars

    def _explain_rows(
        self, trainer: Trainer, pl_module: LightningModule, rows: Tensor
    ) -> tuple[dict[str, Tensor], Any]:
        """The fixed batch's ``rows`` explained on ``pl_module.device``: ``map/<method>`` ``(k, H, W)``, ``pred``
        ``(k,)`` and ``metric/<tag>`` ``(k,)`` per-image values, on that device; and the target with its
        choices made explicit (a task target's predicted mask, for the outlines)."""
        assert self._batch is not None
        part = take_rows(self._batch, rows)
        plugin = trainer.precision_plugin
        x = plugin.convert_input(part.images.to(pl_module.device))  # the images move to the device once per run
        engine = self._get_engine(pl_module)
        targets = engine_targets(part, self.target, x.device)
        with plugin.forward_context():
            result = engine(
                x, methods=self.methods, targets=targets, aug_smooth=self.aug_smooth, eigen_smooth=self.eigen_smooth
            )
        fixed = fixed_target(pl_module, x, targets, plugin.forward_context)  # a task target's choices, made explicit
        self._layer_names = list(engine.layer_names) or None
        out = {f"map/{m}": result[m].detach().float() for m in self.methods}
        preds = predictions(result, self.target)
        if preds is not None:
            out["pred"] = preds
        chosen = None if fixed is targets else fixed
        for tag, value in per_image_metrics(self, trainer, pl_module, part, x, result, chosen).items():
            out[f"metric/{tag}"] = value
        measures = per_image_measures(self, trainer, pl_module, engine, rows, x, result, targets, chosen)
        out.update({f"metric/{tag}": value for tag, value in measures.items()})
        return out, fixed

    def _log(
        self,
        trainer: Trainer,
        maps: dict[str, Tensor],
        preds: Tensor | None,
        fixed: Any,
        step: int,
        hook: str,
    ) -> None:
        """Log one run's images (global rank zero): the overlays of the whole batch's maps and the timeline."""
        assert self._batch is not None
        if self._writer is None:
            self._writer = CamLogWriter(trainer.loggers, png_run_dir(trainer), self._tag_name)
            self._destination = destination(trainer.loggers, self._writer.png_dir)
        writer, images = self._writer, self._batch.images
        mean, std = self._session_mean, self._session_std
        if self._input_logged_to != self._destination:  # once per destination: validate after fit adds none
            log_config_and_input(writer, config_markdown(config(self)), images, mean, std, step)
            self._input_logged_to = self._destination
        log_overlays(writer, images, maps, step, mean, std, self.alpha, self.colormap, fixed)
        if self._timeline is not None:
            display = {"mean": mean, "std": std, "alpha": self.alpha, "colormap": self.colormap}
            title = run_title(trainer, hook, step)
            log_timeline(self._timeline, writer, self._batch, maps, preds, step, title, display)
        writer.flush()

    def _get_engine(self, pl_module: LightningModule) -> Any:
        if self._engine is None or self._engine_module is not pl_module:
            layers = self._layer_names or self.target_layers  # restored names keep a resumed run's layer
            self._engine = cams.CamEngine(pl_module, target_layers=layers, reshape_transform=self.reshape_transform)
            self._engine_module = pl_module
        return self._engine

    def _drift_scalars(self, maps: dict[str, Tensor], preds: Tensor | None) -> dict[str, float]:
        return drift_scalars(maps, preds, self._first, self._previous, self._previous_preds)


def _digest(images: Tensor) -> str:
    """A short, stable digest of a tensor's values (the ``state_key`` of ``images=``)."""
    raw = images.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes()
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:12]
