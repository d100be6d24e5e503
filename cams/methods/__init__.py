"""The method registry: a plain dict from name to :class:`CamMethod`.

Every method of pytorch-grad-cam 1.5.7 and torchcam 0.5.0 is here, under its own name and under the peers'
class names (``GradCAMPlusPlus``, ``SmoothGradCAMpp``, ``KPCA_CAM``, ...). Three wrappers take any other
method as their base, written ``wrapper(base)``: ``finercam(layercam)``, ``refinecam(layercam)``,
``sess(gradcam++)`` (the bare wrapper name uses the peers' default base). Five methods neither peer has explain
vision transformers and watch training cheaply: attention rollout (``rollout``), gradient-weighted rollout
(``gradrollout``), AttnLRP (``attnlrp``) and the gradient-free Recipro-CAM (``reciprocam``) and ViT-ReciproCAM
(``vitreciprocam``).

A method's options (SS-CAM's number of samples, KPCA-CAM's kernel, ...) have defaults in
:attr:`CamMethod.options`; :meth:`CamMethod.with_options` gives a copy with other values, which the engine
accepts wherever it accepts a name.

Example:
    >>> sorted(METHODS)[:3]
    ['ablationcam', 'attnlrp', 'cam']
    >>> get_method("Grad-CAM++").name, get_method("SmoothGradCAMpp").name, get_method("KPCA_CAM").name
    ('gradcam++', 'smoothgradcampp', 'kpcacam')
    >>> get_method("sscam").options
    {'num_samples': 35, 'std': 2.0}
    >>> get_method("sscam").with_options(num_samples=8).options["num_samples"]
    8
    >>> get_method("RefineCAM(layer-cam)").name
    'refinecam(layercam)'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import replace

from cams.methods.activation import cam, fem
from cams.methods.attention import legrad
from cams.methods.base import CamMethod
from cams.methods.baseline import random_cam, sobel
from cams.methods.eigen import eigen_cam, eigen_grad_cam, kpca_cam, seg_eigen_cam
from cams.methods.gradient import (
    full_grad,
    grad_cam,
    grad_cam_elementwise,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    shapley_cam,
    smooth_grad_cam_plus_plus,
    xgrad_cam,
)
from cams.methods.meta import SESS_OPTIONS, sess_map
from cams.methods.perturbation import ablation_cam, is_cam, score_cam, ss_cam
from cams.methods.recipro import recipro_cam, vit_recipro_cam
from cams.methods.relevance import attn_lrp
from cams.methods.rollout import grad_rollout, rollout
from cams.names import close_matches

__all__ = ["METHODS", "CamMethod", "get_method"]

_GRADIENT = ("acts", "grads")
_SHARED = "1 forward + 1 partial backward (shared)"
_PGC = "https://github.com/jacobgil/pytorch-grad-cam"

_TOKEN_GRID = ("patch_tokens", "query_tokens")

_BASE_METHODS: tuple[CamMethod, ...] = (
    CamMethod("gradcam", grad_cam, _GRADIENT, "gradient", _SHARED, "https://arxiv.org/abs/1610.02391",
              title="Grad-CAM"),
    CamMethod("gradcam++", grad_cam_plus_plus, _GRADIENT, "gradient", _SHARED,
              "https://arxiv.org/abs/1710.11063", title="Grad-CAM++"),
    CamMethod("xgradcam", xgrad_cam, _GRADIENT, "gradient", _SHARED, "https://arxiv.org/abs/2008.02312",
              title="XGrad-CAM"),
    CamMethod("layercam", layer_cam, _GRADIENT, "gradient", _SHARED,
              "http://mftp.mmcheng.net/Papers/21TIP_LayerCAM.pdf", title="Layer-CAM"),
    CamMethod("hirescam", hires_cam, _GRADIENT, "gradient", _SHARED, "https://arxiv.org/abs/2011.08891",
              title="HiResCAM"),
    CamMethod("gradcamelementwise", grad_cam_elementwise, _GRADIENT, "gradient", _SHARED, _PGC,
              title="Grad-CAM element-wise"),
    CamMethod("shapleycam", shapley_cam, (*_GRADIENT, "hvp"), "gradient",
              _SHARED + ", kept for 1 Hessian-vector product", "https://arxiv.org/abs/2501.06261",
              title="ShapleyCAM"),
    CamMethod("smoothgradcampp", smooth_grad_cam_plus_plus, ("acts", "smooth_grads"), "gradient",
              "shared forward + N·B noisy forwards and backwards from the target layer, batched",
              "https://arxiv.org/abs/1908.01224", title="Smooth Grad-CAM++",
              options={"num_samples": 4, "std": 0.3}),
    CamMethod("fullgrad", full_grad, ("fullgrad",), "gradient",
              "1 forward + 1 backward to the input (every bias layer's gradient from it)",
              "https://arxiv.org/abs/1905.00780", title="FullGrad", per_layer=False),
    CamMethod("eigencam", eigen_cam, ("acts",), "eigen", "1 forward (shared) + SVD",
              "https://arxiv.org/abs/2008.00299", project=True, title="Eigen-CAM"),
    CamMethod("eigengradcam", eigen_grad_cam, _GRADIENT, "eigen", _SHARED + " + SVD", _PGC, project=True,
              title="Eigen-Grad-CAM"),
    CamMethod("segeigencam", seg_eigen_cam, _GRADIENT, "eigen", _SHARED + " + SVD",
              "https://doi.org/10.3390/app15137562", project=True, title="Seg-Eigen-CAM", eigen_sign="max"),
    CamMethod("kpcacam", kpca_cam, ("acts",), "eigen", "1 forward (shared) + (hw)² kernel eigenproblem",
              "https://arxiv.org/abs/2410.00267", title="KPCA-CAM", returns_map=True,
              options={"kernel": "sigmoid", "gamma": None}),
    CamMethod("cam", cam, ("acts", "fc_weights"), "activation", "1 forward (shared), no backward",
              "https://arxiv.org/abs/1512.04150", title="CAM", relu=False, options={"fc_layer": None}),
    CamMethod("fem", fem, ("acts",), "activation", "1 forward (shared)", "https://hal.science/hal-02963298",
              title="FEM", options={"k": 2.0}),
    CamMethod("scorecam", score_cam, ("acts", "mask_scores", "scores"), "perturbation",
              "1 + C full forwards (C = channels)", "https://arxiv.org/abs/1910.01279", title="Score-CAM"),
    CamMethod("sscam", ss_cam, ("acts", "smoothed_mask_scores"), "perturbation",
              "1 + N·B·C full forwards (N noise samples)", "https://arxiv.org/abs/2006.14255", title="SS-CAM",
              options={"num_samples": 35, "std": 2.0}),
    CamMethod("iscam", is_cam, ("acts", "integrated_mask_scores"), "perturbation",
              "1 + N·B·C full forwards (N integration steps)", "https://arxiv.org/abs/2010.03023",
              title="IS-CAM", options={"num_samples": 10}),
    CamMethod("ablationcam", ablation_cam, ("acts", "ablation_scores", "scores"), "perturbation",
              "1 + C forwards of the layers after the target only",
              "https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_"
              "Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf", title="Ablation-CAM"),
    CamMethod("legrad", legrad, ("legrad",), "attention",
              "1 forward (shared) + 1 partial backward per block", "https://arxiv.org/abs/2404.03214",
              title="LeGrad", returns_map=True, per_layer=False, volumes=False, transformer=True,
              options={"score_projection": None, "prefix_tokens": None}),
    CamMethod("rollout", rollout, ("attentions", *_TOKEN_GRID), "attention",
              "1 forward (shared), every block's attention caught; no backward", "https://arxiv.org/abs/2005.00928",
              title="Attention Rollout", returns_map=True, per_layer=False, volumes=False, transformer=True,
              options={"head_fusion": "mean", "discard_ratio": 0.0}),
    CamMethod("gradrollout", grad_rollout, ("attention_gradients", *_TOKEN_GRID), "attention",
              "1 forward (shared, graph from the first attention) + 1 backward to every block's attention",
              "https://arxiv.org/abs/2103.15679", title="Gradient-weighted Attention Rollout", returns_map=True,
              per_layer=False, volumes=False, transformer=True),
    CamMethod("attnlrp", attn_lrp, ("attnlrp",), "relevance",
              "1 forward (shared) + 1 forward and 1 backward to the input with the AttnLRP rules",
              "https://arxiv.org/abs/2402.05602", title="AttnLRP", returns_map=True, per_layer=False,
              volumes=False, transformer=True),
    CamMethod("reciprocam", recipro_cam, ("recipro_scores",), "perturbation",
              "1 forward (shared) + h·w forwards of only the layers after the target per image, batched; "
              "no backward", "https://arxiv.org/abs/2209.14074", title="Recipro-CAM", returns_map=True, relu=False,
              options={"gaussian": False}),
    CamMethod("vitreciprocam", vit_recipro_cam, ("vit_recipro_scores",), "perturbation",
              "1 forward (shared) + h·w forwards of only the blocks after the target per image, batched; "
              "no backward", "https://arxiv.org/abs/2310.02588", title="ViT-ReciproCAM", returns_map=True,
              relu=False, volumes=False, transformer=True, options={"gaussian": False}),
    CamMethod("randomcam", random_cam, ("acts", "random_weights"), "baseline", "1 forward (shared)", _PGC,
              title="RandomCAM"),
    CamMethod("sobel", sobel, ("image",), "baseline", "no forward (the input's Sobel edges)", _PGC,
              title="Sobel CAM", returns_map=True, per_layer=False, volumes=False),
)  # fmt: skip


# ---------------------------------------------------------------------- wrappers: method(base)
def finer_cam(base: CamMethod) -> CamMethod:
    """Finer-CAM (Zhang et al. 2025, https://arxiv.org/abs/2501.11309) over any gradient method ``base``.

    ``base`` weighs the activations with the gradient of the contrastive score of pytorch-grad-cam's
    ``FinerWeightedTarget`` instead of the target's (see :func:`cams.methods.meta.finer_gradients`).

    Example:
        >>> finer_cam(get_method("layercam")).name, finer_cam(get_method("layercam")).inputs
        ('finercam(layercam)', ('acts', 'finer_grads'))
    """
    if "grads" not in base.inputs:
        raise ValueError(f"finercam: the base method must use gradients; {base.name!r} does not")
    return replace(
        base,
        name="finercam" if base.name == "gradcam" else f"finercam({base.name})",
        inputs=tuple("finer_grads" if n == "grads" else n for n in base.inputs),
        title="Finer-CAM",
        cost=base.cost.replace("(shared)", "(shared forward, own partial backward)"),
        paper="https://arxiv.org/abs/2501.11309",
        options={**base.options, "alpha": 1.0, "comparisons": (1, 2, 3)},
    )


def refine_cam(base: CamMethod) -> CamMethod:
    """RefineCAM (https://arxiv.org/abs/2605.14641): the product of ``base``'s maps of several target layers.

    Each layer's map is scaled to [0, 1] at the input's size, the maps are multiplied and the product is
    scaled to [0, 1] (pytorch-grad-cam's ``RefineCAM``).

    Example:
        >>> refine_cam(get_method("layercam")).aggregate
        'product'
    """
    if not base.per_layer:
        raise ValueError(f"refinecam multiplies one map per target layer; {base.name!r} makes one map per call")
    return replace(
        base,
        name="refinecam" if base.name == "gradcam++" else f"refinecam({base.name})",
        title="RefineCAM",
        family="meta",
        paper="https://arxiv.org/abs/2605.14641",
        aggregate="product",
        min_layers=2,
    )


def sess(base: CamMethod) -> CamMethod:
    """SESS (Tan et al. 2022, https://arxiv.org/abs/2207.01769): ``base`` on multi-scale sliding windows, fused.

    See :func:`cams.methods.meta.sess_maps` for the algorithm and its options.

    Example:
        >>> sess(get_method("layercam")).name, sess(get_method("gradcam")).options["num_scales"]
        ('sess(layercam)', 12)
    """
    if not base.per_layer:
        raise ValueError(f"sess runs its base on patches through the target layers; {base.name!r} does not")
    return CamMethod(
        name="sess" if base.name == "gradcam" else f"sess({base.name})",
        weigh=sess_map,
        inputs=("sess",),
        family="meta",
        cost="1 forward + 1 backward of every patch (12 scales × sliding windows), batched",
        paper="https://arxiv.org/abs/2207.01769",
        title="SESS",
        options={"base": base, **SESS_OPTIONS},
        returns_map=True,
        per_layer=False,
        volumes=False,
    )


_WRAPPERS: dict[str, tuple[Callable[[CamMethod], CamMethod], str]] = {
    "finercam": (finer_cam, "gradcam"),
    "refinecam": (refine_cam, "gradcam++"),
    "sess": (sess, "gradcam"),
}

METHODS: dict[str, CamMethod] = {m.name: m for m in _BASE_METHODS}
for _wrapper, _base in _WRAPPERS.values():
    _default = _wrapper(METHODS[_base])
    METHODS[_default.name] = _default


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "").replace("plusplus", "++")


_ALIASES: dict[str, str] = {_key(n): n for n in METHODS}
_ALIASES.update({_key(m.title): n for n, m in METHODS.items()})
_ALIASES.update({
    "gradcampp": "gradcam++", "gradcamplus": "gradcam++", "scorecampp": "scorecam", "sobelcam": "sobel",
    "kernelpcacam": "kpcacam", "isscam": "iscam",
    "attentionrollout": "rollout", "gradientrollout": "gradrollout", "gradientweightedrollout": "gradrollout",
    "lrp": "attnlrp", "vitrecipro": "vitreciprocam",
})  # fmt: skip
_WRAPPED = re.compile(r"^\s*([\w\- ]+?)\s*\((.+)\)\s*$")


def get_method(name: str | CamMethod, argument: str = "method") -> CamMethod:
    """Look a method up by name (case, ``-``, ``_`` and ``PlusPlus`` spellings are forgiven).

    ``"wrapper(base)"`` builds a wrapper over another method (``"refinecam(layercam)"``). A
    :class:`CamMethod` (e.g. from :meth:`CamMethod.with_options`) is returned as it is.

    Raises:
        ValueError: for an unknown name, naming ``argument`` and listing close matches.
    """
    if isinstance(name, CamMethod):
        return name
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a method name (str); got {type(name).__name__} {name!r}")
    wrapped = _WRAPPED.match(name)
    if wrapped is not None:
        outer = _key(wrapped.group(1))
        if outer not in _WRAPPERS:
            raise ValueError(
                f"{argument}={name!r}: {wrapped.group(1)!r} is not a wrapper method{close_matches(outer, _WRAPPERS)};"
                f" wrappers are {sorted(_WRAPPERS)}, e.g. 'refinecam(layercam)'"
            )
        return _WRAPPERS[outer][0](get_method(wrapped.group(2), argument))
    found = _ALIASES.get(_key(name))
    if found is None:
        close = difflib.get_close_matches(name.lower(), list(METHODS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{argument}={name!r} is not a known CAM method{hint} Known: {sorted(METHODS)}")
    return METHODS[found]
