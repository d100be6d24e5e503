"""One engine call's shared state (:class:`Pass`) and how an input a method asks for is declared (:class:`Input`).

A method in :data:`cams.METHODS` names the inputs its weighing function takes (``CamMethod.inputs``). Each
name is declared once, as an :class:`Input`: the function that provides it and what that function needs
from the call (a target score, the target layers, their feature maps, the shared backward, the autograd
graph kept after it, a tap on the shared forward, random draws). The engine and :class:`cams.CamMethod`
read those declarations; nothing else lists inputs. The engine asks a :class:`Pass` for the inputs, per
target layer, and each is computed the first time a method needs it:

- ``acts``: the layer's activations ``(B, C, *spatial)`` float32 (the shared forward);
- ``grads``: ``∂score/∂acts``, same shape (one ``autograd.grad``, shared by every gradient method);
- ``scores``: the target score of each image ``(B,)`` (free);
- ``image``: the input batch itself (the Sobel map);

are declared here. The others live with their algorithm: Score-CAM's ``mask_scores`` and Ablation-CAM's
``ablation_scores`` in :mod:`cams.methods.perturbation`, CAM's ``fc_weights`` in :mod:`cams.methods.activation`,
ShapleyCAM's ``hvp`` in :mod:`cams.methods.gradient`, RandomCAM's ``random_weights`` in
:mod:`cams.methods.baseline`, Finer-CAM's ``finer_grads`` and SESS's ``sess`` in :mod:`cams.methods.meta`,
Smooth Grad-CAM++'s, SS-CAM's and IS-CAM's noisy passes in :mod:`cams.noise`, FullGrad's in
:mod:`cams.bias_gradients`, LeGrad's in :mod:`cams.attention_maps`. :data:`cams.methods.inputs.INPUTS` is
the one table of them all, by name.

To give a new method an input nobody computes yet, write ``provide(pass_, layer_index, *, options) -> Tensor``
next to its algorithm and declare it there as ``Input(name, provide, ...)``, then add it to
:data:`cams.methods.inputs.INPUTS`. The provider's keyword-only parameters receive the asking method's
options of the same names (:attr:`cams.CamMethod.options`), and its result is cached per layer and option
values. Random inputs draw from :meth:`Pass.generator`, never from the global RNG.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cams.layout import Layout
from cams.targets import Target, select_rows

__all__ = [
    "ACTS",
    "CORE_INPUTS",
    "GRADS",
    "IMAGE",
    "SCORES",
    "Explain",
    "Input",
    "Pass",
    "Progress",
    "Tap",
    "accepted_options",
    "expand_rows",
    "score_rows",
]

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: how far a long pass is (``step`` names the method and layer)."""

Explain = Callable[[torch.Tensor, Any, Target], Any]
"""``explain(x, method, target) -> cams.CamMaps``: the call's engine run again on other images ``x`` (SESS's
patches) with ``method`` (a :class:`cams.CamMethod`) and ``target``: the same model, target layers,
``reshape_transform`` and call options (``eigen_smooth``, ``eigen_sign``, ``batch_size``, ``seed``)."""

Tap = Callable[[nn.Module, Sequence[tuple[str, nn.Module]]], AbstractContextManager[Any]]
"""``tap(model, layers)``: a context manager entered around the shared forward, yielding what it watched."""


