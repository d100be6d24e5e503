"""The method registry: a plain dict from name to :class:`CamMethod`.

Example:
    >>> sorted(METHODS)[:3]
    ['ablationcam', 'eigencam', 'eigengradcam']
    >>> get_method("Grad-CAM++").name
    'gradcam++'
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from cams.methods.eigen import eigen_cam, eigen_grad_cam
from cams.methods.gradient import (
    grad_cam,
    grad_cam_elementwise,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    xgrad_cam,
)
from cams.methods.perturbation import ablation_cam, score_cam

__all__ = ["METHODS", "CamMethod", "get_method"]

Family = Literal["gradient", "perturbation", "eigen"]

#: inputs that need no target score (every other input is about the explained class)
_TARGET_FREE = frozenset({"acts"})


@dataclass(frozen=True)
class CamMethod:
    """One CAM method: how to weigh the captured activations, and what that costs.

    Attributes:
        name: registry key, e.g. ``"gradcam++"``.
        weigh: ``weigh(*inputs) -> weighted activations (B, C, *spatial)``, called with the inputs named
            in ``inputs``, in that order.
        inputs: what ``weigh`` takes, by name (see :mod:`cams.passes`): ``"acts"``, ``"grads"``,
            ``"scores"``, ``"mask_scores"``, ``"ablation_scores"``, ...
        family: ``"gradient"``, ``"perturbation"`` or ``"eigen"``.
        project: always take the first principal component (Eigen-CAM family).
        cost: forwards/backwards per image, for the README table.
        paper: link to the paper.
        title: the paper's name of the method (also accepted as an alias).
    """

    name: str
    weigh: Callable[..., torch.Tensor]
    inputs: tuple[str, ...]
    family: Family
    cost: str
    paper: str
    project: bool = False
    title: str = ""

    @property
    def needs_grads(self) -> bool:
        """Whether the shared backward pass is needed."""
        return "grads" in self.inputs

    @property
    def needs_target(self) -> bool:
        """Whether the method explains a target (class) score."""
        return any(name not in _TARGET_FREE for name in self.inputs)


_GRADIENT = ("acts", "grads")


def _m(name: str, title: str, weigh: Callable[..., torch.Tensor], family: Family, inputs: tuple[str, ...],
       cost: str, paper: str, **kw: object) -> CamMethod:
    return CamMethod(name=name, title=title, weigh=weigh, family=family, inputs=inputs,
                     cost=cost, paper=paper, **kw)  # type: ignore[arg-type]


_SHARED = "1 forward + 1 partial backward (shared)"

METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        _m("gradcam", "Grad-CAM", grad_cam, "gradient", _GRADIENT, _SHARED, "https://arxiv.org/abs/1610.02391"),
        _m("gradcam++", "Grad-CAM++", grad_cam_plus_plus, "gradient", _GRADIENT, _SHARED,
           "https://arxiv.org/abs/1710.11063"),
        _m("xgradcam", "XGrad-CAM", xgrad_cam, "gradient", _GRADIENT, _SHARED, "https://arxiv.org/abs/2008.02312"),
        _m("layercam", "Layer-CAM", layer_cam, "gradient", _GRADIENT, _SHARED,
           "http://mftp.mmcheng.net/Papers/21TIP_LayerCAM.pdf"),
        _m("hirescam", "HiResCAM", hires_cam, "gradient", _GRADIENT, _SHARED, "https://arxiv.org/abs/2011.08891"),
        _m("gradcamelementwise", "Grad-CAM element-wise", grad_cam_elementwise, "gradient", _GRADIENT, _SHARED,
           "https://github.com/jacobgil/pytorch-grad-cam"),
        _m("eigencam", "Eigen-CAM", eigen_cam, "eigen", ("acts",), "1 forward (shared) + SVD",
           "https://arxiv.org/abs/2008.00299", project=True),
        _m("eigengradcam", "Eigen-Grad-CAM", eigen_grad_cam, "eigen", _GRADIENT, _SHARED + " + SVD",
           "https://github.com/jacobgil/pytorch-grad-cam", project=True),
        _m("scorecam", "Score-CAM", score_cam, "perturbation", ("acts", "mask_scores", "scores"),
           "1 + C full forwards (C = channels)",
           "https://arxiv.org/abs/1910.01279"),
        _m("ablationcam", "Ablation-CAM", ablation_cam, "perturbation", ("acts", "ablation_scores", "scores"),
           "1 + C forwards of the layers after the target only",
           "https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_"
           "Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf",
           ),
    )
}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "").replace("plusplus", "++")


_ALIASES: dict[str, str] = {_key(n): n for n in METHODS}
_ALIASES.update({_key(m.title): n for n, m in METHODS.items()})
_ALIASES.update({"gradcampp": "gradcam++", "gradcamplus": "gradcam++", "scorecampp": "scorecam"})


def get_method(name: str, argument: str = "method") -> CamMethod:
    """Look a method up by name (case, ``-``, ``_`` and ``PlusPlus`` spellings are forgiven).

    Raises:
        ValueError: for an unknown name, naming ``argument`` and listing close matches.
    """
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a method name (str); got {type(name).__name__} {name!r}")
    found = _ALIASES.get(_key(name))
    if found is None:
        close = difflib.get_close_matches(name.lower(), list(METHODS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{argument}={name!r} is not a known CAM method{hint} Known: {sorted(METHODS)}")
    return METHODS[found]
