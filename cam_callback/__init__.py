"""cam_callback: watch where an image model looks while it trains (Lightning callback).

- :class:`CAMCallback`: logs class activation maps of a fixed batch, and their drift, during ``fit``.
- :func:`explain` / :class:`Explanation`: maps for new images from a checkpoint the callback wrote.
- :class:`ShortcutWarning`: what the callback warns with when attention sits on a region marked spurious.

Example:
    >>> from cam_callback import CAMCallback
    >>> CAMCallback(method="xgradcam").methods
    ('xgradcam',)
"""

from cam_callback._shortcut import ShortcutWarning
from cam_callback.callback import CAMCallback
from cam_callback.explain import Explanation, explain

__all__ = ["CAMCallback", "Explanation", "ShortcutWarning", "explain"]