@dataclass(frozen=True)
class Input:
    """One input a method's ``weigh`` can take, declared once: how it is computed and what that needs.

    Attributes:
        name: what methods ask for it by (``CamMethod.inputs``), and the key of :meth:`Pass.get`.
        provide: ``provide(pass_, layer_index, **options) -> Tensor``; its keyword-only parameters receive the
            asking method's options of the same names (all of them with ``**options``).
        needs_target: it is about the explained target's score (``False``: the activations, the image, random
            weights); a method none of whose inputs needs one explains no target.
        reads_layers: it reads the target layers (``False``: the input image, FullGrad's bias layers); a method
            computed once per call (``per_layer=False``) none of whose inputs reads them needs no target layer.
        reads_feature_map: it uses the target layers' ``(B, C, *spatial)`` feature maps, so the engine reads
            their layouts (``False``: scores, the image, FullGrad, LeGrad, SESS).
        backward: it needs the shared backward's gradients (``grads``, ShapleyCAM's ``hvp``).
        graph: it differentiates the shared forward's graph again after the shared backward, which then keeps
            the graph (ShapleyCAM, Finer-CAM, LeGrad).
        second_order: it differentiates the shared gradients themselves, which then carry their own graph
            (:attr:`Pass.graph_grads`; ShapleyCAM's Hessian-vector product); implies ``backward`` and ``graph``.
        tap: a :data:`Tap` the engine enters around the shared forward; what it yields is
            ``pass_.taps[name]`` (LeGrad's attention probabilities).
        random: it draws from :meth:`Pass.generator`: the map depends on the call's ``seed`` and on each image's
            place in the batch.

    Raises:
        ValueError: ``second_order`` without ``backward`` and ``graph``.

    Example:
        >>> ACTS.name, ACTS.needs_target, GRADS.backward
        ('acts', False, True)
    """

    name: str
    provide: Callable[..., torch.Tensor]
    needs_target: bool = True
    reads_layers: bool = True
    reads_feature_map: bool = True
    backward: bool = False
    graph: bool = False
    second_order: bool = False
    tap: Tap | None = None
    random: bool = False

    def __post_init__(self) -> None:
        if self.second_order and not (self.backward and self.graph):
            raise ValueError(
                f"Input {self.name!r}: second_order differentiates the shared backward's gradients again, so it "
                "needs backward=True and graph=True too"
            )


