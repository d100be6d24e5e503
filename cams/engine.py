"""The shared hooks-and-weights engine: one forward and one ``autograd.grad`` feed every method.

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
import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cams.methods import CamMethod, get_method
from cams.ops import EigenSign, minmax, resize, sum_or_project
from cams.state import frozen_model, model_device
from cams.targets import Scorer, Targets, resolve_targets

__all__ = ["CamEngine", "CamMaps", "find_layer"]

LayerSpec = nn.Module | str
_AUG_FACTORS = (0.9, 1.0, 1.1)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class CamMaps(dict):
    """``method name -> (B, H, W)`` float32 maps in [0, 1], plus what was explained.

    Attributes:
        classes: (B,) long, the class explained for each image (``None`` for callable targets).
        scores: (B,) float32, the target score of the un-augmented input (``None`` if no method needed it).
        logits: (B, K) float32 model output for the un-augmented input (``None`` if not a 2-D tensor).
    """

    classes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` called ``name`` (dotted, as in ``model.named_modules()``).

    Raises:
        ValueError: naming the bad value and the closest layer names.

    Example:
        >>> find_layer(nn.Sequential(nn.Conv2d(1, 1, 1)), "0")
        Conv2d(1, 1, kernel_size=(1, 1), stride=(1, 1))
    """
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.4)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"target_layers: {type(model).__name__} has no layer named {name!r}{hint}")


