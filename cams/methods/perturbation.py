"""Perturbation methods: channel weights from how the target score reacts to each channel.

The ``channel_scores`` (B, C) — the target score with the input masked by each upsampled channel
(Score-CAM, :func:`masked_input_scores`: the ``mask_scores`` input) or with each channel ablated
(Ablation-CAM, :func:`ablated_scores`: ``ablation_scores``) — are measured in batched forwards that reuse
the captured activations, and ``base_scores`` (B,) come from the plain forward. The weighing functions turn
them into weighted activations (B, C, *spatial). SS-CAM's and IS-CAM's noisy and path-integrated channel
scores are computed in :mod:`cams.noise`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cams.hooks import replacing_output
from cams.passes import Input, Pass, expand_rows
from cams.targets import Target

__all__ = [
    "ABLATION_SCORES",
    "CPU_CHUNK_VALUES",
    "MASK_SCORES",
    "ablated_scores",
    "ablation_cam",
    "is_cam",
    "masked_input_scores",
    "replaced_forward",
    "score_cam",
    "ss_cam",
]


def score_cam(acts: torch.Tensor, channel_scores: torch.Tensor, base_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPRW 2020, https://arxiv.org/abs/1910.01279).

    ``M_k`` = channel ``k`` upsampled (bilinear, corners aligned) and min-max scaled;
    ``s_k = y(X ⊙ M_k)``;  ``α = softmax_k(s)``;  map ``= ReLU(Σ_k α_k A_k)``.

    Example:
        >>> w = score_cam(torch.ones(1, 2, 1, 1), torch.tensor([[0.0, 0.0]]), torch.tensor([1.0]))
        >>> w.flatten().tolist()
        [0.5, 0.5]
    """
    weights = torch.softmax(channel_scores, dim=1)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts


