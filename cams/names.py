"""Names a user types (methods, layers, options): close matches for typos, for error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["close_matches", "uncompiled_name"]


def close_matches(value: object, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """`` (did you mean 'a' or 'b'?)`` for a mistyped name, or ``''`` (also for a value that is not a string).

    Example:
        >>> close_matches("resnet5", ["resnet50", "vgg16"])
        " (did you mean 'resnet50'?)"
        >>> close_matches("Spearmann", ["cosine", "spearman"])
        " (did you mean 'spearman'?)"
    """
    if not isinstance(value, str):
        return ""
    choices = list(choices)
    found = difflib.get_close_matches(value, choices, n=n, cutoff=cutoff)
    if not found:
        found = difflib.get_close_matches(value.lower(), choices, n=n, cutoff=cutoff)
    return f" (did you mean {' or '.join(repr(f) for f in found)}?)" if found else ""


def uncompiled_name(name: str) -> str:
    """A dotted module name without the ``_orig_mod`` parts ``torch.compile`` wrappers add: a layer has the same
    name compiled or not.

    Example:
        >>> uncompiled_name("backbone._orig_mod.layer4")
        'backbone.layer4'
    """
    return ".".join(part for part in name.split(".") if part != "_orig_mod")
