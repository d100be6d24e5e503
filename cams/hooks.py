"""Hooks on target layers: record one forward, replace an output, read an output's shape.

Every hook registered here lives inside a context manager or a ``try/finally`` and is removed before
the function returns, also on error: a CAM call leaves no hook behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "Records",
    "capture",
    "from_leaves",
    "grad_capable",
    "map_tensors",
    "output_shape",
    "prepare",
    "replacing_output",
    "tensor_leaves",
]


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
