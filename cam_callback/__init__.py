"""cam_callback: watch where an image model looks while it trains (Lightning callback).

- :class:`CAMCallback`: logs class activation maps of a fixed batch, their drift and measures, during ``fit``;
  :class:`CAMDisplay` groups how it shows them; :mod:`cam_callback.measures` holds what it measures.
- :func:`explain` / :class:`Explanation`: maps for new images from a checkpoint the callback wrote
  (:class:`Preprocess`: how pictures become the model's input).
- :class:`ShortcutWarning`: what the callback warns with when attention sits on a region marked spurious.

Example:
    >>> from cam_callback import CAMCallback
    >>> CAMCallback(method="xgradcam").methods
    ('xgradcam',)
"""

from cam_callback._explanation import Explanation
from cam_callback._pictures import Preprocess
from cam_callback._settings import CAMDisplay
from cam_callback.callback import CAMCallback
from cam_callback.explain import explain
from cam_callback.measures import ShortcutWarning
from cams import __version__

__all__ = ["CAMCallback", "CAMDisplay", "Explanation", "Preprocess", "ShortcutWarning", "__version__", "explain"]
