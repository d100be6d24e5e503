"""``CAMCallback``: watch where an image model looks while it trains, in TensorBoard (and other loggers).

The class holds the Lightning hooks and the parts that own the callback's state; each hook is a guard and a call.
The parts: the settings (:mod:`cam_callback._settings`, checked once), the fixed batch (``_batch``), the map
history (``_history``), the timeline (``_timeline``), the cost budget (``_budget``), the shortcut watch
(:mod:`cam_callback.measures.shortcut`) and the log writer (``_logging``). A run is computed by
:func:`cam_callback._run.explain_run` from values, its images drawn by ``_overlays``, its scalars published by
``_publish``; processes agree through ``_distributed``. ``docs/callback.md`` lists every tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
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
from cam_callback._checks import LayerSpec, TargetSpec, check_target_layers, check_trainer_has_images, session_mean_std
from cam_callback._distributed import agree, check_strategy, share, together
from cam_callback._health import HealthWatch
from cam_callback._history import MapHistory
from cam_callback._legacy import accepts_old_spellings, callback_arguments
from cam_callback._overlays import ImageLog
from cam_callback._probe import probe_model
from cam_callback._publish import log_step, publish, say_verdict, warn
from cam_callback._run import Failures, RunResult, explain_run
from cam_callback._schedule import (
    LastRun,
    due_after_epoch,
    due_after_step,
    due_after_validation,
    never_fires,
    weights_fingerprint,
)
from cam_callback._settings import CAMDisplay, CAMSettings, build_settings
from cam_callback._summary import CHECKPOINT_VERSION, checkpoint_summary, config, session_names, state_fields
from cam_callback._timeline import Timeline, render_for, run_title
from cam_callback.measures import Measure, Sanity, ShortcutWarning, ShortcutWatch
from cam_callback.report import check_report, write_fit_report
from cams.health import DegenerateMapWarning

__all__ = ["CAMCallback", "ShortcutWarning"]


class CAMCallback(Callback):
    """Log class activation maps of a fixed batch of images while a model trains.

    At the start of fitting the callback takes a fixed batch once (the first ``num_images`` samples of the first
    validation dataloader's dataset, or ``images``), keeps it on the CPU and probes the model with it: a model,
    target or measure it cannot serve stops the fit there with a ``MisconfigurationException``, before any
    training step. It explains the batch before the first training step (the baseline), then after every
    ``every_n_epochs``-th training epoch (at the end of the validation that follows the epoch's last batch, or at
    the end of the epoch when there is none), or every ``every_n_steps`` optimizer steps, and logs at the step
    Lightning logs its own metrics at: the overlays ``cam/<method>``, the timeline ``cam/<method>/timeline``, the
    drift ``cam_drift/<method>/vs_previous`` and ``/vs_first``, each measure's scalars (``docs/callback.md`` lists
    every tag) and ``cam_cost/...``. Every scalar (but ``cam_cost/logging``, which the background image worker
    writes after the run) is also in ``trainer.callback_metrics`` under the same tag, for
    ``ModelCheckpoint``/``EarlyStopping``.

    The maps never change training: no ``.grad`` writes, no hooks left behind; modes, BatchNorm buffers, sharded
    parameters and the global RNG as found. With several processes (DDP, ``ModelParallelStrategy`` with FSDP2)
    every rank explains its share of the fixed batch and global rank zero logs exactly what one process would.
    Several CAMCallbacks can share a Trainer: each gets a name (``name=``, else one derived from its
    configuration) in its tags and checkpoint summary.

    Args:
        method: one CAM method name (``"gradcam"``, ``"xgradcam"``, ``"scorecam"``, ...; see :data:`cams.METHODS`;
            aliases like ``"Grad-CAM++"`` work).
        methods: several method names instead of ``method``, computed from one shared forward/backward pass.
        target_layers: the layer(s) to explain: a dotted name relative to the LightningModule (``"model.layer4"``),
            a module, or a list; ``None`` picks the layer a practitioner would (:class:`cams.CamEngine`).
        target: what each map explains: ``"pred"`` (the model's current prediction), ``"label"`` (the sample's
            label), a class index, a task target from :mod:`cams.targets` (``SegmentationTarget(3)``,
            ``MultiLabelTarget()``, ...), or a callable ``output -> (N,)`` scores.
        reshape_transform: passed to :class:`cams.CamEngine` (rarely needed: token and channels-last outputs are
            read automatically).
        aug_smooth: average maps over flipped and rescaled copies (6x the cost).
        eigen_smooth: keep the first principal component of the weighted activations.
        images: the images to explain instead of the first validation samples: a ``(N, C, H, W)`` tensor (volumes
            ``(N, C, D, H, W)``) normalised as the model expects, an ``(images, labels)`` pair, or a dict with the
            keys of dict batches: ``{"image": x, "label": y, "boxes": b, "masks": m, "spurious_mask": s}``
            (boxes ``(N, 4)`` ``x0, y0, x1, y1`` in pixels; masks ``(N, H, W)``). A dict without ``"image"`` gives
            the boxes, masks or spurious regions of the first validation samples.
        num_images: how many validation samples to explain (ignored with ``images``).
        batch_to_images: ``fn(batch)`` returning images, ``(images, labels)`` or a dict with those keys, for
            dataloaders whose batches are not a tensor, a tuple or such a dict.
        mean: per-channel normalisation mean of the images, undone for display and saved for ``explain`` (default:
            ``datamodule.mean`` when it exists, else each image is min-max scaled).
        std: per-channel normalisation std, as ``mean``.
        every_n_epochs: explain after every n-th training epoch.
        every_n_steps: explain every n optimizer steps instead of per epoch.
        max_overhead: skip scheduled runs (never the baseline) that would take the CAM runs' share of the training
            wall time over this fraction (e.g. ``0.05``), with one warning; ``None``: no limit.
        measures: what each run measures, by name or as :mod:`cam_callback.measures` objects: ``"localisation"``,
            ``"shortcut"``, ``"noise_floor"``, ``"baselines"``, ``"faithfulness"``, ``"road"``, ``"axioms"``,
            ``"sanity"``. ``None`` (default): localisation and the shortcut watch where the batch has object boxes
            or masks and spurious regions, the drift noise floor and the centre/random baselines. A list given is
            what is measured: a measure the fixed batch cannot serve stops the fit before training.
        display: how the maps are shown: :class:`CAMDisplay` (overlay colour map and weight, timeline length).
        on_error: for a CAM run that fails after the fit-start probe passed: ``"warn"`` reports it once, with its
            traceback, and skips it; ``"raise"`` stops training with the error.
        name: a short name (letters, digits, ``_ . + -``) for this callback's tags and checkpoint summary; needed
            only to tell several CAMCallbacks apart by a name of your choice.
        report: at the end of ``fit``, write ``cam_report.html`` into the run's log folder (``docs/report.md``).

    The 0.2 spellings (``faithfulness=True``, ``alpha=``, ``boxes=``, ``target_layer=``, ...) keep working for a
    release with a ``DeprecationWarning`` naming the new one.

    Raises:
        ValueError: an unknown method or measure (with close matches), or an invalid argument value.
        TypeError: an argument of the wrong type.
        MisconfigurationException: at ``setup``: nothing to explain (no validation data and no ``images``), a
            target layer that does not exist (with close matches), an unsupported strategy; before the first
            training step: what the probe of the fixed batch finds (labels, normalisation, a measure it cannot
            serve, the engine's own error).

    Example:
        >>> from cam_callback import CAMCallback, CAMDisplay
        >>> callback = CAMCallback(methods=["gradcam", "xgradcam"], measures=["localisation", "faithfulness"],
        ...                        display=CAMDisplay(colormap="turbo"))
        >>> callback.methods
        ('gradcam', 'xgradcam')

        In a training script::

            trainer = Trainer(max_epochs=10, callbacks=[CAMCallback(method="xgradcam")])
            trainer.fit(model, datamodule=datamodule)  # then: tensorboard --logdir lightning_logs
    """

    @accepts_old_spellings(callback_arguments)
    def __init__(
        self,
        method: str = "gradcam",
        *,
        methods: Sequence[str] | None = None,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        target: TargetSpec = "pred",
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        images: Tensor | tuple[Tensor, Tensor] | Mapping[str, Tensor] | None = None,
        num_images: int = 8,
        batch_to_images: BatchToImages | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        max_overhead: float | None = None,
        measures: Sequence[str | Measure] | None = None,
        display: CAMDisplay | None = None,
        on_error: Literal["warn", "raise"] = "warn",
        name: str | None = None,
        report: bool = False,
    ) -> None:
        super().__init__()
        self._settings = build_settings(
            method, methods, target_layers, target, reshape_transform, aug_smooth, eigen_smooth, images, num_images,
            batch_to_images, mean, std, every_n_epochs, every_n_steps, max_overhead, measures, display, on_error,
            name, report,
        )  # fmt: skip
        rows = self._settings.display.timeline_rows
        # the parts that own the callback's state across sessions (state_dict / load_state_dict)
        self._batch: FixedBatch | None = None
        self._history = MapHistory()
        self._timeline = None if rows is None else Timeline(rows)
        self._last = LastRun()
        self._layer_names: list[str] | None = None
        self._input_logged_to: str | None = None  # the destination that got cam/input and cam/config
        self._budget = CostBudget(self._settings.max_overhead)
        self._shortcuts = ShortcutWatch.of(self._settings.measure("shortcut"))
        self._failures = Failures(self._settings.on_error)  # raised, or reported once each
        self._health = HealthWatch()  # blank maps: one warning per method and cause
        # per fit/validate session, set in setup and at fit start
        self._engine: Any = None
        self._engine_module: nn.Module | None = None
        self._images = ImageLog()  # global rank zero's writer and background image log (a no-op elsewhere)
        self._measures: tuple[Measure, ...] = ()
        self._mean, self._std = self._settings.mean, self._settings.std
        self._tag_name: str | None = self._settings.name  # the name in this Trainer's tags (None: plain "cam/...")
        self._summary_name = ""  # the name of its checkpoint summary, with several CAMCallbacks
        self._only_one = True  # the only CAMCallback of its Trainer
        self._defer_layer_check = False

    # ------------------------------------------------------------------ public read-only views
    @property
    def settings(self) -> CAMSettings:
        """The callback's checked, frozen settings."""
        return self._settings

    @property
    def methods(self) -> tuple[str, ...]:
        """The canonical names of the methods explained."""
        return self._settings.methods

    @property
    def state_key(self) -> str:
        """Unique per configuration, so several ``CAMCallback`` instances keep separate state."""
        return self._generate_state_key(**state_fields(self._settings))

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
        return dict(self._history.first)

    @property
    def last_maps(self) -> dict[str, Tensor]:
        """The latest run's maps per method, ``(N, H, W)`` float32 in ``[0, 1]`` on the CPU."""
        return dict(self._history.previous)

    @property
    def runs(self) -> int:
        """How many runs logged maps (skipped and failed runs do not count)."""
        return self._history.runs

    @property
    def layer_names(self) -> list[str] | None:
        """Dotted names (relative to the LightningModule) of the explained layers, once resolved."""
        return None if self._layer_names is None else list(self._layer_names)

    @property
    def shortcut_alerts(self) -> dict[str, str]:
        """Methods whose :class:`ShortcutWarning` was given this session, with when (``"epoch 2 (global step 40)"``)."""
        return dict(self._shortcuts.alerts)

    @property
    def shortcut_notes(self) -> dict[str, str]:
        """Methods given the "salient but not used" note this session (no reliance on the region), with when."""
        return dict(self._shortcuts.notes)

    @property
    def skipped_runs(self) -> int:
        """Scheduled runs skipped this session because they would have exceeded ``max_overhead``."""
        return self._budget.skipped

    def timeline_image(self, method: str) -> Tensor | None:
        """The ``cam/<method>/timeline`` image as last logged, ``(3, H, W)`` float in [0, 1] (``None`` before a run)."""
        self._images.wait()  # the latest row may still be drawn in the background
        return None if self._timeline is None else render_for(self._timeline, method)

    # ------------------------------------------------------------------ hooks: a guard and a call each
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage in (TrainerFn.FITTING, TrainerFn.VALIDATING):
            self._setup(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._defer_layer_check:
            check_target_layers(pl_module, self._settings.target_layers)

    # Every hook runs on every rank and decides from what all ranks share (see ``_distributed``).
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_fit(trainer, pl_module)
        if agree(trainer, not self._history.first):  # the baseline, unless resuming
            self._run(trainer, pl_module, "on_train_start")

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._prepare(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        s = self._settings
        if trainer.sanity_checking or not agree(trainer, due_after_validation(trainer, s.every_n_epochs,
                                                                              s.every_n_steps)):  # fmt: skip
            return
        if trainer.state.fn == TrainerFn.VALIDATING and self._repeats(trainer, pl_module):
            return
        self._run(trainer, pl_module, "on_validation_epoch_end")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        s = self._settings
        due = trainer.global_step != self._last.step and due_after_epoch(trainer, s.every_n_epochs, s.every_n_steps)
        if agree(trainer, due):  # not explained after this epoch's validation already
            self._run(trainer, pl_module, "on_train_epoch_end")

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # no collective per training step: the global step and the latest run's step are the same on every rank
        if due_after_step(trainer, self._settings.every_n_steps, self._last.step):
            self._run(trainer, pl_module, "on_train_batch_end")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self._guard(trainer, trainer.global_step):
            together(trainer, self._images.flush)  # every image written, or its failure raised or reported
        if self._settings.report and self._images.writer is not None:  # global rank zero, after the last image
            write_fit_report(self._images.writer, self._settings.on_error)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            with self._guard(trainer, trainer.global_step):
                together(trainer, self._images.flush)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._images.close(quiet=True)  # the images of the runs before the failure still arrive

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._images.close(quiet=True)
        self._engine = self._engine_module = None  # the engine holds the model: let it go with the Trainer

    @override
    def state_dict(self) -> dict[str, Any]:
        self._images.wait()  # the timeline's rows are drawn in the background
        return {
            "version": CHECKPOINT_VERSION,
            "batch": None if self._batch is None else self._batch.to_state(),
            **self._history.state_dict(),  # first, previous, previous_preds, runs
            "layer_names": self._layer_names,
            "last_step": self._last.step,
            "last_fingerprint": self._last.fingerprint,
            "last_destination": self._last.destination,
            "timeline": None if self._timeline is None else self._timeline.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("batch") is not None:
            self._batch = FixedBatch.from_state(state_dict["batch"])
        self._history.load_state_dict(state_dict)
        self._layer_names = state_dict.get("layer_names")
        self._last = LastRun(int(state_dict.get("last_step", -1)), state_dict.get("last_fingerprint"),
                             state_dict.get("last_destination"))  # fmt: skip
        if self._timeline is not None and state_dict.get("timeline") is not None:
            self._timeline.load_state_dict(state_dict["timeline"])

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        summary = checkpoint_summary(self._settings, pl_module, self._layer_names, self._batch, self._mean, self._std)
        if self._only_one:  # the layout explain has always read
            checkpoint["cam_callback"] = summary
        else:  # one summary per CAMCallback: explain(..., callback=name) chooses
            checkpoint.setdefault("cam_callbacks", {})[self._summary_name] = summary

    # ------------------------------------------------------------------ helpers
    def _setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Trainer-level checks (every rank, so every rank fails alike) and per-session state."""
        s = self._settings
        check_trainer_has_images(trainer, stage, s.user_batch)
        check_strategy(trainer, any(isinstance(m, Sanity) for m in s.measures))
        check_report(trainer, s.report)
        self._defer_layer_check = is_overridden("configure_model", pl_module) or is_overridden("setup", pl_module)
        if not self._defer_layer_check:
            check_target_layers(pl_module, s.target_layers)
        siblings = [cb for cb in trainer.callbacks if isinstance(cb, CAMCallback)] or [self]
        self._only_one = len(siblings) <= 1
        mine = next((i for i, cb in enumerate(siblings) if cb is self), 0)
        self._summary_name, self._tag_name = session_names([cb._settings for cb in siblings], mine)
        self._mean, self._std = session_mean_std(s.mean, s.std, getattr(trainer, "datamodule", None))
        self._engine = self._engine_module = None
        self._shortcuts = self._shortcuts.fresh()
        self._images.close()
        self._images = ImageLog(trainer if trainer.is_global_zero else None, self._tag_name)

    def _start_fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Before the first training step: the fixed batch, the probe, the schedule's check, the budget's clock."""
        ensure_val_dataloaders(trainer, self._settings.user_batch)  # Lightning's data setup has a barrier
        self._prepare(trainer, pl_module)  # all ranks fail alike
        s = self._settings
        problem = never_fires(trainer, s.every_n_epochs, s.every_n_steps)
        if problem is not None:
            rank_zero_warn(problem, category=UserWarning)
        self._budget.start()

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Choose the fixed batch once on global rank zero and share it, then probe the model with it on every
        rank (see ``_probe``; a sharded model's forward needs them all); call on every rank: a failure on any
        rank is raised on every rank, before any training step."""
        s = self._settings

        def choose() -> None:
            if trainer.is_global_zero and self._batch is None:
                self._batch = choose_batch(trainer, s.user_batch, s.num_images, s.batch_to_images, s.regions,
                                           s.target)  # fmt: skip

        def probe() -> None:
            assert self._batch is not None
            engine = self._get_engine(pl_module)
            self._measures = probe_model(trainer, pl_module, engine, s, self._batch, self._mean, self._std)

        together(trainer, choose, MisconfigurationException)
        self._batch = share(trainer, self._batch)  # the same images on every rank, whatever its data shard
        together(trainer, probe, MisconfigurationException)

    def _repeats(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Whether a run now would repeat the latest one (same weights, same loggers), e.g. validate after fit;
        global rank zero decides (its loggers, its weights or its shard of them) for every rank."""
        here = self._images.destination or ""
        same = trainer.is_global_zero and self._last.repeated_by(weights_fingerprint(pl_module), here)
        if not share(trainer, same):
            return False
        rank_zero_info(f"CAMCallback: the weights have not changed since the run at global step {self._last.step}, "
                       "which these loggers already have; nothing new to log")  # fmt: skip
        return True

    def _run(self, trainer: Trainer, pl_module: LightningModule, hook: str) -> None:
        """One CAM run on every rank, within the cost budget, and its scalars published to the loggers and
        ``callback_metrics``; a failure is reported once and skipped (``on_error="warn"``) or raised. Call on
        every rank."""
        fitting = trainer.state.fn == TrainerFn.FITTING and self._budget.started is not None
        if fitting and hook != "on_train_start" and not share(trainer, self._budget.allows()):  # rank 0's clock
            skipped = self._budget.skip(trainer.global_step)
            warn(self._images.writer, skipped, UserWarning, log_step(trainer, hook), "skipped")
            self._last.step = trainer.global_step
            return
        started = time.perf_counter()
        scalars: dict[str, float] | None = None
        with self._guard(trainer, log_step(trainer, hook)), torch.inference_mode(False):  # kept tensors: not inference
            scalars = self._explain_and_log(trainer, pl_module, hook)
        if fitting:
            self._budget.record(time.perf_counter() - started)
            self._last.step = trainer.global_step  # on every rank, so every rank takes the same decisions
            if scalars is not None:  # the run happened (on every rank: failures are shared)
                scalars["cam_cost/overhead"] = float(share(trainer, self._budget.share()))
        publish(trainer, pl_module, self._images.writer, scalars or {}, log_step(trainer, hook), hook, self._tag_name)
        with self._guard(trainer, log_step(trainer, hook)):
            together(trainer, self._images.check)  # an earlier run's images failed in the background: all ranks know

    def _guard(self, trainer: Trainer, step: int) -> AbstractContextManager[None]:
        """:meth:`Failures.guard` for a failure at the trainer's global step, noted in the record at ``step``."""
        return self._failures.guard(trainer.global_step, self._images.writer, step)

    def _explain_and_log(self, trainer: Trainer, pl_module: LightningModule, hook: str) -> dict[str, float]:
        """Explain the fixed batch (every rank its share), log the images on global rank zero, warn about
        shortcuts, remember the maps; return the run's scalars (the same on every rank)."""
        assert self._batch is not None  # chosen and shared by _prepare, before any run
        step = log_step(trainer, hook)
        engine = self._get_engine(pl_module)
        result = explain_run(trainer, pl_module, engine, self._settings, self._batch, self._measures, self._history)
        self._layer_names = result.layers or None
        self._log_images(trainer, result, step, hook)  # drawn and written in the background: no rank waits for it
        when = f"{run_title(trainer, hook, step).splitlines()[0]} (global step {trainer.global_step})"
        for message in self._health.check(result.health, result.reasons, when):  # rank zero's reasons
            warn(self._images.writer, message, DegenerateMapWarning, step, "degenerate")
        if hook != "on_train_start" and self._batch.spurious is not None:  # the baseline's weights are random
            for verdict, message in self._shortcuts.check(result.scalars, self.methods, when):  # same on every rank
                say_verdict(self._images.writer, verdict, message, step)
        self._history.remember(result.maps, result.preds, result.blank)
        self._last = LastRun(trainer.global_step, weights_fingerprint(pl_module), self._images.destination)
        return dict(result.scalars)

    def _log_images(self, trainer: Trainer, result: RunResult, step: int, hook: str) -> None:
        """One run's images (global rank zero; nothing elsewhere): the input and configuration once per destination,
        the overlays, the timeline."""
        assert self._batch is not None
        if self._images.writer is None:  # not global rank zero
            return
        settings = None
        if self._input_logged_to != self._images.destination:  # once per destination: validate after fit adds none
            layout = getattr(self._engine, "layout", None)
            settings = config(self._settings, self._batch, self._layer_names, layout, self._tag_name, self._mean,
                              self._std, self._measures)  # fmt: skip
            self._input_logged_to = self._images.destination
        self._images.submit(self._batch, result.maps, result.preds, result.fixed, step, mean=self._mean,
                            std=self._std, display=self._settings.display, timeline=self._timeline,
                            title=run_title(trainer, hook, step), config=settings, marked=result.blank)  # fmt: skip

    def _get_engine(self, pl_module: LightningModule) -> Any:
        if self._engine is None or self._engine_module is not pl_module:  # restored names keep a resumed layer
            layers, reshape = self._layer_names or self._settings.target_layers, self._settings.reshape_transform
            self._engine, self._engine_module = cams.CamEngine(pl_module, layers, reshape), pl_module
        return self._engine
