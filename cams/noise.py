"""Noise- and path-averaged passes: Smooth Grad-CAM++'s gradient moments, SS-CAM's and IS-CAM's channel scores.

They are the ``smooth_grads``, ``smoothed_mask_scores`` and ``integrated_mask_scores`` inputs, declared
here (:data:`SMOOTH_GRADS`, :data:`SMOOTHED_MASK_SCORES`, :data:`INTEGRATED_MASK_SCORES`).

Every sample of every image goes into as few forwards as memory allows: the ``N × B`` noisy copies of
Smooth Grad-CAM++ and the ``N × B × C`` masked images of SS-CAM/IS-CAM are rows of chunked batches.
Randomness comes only from the ``torch.Generator`` passed in, never from the global RNG. Noise is drawn
sample by sample in the order torchcam draws it (a whole ``(B, C, H, W)`` tensor per sample), so a
generator seeded like torchcam's global RNG gives torchcam's noise (when ``H·W`` is a multiple of 16, as
PyTorch's CPU normal sampler fills blocks of 16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cams.hooks import capture
from cams.passes import Input, Pass, expand_rows
from cams.targets import Target

__all__ = [
    "INTEGRATED_MASK_SCORES",
    "SMOOTHED_MASK_SCORES",
    "SMOOTH_GRADS",
    "check_samples",
    "integrated_mask_scores",
    "noisy_gradient_moments",
    "smoothed_mask_scores",
]


def check_samples(method: str, num_samples: object, std: object = 1.0) -> None:
    """Reject a non-positive number of samples or a negative noise level, naming the method and option."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"{method}: num_samples={num_samples!r}; expected a positive int")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
        raise ValueError(f"{method}: std={std!r}; expected a non-negative number")


