"""The shared hooks-and-weights engine: one forward and one ``autograd.grad`` feed every method.

How one call runs (:meth:`CamEngine.__call__`):

1. the target layers are resolved (:mod:`cams.layer_choice`: a name, a module, or the automatic choice);
2. one forward records their outputs (:func:`cams.hooks.capture`), with autograd on only from the
   first target layer onwards when a method needs gradients;
3. the user's ``targets`` become a :class:`cams.targets.Target` and score each image;
4. one ``torch.autograd.grad`` from those scores to the layer outputs gives every gradient method its
   gradients (parameter ``.grad`` is never written); each layer's output and gradient are read as
   ``(B, C, h, w)`` feature maps by :mod:`cams.layout` (tokens, channels-last);
5. each method asks a :class:`cams.passes.Pass` for the inputs it names (activations, gradients,
   Score-CAM/Ablation-CAM channel scores, ...), weighs the activations, and the weighted maps are
   summed over channels (or projected on their first principal component), ReLU'd, min-max scaled and
   resized (:mod:`cams.ops`).

Example:
    >>> import torch, torchvision
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> engine = CamEngine(model)                      # target layer found automatically
    >>> maps = engine(torch.randn(2, 3, 64, 64), methods=("gradcam", "xgradcam"))
    >>> engine.layer_names, maps["gradcam"].shape, maps["gradcam"].dtype
    (['layer4'], torch.Size([2, 64, 64]), torch.float32)
    >>> bool(maps["xgradcam"].min() >= 0) and bool(maps["xgradcam"].max() <= 1)
    True
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cams.aug_smooth import augment, deaugment, plain_rows, repeat_targets
from cams.backward import check_gradients, layer_gradients
from cams.health import Degenerate, DegenerateMapWarning, combine_layers, deaugment_reasons, diagnose, warning_text
from cams.hooks import Records, capture, grad_capable, map_tensors, output_shape, prepare, tensor_leaves
from cams.layer_choice import auto_layer, example_input, find_layer
from cams.layout import Layout, layout_of
from cams.methods import CamMethod, get_method
from cams.names import uncompiled_name
from cams.ops import EigenSign, aggregate_layers, minmax, resize, sum_or_project
from cams.passes import Explain, Pass, Progress, score_rows
from cams.state import autograd_kernels, frozen_model, model_device
from cams.targets import Target, Targets, parse_target, readable_logits, resolve_targets

__all__ = ["CamEngine", "CamMaps", "check_input", "find_layer"]

LayerSpec = nn.Module | str


class CamMaps(dict):
    """``method name -> (B, H, W)`` float32 maps in [0, 1] (``(B, D, H, W)`` for volumes), plus what was explained.

    Attributes:
        classes: (B,) long, the class explained for each image (``None`` for callable targets).
        scores: (B,) float32, the target score of the un-augmented input (``None`` if no method needed it).
        logits: (B, K) float32 model output for the un-augmented input (``None`` if not a 2-D tensor).
        seconds: wall time of the call's parts: ``"shared"`` (the forward, the target and the shared backward),
            then each method's (its weighing and the inputs it was the first to need, e.g. Score-CAM's masked
            forwards), for a user who wants to see what to switch off.
        degenerate: method name -> one entry per image: ``None`` for a map that carries information, else a
            :class:`cams.health.Degenerate` (``.cause``, e.g. ``"single_position"``, and ``.reason``, a sentence
            naming the layer and what to do). Such maps are returned as computed (constant, usually all zero), and
            the call gives one :class:`cams.health.DegenerateMapWarning` listing them.
    """

    classes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    seconds: dict[str, float] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.degenerate: dict[str, list[Degenerate | None]] = {}


class CamEngine:
    """Class activation maps for ``model`` at ``target_layers`` from one shared pass.

    Args:
        model: any ``nn.Module`` (a LightningModule too). It is left exactly as found by every call:
            training flags restored, BatchNorm statistics and parameter ``.grad`` untouched, no hooks
            left, global RNG not consumed.
        target_layers: a module, a dotted name (``"layer4.1"``), or a list of those. ``None`` picks the
            layer a practitioner would (:func:`cams.layer_choice.auto_layer`, one forward on the first call): the
            last feature map of CNNs and pooled transformers, the last block's first norm of class-token
            transformers (ViT, DeiT, BEiT, Hugging Face ViT). Several layers are aggregated like
            pytorch-grad-cam (per-layer ReLU and min-max, resize, mean, min-max).
        reshape_transform: maps a layer output to (B, C, h, w); applied to activations and gradients
            alike. Rarely needed: token outputs ``(B, N, C)`` and channels-last ``(B, h, w, C)`` are read
            automatically (:mod:`cams.layout`; see :attr:`layout`), and a transform given here always wins.

    ``torch.compile``'d models and submodules are explained through their original forward
    (:func:`cams.state.eager`): the maps equal the uncompiled model's.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: an unknown layer name (with close matches) or a module that is not in ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.reshape_transform = reshape_transform
        self._layers: list[tuple[str, nn.Module]] | None = None
        self._guess: list[str] | None = None  # the automatic choice before any call (see layer_names)
        self._layouts: dict[str, tuple[tuple[tuple[int, ...], tuple[int, ...]], Layout]] = {}
        if target_layers is not None:
            specs = [target_layers] if isinstance(target_layers, (str, nn.Module)) else list(target_layers)
            if not specs:
                raise ValueError("target_layers: got an empty list; pass None to choose automatically")
            self._layers = [self._named(spec) for spec in specs]

    # ------------------------------------------------------------------ layers
    @property
    def layer_names(self) -> list[str]:
        """Dotted names of the target layers.

        With the automatic choice and before the first call: the layer chosen for the input the model declares
        (a LightningModule's ``example_input_array``, timm's ``pretrained_cfg["input_size"]``, a Hugging Face
        ``config.image_size``), else for a 224×224 image (a 64³ volume) with its first convolution's channels: one
        forward, on first access. The first call then chooses with its own input, which gives another layer only
        where the inputs' grids differ (CIFAR-size images: ``layer3`` of a ResNet, whose ``layer4`` is 1×1).
        ``[]`` when no input can be built (no convolution, nothing declared).
        """
        if self._layers is None:
            if self._guess is None:
                self._guess = self._choose_without_call()
            return list(self._guess)
        return self._names()

    def _names(self) -> list[str]:
        return [name for name, _ in self._layers or []]

    def _choose_without_call(self) -> list[str]:
        x = example_input(self.model)
        if x is None:
            return []
        try:
            with grad_capable(), frozen_model(self.model), autograd_kernels():
                return [auto_layer(self.model, x.to(model_device(self.model)))[0]]
        except Exception:  # a model that takes another input than the one guessed: the first call chooses
            return []

    @property
    def layout(self) -> Layout | None:
        """How the (first) target layer's output was read as a feature map in the last call (``None`` before).

        Example: ``tokens (B, 197, 192): 1 prefix token dropped, grid 14×14 from patch_embed``.
        """
        layouts = self.layouts
        return layouts[self._names()[0]] if layouts else None

    @property
    def layouts(self) -> dict[str, Layout]:
        """Layer name -> :class:`cams.layout.Layout` of the last call."""
        return {name: self._layouts[name][1] for name in self._names() if name in self._layouts}

    def resolve_layers(self, x: torch.Tensor) -> list[str]:
        """Choose the target layers now (one forward for the automatic choice) and return their names."""
        if self._layers is None:
            x = check_input(x)
            with grad_capable(), frozen_model(self.model):
                self._layers = [auto_layer(self.model, prepare(x, model_device(self.model))[:1])]
        return self._names()

    def _named(self, spec: LayerSpec) -> tuple[str, nn.Module]:
        if isinstance(spec, str):
            return spec, find_layer(self.model, spec)
        if isinstance(spec, nn.Module):
            for name, module in self.model.named_modules():
                if module is spec and name:
                    return uncompiled_name(name), module
            raise ValueError(
                f"target_layers: the {type(spec).__name__} module given is not a sub-module of the model"
            )
        raise TypeError(f"target_layers: expected a module or a dotted name; got {type(spec).__name__}")

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        x: torch.Tensor,
        methods: str | CamMethod | Sequence[str | CamMethod] = "gradcam",
        targets: Targets = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        batch_size: int | None = None,
        eigen_sign: EigenSign = "max",
        seed: int | torch.Generator = 0,
        progress: Progress | None = None,
    ) -> CamMaps:
        """Compute maps for every method in ``methods`` on the batch ``x`` (B, C, H, W) or (B, C, D, H, W).

        Args:
            x: input batch on any device (moved to the model's device; maps come back on ``x.device``).
                Works inside ``torch.no_grad()``/``torch.inference_mode()`` and on inference tensors.
            methods: one name or several (see :data:`cams.METHODS`), or methods with options
                (:meth:`cams.CamMethod.with_options`).
            targets: anything :func:`cams.targets.resolve_targets` takes: ``None`` (each image's predicted
                class), a text form (``"pred"``, ``"3"``, ``"seg:3"``, ``"multilabel:all"``), an ``int``, one
                class per image (sequence, 1-D tensor or NumPy array), a callable ``output -> (B,)`` scores,
                one callable per image (pytorch-grad-cam's ``ClassifierOutputTarget`` style), or a
                :class:`cams.targets.Target` (segmentation, detection, multi-label, embeddings: see
                :mod:`cams.targets`). Perturbation methods
                call a batch callable on chunks of perturbed rows, so it must act row by row.
            aug_smooth: average over the six test-time augmentations of the reference (horizontal
                flip × multiply by 0.9, 1, 1.1), de-augmented; all six run as one batch.
            eigen_smooth: replace the channel sum by the first principal component of the weighted
                activations.
            batch_size: rows per forward for Score-CAM (default on the CPU: 8 masked images of 3×224², more of
                smaller ones, up to 256; 64 on accelerators) and Ablation-CAM (default: every channel of an image
                in one forward, up to 256 MiB of ablated activations).
            eigen_sign: sign rule of principal components, ``"max"`` (default: largest-magnitude value
                positive) or ``"none"`` (whatever sign ``torch.linalg.svd`` returns; numpy's SVD, which
                pytorch-grad-cam uses, picks the opposite sign for some images, so ``"none"`` does not
                reproduce the reference's eigen maps).
            seed: where the randomised methods (Smooth Grad-CAM++, SS-CAM, RandomCAM, ...) draw from: an int
                (default 0: the same maps at every call), or a ``torch.Generator``, from which one number is
                drawn per call (successive calls then differ). Each random input gets its own generator
                derived from it; the global RNG is never used.
            progress: called as ``progress(step, done, total)`` after each chunk of the long passes
                (Score-CAM's masked forwards, Ablation-CAM's ablated ones), ``step`` naming the method and
                layer; ``None`` (default) reports nothing. The command lines pass a printer
                (:class:`cams.io.ProgressPrinter`).

        Returns:
            :class:`CamMaps`: ``name -> (B, H, W)`` float32 in [0, 1].
        """
        specs = _methods(methods)
        x = check_input(x)
        if isinstance(targets, str):  # "seg:1", "multilabel:all", ...: one parser for every entry point
            targets = parse_target(targets)
        bad_size = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        if batch_size is not None and bad_size:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if eigen_sign not in ("max", "none"):
            raise ValueError(f"eigen_sign must be 'max' or 'none'; got {eigen_sign!r}")
        base_seed = _seed(seed)
        out_device = x.device
        device = model_device(self.model)
        with grad_capable(), frozen_model(self.model), autograd_kernels():
            x = prepare(x, device)
            if self._layers is None and any(s.needs_layers for s in specs):
                self._layers = [auto_layer(self.model, x[:1])]
            for spec in specs:
                if spec.needs_layers and len(self._layers or []) < spec.min_layers:
                    raise ValueError(
                        f"{spec.name} combines the maps of at least {spec.min_layers} target layers; got "
                        f"{self._names()}: pass target_layers=[...] with more layers"
                    )
            batch = x.shape[0]
            if aug_smooth:
                x = augment(x)
                targets = repeat_targets(targets, batch)
            maps, info, seconds, health = self._run(
                x, specs, targets, eigen_smooth, batch_size, eigen_sign, batch, base_seed, progress
            )
            if aug_smooth:
                maps = {k: deaugment(v, batch) for k, v in maps.items()}
                plain = plain_rows(batch)
                info = {k: (v[plain] if v is not None else None) for k, v in info.items()}
                health = {k: deaugment_reasons(v, batch) for k, v in health.items()}
        result = CamMaps({k: v.to(out_device) for k, v in maps.items()})
        result.classes, result.scores, result.logits = (
            None if info[k] is None else info[k].to(out_device) for k in ("classes", "scores", "logits")
        )
        result.seconds = seconds
        result.degenerate = health
        text = warning_text(health)
        if text is not None:
            warnings.warn(f"CamEngine: {text}", DegenerateMapWarning, stacklevel=2)
        return result

    def _run(
        self,
        x: torch.Tensor,
        specs: list[CamMethod],
        targets: Targets,
        eigen_smooth: bool,
        batch_size: int | None,
        sign: EigenSign,
        block: int,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> tuple[
        dict[str, torch.Tensor], dict[str, torch.Tensor | None], dict[str, float], dict[str, list[Degenerate | None]]
    ]:
        started = time.perf_counter()
        layer_list = self._layers if any(s.needs_layers for s in specs) else []
        assert layer_list is not None
        modules = [m for _, m in layer_list]
        inputs = {i.name: i for s in specs for i in s.declared_inputs}
        needs_grads = any(s.needs_grads for s in specs)
        needs_target = any(s.needs_target for s in specs)
        keep_graph = any(i.graph for i in inputs.values())
        second_order = any(i.second_order for i in inputs.values())
        rows = torch.arange(x.shape[0], device=x.device)

        records, taps, output = Records(0), {}, None
        if needs_target or layer_list or any(i.tap for i in inputs.values()):  # the Sobel map alone needs none
            with contextlib.ExitStack() as stack:
                names = [name for name, _ in layer_list]
                records = stack.enter_context(capture(modules, names, grad=needs_grads or keep_graph))
                taps = {
                    i.name: stack.enter_context(i.tap(self.model, layer_list)) for i in inputs.values() if i.tap
                }
                stack.enter_context(torch.no_grad())
                output = self.model(x)
        logits = readable_logits(output)
        logits = None if logits is None else logits.detach().float()

        target = None
        scores: torch.Tensor | None = None
        grads: list[torch.Tensor] | None = None
        if needs_target:
            target = resolve_targets(targets, x.shape[0], output)
            score_per_row = score_rows(target, output, rows, block)
            if needs_grads:
                grads = layer_gradients(score_per_row, records.outputs, self._names(), keep_graph, second_order)
            scores = score_per_row.detach().float()
        raw = [map_tensors(v, torch.Tensor.detach) for v in records.values]
        needs_maps = any(i.reads_feature_map for i in inputs.values()) or grads is not None
        layouts = [self._layout(x, i, r) for i, r in enumerate(raw)] if needs_maps else []
        acts = [layout.to_feature_map(v).float() for layout, v in zip(layouts, raw[: len(layouts)], strict=True)]
        graph_grads = grads if second_order else None
        if grads is not None:
            check_gradients(grads, self._names(), layouts)
            detached = [map_tensors(g, torch.Tensor.detach) for g in grads]
            grads = [layout.to_feature_map(g).float() for layout, g in zip(layouts, detached, strict=True)]
        state = Pass(
            model=self.model,
            x=x,
            layers=layer_list,
            raw=raw,
            acts=acts,
            grads=grads,
            target=target,
            scores=scores,
            batch_size=batch_size,
            progress=progress,
            layouts=layouts,
            output=output,
            outputs=records.outputs,
            graph_grads=graph_grads,
            taps=taps,
            seed=seed,
            explain=self._explainer(layer_list, eigen_smooth=eigen_smooth, eigen_sign=sign, batch_size=batch_size,
                                    seed=seed),
            inputs=inputs,
        )

        size = tuple(x.shape[2:])
        maps, health = {}, {}
        seconds = {"shared": time.perf_counter() - started}
        suggest = functools.cache(lambda: self._larger_grid(x[:1]))
        for spec in specs:
            started = time.perf_counter()
            layers = range(len(layer_list)) if spec.per_layer else range(1)
            made = [_layer_map(spec, state, i, size, eigen_smooth, sign, suggest) for i in layers]
            maps[spec.name] = aggregate_layers([cam for cam, _ in made], spec.aggregate)
            health[spec.name] = combine_layers([reasons for _, reasons in made], self._names())
            seconds[spec.name] = time.perf_counter() - started
        classes = target.classes if target is not None else None
        if classes is None and targets is None and logits is not None:
            classes = logits.argmax(dim=1)
        return maps, {"classes": classes, "scores": scores, "logits": logits}, seconds, health

    def _larger_grid(self, x: torch.Tensor) -> str:
        """What to explain instead of a target layer whose feature map has a single position at ``x``'s size: the
        layer the automatic choice takes (the last one with a larger grid), with its output shape."""
        try:
            name, module = auto_layer(self.model, x)
        except ValueError:
            size = tuple(x.shape[2:])
            return f"no layer of {type(self.model).__name__} has a larger grid at {size}: use larger images"
        if name in self._names():
            return ""
        shape = output_shape(self.model, module, x)
        return f"explain the last layer with a larger grid instead: target_layers={name!r}" + (
            f" (output {shape})" if shape is not None else ""
        )

    def _explainer(self, layers: Sequence[tuple[str, nn.Module]], **options: Any) -> Explain:
        """:data:`cams.passes.Explain` for a call: other images explained with this call's model, ``layers``,
        ``reshape_transform`` and ``options``, by one engine of their own (their layouts are read for their size),
        made on first use."""
        engines: list[CamEngine] = []

        def explain(x: torch.Tensor, method: str | CamMethod, target: Target) -> CamMaps:
            if not engines:
                engines.append(CamEngine(self.model, [m for _, m in layers], self.reshape_transform))
            with warnings.catch_warnings():  # a blank patch map is the wrapper's business: its own map is checked
                warnings.simplefilter("ignore", DegenerateMapWarning)
                return engines[0](x, methods=method, targets=target, **options)

        return explain

    def _layout(self, x: torch.Tensor, i: int, raw: Any) -> Layout:
        """The layout of target layer ``i``'s output, read once per input and output size."""
        assert self._layers is not None
        name, module = self._layers[i]
        key = (tuple(tuple(t.shape[1:]) for t in tensor_leaves(raw) or []), tuple(x.shape[1:]))
        if name not in self._layouts or self._layouts[name][0] != key:
            self._layouts[name] = (key, layout_of(self.model, name, module, raw, x, self.reshape_transform))
        return self._layouts[name][1]


# ---------------------------------------------------------------------- helpers
def _methods(methods: str | CamMethod | Sequence[str | CamMethod]) -> list[CamMethod]:
    names = [methods] if isinstance(methods, (str, CamMethod)) else list(methods)
    if not names:
        raise ValueError("methods: got an empty selection; pass a name such as 'gradcam'")
    specs: list[CamMethod] = []
    for name in names:
        spec = get_method(name, argument="methods")
        if spec in specs:
            continue
        if any(s.name == spec.name for s in specs):
            raise ValueError(
                f"methods: {spec.name!r} is given twice with different options; one call gives one map per name"
            )
        specs.append(spec)
    return specs


def _seed(seed: int | torch.Generator) -> int:
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 1 << 62, (1,), generator=seed, device=seed.device).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or a torch.Generator; got {seed!r}")
    return seed


