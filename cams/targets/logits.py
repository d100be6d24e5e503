"""Reading a model output's logits: a tensor, a dict's (Hugging Face ``ModelOutput``'s) entry, a tuple's first.

Every target that scores classes, and the engine's report of the logits, read them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["LOGIT_KEYS", "logits_of", "readable_logits"]


#: dict keys read as the logits, in this order (Hugging Face ``ModelOutput``s are dicts too)
LOGIT_KEYS = ("logits", "out")


def readable_logits(output: Any) -> torch.Tensor | None:
    """The ``(N, classes)`` logits in a model output, or ``None`` when there are none to read.

    Read, in order: a 2-D tensor itself; a dict's (or Hugging Face ``ModelOutput``'s) ``"logits"`` or
    ``"out"`` entry; an object's ``.logits`` attribute; the first element of a tuple or list.

    Example:
        >>> readable_logits({"logits": torch.zeros(2, 5), "aux": 1}).shape
        torch.Size([2, 5])
        >>> readable_logits((torch.zeros(2, 5), torch.zeros(2, 7))).shape
        torch.Size([2, 5])
        >>> readable_logits({"embedding": torch.zeros(2, 5)}) is None
        True
    """
    found = _logits_entry(output)
    return found if isinstance(found, torch.Tensor) and found.dim() == 2 else None


def _logits_entry(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in LOGIT_KEYS:
            if key in output:
                return output[key]
        return None
    if isinstance(output, (tuple, list)):
        return output[0] if output else None
    return getattr(output, "logits", None)


def logits_of(output: Any, argument: str = "targets") -> torch.Tensor:
    """The ``(N, classes)`` scores of a classifier's output (see :func:`readable_logits` for what is read).

    Raises:
        TypeError: no ``(N, classes)`` logits in the output; the message names what the model returned
            (type, keys, shapes) and how to pass a callable target instead.

    Example:
        >>> logits_of(torch.zeros(2, 5)).shape
        torch.Size([2, 5])
        >>> logits_of({"embedding": torch.zeros(2, 5)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: targets: class indices need (B, classes) logits, but the model returned a dict with keys ...
    """
    found = readable_logits(output)
    if found is not None:
        return found
    raise TypeError(
        f"{argument}: class indices need (B, classes) logits, but the model returned {_describe(output)}; "
        f"logits are read from a 2-D tensor, a dict's {' or '.join(repr(k) for k in LOGIT_KEYS)} entry "
        "(Hugging Face outputs too), a `.logits` attribute or a tuple's first element. Otherwise pass a "
        "callable target (a callable output -> (B,) scores), e.g. targets=lambda out: out['scores'][:, 3]"
    )


def _describe(output: Any) -> str:
    """``a tensor of shape (2, 5, 7)``, ``a dict with keys ['a', 'b']``, ``a tuple of 2 (Tensor (2, 5), int)``."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        keys = list(output)
        entry = _logits_entry(output)
        shape = f" ({_leaf(entry)} under {next(k for k in LOGIT_KEYS if k in output)!r})" if entry is not None else ""
        return f"a {type(output).__name__} with keys {keys}{shape}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} ({', '.join(_leaf(o) for o in output[:4])})"
    logits = getattr(output, "logits", None)
    if logits is not None:
        return f"a {type(output).__name__} whose .logits is {_leaf(logits)}"
    return f"a {type(output).__name__}"


def _leaf(value: Any) -> str:
    return f"Tensor {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
