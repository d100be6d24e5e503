"""Choosing the target layer: by name (:func:`find_layer`) or as a practitioner would (:func:`auto_layer`).

:func:`auto_layer` runs one forward with a hook on every module and reads each output with
:func:`cams.layout.infer_layout`; its rules, one per model family, are in its docstring. A new rule goes
there, with the helpers that recognise modules (:func:`_is_attention`, :func:`_is_classifier`,
:func:`_passes_input_on`). Every hook is removed before the function returns.
"""

from __future__ import annotations

import difflib
import math
import re
import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cams.layout import grid_hints, infer_layout
from cams.names import uncompiled_name
from cams.targets import readable_logits

__all__ = ["auto_layer", "example_input", "find_layer"]

def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` called ``name`` (dotted, as in ``model.named_modules()``).

    Names inside ``torch.compile``'d modules work with or without their ``_orig_mod`` part.

    Raises:
        ValueError: naming the bad value and the closest layer names.

    Example:
        >>> find_layer(nn.Sequential(nn.Conv2d(1, 1, 1)), "0")
        Conv2d(1, 1, kernel_size=(1, 1), stride=(1, 1))
    """
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    plain: dict[str, nn.Module] = {}  # names without the `_orig_mod` of torch.compile wrappers
    for full, module in modules.items():
        plain.setdefault(uncompiled_name(full), module)
    if name in plain and name != "":
        return plain[name]
    modules = plain
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.4)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"target_layers: {type(model).__name__} has no layer named {name!r}{hint}")


def auto_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The layer a practitioner would explain, found with one forward of ``x``.

    Every module's output is read with :func:`cams.layout.infer_layout`; the *candidates* are outputs that
    are feature maps of spatial size > 1 in any layout (``(B, C, h, w)``, channels-last ``(B, h, w, C)``,
    tokens ``(B, p + h·w, C)``; ``(B, C, d, h, w)`` for volumes). Adaptive pooling layers and modules that
    only pass their input on (``Identity``, dropout, drop-path, pure reshapes such as ``Permute``) are
    skipped, so the producer is named. Then, per family:

    - **class-token transformers** (the last candidate has prefix tokens: ViT, DeiT, BEiT, EVA, CaiT,
      XCiT, torchvision ``vit_*``, Hugging Face ``ViT*``): the head reads the class token, so the patch
      tokens of the last layers get no gradient. The choice is the last candidate that finishes before
      the last attention module starts: the last block's first norm (timm ``blocks[-1].norm1``,
      torchvision ``encoder.layers[-1].ln_1``, Hugging Face ``encoder.layer[-1].layernorm_before``), as
      in pytorch-grad-cam's ViT tutorial;
    - **dense outputs** (segmentation, ``(B, K, *spatial)`` logits, alone or in a dict, tuple or Hugging Face
      ``ModelOutput``): the model's output, and every layer that only reshapes or resizes it, is never chosen.
      The *head* is the outermost module around the layer that produces the output (the module whose output
      is the output tensor, or is resized into it, as torchvision's segmentation models do) that starts after
      some candidate has finished; the choice is the last candidate that finishes before the head starts: the
      decoder's output for U-Net-like models (``segmentation_models_pytorch``'s ``decoder`` before its
      ``segmentation_head``, MONAI's ``UNet``), the backbone for DeepLab-like ones (torchvision's
      ``backbone.layer4`` before ``classifier``, as in pytorch-grad-cam's segmentation tutorial);
    - **everything else** (CNNs, ConvNeXt, EfficientNet, RegNet, MobileNet, Swin, MaxViT, CoAtNet, LeViT,
      Mixer, FastViT, EfficientFormer, Hiera, ...): the last candidate in forward order: the last stage
      (``layer4`` for ResNets, ``stages`` for timm CNNs) or, for pooled transformers, the final norm over
      the last stage (Swin's ``norm``).

    Raises:
        ValueError: no module produced a feature map, with a hint to pass ``target_layers``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> auto_layer(net, torch.randn(1, 3, 8, 8))[0]
        '1'
    """
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    clock = [0]
    attention_starts: list[int] = []
    last_call: dict[int, tuple[int, nn.Module, tuple[int, ...] | None]] = {}  # id -> (end, module, output shape)
    starts: dict[int, int] = {}  # id -> when its last call started
    produced: dict[int, Any] = {}  # id -> a weak reference to its last output (an image-rank tensor)

    def pre_hook(module: nn.Module, args: Any) -> None:
        clock[0] += 1
        starts[id(module)] = clock[0]
        if _is_attention(module):
            attention_starts.append(clock[0])

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        clock[0] += 1
        keep = (
            isinstance(output, torch.Tensor)
            and output.dim() >= 3
            and output.shape[0] == x.shape[0]
            and not isinstance(module, _POOLS)
            and not _passes_input_on(module, args, output)
        )
        # a module called several times is captured at its last call: only that call counts
        last_call[id(module)] = (clock[0], module, tuple(output.shape) if keep else None)
        if isinstance(output, torch.Tensor) and output.dim() == x.dim():
            produced[id(module)] = weakref.ref(output)

    handles = []
    try:
        for m in model.modules():
            if m is not model:
                handles.append(m.register_forward_pre_hook(pre_hook))
                handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    logits = readable_logits(output)
    classes = None if logits is None else logits.shape[1]

    grids = grid_hints(model, x.shape[2:])
    prefix_hint = getattr(model, "num_prefix_tokens", None)
    candidates = []  # (end, module, prefix)
    for end, module, shape in sorted(last_call.values(), key=lambda call: call[0]):
        if shape is None or _is_classifier(module, classes):
            continue
        try:
            layout = infer_layout(torch.empty(shape, device="meta"), x.shape, grids, prefix_hint=prefix_hint)
        except ValueError:
            if len(shape) != 4 or x.dim() != 4:
                continue
            layout = None  # a 4-D output that reads two ways: spatial either way, decided when explained
        if layout is not None and math.prod(layout.grid) <= 1:
            continue
        candidates.append((end, module, 0 if layout is None else layout.prefix))
    if not candidates:
        kind = (
            "4-D feature map ((B, C, h, w) or (B, h, w, C)) or tokens (B, N, C) on a grid"
            if x.dim() == 4
            else f"{x.dim()}-D feature map"
        )
        raise ValueError(
            f"target_layers=None: no layer of {type(model).__name__} produced a {kind} with "
            "spatial size > 1; pass target_layers explicitly"
        )
    dense = _dense_outputs(output, x)
    if dense:
        head = _head_start(model, x, dense[0], names, starts, last_call, produced, candidates)
        before = [c for c in candidates if head is not None and c[0] < head]
        candidates = before or candidates
    chosen = candidates[-1][1]
    if candidates[-1][2] > 0 and attention_starts:
        last_attention = attention_starts[-1]
        before = [c for c in candidates if c[0] < last_attention and c[2] > 0]
        if before:
            chosen = before[-1][1]
    return uncompiled_name(names[id(chosen)]), chosen


def _dense_outputs(output: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """The model's dense outputs ``(B, K, *spatial)`` (as many spatial dimensions as ``x``): the output itself, or
    the tensors of a dict (Hugging Face ``ModelOutput``, torchvision's ``{"out", "aux"}``) or tuple, in order."""
    if isinstance(output, torch.Tensor):
        items: list[Any] = [output]
    elif isinstance(output, Mapping):
        items = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        items = [getattr(output, "logits", None)]
    return [t for t in items if isinstance(t, torch.Tensor) and t.dim() == x.dim() and t.shape[0] == x.shape[0]]


def _head_start(
    model: nn.Module,
    x: torch.Tensor,
    out: torch.Tensor,
    names: dict[int, str],
    starts: dict[int, int],
    calls: dict[int, tuple[int, nn.Module, tuple[int, ...] | None]],
    produced: dict[int, Any],
    candidates: list[tuple[int, nn.Module, int]],
) -> int | None:
    """When the head producing the dense output ``out`` starts (``None``: no module produces it).

    The producer is the first module to finish whose output is ``out`` itself (still alive, so its storage was
    not reused) or a view of it; else (``F.interpolate`` in the model's forward) whose output resized to ``out``'s
    size equals it, found with a second forward. The head is its outermost ancestor below ``model`` that starts
    after some candidate has finished (``model``'s own wrappers start with everything else).
    """
    storage = out.untyped_storage().data_ptr()
    sharing = [
        (calls[key][0], key)
        for key, ref in produced.items()
        if (t := ref()) is not None and t.untyped_storage().data_ptr() == storage and key in calls
    ]
    producer = min(sharing)[1] if sharing else _resized_into(model, x, out, calls)
    if producer is None:
        return None
    by_name = {name: key for key, name in names.items()}
    name = names[producer]
    chain = [producer] + [by_name[a] for a in _ancestors(name) if a in by_name and by_name[a] in starts]
    first_end = min((c[0] for c in candidates), default=None)
    head = None
    for key in chain:
        if key in starts and first_end is not None and starts[key] > first_end:
            head = starts[key]
    return head


def _ancestors(name: str) -> list[str]:
    """The dotted names of the modules around ``name``, innermost first (the root, ``""``, left out).

    Example:
        >>> _ancestors("net.segmentation_head.0")
        ['net.segmentation_head', 'net']
    """
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _resized_into(
    model: nn.Module, x: torch.Tensor, out: torch.Tensor, calls: dict[int, tuple[int, nn.Module, Any]]
) -> int | None:
    """The first module to finish whose output, resized to ``out``'s size (bilinear/trilinear or nearest), is
    ``out``: one more forward, keeping only the outputs with ``out``'s channels."""
    kept: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == out.dim() and output.shape[:2] == out.shape[:2]:
            kept[id(module)] = output

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    target = out.detach().float()
    tolerance = 1e-4 * float(target.abs().max()) + 1e-6
    mode = "bilinear" if out.dim() == 4 else "trilinear"
    matches = []
    for key, t in kept.items():
        for how in ({"mode": mode, "align_corners": False}, {"mode": mode, "align_corners": True}, {"mode": "nearest"}):
            resized = F.interpolate(t.detach().float(), size=tuple(out.shape[2:]), **how)
            if float((resized - target).abs().max()) <= tolerance and key in calls:
                matches.append((calls[key][0], key))
                break
    return min(matches)[1] if matches else None


def example_input(model: nn.Module) -> torch.Tensor | None:
    """One input ``(1, C, H, W)`` (``(1, C, D, H, W)``) of zeros for ``model``, without being given one; ``None``
    when nothing tells.

    Read, in order, from the first module that declares one: a LightningModule's ``example_input_array``, timm's
    ``pretrained_cfg["input_size"]``, a Hugging Face ``config.image_size`` with ``config.num_channels``; else a
    224×224 image (a 64³ volume) with the input channels of the first ``Conv2d`` (``Conv3d``).

    Example:
        >>> example_input(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())).shape
        torch.Size([1, 1, 224, 224])
        >>> example_input(nn.Linear(3, 4)) is None
        True
    """
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if param is None else param.dtype
    for module in model.modules():
        example = getattr(module, "example_input_array", None) if module is model else None
        if isinstance(example, torch.Tensor) and example.dim() in (4, 5) and example.is_floating_point():
            return torch.zeros_like(example[:1])
        cfg = getattr(module, "pretrained_cfg", None)
        size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
        if isinstance(size, (tuple, list)) and len(size) in (3, 4) and all(isinstance(n, int) for n in size):
            return torch.zeros(1, *size, dtype=dtype)
        config = getattr(module, "config", None)
        side, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
        if isinstance(channels, int) and isinstance(side, int):
            return torch.zeros(1, channels, side, side, dtype=dtype)
        if isinstance(channels, int) and isinstance(side, (tuple, list)) and len(side) == 2:
            return torch.zeros(1, channels, *side, dtype=dtype)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return torch.zeros(1, module.in_channels, 224, 224, dtype=dtype)
        if isinstance(module, nn.Conv3d):
            return torch.zeros(1, module.in_channels, 64, 64, 64, dtype=dtype)
    return None


_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
          nn.AdaptiveMaxPool3d)  # fmt: skip
_PASS_ON = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _passes_input_on(module: nn.Module, args: Any, output: torch.Tensor) -> bool:
    """Whether ``module`` only hands its input on: identity, dropout/drop-path in eval, or a pure view."""
    if isinstance(module, _PASS_ON) or type(module).__name__ in ("DropPath", "Identity"):
        return True
    first = args[0] if isinstance(args, tuple) and args else None
    if not isinstance(first, torch.Tensor) or output is first or output.numel() != first.numel():
        return False
    return output.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or bool(_ATTENTION.search(type(module).__name__))


#: class names of attention modules: timm ``Attention``/``ClassAttn``/``WindowAttention``, ConViT ``MHSA``/``GPSA``,
#: Hugging Face ``ViTSelfAttention``, ...
_ATTENTION = re.compile(r"attn|attention|mhsa|gpsa|^msa$", re.IGNORECASE)


def _is_classifier(module: nn.Module, classes: int | None) -> bool:
    """A per-token or per-pixel classifier (a linear layer or 1×1 conv with one output per class), e.g. VOLO's
    ``aux_head``: its output is class scores, not features."""
    if classes is None:
        return False
    if isinstance(module, nn.Linear):
        return module.out_features == classes
    if isinstance(module, nn.Conv2d):
        return module.out_channels == classes and module.kernel_size == (1, 1)
    return False