def _layer_map(
    spec: CamMethod,
    state: Pass,
    i: int,
    size: tuple[int, ...],
    eigen_smooth: bool,
    sign: EigenSign,
    suggest: Callable[[], str] | None = None,
) -> tuple[torch.Tensor, list[Degenerate | None]]:
    """One layer's map of ``spec``: weigh, sum or project, ReLU, min-max, resize to ``size``; and the reason each
    image's map carries no information (:func:`cams.health.diagnose`, ``None`` where it does)."""
    args = [state.get(name, i, dict(spec.options)) for name in spec.inputs]
    out = spec.weigh(*args, **spec.kwargs_for(spec.weigh))
    project = spec.project or eigen_smooth
    before = out if spec.returns_map else sum_or_project(out, project, spec.eigen_sign or sign)
    cam = before.clamp_min(0) if spec.relu else before
    per_layer = spec.per_layer and i < len(state.layers)
    reasons = diagnose(
        spec.name,
        before,
        cam,
        layer=state.layers[i][0] if per_layer else None,
        acts=state.acts[i] if per_layer and "acts" in spec.inputs and i < len(state.acts) else None,
        grads=state.grads[i] if per_layer and "grads" in spec.inputs and state.grads is not None else None,
        projected=project and not spec.returns_map,
        suggest=suggest,
    )
    return resize(minmax(cam), size).float(), reasons


def check_input(x: Any) -> torch.Tensor:
    """``x`` itself, once it is checked to be a floating-point batch ``(B, C, H, W)`` or ``(B, C, D, H, W)``, B ≥ 1.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``x`` has another shape (with a hint for a missing batch dimension).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W); got {type(x).__name__}")
    if x.dim() not in (4, 5) or x.shape[0] == 0:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(
            f"x must have shape (B, C, H, W), or (B, C, D, H, W) for volumes, with B >= 1; got "
            f"{tuple(x.shape)}{hint}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
    return x
