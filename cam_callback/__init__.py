"""cam_callback: watch where an image model looks while it trains (Lightning callback).

- :class:`CAMCallback`: logs class activation maps of a fixed batch, and their drift, during ``fit``.
- :func:`explain` / :class:`Explanation`: maps for new images from a checkpoint the callback wrote.

Example:
    >>> from cam_callback import CAMCallback
    >>> CAMCallback(method="xgradcam").methods
    ('xgradcam',)
"""

from cam_callback.callback import CAMCallback
from cam_callback.explain import Explanation, explain

__all__ = ["CAMCallback", "Explanation", "explain"]