def ablation_cam(acts: torch.Tensor, channel_scores: torch.Tensor, base_scores: torch.Tensor) -> torch.Tensor:
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020, https://openaccess.thecvf.com/content_WACV_2020/
    papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf).

    ``s_k`` = target score with channel ``k`` of the layer set to zero (to ``min − 1e7`` when the
    layer has negative values); ``α_k = (y − s_k) / y``;  map ``= ReLU(Σ_k α_k A_k)``.

    Where ``y = 0`` (a ReLU before the logits gives such scores) the relative drop is undefined; the
    weights are then the drops themselves, ``α_k = y − s_k`` — the same ranking of channels, and the scale
    is removed by the min-max normalisation (the reference returns NaN maps there).

    ``y − s_k`` is a difference of two nearly equal float32 scores, divided by ``y``: the weights are
    computed, and the activations weighted, in float64, so that no rounding is added beyond what the
    scores themselves carry.

    Example:
        >>> w = ablation_cam(torch.ones(1, 2, 1, 1), torch.tensor([[1.0, 2.0]]), torch.tensor([2.0]))
        >>> w.flatten().tolist()
        [0.5, 0.0]
        >>> ablation_cam(torch.ones(1, 2, 1, 1), torch.tensor([[-1.0, 0.5]]), torch.tensor([0.0])).flatten().tolist()
        [1.0, -0.5]
    """
    y = base_scores.double()[:, None]
    drop = y - channel_scores.double()
    weights = torch.where(y != 0, drop / torch.where(y != 0, y, 1.0), drop)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts.double()


def ss_cam(acts: torch.Tensor, mean_score_gains: torch.Tensor) -> torch.Tensor:
    """SS-CAM (Wang et al. 2020, https://arxiv.org/abs/2006.14255), as torchcam's ``SSCAM``.

    ``M_k`` = channel ``k`` min-max scaled, then upsampled (bilinear, half-pixel); with ``N`` noise draws
    ``δ ~ N(0, σ²)`` per pixel, ``s_k = mean_n [y(X ⊙ (M_k + δ_n)) − y(X)]`` (``mean_score_gains``, (B, C));
    ``α = softmax_k(s)``;  map ``= ReLU(Σ_k α_k A_k)``.

    Example:
        >>> ss_cam(torch.ones(1, 2, 1, 1), torch.tensor([[0.0, 0.0]])).flatten().tolist()
        [0.5, 0.5]
    """
    weights = torch.softmax(mean_score_gains, dim=1)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts


def is_cam(acts: torch.Tensor, mean_score_gains: torch.Tensor) -> torch.Tensor:
    """IS-CAM (Naidu et al. 2020, https://arxiv.org/abs/2010.03023), as torchcam's ``ISCAM``.

    ``M_k`` as in SS-CAM, without noise; for ``i = 1..N`` the input is scaled along the path
    ``c_i = Σ_{j≤i} j/N``: ``s_k = mean_i [y(c_i · (X ⊙ M_k)) − y(X)]`` (``mean_score_gains``, (B, C));
    ``α = softmax_k(s)``;  map ``= ReLU(Σ_k α_k A_k)``. Deterministic: nothing is drawn at random.

    Example:
        >>> is_cam(torch.ones(1, 2, 1, 1), torch.tensor([[0.0, 0.0]])).flatten().tolist()
        [0.5, 0.5]
    """
    weights = torch.softmax(mean_score_gains, dim=1)
    return weights.view(*weights.shape, *(1,) * (acts.dim() - 2)) * acts


CPU_CHUNK_VALUES = 8 * 3 * 224 * 224
"""Input values per Score-CAM forward on the CPU when ``batch_size`` is not given (8 images of 3×224²)."""


def masked_input_scores(
    model: nn.Module,
    x: torch.Tensor,
    acts: torch.Tensor,
    target: Target,
    batch_size: int | None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Score-CAM: target score of ``x`` masked by each upsampled, min-max scaled channel → (B, C).

    Masks are built chunk by chunk, so memory stays at ``batch_size`` images (default on the CPU: as many
    images as hold :data:`CPU_CHUNK_VALUES` values, 8 at 3×224² — small chunks stay in cache — up to 256 small
    images, whose forwards would otherwise be mostly per-call overhead (a 64×64 one-channel batch of 32 images
    at 64 channels: 2.5–4× faster than 8 per chunk); 64 elsewhere); on the CPU the masked images go in
    channels-last layout, which oneDNN convolves faster. A channel that is constant over the map gives an
    all-zero mask, hence the same all-zero input for every image: it is scored once, not once per
    channel (ReLU layers of trained networks have many such channels). ``progress(done, total)`` is
    called after each chunk, counting masked images.
    """
    on_cpu = x.device.type == "cpu"
    if batch_size is None:
        batch_size = max(8, min(256, CPU_CHUNK_VALUES // max(x[0].numel(), 1))) if on_cpu else 64
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
            blank = expand_rows(model(torch.zeros_like(x[:1])), len(constant))
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
                output, share_prefix = replaced_forward(model, module, x[b : b + 1], ablated, share_prefix)
                scores[b, index] = target(output, rows).float()
                if progress is not None:
                    progress(b * channels + int(index[-1]) + 1, batch * channels)
    return scores


def replaced_forward(
    model: nn.Module, module: nn.Module, image: torch.Tensor, replacement: torch.Tensor, share_prefix: bool = True
) -> tuple[Any, bool]:
    """The model output with ``module``'s output replaced by ``replacement`` (``n`` rows), and whether the
    layers before ``module`` could run once, on ``image`` (one row).

    With ``share_prefix`` the model runs on ``image`` alone and broadcasting carries any skip connection
    around the layer to the ``n`` rows; where that fails (the forward raises or returns another number of
    rows) it runs again on ``image`` repeated ``n`` times, and ``False`` is returned so that the caller's
    next chunks go that way at once. Ablation-CAM's and Recipro-CAM's partial forwards.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> output, shared = replaced_forward(net, net[0], torch.zeros(1, 2), torch.ones(4, 3))
        >>> output.shape, shared
        (torch.Size([4, 1]), True)
    """
    n = len(replacement)
    if share_prefix:
        try:
            with replacing_output(module, replacement):
                output = model(image)
        except RuntimeError:
            output = None
        if output is not None and _output_rows(output) == n:
            return output, True
    with replacing_output(module, replacement):
        return model(image.expand(n, *image.shape[1:])), False


def _output_rows(output: Any) -> int | None:
    """How many rows a model output has (``None``: none can be read, e.g. a 0-d tensor)."""
    if isinstance(output, torch.Tensor):
        return output.shape[0] if output.dim() > 0 else None
    if isinstance(output, list) and output and all(isinstance(o, dict) for o in output):
        return len(output)  # a detector's output: one dict per image
    if isinstance(output, (tuple, list)) and output:
        return _output_rows(output[0])
    if isinstance(output, dict) and output:
        return _output_rows(next(iter(output.values())))
    return None


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


#: Score-CAM: the target score of the input masked by each channel ``(B, C)``
MASK_SCORES = Input("mask_scores", _mask_scores)
#: Ablation-CAM: the target score with each channel of the layer ablated ``(B, C)``
ABLATION_SCORES = Input("ablation_scores", _ablation_scores)
