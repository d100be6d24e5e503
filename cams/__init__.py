"""cams: class activation maps from one shared hooks-and-weights pass (torch only).

Example:
    >>> import torch, torchvision
    >>> from cams import CamEngine
    >>> model = torchvision.models.resnet18(num_classes=4)
    >>> maps = CamEngine(model, "layer4")(torch.randn(2, 3, 64, 64), methods=["gradcam", "layercam"])
    >>> sorted(maps), tuple(maps["gradcam"].shape)
    (['gradcam', 'layercam'], (2, 64, 64))
"""

from cams.engine import CamEngine, CamMaps, find_layer
from cams.guided import guided_backprop, guided_gradcam
from cams.methods import METHODS, CamMethod, get_method

__all__ = [
    "METHODS",
    "CamEngine",
    "CamMaps",
    "CamMethod",
    "find_layer",
    "get_method",
    "guided_backprop",
    "guided_gradcam",
]
__version__ = next(  # pyproject.toml's version, as installed; "0.0.0+unknown" in a checkout never installed
    (dist.version for dist in __import__("importlib.metadata").metadata.distributions(name="cam-callback")),
    "0.0.0+unknown",
)
