"""Everything a CAM method can ask for, computed at most once per call.

A method in :data:`cams.METHODS` names the inputs its weighing function takes (``CamMethod.inputs``);
the engine asks a :class:`Pass` for them, per target layer, and each is computed the first time a
method needs it:

- ``acts``: the layer's activations ``(B, C, *spatial)`` float32 (the shared forward);
- ``grads``: ``∂score/∂acts``, same shape (one ``autograd.grad``, shared by every gradient method);
- ``scores``: the target score of each image ``(B,)`` (free);
- ``mask_scores``: Score-CAM, the score of the input masked by each channel ``(B, C)`` (B·C forwards);
- ``ablation_scores``: Ablation-CAM, the score with each channel ablated ``(B, C)`` (B·C partial forwards).

To give a new method an input nobody computes yet, add a function ``(pass_, layer_index) -> Tensor``
to :data:`PROVIDERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cams.hooks import replacing_output
from cams.layout import Layout
from cams.targets import Target, select_rows

__all__ = ["PROVIDERS", "Pass", "Progress", "ablated_scores", "masked_input_scores"]

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
    _cache: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def get(self, name: str, layer: int) -> torch.Tensor:
        """The input ``name`` for target layer number ``layer``, computed once."""
        key = (name, layer)
        if key not in self._cache:
            self._cache[key] = PROVIDERS[name](self, layer)
        return self._cache[key]

    def reporter(self, method: str, layer: int) -> Callable[[int, int], None] | None:
        """``(done, total) -> None`` telling :attr:`progress` about ``method`` on layer ``layer``."""
        if self.progress is None:
            return None
        step, report = f"{method} on {self.layers[layer][0]}", self.progress
        return lambda done, total: report(step, done, total)


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


PROVIDERS: dict[str, Callable[[Pass, int], torch.Tensor]] = {
    "acts": _acts,
    "grads": _grads,
    "scores": _scores,
    "mask_scores": _mask_scores,
    "ablation_scores": _ablation_scores,
}
"""Input name → ``(pass, layer index) -> tensor``."""


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
) -> torch.Tensor:
    """Ablation-CAM: target score with each channel of ``module``'s output ablated → (B, C).

    Channels are ablated in the output's own layout, along ``channel_dim`` (1 for ``(B, C, h, w)``, the last
    for tokens ``(B, N, C)`` and channels-last ``(B, h, w, C)``: every token, prefix tokens included, as
    pytorch-grad-cam's ``AblationLayerVit``).

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
