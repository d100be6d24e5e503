"""cam_callback: watch where an image model looks while it trains (Lightning callback).

Example:
    >>> from cam_callback import CAMCallback
    >>> CAMCallback(method="xgradcam").methods
    ('xgradcam',)
"""

from cam_callback.callback import CAMCallback

__all__ = ["CAMCallback"]

# `explain` / `Explanation` (cam_callback/explain.py, owned by the explain helper) are exported here:
# from cam_callback.explain import Explanation, explain
# __all__ += ["Explanation", "explain"]