def noisy_gradient_moments(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    x: torch.Tensor,
    target: Target,
    *,
    num_samples: int,
    std: float,
    generator: torch.Generator,
    rows_per_pass: int | None = None,
    to_feature_maps: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """Means of ``g, g², g³`` over ``num_samples`` noisy copies ``x + N(0, std²)`` → per layer (3, B, C, *spatial).

    ``g`` is the gradient of the target score of a noisy copy with respect to the layer's output. The
    ``num_samples × B`` copies go through the network ``rows_per_pass`` at a time (default: all of them,
    at most 64 per forward), each forward with autograd on only from the first target layer and one
    ``autograd.grad`` for every layer.
    """
    check_samples("smoothgradcampp", num_samples, std)
    batch = x.shape[0]
    total = num_samples * batch
    rows = rows_per_pass or min(total, 64)
    names = [name for name, _ in layers]
    modules = [module for _, module in layers]
    sums: list[torch.Tensor | None] = [None] * len(layers)
    for start in range(0, total, rows):
        index = torch.arange(start, min(total, start + rows), device=x.device)
        images = index % batch
        noise = torch.randn((len(index), *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
        with capture(modules, names, grad=True) as records, torch.no_grad():
            output = model(x[images] + noise * std)
        scores = target(output, images)
        grads = torch.autograd.grad(scores.sum(), records.outputs, allow_unused=True)
        for i, (record, grad) in enumerate(zip(records.outputs, grads, strict=True)):
            g = torch.zeros_like(record) if grad is None else grad
            g = (to_feature_maps[i](g) if to_feature_maps is not None else g).float()
            powers = torch.stack([g, g * g, g * g * g])
            if sums[i] is None:
                sums[i] = powers.new_zeros((3, batch, *g.shape[1:]))
            sums[i].index_add_(1, images, powers)  # type: ignore[union-attr]
    return [s / num_samples for s in sums if s is not None]


def _normalised_masks(acts: torch.Tensor, size: torch.Size) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchcam's masks: each channel min-max scaled (``(a − min) / (max(a − min) + 1e-8)``), then upsampled.

    Returns ``masks(rows) -> (len(rows), 1, *size)`` for flat ``b·C + c`` row indices, upsampled on demand
    (bilinear/trilinear, half-pixel centres), so at most one chunk of full-size masks exists at a time.
    """
    flat = acts.reshape(acts.shape[0] * acts.shape[1], 1, *acts.shape[2:]).float()
    dims = tuple(range(2, flat.dim()))
    flat = flat - flat.amin(dim=dims, keepdim=True)
    flat = flat / (flat.amax(dim=dims, keepdim=True) + 1e-8)
    mode = "bilinear" if flat.dim() == 4 else "trilinear"
    return lambda rows: F.interpolate(flat[rows], size=tuple(size), mode=mode, align_corners=False)


def _chunk(x: torch.Tensor, batch_size: int | None) -> tuple[int, torch.memory_format]:
    """Rows per forward and memory layout: the pixels of 8 channels-last 224² images on the CPU (cache-friendly),
    of 64 elsewhere."""
    on_cpu = x.device.type == "cpu"
    layout = torch.channels_last if on_cpu and x.dim() == 4 else torch.contiguous_format
    if batch_size is None:
        batch_size = max(1, (8 if on_cpu else 64) * 224 * 224 // x.shape[2:].numel())
    return batch_size, layout


def smoothed_mask_scores(
    model: nn.Module,
    x: torch.Tensor,
    acts: torch.Tensor,
    target: Target,
    base_scores: torch.Tensor,
    *,
    num_samples: int,
    std: float,
    generator: torch.Generator,
    batch_size: int | None = None,
) -> torch.Tensor:
    """SS-CAM: ``mean_n [y(X ⊙ (M_k + δ_n)) − y(X)]`` for each image and channel → (B, C).

    ``M_k`` are torchcam's normalised, upsampled channel masks, ``δ_n ~ N(0, std²)`` one draw per pixel of
    every mask of every sample (in torchcam's order: sample, image, channel, pixel). All
    ``num_samples × B × C`` masked images are scored in chunks of ``batch_size``.
    """
    check_samples("sscam", num_samples, std)
    batch, channels = acts.shape[:2]
    per_sample = batch * channels
    masks = _normalised_masks(acts, x.shape[2:])
    rows, layout = _chunk(x, batch_size)
    gains = torch.zeros(per_sample, device=x.device)
    total = num_samples * per_sample
    with torch.inference_mode():
        for start in range(0, total, rows):
            job = torch.arange(start, min(total, start + rows), device=x.device)
            bc = job % per_sample
            images = bc // channels
            mask = masks(bc)
            mask = mask + std * torch.randn(mask.shape, generator=generator, device=x.device)
            inputs = (x[images] * mask.to(x.dtype)).contiguous(memory_format=layout)
            gains.index_add_(0, bc, target(model(inputs), images).float() - base_scores[images])
    return (gains / num_samples).view(batch, channels)


def integrated_mask_scores(
    model: nn.Module,
    x: torch.Tensor,
    acts: torch.Tensor,
    target: Target,
    base_scores: torch.Tensor,
    *,
    num_samples: int,
    batch_size: int | None = None,
) -> torch.Tensor:
    """IS-CAM: ``mean_i [y(c_i · (X ⊙ M_k)) − y(X)]``, ``c_i = Σ_{j≤i} j/N``, per image and channel → (B, C).

    ``M_k`` are torchcam's normalised, upsampled channel masks. A channel constant over its map gives an
    all-zero mask, hence an all-zero input: it is scored once per step, not once per channel and image.
    """
    check_samples("iscam", num_samples)
    batch, channels = acts.shape[:2]
    per_sample = batch * channels
    masks = _normalised_masks(acts, x.shape[2:])
    rows, layout = _chunk(x, batch_size)
    coefficients, c = [], 0.0
    for i in range(num_samples):
        c += (i + 1) / num_samples  # accumulated in float64 like torchcam
        coefficients.append(c)
    flat = acts.reshape(per_sample, -1)
    varies = (flat.amax(dim=1) != flat.amin(dim=1)).nonzero()[:, 0]
    constant = (flat.amax(dim=1) == flat.amin(dim=1)).nonzero()[:, 0]
    gains = torch.zeros(per_sample, device=x.device)
    image_of = torch.arange(per_sample, device=x.device) // channels
    with torch.inference_mode():
        if len(constant):
            blank = model(torch.zeros_like(x[:1]))
            for _ in coefficients:
                rows_of = image_of[constant]
                scores = target(expand_rows(blank, len(constant)), rows_of).float()
                gains.index_add_(0, constant, scores - base_scores[rows_of])
        total = num_samples * len(varies)
        for start in range(0, total, rows):
            job = torch.arange(start, min(total, start + rows), device=x.device)
            bc = varies[job % len(varies)]
            step = (job // len(varies)).tolist()
            images = image_of[bc]
            masked = x[images] * masks(bc).to(x.dtype)
            scale = torch.tensor([coefficients[s] for s in step], device=x.device, dtype=x.dtype)
            inputs = (masked * scale.view(-1, *(1,) * (x.dim() - 1))).contiguous(memory_format=layout)
            gains.index_add_(0, bc, target(model(inputs), images).float() - base_scores[images])
    return (gains / num_samples).view(batch, channels)


def _smooth_grads(p: Pass, i: int, *, num_samples: int, std: float) -> torch.Tensor:
    target = p.target
    assert target is not None

    def every_layer() -> list[torch.Tensor]:  # one noisy pass gives every layer's moments
        return noisy_gradient_moments(
            p.model, p.layers, p.x, target, num_samples=num_samples, std=std, generator=p.generator("smooth_grads"),
            rows_per_pass=p.batch_size,
            to_feature_maps=[layout.to_feature_map for layout in p.layouts] if p.layouts else None,
        )

    return p.cached(("smooth_grads", num_samples, std), every_layer)[i]


def _smoothed_mask_scores(p: Pass, i: int, *, num_samples: int, std: float) -> torch.Tensor:
    assert p.target is not None and p.scores is not None
    return smoothed_mask_scores(p.model, p.x, p.acts[i], p.target, p.scores, num_samples=num_samples, std=std,
                                generator=p.generator("smoothed_mask_scores", i), batch_size=p.batch_size)  # fmt: skip


def _integrated_mask_scores(p: Pass, i: int, *, num_samples: int) -> torch.Tensor:
    assert p.target is not None and p.scores is not None
    return integrated_mask_scores(p.model, p.x, p.acts[i], p.target, p.scores, num_samples=num_samples,
                                  batch_size=p.batch_size)  # fmt: skip


#: Smooth Grad-CAM++: the means of ``g, g², g³`` over noisy copies of the input, per layer ``(3, B, C, *spatial)``
SMOOTH_GRADS = Input("smooth_grads", _smooth_grads, random=True)
#: SS-CAM: the mean score gain of the input masked by each channel plus noise ``(B, C)``
SMOOTHED_MASK_SCORES = Input("smoothed_mask_scores", _smoothed_mask_scores, random=True)
#: IS-CAM: the mean score gain of the masked input scaled along a path ``(B, C)``
INTEGRATED_MASK_SCORES = Input("integrated_mask_scores", _integrated_mask_scores)