@dataclass
class Pass:
    """One engine call's shared state: the input, what the forward captured, the target.

    Attributes:
        model: the model (in eval mode while the call runs).
        x: the input batch on the model's device (the six augmented copies stacked, with ``aug_smooth``).
        layers: ``(name, module)`` of each target layer.
        raw: each layer's output values as the model produced them (any layout).
        acts: each layer's activations as ``(B, C, *spatial)`` float32.
        grads: each layer's gradients, same shape (``None`` when no method needs them).
        target: the target of each row of ``x``.
        scores: ``(B,)`` target scores of the plain forward (``None`` when no method needs a target).
        batch_size: rows per forward for the perturbation passes (``None``: their defaults).
        progress: told how far the perturbation passes are (``None``: nothing is reported).
        layouts: how each layer's raw output became ``acts`` (:class:`cams.layout.Layout`); Ablation-CAM
            ablates channels along the raw output's channel dimension.
        output: the model output of the shared forward (graph-connected when a method keeps the graph).
        outputs: each layer's output as captured, the tensors ``grads`` are taken with respect to.
        graph_grads: ``grads`` before detaching, with their own graph (only for second-order inputs).
        taps: what each input's :attr:`Input.tap` recorded during the shared forward, by input name.
        seed: the call's seed; :meth:`generator` derives every random input's generator from it.
        explain: the call's engine run again on other images (:data:`Explain`; SESS's patches), ``None``
            outside an engine call.
        inputs: the declarations :meth:`get` computes, by name (the engine gives those of the call's methods;
            default: the core inputs of this module).
    """

    model: nn.Module
    x: torch.Tensor
    layers: Sequence[tuple[str, nn.Module]]
    raw: list[Any]
    acts: list[torch.Tensor]
    grads: list[torch.Tensor] | None
    target: Target | None
    scores: torch.Tensor | None
    batch_size: int | None = None
    progress: Progress | None = None
    layouts: Sequence[Layout] | None = None
    output: Any = None
    outputs: list[torch.Tensor] | None = None
    graph_grads: list[torch.Tensor] | None = None
    taps: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    explain: Explain | None = None
    inputs: Mapping[str, Input] = field(default_factory=lambda: CORE_INPUTS)
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def get(self, name: str, layer: int, options: dict[str, Any] | None = None) -> torch.Tensor:
        """The input ``name`` for target layer number ``layer``, computed once per set of options it takes."""
        provide = self.inputs[name].provide
        accepted = accepted_options(provide)
        kwargs = {k: v for k, v in (options or {}).items() if accepted is None or k in accepted}
        key = (name, layer, *sorted(kwargs.items(), key=lambda kv: kv[0]))
        try:
            hash(key)
        except TypeError:
            key = (name, layer, *((k, id(v)) for k, v in sorted(kwargs.items(), key=lambda kv: kv[0])))
        if key not in self._cache:
            self._cache[key] = provide(self, layer, **kwargs)
        return self._cache[key]

    def cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this call, its result afterwards.

        For providers that compute every layer at once (Smooth Grad-CAM++'s noisy backwards, Finer-CAM's
        gradients): their key names them and their options, not the layer.
        """
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def generator(self, name: str, layer: int = 0) -> torch.Generator:
        """A generator on ``x``'s device for the random input ``name`` of ``layer``, seeded from :attr:`seed`.

        Each input and layer has its own stream, so a method's map does not depend on which other methods
        the call computes.
        """
        salt = zlib.crc32(f"{name}/{layer}".encode())
        return torch.Generator(device=self.x.device).manual_seed((self.seed * 1_000_003 + salt) % (1 << 63))

    def reporter(self, method: str, layer: int) -> Callable[[int, int], None] | None:
        """``(done, total) -> None`` telling :attr:`progress` about ``method`` on layer ``layer``."""
        if self.progress is None:
            return None
        step, report = f"{method} on {self.layers[layer][0]}", self.progress
        return lambda done, total: report(step, done, total)

    def feature_map(self, layer: int, t: Any) -> torch.Tensor:
        """``t`` (layer ``layer``'s raw output, or a gradient with respect to it) as ``(B, C, *spatial)``."""
        return t if not self.layouts else self.layouts[layer].to_feature_map(t)


def accepted_options(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The option names ``fn`` takes: its keyword-only parameters (``None``: all, it has ``**options``).

    Example:
        >>> sorted(accepted_options(lambda acts, *, k, gamma=None: acts))
        ['gamma', 'k']
    """
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _acts(p: Pass, i: int) -> torch.Tensor:
    return p.acts[i]


def _grads(p: Pass, i: int) -> torch.Tensor:
    assert p.grads is not None, "the engine runs the backward when a method asks for 'grads'"
    return p.grads[i]


def _scores(p: Pass, i: int) -> torch.Tensor:
    assert p.scores is not None, "the engine scores the target when a method needs it"
    return p.scores


def _image(p: Pass, i: int) -> torch.Tensor:
    return p.x


#: the layer's activations ``(B, C, *spatial)``
ACTS = Input("acts", _acts, needs_target=False)
#: the shared backward's ``∂score/∂acts`` ``(B, C, *spatial)``
GRADS = Input("grads", _grads, backward=True)
#: the target score of each image of the plain forward ``(B,)``
SCORES = Input("scores", _scores, reads_feature_map=False)
#: the input batch ``(B, C, *spatial)``
IMAGE = Input("image", _image, needs_target=False, reads_layers=False, reads_feature_map=False)

#: the inputs declared here, by name (what a :class:`Pass` built outside the engine can compute)
CORE_INPUTS: Mapping[str, Input] = {declared.name: declared for declared in (ACTS, GRADS, SCORES, IMAGE)}


def expand_rows(output: Any, n: int) -> Any:
    """Repeat a one-row model output ``n`` times (tensors, tuples/lists/dicts of them, one-dict-per-image lists).

    Example:
        >>> expand_rows({"logits": torch.zeros(1, 3)}, 4)["logits"].shape
        torch.Size([4, 3])
    """
    if isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict):
        return output * n  # a detector's output: one dict per image
    if isinstance(output, torch.Tensor):
        return output.expand(n, *output.shape[1:])
    if isinstance(output, (tuple, list)):
        return type(output)(expand_rows(o, n) for o in output)
    if isinstance(output, dict):
        return {k: expand_rows(v, n) for k, v in output.items()}
    return output


def score_rows(target: Target, output: Any, images: torch.Tensor, block: int) -> torch.Tensor:
    """Score the plain forward's rows, ``block`` rows (one copy of the batch) at a time.

    With ``aug_smooth`` the forward stacks six copies of the batch; a user's callable written for one
    batch (``lambda out: out[torch.arange(B), classes]``) then still sees batches of ``B`` rows.
    """
    if len(images) <= block:
        return target(output, images)
    return torch.cat([
        target(select_rows(output, slice(i, i + block)), images[i : i + block]) for i in range(0, len(images), block)
    ])
