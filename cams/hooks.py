"""Hooks on target layers: find a layer, record one forward, choose a layer automatically.

Every hook registered here lives inside a context manager or a ``try/finally`` and is removed before
the function returns, also on error: a CAM call leaves no hook behind.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from cams.names import uncompiled_name

__all__ = [
    "Records",
    "auto_layer",
    "capture",
    "find_layer",
    "from_leaves",
    "grad_capable",
    "map_tensors",
    "output_shape",
    "prepare",
    "replacing_output",
    "tensor_leaves",
]

_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
          nn.AdaptiveMaxPool3d)  # fmt: skip


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


def prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A normal (not inference-mode) tensor on ``device`` that autograd may save."""
    x = x.detach().to(device)
    return x.clone() if x.is_inference() else x


@contextlib.contextmanager
def grad_capable() -> Iterator[None]:
    """Leave ``no_grad``/``inference_mode`` (as Lightning validation uses) for the duration."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


class Records:
    """What one forward captured per target layer: the outputs (for gradients) and their final values."""

    def __init__(self, n: int) -> None:
        self.outputs: list[Any] = [None] * n
        self.values: list[Any] = [None] * n


@contextlib.contextmanager
def capture(modules: list[nn.Module], names: list[str], grad: bool) -> Iterator[Records]:
    """Record each module's output for one forward; hooks are removed on exit, also on error.

    An output is a tensor, or a dict/list/tuple of tensors (a detector backbone's feature pyramid) that a
    ``reshape_transform`` turns into one feature map.

    With ``grad`` the forward runs under ``no_grad`` and a pre-hook switches autograd on when the
    first target layer starts, so no graph is built for the layers before it and the backward
    stops at the target layers.

    A clone of the layer output travels on through the network. Gradients are taken with respect to
    the output itself; the activation *values* are read from the clone when the forward is over, so
    they include what in-place ops downstream did to them (DenseNet's ``F.relu(features, inplace=True)``),
    exactly as pytorch-grad-cam sees them.

    Raises:
        TypeError: a target layer returned something other than a tensor or a dict/list/tuple of tensors.
        RuntimeError: a target layer did not run during the forward.
    """
    records = Records(len(modules))
    handles = []

    def pre_hook(module: nn.Module, args: Any) -> None:
        torch.set_grad_enabled(True)

    def make_hook(i: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if tensor_leaves(output) is None:
                raise TypeError(
                    f"target layer {names[i]!r} returned a {type(output).__name__}; CAMs need a tensor output "
                    "(or a dict/list/tuple of tensors with a reshape_transform, e.g. a detector's feature "
                    "pyramid with cams.targets.fpn_reshape) — choose a layer that returns one"
                )
            if grad:
                output = map_tensors(output, lambda t: t if t.requires_grad else t.detach().requires_grad_())
            records.outputs[i] = output
            records.values[i] = map_tensors(output, torch.clone)
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


def tensor_leaves(output: Any) -> list[torch.Tensor] | None:
    """The tensors of a layer output: a tensor, or a dict/list/tuple of tensors (else ``None``).

    Example:
        >>> len(tensor_leaves({"0": torch.zeros(1), "pool": torch.zeros(1)}))
        2
    """
    if isinstance(output, torch.Tensor):
        return [output]
    items = list(output.values()) if isinstance(output, dict) else output
    if isinstance(output, (dict, list, tuple)) and items and all(isinstance(t, torch.Tensor) for t in items):
        return list(items)
    return None


def map_tensors(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to each tensor of a layer output, the structure (dict, list, tuple) kept."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, dict):
        return type(output)((k, fn(v)) for k, v in output.items())
    return type(output)(fn(t) for t in output)


def from_leaves(like: Any, leaves: list[torch.Tensor]) -> Any:
    """A layer output shaped like ``like`` holding ``leaves`` (the inverse of :func:`tensor_leaves`)."""
    values = iter(leaves)
    return map_tensors(like, lambda _: next(values))


@contextlib.contextmanager
def replacing_output(module: nn.Module, replacement: torch.Tensor) -> Iterator[None]:
    """Make ``module`` return ``replacement`` instead of its output while the block runs."""
    handle = module.register_forward_hook(lambda mod, args, out: replacement)
    try:
        yield
    finally:
        handle.remove()


def output_shape(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """The shape of ``module``'s output when ``model`` runs on ``x``; ``None`` if the forward fails or the
    module does not return a tensor (used to tell channels-first from channels-last, see
    :func:`cams.layout.infer_layout`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> output_shape(net, net[0], torch.zeros(1, 3, 8, 16))
        (1, 4, 6, 14)
    """
    seen: list[tuple[int, ...]] = []

    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            seen.append(tuple(output.shape))

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        return None
    finally:
        handle.remove()
    return seen[-1] if seen else None


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
    from cams.layout import grid_hints, infer_layout

    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    clock = [0]
    attention_starts: list[int] = []
    last_call: dict[int, tuple[int, nn.Module, tuple[int, ...] | None]] = {}  # id -> (end, module, output shape)

    def pre_hook(module: nn.Module, args: Any) -> None:
        clock[0] += 1
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
    from cams.targets import readable_logits

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
    chosen = candidates[-1][1]
    if candidates[-1][2] > 0 and attention_starts:
        last_attention = attention_starts[-1]
        before = [c for c in candidates if c[0] < last_attention and c[2] > 0]
        if before:
            chosen = before[-1][1]
    return uncompiled_name(names[id(chosen)]), chosen


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


