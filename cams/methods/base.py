"""A CAM method: how it weighs the captured activations, what it asks for, and what that costs.

:class:`CamMethod` is the registry's value type (:data:`cams.METHODS`); what it needs from a call (a target,
the target layers, the shared backward, random draws) is read from the declarations of its inputs
(:data:`cams.methods.inputs.INPUTS`), never listed here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from cams.methods.inputs import declared
from cams.names import close_matches
from cams.ops import EigenSign
from cams.passes import Input, accepted_options

__all__ = ["Aggregate", "CamMethod", "Family"]

Family = Literal["gradient", "perturbation", "eigen", "activation", "attention", "relevance", "baseline", "meta"]
Aggregate = Literal["mean", "product"]


@dataclass(frozen=True)
class CamMethod:
    """One CAM method: how to weigh the captured activations, and what that costs.

    Attributes:
        name: registry key, e.g. ``"gradcam++"``; also the key of its map in :class:`cams.CamMaps`.
        weigh: ``weigh(*inputs, **options) -> weighted activations (B, C, *spatial)`` (or the map
            ``(B, *spatial)`` itself when ``returns_map``), called with the inputs named in ``inputs``, in that
            order, and with the options its keyword-only parameters name.
        inputs: what ``weigh`` takes, by name, each declared once in :data:`cams.methods.inputs.INPUTS` (see
            :mod:`cams.passes`): ``"acts"``, ``"grads"``, ``"scores"``, ``"mask_scores"``, ``"ablation_scores"``,
            ``"smooth_grads"``, ...
        family: ``"gradient"``, ``"perturbation"``, ``"eigen"``, ``"activation"``, ``"attention"``,
            ``"relevance"``, ``"baseline"`` or ``"meta"``.
        cost: forwards/backwards per call, for the README table.
        paper: link to the paper.
        project: always take the first principal component (Eigen-CAM family).
        title: the paper's name of the method (also accepted as an alias).
        options: the method's options and their values; each goes to the keyword-only parameter of that
            name of ``weigh`` or of the providers of its ``inputs`` (:attr:`cams.passes.Input.provide`).
        returns_map: ``weigh`` returns the map ``(B, *spatial)`` itself: no channel sum or projection.
        per_layer: computed once per target layer and aggregated (``False``: once for the whole call,
            e.g. FullGrad's bias layers, LeGrad's blocks together, the Sobel map of the input).
        relu: clamp the map at 0 before min-max scaling (CAM keeps the signed map, as its paper).
        aggregate: how the maps of several target layers combine: their ``"mean"`` (pytorch-grad-cam),
            or their ``"product"`` (RefineCAM).
        min_layers: the fewest target layers the method works with (RefineCAM: 2).
        eigen_sign: a sign rule the method fixes for its principal component (Seg-Eigen-CAM: ``"max"``);
            ``None`` follows the call's ``eigen_sign``.
        volumes: works on volumes ``(B, C, D, H, W)`` as on images (not the Sobel map, SESS's windows, LeGrad).
        transformer: needs a vision transformer's attention or tokens (LeGrad, rollout, AttnLRP, ViT-ReciproCAM);
            on other models it is an error naming the methods that fit.
    """

    name: str
    weigh: Callable[..., torch.Tensor]
    inputs: tuple[str, ...]
    family: Family
    cost: str
    paper: str
    project: bool = False
    title: str = ""
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    returns_map: bool = False
    per_layer: bool = True
    relu: bool = True
    aggregate: Aggregate = "mean"
    min_layers: int = 1
    eigen_sign: EigenSign | None = None
    volumes: bool = True
    transformer: bool = False

    @property
    def declared_inputs(self) -> tuple[Input, ...]:
        """The declarations of :attr:`inputs`, in their order (:data:`cams.methods.inputs.INPUTS`).

        Raises:
            ValueError: an input name that nothing declares (with close matches).

        Example:
            >>> from cams.methods import get_method
            >>> [(i.name, i.backward) for i in get_method("shapleycam").declared_inputs]
            [('acts', False), ('grads', True), ('hvp', True)]
        """
        return tuple(declared(name) for name in self.inputs)

    @property
    def needs_grads(self) -> bool:
        """Whether the shared backward pass is needed."""
        return any(i.backward for i in self.declared_inputs)

    @property
    def needs_target(self) -> bool:
        """Whether the method explains a target (class) score."""
        return any(i.needs_target for i in self.declared_inputs)

    @property
    def needs_layers(self) -> bool:
        """Whether the method reads the target layers (FullGrad and the Sobel map do not)."""
        return self.per_layer or any(i.reads_layers for i in self.declared_inputs)

    @property
    def randomised(self) -> bool:
        """Whether the map depends on random draws (from the call's ``seed``): then an image's map also depends
        on its place in the batch, which decides the draws it gets."""
        base = self.options.get("base")
        return any(i.random for i in self.declared_inputs) or (isinstance(base, CamMethod) and base.randomised)

    def with_options(self, **options: Any) -> CamMethod:
        """A copy of this method with some options changed (lists become tuples).

        Raises:
            ValueError: an option the method does not have, with close matches.

        Example:
            >>> from cams.methods import get_method
            >>> get_method("kpcacam").with_options(kernel="rbf").options
            {'kernel': 'rbf', 'gamma': None}
        """
        for key in options:
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise ValueError(
                    f"{self.name}: unknown option {key!r}{close_matches(key, self.options)}; its options are: "
                    f"{known}"
                )
        frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        return replace(self, options={**self.options, **frozen})

    def kwargs_for(self, fn: Callable[..., Any]) -> dict[str, Any]:
        """The options ``fn`` takes: those named by its keyword-only parameters."""
        accepted = accepted_options(fn)
        return {k: v for k, v in self.options.items() if accepted is None or k in accepted}