class CamEngine:
    """Class activation maps for ``model`` at ``target_layers`` from one shared pass.

    Args:
        model: any ``nn.Module`` (a LightningModule too). It is left exactly as found by every call:
            training flags restored, BatchNorm statistics and parameter ``.grad`` untouched, no hooks
            left, global RNG not consumed.
        target_layers: a module, a dotted name (``"layer4.1"``), or a list of those. ``None`` picks the
            last module whose output is a 4-D feature map with spatial size > 1 (found with one forward
            on the first call; adaptive pooling layers are skipped). Several layers are aggregated like
            pytorch-grad-cam (per-layer ReLU and min-max, resize, mean, min-max).
        reshape_transform: maps a layer output to (B, C, h, w), e.g. for vision transformers' tokens;
            applied to activations and gradients alike.

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
        if target_layers is not None:
            specs = [target_layers] if isinstance(target_layers, (str, nn.Module)) else list(target_layers)
            if not specs:
                raise ValueError("target_layers: got an empty list; pass None to choose automatically")
            self._layers = [self._named(spec) for spec in specs]

    # ------------------------------------------------------------------ layers
    @property
    def layer_names(self) -> list[str]:
        """Dotted names of the target layers (empty until an automatic choice has been made)."""
        return [name for name, _ in self._layers or []]

    def resolve_layers(self, x: torch.Tensor) -> list[str]:
        """Choose the target layers now (one forward for the automatic choice) and return their names."""
        if self._layers is None:
            x = _check_input(x)
            with _grad_capable(), frozen_model(self.model):
                self._layers = [_auto_layer(self.model, _prepare(x, model_device(self.model))[:1])]
        return self.layer_names

    def _named(self, spec: LayerSpec) -> tuple[str, nn.Module]:
        if isinstance(spec, str):
            return spec, find_layer(self.model, spec)
        if isinstance(spec, nn.Module):
            for name, module in self.model.named_modules():
                if module is spec and name:
                    return name, module
            raise ValueError(
                f"target_layers: the {type(spec).__name__} module given is not a sub-module of the model"
            )
        raise TypeError(f"target_layers: expected a module or a dotted name; got {type(spec).__name__}")

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        x: torch.Tensor,
        methods: str | Sequence[str] = "gradcam",
        targets: Targets = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        batch_size: int | None = None,
        eigen_sign: EigenSign = "max",
    ) -> CamMaps:
        """Compute maps for every method in ``methods`` on the batch ``x`` (B, C, H, W).

        Args:
            x: input batch on any device (moved to the model's device; maps come back on ``x.device``).
                Works inside ``torch.no_grad()``/``torch.inference_mode()`` and on inference tensors.
            methods: one name or several (see :data:`cams.METHODS`).
            targets: ``None`` (each image's predicted class), an ``int``, one class per image
                (sequence or 1-D tensor), a callable ``output -> (B,)`` scores, or one callable per image
                (pytorch-grad-cam's ``ClassifierOutputTarget`` style). Perturbation methods call a
                batch callable on chunks of perturbed rows, so it must act row by row.
            aug_smooth: average over the six test-time augmentations of the reference (horizontal
                flip × multiply by 0.9, 1, 1.1), de-augmented; all six run as one batch.
            eigen_smooth: replace the channel sum by the first principal component of the weighted
                activations.
            batch_size: rows per forward for Score-CAM (default 8 masked images on the CPU, 64 on
                accelerators) and Ablation-CAM
                (default: every channel of an image in one forward, up to 256 MiB of ablated activations).
            eigen_sign: sign rule of principal components, ``"max"`` (default: largest-magnitude value
                positive) or ``"none"`` (the solver's sign, as the reference).

        Returns:
            :class:`CamMaps`: ``name -> (B, H, W)`` float32 in [0, 1].
        """
        specs = _methods(methods)
        x = _check_input(x)
        bad_size = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        if batch_size is not None and bad_size:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if eigen_sign not in ("max", "none"):
            raise ValueError(f"eigen_sign must be 'max' or 'none'; got {eigen_sign!r}")
        out_device = x.device
        device = model_device(self.model)
        with _grad_capable(), frozen_model(self.model):
            x = _prepare(x, device)
            if self._layers is None:
                self._layers = [_auto_layer(self.model, x[:1])]
            batch = x.shape[0]
            if aug_smooth:
                x = torch.cat([_augment(x, flip, f) for flip in (False, True) for f in _AUG_FACTORS])
                targets = _repeat_targets(targets, len(_AUG_FACTORS) * 2, batch)
            maps, info = self._run(x, specs, targets, eigen_smooth, batch_size, eigen_sign, batch)
            if aug_smooth:
                maps = {k: _deaugment(v, batch) for k, v in maps.items()}
                plain = slice(batch, 2 * batch)  # (no flip, factor 1.0)
                info = {k: (v[plain] if v is not None else None) for k, v in info.items()}
        result = CamMaps({k: v.to(out_device) for k, v in maps.items()})
        result.classes, result.scores, result.logits = (
            None if info[k] is None else info[k].to(out_device) for k in ("classes", "scores", "logits")
        )
        return result

    def _run(
        self,
        x: torch.Tensor,
        specs: list[CamMethod],
        targets: Targets,
        eigen_smooth: bool,
        batch_size: int | None,
        sign: EigenSign,
        chunk: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
        assert self._layers is not None
        modules = [m for _, m in self._layers]
        needs_grads = any(s.needs_grads for s in specs)
        needs_target = needs_grads or any(s.perturbation for s in specs)
        batch = x.shape[0]
        rows = torch.arange(batch, device=x.device)

        with _capture(modules, self.layer_names, grad=needs_grads) as records, torch.no_grad():
            output = self.model(x)
        logits = output.detach().float() if isinstance(output, torch.Tensor) and output.dim() == 2 else None

        scorer: Scorer | None = None
        scores: torch.Tensor | None = None
        grads: list[torch.Tensor] | None = None
        if needs_target:
            scorer = resolve_targets(targets, output, batch)
            scorer.split = chunk
            score_rows = scorer(output, rows, main=True)
            if needs_grads:
                grads = _gradients(score_rows, records.outputs, self.layer_names)
            scores = score_rows.detach().float()
        acts = [self._reshape(v.detach()).float() for v in records.values]
        grads = [self._reshape(g).float() for g in grads] if grads is not None else None

        per_method: dict[str, list[torch.Tensor]] = {s.name: [] for s in specs}
        for i, (name, module) in enumerate(self._layers):
            for spec in specs:
                if spec.perturbation is not None:
                    assert scorer is not None and scores is not None
                    channel = self._channel_scores(
                        spec, x, module, name, records.values[i].detach(), acts[i], scorer, batch_size
                    )
                    weighted = spec.weigh(acts[i], channel, scores)
                else:
                    weighted = spec.weigh(acts[i], grads[i] if grads is not None else None)
                cam = sum_or_project(weighted, spec.project or eigen_smooth, sign).clamp_min(0)
                per_method[spec.name].append(resize(minmax(cam), tuple(x.shape[-2:])))
        maps = {k: minmax(torch.stack(v, dim=1).clamp_min(0).mean(dim=1)) for k, v in per_method.items()}
        classes = scorer.classes if scorer is not None else None
        if classes is None and targets is None and logits is not None:
            classes = logits.argmax(dim=1)
        return maps, {"classes": classes, "scores": scores, "logits": logits}

    def _reshape(self, t: torch.Tensor) -> torch.Tensor:
        if self.reshape_transform is not None:
            t = self.reshape_transform(t)
        if t.dim() != 4:
            raise ValueError(
                f"target layer output has shape {tuple(t.shape)}; CAMs need (B, C, h, w) feature maps — "
                "choose a convolutional layer or pass reshape_transform"
            )
        return t

    def _channel_scores(
        self,
        spec: CamMethod,
        x: torch.Tensor,
        module: nn.Module,
        name: str,
        raw: torch.Tensor,
        acts: torch.Tensor,
        scorer: Scorer,
        batch_size: int | None,
    ) -> torch.Tensor:
        if spec.perturbation == "mask_input":
            return _masked_input_scores(self.model, x, acts, scorer, batch_size)
        if self.reshape_transform is not None or raw.dim() != 4:
            raise ValueError(
                f"ablationcam ablates channels of a (B, C, h, w) layer output; layer {name!r} gives "
                f"{tuple(raw.shape)} (reshape_transform is not supported for ablation)"
            )
        if batch_size is None:
            per_row = raw[0].numel() * raw.element_size()
            batch_size = max(1, min(raw.shape[1], (256 << 20) // per_row))
        return _ablated_scores(self.model, module, x, raw, scorer, batch_size)


# ---------------------------------------------------------------------- helpers
def _methods(methods: str | Sequence[str]) -> list[CamMethod]:
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise ValueError("methods: got an empty selection; pass a name such as 'gradcam'")
    specs: list[CamMethod] = []
    for name in names:
        spec = get_method(name, argument="methods")
        if spec not in specs:
            specs.append(spec)
    return specs


def _check_input(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W); got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] == 0:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"x must have shape (B, C, H, W) with B >= 1; got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
    return x


def _prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A normal (not inference-mode) tensor on ``device`` that autograd may save."""
    x = x.detach().to(device)
    return x.clone() if x.is_inference() else x


@contextlib.contextmanager
def _grad_capable() -> Iterator[None]:
    """Leave ``no_grad``/``inference_mode`` (as Lightning validation uses) for the duration."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def _capture(modules: list[nn.Module], names: list[str], grad: bool) -> Iterator[_Records]:
    """Record each module's output for one forward; hooks are removed on exit, also on error.

    With ``grad`` the forward runs under ``no_grad`` and a pre-hook switches autograd on when the
    first target layer starts, so no graph is built for the layers before it and the backward
    stops at the target layers.

    A clone of the layer output travels on through the network. Gradients are taken with respect to
    the output itself; the activation *values* are read from the clone when the forward is over, so
    they include what in-place ops downstream did to them (DenseNet's ``F.relu(features, inplace=True)``),
    exactly as pytorch-grad-cam sees them.
    """
    records = _Records(len(modules))
    handles = []

    def pre_hook(module: nn.Module, args: Any) -> None:
        torch.set_grad_enabled(True)

    def make_hook(i: int) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"target layer {names[i]!r} returned a {type(output).__name__}; CAMs need a tensor "
                    "output — choose a layer that returns one"
                )
            if grad and not output.requires_grad:
                output = output.detach().requires_grad_()
            records.outputs[i] = output
            records.values[i] = output.clone()
            return records.values[i]

        return hook

    try:
        for i, module in enumerate(modules):
            if grad:
                handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(make_hook(i)))
        yield records
    finally:
        for handle in handles:
            handle.remove()
    missing = [names[i] for i, r in enumerate(records.outputs) if r is None]
    if missing:
        raise RuntimeError(f"target layer(s) {missing} did not run during the forward pass")


class _Records:
    """What one forward captured per target layer: the outputs (for gradients) and their final values."""

    def __init__(self, n: int) -> None:
        self.outputs: list[Any] = [None] * n
        self.values: list[Any] = [None] * n


def _gradients(scores: torch.Tensor, records: list[torch.Tensor], names: list[str]) -> list[torch.Tensor]:
    if not scores.requires_grad:
        raise RuntimeError(
            f"the target score does not depend on the target layers {names}; choose layers that the "
            "output is computed from (and a target that is not detached)"
        )
    grads = torch.autograd.grad(scores.sum(), records, allow_unused=True)
    return [torch.zeros_like(r) if g is None else g for r, g in zip(records, grads, strict=True)]


def _auto_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    chosen: list[nn.Module] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if (
            isinstance(output, torch.Tensor)
            and output.dim() == 4
            and output.shape[-1] * output.shape[-2] > 1
            and not isinstance(module, _POOLS)
        ):
            chosen.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not chosen:
        raise ValueError(
            f"target_layers=None: no layer of {type(model).__name__} produced a 4-D feature map with "
            "spatial size > 1; pass target_layers explicitly"
        )
    return names[id(chosen[-1])], chosen[-1]


def _augment(x: torch.Tensor, flip: bool, factor: float) -> torch.Tensor:
    return (x.flip(3) if flip else x) * factor


def _deaugment(maps: torch.Tensor, batch: int) -> torch.Tensor:
    per_aug = maps.view(2, len(_AUG_FACTORS), batch, *maps.shape[1:])
    unflipped = torch.stack([per_aug[0], per_aug[1].flip(-1)])
    return unflipped.mean(dim=(0, 1))


def _repeat_targets(targets: Targets, times: int, batch: int) -> Targets:
    if targets is None or isinstance(targets, int) or callable(targets):
        return targets
    if isinstance(targets, torch.Tensor):
        flat = targets.reshape(-1)
        return flat.repeat(times) if flat.numel() == batch else targets
    seq = list(targets)  # type: ignore[arg-type]
    return seq * times if len(seq) == batch else seq


def _masked_input_scores(
    model: nn.Module, x: torch.Tensor, acts: torch.Tensor, scorer: Scorer, batch_size: int | None
) -> torch.Tensor:
    """Score-CAM: target score of ``x`` masked by each upsampled, min-max scaled channel → (B, C).

    Masks are built chunk by chunk, so memory stays at ``batch_size`` images (default: 8 on the CPU,
    where small batches stay in cache, 64 elsewhere); on the CPU the masked images go in channels-last
    layout, which oneDNN convolves faster. A channel that is constant over the map gives an
    all-zero mask, hence the same all-zero input for every image: it is scored once, not once per
    channel (ReLU layers of trained networks have many such channels).
    """
    on_cpu = x.device.type == "cpu"
    if batch_size is None:
        batch_size = 8 if on_cpu else 64
    layout = torch.channels_last if on_cpu else torch.contiguous_format  # oneDNN convolutions run faster in NHWC
    batch, channels = acts.shape[:2]
    size = x.shape[-2:]
    flat_acts = acts.flatten(2)
    varies = (flat_acts.max(2).values != flat_acts.min(2).values).flatten()
    image = torch.arange(batch, device=x.device).repeat_interleave(channels)
    scores = torch.empty(batch * channels, device=x.device)
    with torch.inference_mode():
        constant = (~varies).nonzero()[:, 0]
        if len(constant):
            blank = _expand_rows(model(torch.zeros_like(x[:1])), len(constant))
            scores[constant] = scorer(blank, image[constant]).float()
        jobs = varies.nonzero()[:, 0]
        for start in range(0, len(jobs), batch_size):
            job = jobs[start : start + batch_size]
            b = image[job]
            mask = F.interpolate(acts.view(-1, 1, *acts.shape[2:])[job], size=size, mode="bilinear", align_corners=True)
            flat = mask.flatten(1)
            lo = flat.min(1).values.view(-1, 1, 1, 1)
            hi = flat.max(1).values.view(-1, 1, 1, 1)
            mask = (mask - lo) / (hi - lo + 1e-8)
            scores[job] = scorer(model((x[b] * mask.to(x.dtype)).contiguous(memory_format=layout)), b).float()
    return scores.view(batch, channels)


def _expand_rows(output: Any, n: int) -> Any:
    """Repeat a one-row model output ``n`` times (tensors, and tuples/lists/dicts of them)."""
    if isinstance(output, torch.Tensor):
        return output.expand(n, *output.shape[1:])
    if isinstance(output, (tuple, list)):
        return type(output)(_expand_rows(o, n) for o in output)
    if isinstance(output, dict):
        return {k: _expand_rows(v, n) for k, v in output.items()}
    return output


def _ablated_scores(
    model: nn.Module, module: nn.Module, x: torch.Tensor, raw: torch.Tensor, scorer: Scorer, batch_size: int
) -> torch.Tensor:
    """Ablation-CAM: target score with each channel of ``module``'s output ablated → (B, C).

    The ablated copies replace the layer's output through a temporary forward hook while the model
    runs on the single source image: the layers before the target run once per chunk instead of once
    per ablated channel, and broadcasting carries any skip connection around the target. Models where
    that cannot work (the forward fails or returns a different batch) fall back to a repeated input.
    """
    batch, channels = raw.shape[:2]
    scores = torch.empty(batch, channels, device=x.device)
    share_prefix = True
    with torch.no_grad():
        for b in range(batch):
            source = raw[b]
            value = 0.0 if bool(source.min() == 0) else float(source.min()) - 1e7
            for start in range(0, channels, batch_size):
                index = torch.arange(start, min(channels, start + batch_size), device=x.device)
                ablated = source.expand(len(index), *source.shape).clone()
                ablated[torch.arange(len(index), device=x.device), index] = value
                rows = torch.full((len(index),), b, device=x.device, dtype=torch.long)
                output = None
                if share_prefix:
                    try:
                        output = _forward_replacing(model, module, x[b : b + 1], ablated)
                    except RuntimeError:
                        output = None
                    if output is None or _rows(output) != len(index):
                        share_prefix, output = False, None
                if output is None:
                    repeated = x[b : b + 1].expand(len(index), *x.shape[1:])
                    output = _forward_replacing(model, module, repeated, ablated)
                scores[b, index] = scorer(output, rows).float()
    return scores


def _forward_replacing(
    model: nn.Module, module: nn.Module, x: torch.Tensor, replacement: torch.Tensor
) -> Any:
    handle = module.register_forward_hook(lambda mod, args, out: replacement)
    try:
        return model(x)
    finally:
        handle.remove()


def _rows(output: Any) -> int | None:
    if isinstance(output, torch.Tensor):
        return output.shape[0] if output.dim() > 0 else None
    if isinstance(output, (tuple, list)) and output:
        return _rows(output[0])
    if isinstance(output, dict) and output:
        return _rows(next(iter(output.values())))
    return None
