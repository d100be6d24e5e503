"""Everything a CAM method can ask for, computed at most once per call.

A method in :data:`cams.METHODS` names the inputs its weighing function takes (``CamMethod.inputs``);
the engine asks a :class:`Pass` for them, per target layer, and each is computed the first time a
method needs it:

- ``acts``: the layer's activations ``(B, C, *spatial)`` float32 (the shared forward);
- ``grads``: ``∂score/∂acts``, same shape (one ``autograd.grad``, shared by every gradient method);
- ``scores``: the target score of each image ``(B,)`` (free);
- ``mask_scores``: Score-CAM, the score of the input masked by each channel ``(B, C)`` (B·C forwards);
- ``ablation_scores``: Ablation-CAM, the score with each channel ablated ``(B, C)`` (B·C partial forwards);
- more inputs of the methods added from pytorch-grad-cam and torchcam, in :data:`PROVIDERS` below (CAM's
  ``fc_weights``, ShapleyCAM's ``hvp``, Finer-CAM's ``finer_grads``, Smooth Grad-CAM++'s ``smooth_grads``,
  SS-CAM's and IS-CAM's channel scores, FullGrad's terms, LeGrad's relevance, SESS's fused maps, ...).

To give a new method an input nobody computes yet, add a function ``(pass_, layer_index) -> Tensor``
to :data:`PROVIDERS`. Its keyword-only parameters receive the asking method's options of the same names
(:attr:`cams.CamMethod.options`), and its result is cached per layer and option values. Random inputs draw
from :meth:`Pass.generator`, never from the global RNG. An input that needs the autograd graph of the shared
forward after the shared backward goes in :data:`GRAPH_INPUTS` (and :data:`SECOND_ORDER_INPUTS` if it
differentiates the gradients); one that must watch the shared forward goes in :data:`TAPS`; one that does not
use the target layers' feature maps goes in :data:`MAP_FREE_INPUTS`.
"""

from __future__ import annotations

import inspect
import warnings
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cams.hooks import replacing_output
from cams.layer_choice import find_layer
from cams.layout import Layout
from cams.targets import Target, select_rows

