"""The shared backward: one ``torch.autograd.grad`` from the target scores to every target layer's output.

:func:`layer_gradients` gives every gradient method of a call its gradients (parameter ``.grad`` is never
written); :func:`check_gradients` says why a layer's feature map gets none at all, before any map is made.
"""

from __future__ import annotations

from typing import Any

import torch

from cams.hooks import from_leaves, tensor_leaves
from cams.layout import Layout

__all__ = ["check_gradients", "layer_gradients"]


def layer_gradients(
    scores: torch.Tensor, records: list[Any], names: list[str], keep: bool = False, second_order: bool = False
) -> list[Any]:
    """``∂ scores.sum() / ∂ record`` per target layer (per tensor of a dict/list/tuple output, zeros for the
    tensors the score does not use), in one ``autograd.grad``; a layer the score does not depend on at all is
    an error.

    ``keep``: the graph stays for later backwards (ShapleyCAM, Finer-CAM, LeGrad); ``second_order``: the
    gradients carry their own graph (ShapleyCAM's Hessian-vector product).
    """
    if not scores.requires_grad:
        raise RuntimeError(
            f"the target score does not depend on the target layers {names}; choose layers that the "
            "output is computed from (and a target that is not detached)"
        )
    leaves = [tensor_leaves(r) or [] for r in records]
    flat = [t for group in leaves for t in group]
    grads = list(torch.autograd.grad(scores.sum(), flat, allow_unused=True, retain_graph=keep or second_order,
                                     create_graph=second_order))  # fmt: skip
    out, start, unused = [], 0, []
    for name, record, group in zip(names, records, leaves, strict=True):
        mine = grads[start : start + len(group)]
        start += len(group)
        if all(g is None for g in mine):
            unused.append(name)
        filled = [torch.zeros_like(t) if g is None else g for t, g in zip(group, mine, strict=True)]
        out.append(from_leaves(record, filled))
    if unused:
        raise RuntimeError(
            f"target layer(s) {unused}: the target score does not depend on their output (no gradient "
            "reaches them), so gradient methods would give empty maps; choose a layer the prediction is "
            "computed from"
        )
    return out


def check_gradients(grads: list[Any], names: list[str], layouts: list[Layout]) -> None:
    """Say why a layer's feature map gets an exactly zero gradient (every gradient map would be empty).

    The score does not change with the layer's output at all (an untrained classifier head initialised to
    zero, a segmentation class predicted nowhere): no error, since training or another image changes it; each
    image's map is then reported blank by :func:`cams.health.diagnose` (``zero_gradient``), in the call's one
    :class:`cams.health.DegenerateMapWarning`. The gradient reaches only what the layout drops (a class token
    read after this layer): an error, since this layer can never give a map.
    """
    for grad, name, layout in zip(grads, names, layouts, strict=True):
        mapped = layout.to_feature_map(grad)
        if not bool((mapped == 0).all()) or all(bool((g == 0).all()) for g in tensor_leaves(grad) or []):
            continue
        where = f"target layer {name!r}: the gradient of the target score is zero at every position of its " \
            f"feature map {tuple(mapped.shape)}"
        if layout.prefix:
            raise RuntimeError(
                f"{where}: only its {layout.prefix} prefix token(s) get one, because the model reads the class "
                "token after this layer; explain a layer before the last attention (the last block's first "
                "norm), or let target_layers=None choose"
            )
        raise RuntimeError(f"{where}: the gradient reaches only parts of the output reshape_transform leaves out")
