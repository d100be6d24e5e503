"""How a target layer's raw output becomes a ``(B, C, h, w)`` feature map: channels-first, channels-last, tokens.

CAM methods weigh channels of a feature map ``(B, C, h, w)`` (``(B, C, d, h, w)`` for volumes). Modern image
models hand their layers' outputs over in other layouts; :func:`infer_layout` reads which one from the
output's shape, the input's shape and the model's patch embedding, and :class:`Layout` converts:

=================  =========================  ===================================================================
kind               raw output                 becomes
=================  =========================  ===================================================================
``channels_first`` ``(B, C, h, w)``           itself (CNNs; and ``(B, C, d, h, w)`` volumes when the input is 5-D)
``channels_last``  ``(B, h, w, C)``           ``permute(0, 3, 1, 2)`` (Swin, MambaOut, Sequencer, timm NHWC stages)
``tokens``         ``(B, p + h·w, C)``        the ``p`` prefix tokens (class, distillation, register tokens)
                                              dropped, the rest read row-major as ``(h, w)`` (ViT, DeiT, BEiT,
                                              EVA, LeViT, Hugging Face ViT, ...)
``custom``         anything                   the user's ``reshape_transform`` (always wins)
=================  =========================  ===================================================================

How the grid ``(h, w)`` of tokens is found, first match wins:

1. the model's patch embedding for this input size: timm ``patch_embed`` (``dynamic_feat_size`` for
   ``dynamic_img_size`` models, else ``grid_size``), torchvision ViT's ``conv_proj`` with ``patch_size``,
   Hugging Face ``embeddings.patch_embeddings.patch_size``; then the same grids halved 1 to 5 times (the
   stages of hierarchical models). A grid fits when ``N - h·w`` (the prefix) is between 0 and 16 (the
   model's ``num_prefix_tokens`` is tried first);
2. otherwise the factorisation ``h·w = N - p`` (smallest ``p`` first) whose aspect ratio matches the
   input's, when exactly one does.

A 4-D output is channels-first unless its dimensions 1-2, and not 2-3, match the input's aspect ratio
(or the patch grid). When both match (a "cube" such as ``(B, 7, 7, 7)``) one more forward at another
aspect ratio decides; where the model cannot take it, an error names the shapes and the
``reshape_transform`` to pass. Anything that cannot be read unambiguously is an error, never a guess.

Example:
    >>> import torch
    >>> layout = infer_layout(torch.zeros(2, 197, 192), (2, 3, 224, 224), grids=[("patch_embed", (14, 14))])
    >>> print(layout)
    tokens (B, 197, 192): 1 prefix token dropped, grid 14×14 from patch_embed
    >>> layout.to_feature_map(torch.zeros(2, 197, 192)).shape
    torch.Size([2, 192, 14, 14])
    >>> infer_layout(torch.zeros(2, 7, 7, 768), (2, 3, 224, 224)).kind
    'channels_last'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from cams.hooks import map_tensors, output_shape
from cams.names import uncompiled_name

__all__ = ["MAX_PREFIX", "Layout", "grid_hints", "infer_layout", "layout_of", "prefix_hint"]

Kind = Literal["channels_first", "channels_last", "tokens", "custom"]
Grid = tuple[int, int]
#: most prefix tokens a token layout may have (class + distillation + up to 14 register tokens)
MAX_PREFIX = 16
_HALVINGS = 5


@dataclass(frozen=True)
class Layout:
    """How one layer's raw output maps to a ``(B, C, *spatial)`` feature map.

    Attributes:
        kind: ``"channels_first"``, ``"channels_last"``, ``"tokens"`` or ``"custom"``.
        shape: the raw output's shape this layout was read from.
        grid: the spatial size of the feature map (``(h, w)``, or ``(d, h, w)`` for volumes).
        prefix: tokens dropped at the start (class, distillation and register tokens).
        source: how the layout was decided (shown by ``str(layout)``).
        channel_dim: the channel dimension of the raw output (Ablation-CAM ablates along it).
        transform: the user's ``reshape_transform`` for ``"custom"``.
    """

    kind: Kind
    shape: tuple[int, ...]
    grid: tuple[int, ...]
    prefix: int = 0
    source: str = ""
    channel_dim: int = 1
    transform: Callable[[Any], torch.Tensor] | None = field(default=None, compare=False)

    def to_feature_map(self, t: Any) -> torch.Tensor:
        """``t`` (a raw output, or its gradient) as a contiguous ``(B, C, *grid)``."""
        if self.kind == "custom":
            assert self.transform is not None
            return self.transform(t)
        if self.kind == "channels_first":
            return t
        if self.kind == "channels_last":
            return t.permute(0, 3, 1, 2).contiguous()
        return t[:, self.prefix :].transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.grid).contiguous()

    def __str__(self) -> str:
        shape = "(B, " + ", ".join(map(str, self.shape[1:])) + ")" if self.shape else ""
        if self.kind == "custom":
            return f"custom {shape or 'dict/list/tuple of tensors'}: reshape_transform"
        grid = "×".join(map(str, self.grid))
        if self.kind == "tokens":
            dropped = f"{self.prefix} prefix token{'s' if self.prefix != 1 else ''} dropped, " if self.prefix else ""
            return f"tokens {shape}: {dropped}grid {grid} from {self.source}"
        return f"{self.kind.replace('_', '-')} {shape}: grid {grid} ({self.source})"


# ---------------------------------------------------------------------- grids the model announces
def grid_hints(model: nn.Module, size: Sequence[int]) -> list[tuple[str, Grid]]:
    """The patch grids ``(h, w)`` the model's patch embeddings produce for an input of spatial ``size`` (H, W).

    Reads timm ``PatchEmbed`` (``dynamic_feat_size``/``grid_size``), torchvision ``VisionTransformer``
    (``conv_proj`` + ``patch_size``) and Hugging Face ``*PatchEmbeddings`` (``patch_size``); each entry
    names where it came from.

    Example:
        >>> import torchvision
        >>> grid_hints(torchvision.models.vit_b_16(), (224, 160))
        [('conv_proj (patch 16)', (14, 10))]
    """
    if len(size) != 2:
        return []
    height, width = int(size[0]), int(size[1])
    hints: list[tuple[str, Grid]] = []
    for name, module in model.named_modules():
        name = uncompiled_name(name)
        where = name or type(module).__name__
        feat = getattr(module, "dynamic_feat_size", None)
        if callable(feat) and hasattr(module, "patch_size"):
            try:
                grid = tuple(int(v) for v in feat((height, width)))
            except Exception:  # a custom embedding with another signature
                grid = tuple(int(v) for v in getattr(module, "grid_size", ()) or ())
            if len(grid) == 2:
                hints.append((where, (grid[0], grid[1])))
            continue
        conv_proj, patch = getattr(module, "conv_proj", None), getattr(module, "patch_size", None)
        if isinstance(conv_proj, nn.Conv2d) and isinstance(patch, int):
            p = patch  # torchvision VisionTransformer
            hints.append((f"{_child(name, 'conv_proj')} (patch {p})", (height // p, width // p)))
            continue
        if name.endswith(("patch_embeddings", "patch_embed")) and patch is not None:
            ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
            if ph and pw:
                hints.append((f"{where} (patch {ph})", (height // int(ph), width // int(pw))))
    unique: dict[Grid, str] = {}
    for where, grid in hints:
        unique.setdefault(grid, where)
    return [(where, grid) for grid, where in unique.items()]


def prefix_hint(model: nn.Module) -> int | None:
    """The ``num_prefix_tokens`` a timm model declares (class + distillation + register tokens), if any.

    Example:
        >>> prefix_hint(nn.Linear(1, 1)) is None
        True
    """
    for module in model.modules():
        value = getattr(module, "num_prefix_tokens", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _child(name: str, child: str) -> str:
    return f"{name}.{child}" if name else child


# ---------------------------------------------------------------------- reading a shape
def _fits(h: int, w: int, height: int, width: int) -> bool:
    """Whether an ``h × w`` grid can be the input ``height × width`` seen through one stride (±1 for rounding)."""
    if h < 1 or w < 1:
        return False
    lo = max(height / (h + 1), width / (w + 1))
    hi = min(height / (h - 1) if h > 1 else math.inf, width / (w - 1) if w > 1 else math.inf)
    return lo < hi


def _token_grid(
    n: int, size: Sequence[int], grids: Sequence[tuple[str, Grid]], prefix_hint: int | None
) -> tuple[int, Grid, str] | str | None:
    """``(prefix, grid, source)`` for ``n`` tokens, or a string saying why it is ambiguous, or ``None``."""
    for tier in (grids, _halved(grids)):
        fitting = [(n - g[0] * g[1], g, src) for src, g in tier if 0 <= n - g[0] * g[1] <= MAX_PREFIX]
        if fitting:
            preferred = [f for f in fitting if f[0] == prefix_hint]
            return (preferred or sorted(fitting, key=lambda f: f[0]))[0]
    height, width = int(size[0]), int(size[1])
    target = math.log(height / width)
    order = list(range(MAX_PREFIX + 1))
    if prefix_hint is not None and 0 <= prefix_hint <= MAX_PREFIX:
        order.remove(prefix_hint)
        order.insert(0, prefix_hint)
    for p in order:
        m = n - p
        if m < 2:
            continue
        found = []
        for h in range(1, m + 1):
            if m % h == 0 and _fits(h, m // h, height, width):
                found.append((abs(math.log(h / (m // h)) - target), (h, m // h)))
        if not found:
            continue
        found.sort()
        if len(found) > 1 and math.isclose(found[0][0], found[1][0], rel_tol=1e-9, abs_tol=1e-12):  # 2×3 vs 3×2
            options = " or ".join(f"{g[0]}×{g[1]}" for g in sorted(g for _, g in found[:2]))
            return f"{m} tokens after {p} prefix tokens could be a {options} grid"
        return p, found[0][1], "the input's aspect ratio"
    return None


def _halved(grids: Sequence[tuple[str, Grid]]) -> list[tuple[str, Grid]]:
    """The grids of the later stages of hierarchical models: each grid halved 1..5 times (floor and ceil)."""
    out: list[tuple[str, Grid]] = []
    for src, (h, w) in grids:
        for k in range(1, _HALVINGS + 1):
            f = 2**k
            for g in ((h // f, w // f), (-(-h // f), -(-w // f))):
                if g[0] >= 1 and g[1] >= 1 and g not in [o[1] for o in out]:
                    out.append((f"{src} / {f}", g))
    return out


def _matching(grids: Sequence[tuple[str, Grid]], grid: Grid) -> str | None:
    for src, g in [*grids, *_halved(grids)]:
        if g == grid:
            return src
    return None


def infer_layout(
    raw: Any,
    input_shape: Sequence[int],
    grids: Sequence[tuple[str, Grid]] = (),
    *,
    name: str = "the target layer",
    reshape_transform: Callable[[Any], torch.Tensor] | None = None,
    prefix_hint: int | None = None,
    probe: Callable[[], tuple[int, ...] | None] | None = None,
) -> Layout:
    """Read the layout of ``raw``, the output of layer ``name`` for an input of shape ``input_shape``.

    Args:
        raw: the layer's output ``(B, ...)`` (only its shape is read, except with ``reshape_transform``), or a
            dict/list/tuple of such tensors (a feature pyramid), which needs ``reshape_transform``.
        input_shape: ``(B, C, H, W)`` (or ``(B, C, D, H, W)``) of the model's input.
        grids: the patch grids the model announces (:func:`grid_hints`).
        name: the layer's name, for messages.
        reshape_transform: the user's transform to ``(B, C, *spatial)``: always used when given.
        prefix_hint: the model's ``num_prefix_tokens``, tried first for token outputs.
        probe: for a 4-D output that reads both channels-first and channels-last, a function returning the
            layer's output shape for the same image at twice the width (``None`` if the model cannot).

    Raises:
        ValueError: the output cannot be read as a feature map, or reads two ways; the message names the
            shapes and the ``reshape_transform`` to pass.
    """
    size = tuple(int(s) for s in input_shape[2:])
    if reshape_transform is not None:
        return _custom(raw, size, name, reshape_transform)
    if not isinstance(raw, torch.Tensor):
        raise ValueError(
            f"target layer {name!r} returns a {type(raw).__name__} of tensors; pass reshape_transform to make "
            "one (B, C, h, w) feature map of it (for a detector's feature pyramid: cams.targets.fpn_reshape)"
        )
    shape = tuple(int(s) for s in raw.shape)
    if len(size) == 3:
        if raw.dim() == 5:
            return Layout("channels_first", shape, shape[2:], source="volume")
        raise _error(name, shape, input_shape, "volumes need (B, C, d, h, w) outputs")
    if raw.dim() == 3:
        found = _token_grid(shape[1], size, grids, prefix_hint)
        if isinstance(found, tuple):
            prefix, grid, source = found
            return Layout("tokens", shape, grid, prefix=prefix, source=source, channel_dim=2)
        reason = found or f"no grid h×w with {shape[1]} - h·w prefix tokens (0..{MAX_PREFIX}) fits the input"
        raise _error(name, shape, input_shape, reason, tokens=True)
    if raw.dim() != 4:
        raise _error(name, shape, input_shape, f"a {raw.dim()}-D output is not a feature map")
    first, last = (shape[2], shape[3]), (shape[1], shape[2])
    hinted_first, hinted_last = _matching(grids, first), _matching(grids, last)
    if hinted_last and not hinted_first:
        return Layout("channels_last", shape, last, source=f"grid of {hinted_last}", channel_dim=3)
    if hinted_first and not hinted_last:
        return Layout("channels_first", shape, first, source=f"grid of {hinted_first}")
    fits_first, fits_last = _fits(*first, *size), _fits(*last, *size)
    if fits_last and not fits_first:
        return Layout("channels_last", shape, last, source="dims 1-2 match the input's aspect ratio", channel_dim=3)
    if not (fits_first and fits_last):
        return Layout("channels_first", shape, first, source="the torch convention")
    wider = probe() if probe is not None else None
    if wider is not None and len(wider) == 4:
        if wider[1] == shape[1] and wider[3] != shape[3]:
            return Layout("channels_first", shape, first, source="a forward at twice the width")
        if wider[3] == shape[3] and wider[2] != shape[2]:
            return Layout("channels_last", shape, last, source="a forward at twice the width", channel_dim=3)
    raise _error(
        name,
        shape,
        input_shape,
        f"it reads as channels-first (B, C={shape[1]}, h={shape[2]}, w={shape[3]}) and as channels-last "
        f"(B, h={shape[1]}, w={shape[2]}, C={shape[3]})",
        ambiguous_4d=True,
    )


def layout_of(
    model: nn.Module,
    name: str,
    module: nn.Module,
    raw: Any,
    x: torch.Tensor,
    reshape_transform: Callable[[Any], torch.Tensor] | None = None,
) -> Layout:
    """:func:`infer_layout` for layer ``name`` (``module``) of ``model``, whose output for the input ``x`` was
    ``raw``: the model's patch grids and prefix-token count as hints, and, for a 4-D output that reads two
    ways, one forward of ``x[0]`` at twice the width."""

    def probe() -> tuple[int, ...] | None:
        wide = torch.nn.functional.interpolate(x[:1], size=(x.shape[2], 2 * x.shape[3]), mode="nearest")
        return output_shape(model, module, wide)

    return infer_layout(
        raw,
        x.shape,
        grid_hints(model, x.shape[2:]),
        name=name,
        reshape_transform=reshape_transform,
        prefix_hint=prefix_hint(model),
        probe=probe if x.dim() == 4 else None,
    )


def _custom(raw: Any, size: tuple[int, ...], name: str, transform: Callable[[Any], torch.Tensor]) -> Layout:
    is_tensor = isinstance(raw, torch.Tensor)
    shape = tuple(int(s) for s in raw.shape) if is_tensor else ()
    with torch.no_grad():
        mapped = transform(map_tensors(raw, lambda t: t[:1]))
    if not isinstance(mapped, torch.Tensor) or mapped.dim() != len(size) + 2:
        got = tuple(mapped.shape) if isinstance(mapped, torch.Tensor) else type(mapped).__name__
        raise ValueError(
            f"reshape_transform maps the output {shape or type(raw).__name__} of {name!r} to {got}; CAMs need "
            f"(B, C, {', '.join('hwd'[: len(size)][::-1])}) feature maps"
        )
    return Layout(
        "custom",
        shape,
        tuple(int(s) for s in mapped.shape[2:]),
        source="reshape_transform",
        channel_dim=_custom_channel_dim(raw, transform, int(mapped.shape[1])) if is_tensor else -1,
        transform=transform,
    )


def _custom_channel_dim(raw: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor], channels: int) -> int:
    """The raw dimension the transform turns into channels: the one whose channel 0 becomes channel 0 alone.

    ``-1`` when no single dimension does (Ablation-CAM then asks for a plain layer).
    """
    sample = raw[:1].detach().float()
    base = transform(sample)
    for dim in range(1, raw.dim()):
        if raw.shape[dim] != channels:
            continue
        marked = sample.clone()
        marked.select(dim, 0).fill_(1e6)
        moved = transform(marked) - base
        if bool(moved[:, 1:].eq(0).all()) and bool(moved[:, 0].ne(0).any()):
            return dim
    return -1


def _error(
    name: str,
    shape: tuple[int, ...],
    input_shape: Sequence[int],
    reason: str,
    tokens: bool = False,
    ambiguous_4d: bool = False,
) -> ValueError:
    spatial = "C, d, h, w" if len(input_shape) == 5 else "C, h, w"
    if tokens:
        fix = "pass reshape_transform=lambda t: t[:, p:].reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2)"
    elif ambiguous_4d:
        fix = ("pass reshape_transform=lambda t: t.permute(0, 3, 1, 2) for channels-last, or "
               "reshape_transform=lambda t: t for channels-first")
    else:
        fix = f"choose a layer with a spatial output, or pass reshape_transform=<output -> (B, {spatial})>"
    return ValueError(
        f"target layer {name!r} gives an output of shape {shape} for an input of shape "
        f"{tuple(int(s) for s in input_shape)}; CAMs need (B, {spatial}) feature maps and it cannot be read as "
        f"one: {reason}. To fix it, {fix}"
    )