__all__ = [
    "GRAPH_INPUTS",
    "MAP_FREE_INPUTS",
    "PROVIDERS",
    "SECOND_ORDER_INPUTS",
    "TAPS",
    "Pass",
    "Progress",
    "ablated_scores",
    "accepted_options",
    "finer_gradients",
    "masked_input_scores",
]

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: how far a long pass is (``step`` names the method and layer)."""


@dataclass
class Pass:
    """One engine call's shared state: the input, what the forward captured, the target.

    Attributes:
        model: the model (in eval mode while the call runs).
        x: the input batch on the model's device (the six augmented copies stacked, with ``aug_smooth``).
        layers: ``(name, module)`` of each target layer.
        raw: each layer's output values as the model produced them (any layout).
        acts: each layer's activations as ``(B, C, *spatial)`` float32.
        grads: each layer's gradients, same shape (``None`` when no method needs them).
        target: the target of each row of ``x``.
        scores: ``(B,)`` target scores of the plain forward (``None`` when no method needs a target).
        batch_size: rows per forward for the perturbation passes (``None``: their defaults).
        progress: told how far the perturbation passes are (``None``: nothing is reported).
        layouts: how each layer's raw output became ``acts`` (:class:`cams.layout.Layout`); Ablation-CAM
            ablates channels along the raw output's channel dimension.
        reshape_transform: the user's ``reshape_transform`` (``None``: layouts found automatically), for the
            methods that run the engine again on other inputs (SESS's patches).
        output: the model output of the shared forward (graph-connected when a method keeps the graph).
        outputs: each layer's output as captured, the tensors ``grads`` are taken with respect to.
        graph_grads: ``grads`` before detaching, with their own graph (only for second-order inputs).
        taps: what each tap of :data:`TAPS` recorded during the shared forward, by input name.
        seed: the call's seed; :meth:`generator` derives every random input's generator from it.
        block: rows per copy of the batch (``x`` stacks six copies with ``aug_smooth``).
        eigen_smooth, eigen_sign: the call's principal-component options (for methods run on patches).
    """

    model: nn.Module
    x: torch.Tensor
    layers: Sequence[tuple[str, nn.Module]]
    raw: list[Any]
    acts: list[torch.Tensor]
    grads: list[torch.Tensor] | None
    target: Target | None
    scores: torch.Tensor | None
    batch_size: int | None = None
    progress: Progress | None = None
    layouts: Sequence[Layout] | None = None
    reshape_transform: Callable[[Any], torch.Tensor] | None = None
    output: Any = None
    outputs: list[torch.Tensor] | None = None
    graph_grads: list[torch.Tensor] | None = None
    taps: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    block: int | None = None
    eigen_smooth: bool = False
    eigen_sign: str = "max"
    _cache: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    def get(self, name: str, layer: int, options: dict[str, Any] | None = None) -> torch.Tensor:
        """The input ``name`` for target layer number ``layer``, computed once per set of options it takes."""
        provider = PROVIDERS[name]
        accepted = accepted_options(provider)
        kwargs = {k: v for k, v in (options or {}).items() if accepted is None or k in accepted}
        key = (name, layer, *sorted(kwargs.items(), key=lambda kv: kv[0]))
        try:
            hash(key)
        except TypeError:
            key = (name, layer, *((k, id(v)) for k, v in sorted(kwargs.items(), key=lambda kv: kv[0])))
        if key not in self._cache:
            self._cache[key] = provider(self, layer, **kwargs)
        return self._cache[key]

    def generator(self, name: str, layer: int = 0) -> torch.Generator:
        """A generator on ``x``'s device for the random input ``name`` of ``layer``, seeded from :attr:`seed`.

        Each input and layer has its own stream, so a method's map does not depend on which other methods
        the call computes.
        """
        salt = zlib.crc32(f"{name}/{layer}".encode())
        return torch.Generator(device=self.x.device).manual_seed((self.seed * 1_000_003 + salt) % (1 << 63))

    def reporter(self, method: str, layer: int) -> Callable[[int, int], None] | None:
        """``(done, total) -> None`` telling :attr:`progress` about ``method`` on layer ``layer``."""
        if self.progress is None:
            return None
        step, report = f"{method} on {self.layers[layer][0]}", self.progress
        return lambda done, total: report(step, done, total)

    def feature_map(self, layer: int, t: Any) -> torch.Tensor:
        """``t`` (layer ``layer``'s raw output, or a gradient with respect to it) as ``(B, C, *spatial)``."""
        return t if not self.layouts else self.layouts[layer].to_feature_map(t)


def _acts(p: Pass, i: int) -> torch.Tensor:
    return p.acts[i]


def _grads(p: Pass, i: int) -> torch.Tensor:
    assert p.grads is not None, "the engine runs the backward when a method asks for 'grads'"
    return p.grads[i]


def _scores(p: Pass, i: int) -> torch.Tensor:
    assert p.scores is not None, "the engine scores the target when a method needs it"
    return p.scores


def _mask_scores(p: Pass, i: int) -> torch.Tensor:
    assert p.target is not None
    return masked_input_scores(p.model, p.x, p.acts[i], p.target, p.batch_size, p.reporter("scorecam", i))


def _ablation_scores(p: Pass, i: int) -> torch.Tensor:
    assert p.target is not None
    name, module = p.layers[i]
    raw = p.raw[i]
    if not isinstance(raw, torch.Tensor):
        raise ValueError(
            f"ablationcam ablates channels of one layer output; layer {name!r} gives a {type(raw).__name__} of "
            "tensors (a feature pyramid): explain one of its levels, or use a gradient method"
        )
    channel_dim = 1 if p.layouts is None else p.layouts[i].channel_dim
    if channel_dim < 0 or raw.shape[channel_dim] != p.acts[i].shape[1]:
        raise ValueError(
            f"ablationcam ablates channels of the raw output of layer {name!r}, shape {tuple(raw.shape)}, but "
            f"no single dimension of it becomes the {p.acts[i].shape[1]} channels that reshape_transform "
            "returns; explain a layer whose output has a channel dimension"
        )
    batch_size = p.batch_size
    if batch_size is None:
        per_row = raw[0].numel() * raw.element_size()
        batch_size = max(1, min(raw.shape[channel_dim], (256 << 20) // per_row))
    return ablated_scores(
        p.model, module, p.x, raw, p.target, batch_size, p.reporter("ablationcam", i), channel_dim
    )


def accepted_options(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The option names ``fn`` takes: its keyword-only parameters (``None``: all, it has ``**options``).

    Example:
        >>> sorted(accepted_options(lambda acts, *, k, gamma=None: acts))
        ['gamma', 'k']
    """
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _rows(p: Pass) -> torch.Tensor:
    return torch.arange(p.x.shape[0], device=p.x.device)


def _fc_weights(p: Pass, i: int, *, fc_layer: str | None) -> torch.Tensor:
    """CAM: the fully connected layer's weights of each image's class → (B, C)."""
    assert p.target is not None
    classes = p.target.classes
    if classes is None:
        raise ValueError("cam reads the fully connected weights of a class; pass class targets (None, an int, "
                         "one class per image), not a callable")  # fmt: skip
    channels = p.acts[i].shape[1]
    name, fc = _fc_layer(p.model, fc_layer, channels)
    weight = fc.weight.detach().reshape(fc.weight.shape[0], -1).float()
    if weight.shape[1] != channels:
        raise ValueError(
            f"cam: fc_layer {name!r} takes {weight.shape[1]} features but layer {p.layers[i][0]!r} has {channels} "
            "channels; CAM needs global average pooling of the target layer followed by fc_layer"
        )
    classes = classes.to(weight.device)
    _check_gap_fc(p, i, name, fc, weight)
    return weight[classes]


def _fc_layer(model: nn.Module, name: str | None, channels: int) -> tuple[str, nn.Module]:
    if name is not None:
        return name, find_layer(model, name)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    if len(found) != 1:
        what = "no nn.Linear" if not found else f"{len(found)} nn.Linear layers ({[n for n, _ in found]})"
        raise ValueError(
            f"cam: found {what} taking the target layer's {channels} channels; CAM needs global average pooling "
            "followed by one fully connected layer — pass it with get_method('cam').with_options(fc_layer='fc')"
        )
    return found[0]


def _check_gap_fc(p: Pass, i: int, name: str, fc: nn.Module, weight: torch.Tensor) -> None:
    """Warn when the logits are not ``fc(mean(A))``: CAM's weights then do not explain the output."""
    if not isinstance(p.output, torch.Tensor) or p.output.dim() != 2 or p.output.shape[1] != weight.shape[0]:
        return
    pooled = p.acts[i].flatten(2).mean(dim=2)
    bias = getattr(fc, "bias", None)
    logits = pooled @ weight.T + (bias.detach().float() if bias is not None else 0.0)
    expected = p.output.detach().float()
    if not torch.allclose(logits, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max().clamp_min(1e-12))):
        warnings.warn(
            f"cam: the model's logits are not {name}(global average of {p.layers[i][0]!r}); CAM's weights do not "
            "explain this output (choose the layer just before global pooling, or use gradcam)",
            stacklevel=2,
        )


def _hvp(p: Pass, i: int) -> torch.Tensor:
    """ShapleyCAM: the Hessian-vector product ``(∂²y/∂A²) A`` → (B, C, *spatial)."""
    assert p.graph_grads is not None and p.outputs is not None
    grad, output = p.graph_grads[i], p.outputs[i]
    hvp = None
    if grad.requires_grad:
        (hvp,) = torch.autograd.grad(grad, output, grad_outputs=p.raw[i].to(grad.dtype), retain_graph=True,
                                     allow_unused=True)  # fmt: skip
    if hvp is None:  # the score is linear in the layer's output after it: no second-order term
        return torch.zeros_like(p.acts[i])
    return p.feature_map(i, hvp).float()


def _finer_grads(p: Pass, i: int, *, alpha: float, comparisons: Sequence[int]) -> torch.Tensor:
    assert p.outputs is not None and p.target is not None
    key = ("finer", alpha, tuple(comparisons))
    if key not in p._cache:
        grads = finer_gradients(p.output, p.outputs, p.target, alpha=alpha, comparisons=comparisons)
        p._cache[key] = [p.feature_map(j, g).float() for j, g in enumerate(grads)]
    return p._cache[key][i]


def finer_gradients(
    output: Any, outputs: Sequence[torch.Tensor], target: Target, *, alpha: float, comparisons: Sequence[int]
) -> list[torch.Tensor]:
    """Finer-CAM: gradients of pytorch-grad-cam's ``FinerWeightedTarget`` score with respect to ``outputs``.

    For each row, with logits ``y`` and main class ``m`` (the target's class, or the prediction), the
    comparison classes ``d_j`` are those at the ranks ``comparisons`` (default 1, 2, 3) when the classes
    are sorted by ``|y − y_m|`` (rank 0 is ``m``); ``w_j = softmax(y)_{d_j}`` and the score is
    ``Σ_j w_j (y_m − α y_{d_j}) / (Σ_j w_j + 1e-9)``, differentiated through ``w`` as well.
    """
    from cams.targets import logits_of

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"finercam: alpha={alpha!r}; expected a number")
    classes = target.classes
    if classes is None:
        raise ValueError("finercam compares classes; pass class targets (None, an int, one class per image)")
    logits = logits_of(output, "targets")
    y = logits.float()
    main = classes.to(y.device)
    ranks = [int(r) for r in comparisons]
    valid = [r for r in ranks if 0 < r < y.shape[1]] if ranks else []
    if not valid:
        raise ValueError(f"finercam: comparisons={tuple(comparisons)!r} selects no class of {y.shape[1]}; use ranks "
                         "from 1 (the closest class) up")  # fmt: skip
    with torch.no_grad():
        distance = (y - y.gather(1, main[:, None])).abs()
        distance.scatter_(1, main[:, None], -1.0)
        order = distance.argsort(dim=1, stable=True)
    others = order[:, valid]
    probs = y.softmax(dim=1).gather(1, others)
    gap = y.gather(1, main[:, None]) - alpha * y.gather(1, others)
    score = (probs * gap).sum(dim=1) / (probs.sum(dim=1) + 1e-9)
    grads = torch.autograd.grad(score.sum(), list(outputs), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads, strict=True)]


def _smooth_grads(p: Pass, i: int, *, num_samples: int, std: float) -> torch.Tensor:
    from cams.noise import noisy_gradient_moments

    assert p.target is not None
    key = ("smooth_grads", num_samples, std)
    if key not in p._cache:
        p._cache[key] = noisy_gradient_moments(
            p.model, p.layers, p.x, p.target, num_samples=num_samples, std=std,
            generator=p.generator("smooth_grads"), rows_per_pass=p.batch_size,
            to_feature_maps=[layout.to_feature_map for layout in p.layouts] if p.layouts else None,
        )  # fmt: skip
    return p._cache[key][i]


def _smoothed_mask_scores(p: Pass, i: int, *, num_samples: int, std: float) -> torch.Tensor:
    from cams.noise import smoothed_mask_scores

    assert p.target is not None and p.scores is not None
    return smoothed_mask_scores(p.model, p.x, p.acts[i], p.target, p.scores, num_samples=num_samples, std=std,
                                generator=p.generator("smoothed_mask_scores", i), batch_size=p.batch_size)  # fmt: skip


def _integrated_mask_scores(p: Pass, i: int, *, num_samples: int) -> torch.Tensor:
    from cams.noise import integrated_mask_scores

    assert p.target is not None and p.scores is not None
    return integrated_mask_scores(p.model, p.x, p.acts[i], p.target, p.scores, num_samples=num_samples,
                                  batch_size=p.batch_size)  # fmt: skip


def _random_weights(p: Pass, i: int) -> torch.Tensor:
    """RandomCAM: ``U(-1, 1)`` weights per image and channel → (B, C), from the call's seeded generator."""
    shape = p.acts[i].shape[:2]
    return torch.rand(shape, generator=p.generator("random_weights", i), device=p.x.device) * 2 - 1


def _image(p: Pass, i: int) -> torch.Tensor:
    return p.x


def _fullgrad(p: Pass, i: int) -> torch.Tensor:
    from cams.bias_gradients import full_gradient_terms

    assert p.target is not None
    return full_gradient_terms(p.model, p.x, p.target)


def _legrad(p: Pass, i: int, *, score_projection: Callable[[torch.Tensor], torch.Tensor] | None,
            prefix_tokens: int | None) -> torch.Tensor:  # fmt: skip
    from cams.attention_maps import legrad_relevance

    assert p.target is not None and p.outputs is not None
    return legrad_relevance(p.model, p.outputs, p.taps["legrad"], p.target, p.x.shape[2:],
                            score_projection=score_projection, prefix_tokens=prefix_tokens)  # fmt: skip


def _sess(p: Pass, i: int, **options: Any) -> torch.Tensor:
    from cams.methods.meta import sess_maps

    return sess_maps(p, **options)


def _attention_tap(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> AbstractContextManager[Any]:
    from cams.attention_maps import attention_tap

    return attention_tap(model, layers)


PROVIDERS: dict[str, Callable[..., torch.Tensor]] = {
    "acts": _acts,
    "grads": _grads,
    "scores": _scores,
    "mask_scores": _mask_scores,
    "ablation_scores": _ablation_scores,
    "fc_weights": _fc_weights,
    "hvp": _hvp,
    "finer_grads": _finer_grads,
    "smooth_grads": _smooth_grads,
    "smoothed_mask_scores": _smoothed_mask_scores,
    "integrated_mask_scores": _integrated_mask_scores,
    "random_weights": _random_weights,
    "image": _image,
    "fullgrad": _fullgrad,
    "legrad": _legrad,
    "sess": _sess,
}
"""Input name → ``(pass, layer index, **options) -> tensor``."""

#: inputs that differentiate the shared forward's graph again after the shared backward
GRAPH_INPUTS = frozenset({"hvp", "finer_grads", "legrad"})
#: inputs that differentiate the shared gradients themselves (the shared backward keeps its own graph)
SECOND_ORDER_INPUTS = frozenset({"hvp"})
#: inputs that do not use the target layers' feature maps (``(B, C, *spatial)``)
MAP_FREE_INPUTS = frozenset({"image", "fullgrad", "legrad", "sess", "scores"})
#: inputs that watch the shared forward: ``name -> (model, layers) -> context manager`` yielding what they saw
TAPS: dict[str, Callable[[nn.Module, Sequence[tuple[str, nn.Module]]], AbstractContextManager[Any]]] = {
    "legrad": _attention_tap,
}


def masked_input_scores(
    model: nn.Module,
    x: torch.Tensor,
    acts: torch.Tensor,
    target: Target,
    batch_size: int | None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Score-CAM: target score of ``x`` masked by each upsampled, min-max scaled channel → (B, C).

    Masks are built chunk by chunk, so memory stays at ``batch_size`` images (default: 8 on the CPU,
    where small batches stay in cache, 64 elsewhere); on the CPU the masked images go in channels-last
    layout, which oneDNN convolves faster. A channel that is constant over the map gives an
    all-zero mask, hence the same all-zero input for every image: it is scored once, not once per
    channel (ReLU layers of trained networks have many such channels). ``progress(done, total)`` is
    called after each chunk, counting masked images.
    """
    on_cpu = x.device.type == "cpu"
    if batch_size is None:
        batch_size = 8 if on_cpu else 64
    # oneDNN convolutions run faster in NHWC
    layout = torch.channels_last if on_cpu and x.dim() == 4 else torch.contiguous_format
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    batch, channels = acts.shape[:2]
    size = x.shape[2:]
    flat_acts = acts.flatten(2)
    varies = (flat_acts.max(2).values != flat_acts.min(2).values).flatten()
    image = torch.arange(batch, device=x.device).repeat_interleave(channels)
    scores = torch.empty(batch * channels, device=x.device)
    with torch.inference_mode():
        constant = (~varies).nonzero()[:, 0]
        if len(constant):
            blank = _expand_rows(model(torch.zeros_like(x[:1])), len(constant))
            scores[constant] = target(blank, image[constant]).float()
        jobs = varies.nonzero()[:, 0]
        for start in range(0, len(jobs), batch_size):
            job = jobs[start : start + batch_size]
            b = image[job]
            mask = F.interpolate(acts.reshape(-1, 1, *acts.shape[2:])[job], size=size, mode=mode, align_corners=True)
            flat = mask.flatten(1)
            shape = (-1,) + (1,) * (mask.dim() - 1)
            lo = flat.min(1).values.view(shape)
            hi = flat.max(1).values.view(shape)
            mask = (mask - lo) / (hi - lo + 1e-8)
            scores[job] = target(model((x[b] * mask.to(x.dtype)).contiguous(memory_format=layout)), b).float()
            if progress is not None:
                progress(start + len(job), len(jobs))
    return scores.view(batch, channels)


def _expand_rows(output: Any, n: int) -> Any:
    """Repeat a one-row model output ``n`` times (tensors, tuples/lists/dicts of them, one-dict-per-image lists)."""
    if isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict):
        return output * n  # a detector's output: one dict per image
    if isinstance(output, torch.Tensor):
        return output.expand(n, *output.shape[1:])
    if isinstance(output, (tuple, list)):
        return type(output)(_expand_rows(o, n) for o in output)
    if isinstance(output, dict):
        return {k: _expand_rows(v, n) for k, v in output.items()}
    return output


def ablated_scores(
    model: nn.Module,
    module: nn.Module,
    x: torch.Tensor,
    raw: torch.Tensor,
    target: Target,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    channel_dim: int = 1,
    fill: float | None = None,
) -> torch.Tensor:
    """Ablation-CAM: target score with each channel of ``module``'s output ablated → (B, C).

    An ablated channel is set to ``fill``; by default to 0, or to ``min - 1e7`` in an image whose layer
    output has no zero (the reference's rule). XGrad-CAM's sensitivity axiom removes channels: ``fill=0``.

    The ablated copies replace the layer's output through a temporary forward hook while the model
    runs on the single source image: the layers before the target run once per chunk instead of once
    per ablated channel, and broadcasting carries any skip connection around the target. Models where
    that cannot work (the forward fails or returns a different batch) fall back to a repeated input.

    Channels are ablated in the output's own layout, along ``channel_dim`` (1 for ``(B, C, h, w)``, the last
    for tokens ``(B, N, C)`` and channels-last ``(B, h, w, C)``: every token, prefix tokens included, as
    pytorch-grad-cam's ``AblationLayerVit``). ``progress(done, total)`` is called after each chunk, counting
    ablated channels over the batch.
    """
    batch, channels = raw.shape[0], raw.shape[channel_dim]
    scores = torch.empty(batch, channels, device=x.device)
    share_prefix = True
    with torch.no_grad():
        for b in range(batch):
            source = raw[b]
            if fill is not None:
                value = float(fill)
            else:
                value = 0.0 if bool(source.min() == 0) else float(source.min()) - 1e7
            for start in range(0, channels, batch_size):
                index = torch.arange(start, min(channels, start + batch_size), device=x.device)
                ablated = source.expand(len(index), *source.shape).clone()
                ablated.movedim(channel_dim % raw.dim(), 1)[torch.arange(len(index), device=x.device), index] = value
                rows = torch.full((len(index),), b, device=x.device, dtype=torch.long)
                output = None
                if share_prefix:
                    try:
                        with replacing_output(module, ablated):
                            output = model(x[b : b + 1])
                    except RuntimeError:
                        output = None
                    if output is None or _rows(output) != len(index):
                        share_prefix, output = False, None
                if output is None:
                    repeated = x[b : b + 1].expand(len(index), *x.shape[1:])
                    with replacing_output(module, ablated):
                        output = model(repeated)
                scores[b, index] = target(output, rows).float()
                if progress is not None:
                    progress(b * channels + int(index[-1]) + 1, batch * channels)
    return scores


def _rows(output: Any) -> int | None:
    if isinstance(output, torch.Tensor):
        return output.shape[0] if output.dim() > 0 else None
    if isinstance(output, list) and output and all(isinstance(o, dict) for o in output):
        return len(output)  # a detector's output: one dict per image
    if isinstance(output, (tuple, list)) and output:
        return _rows(output[0])
    if isinstance(output, dict) and output:
        return _rows(next(iter(output.values())))
    return None


def score_rows(target: Target, output: Any, images: torch.Tensor, block: int) -> torch.Tensor:
    """Score the plain forward's rows, ``block`` rows (one copy of the batch) at a time.

    With ``aug_smooth`` the forward stacks six copies of the batch; a user's callable written for one
    batch (``lambda out: out[torch.arange(B), classes]``) then still sees batches of ``B`` rows.
    """
    if len(images) <= block:
        return target(output, images)
    return torch.cat([
        target(select_rows(output, slice(i, i + block)), images[i : i + block]) for i in range(0, len(images), block)
    ])
