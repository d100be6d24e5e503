"""Sanity: cascading model-parameter randomisation (Adebayo et al., 2018)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cams.engine import CamEngine
from cams.layer_choice import find_layer
from cams.methods import get_method
from cams.metrics.similarity import spearman
from cams.state import frozen_model, rng_guard
from cams.targets import Target, Targets

__all__ = ["randomized_copy", "reset_seeded", "sanity_check"]

_RANDOM_METHODS = frozenset(
    {
        Tensor.uniform_, Tensor.normal_, Tensor.random_, Tensor.bernoulli_, Tensor.exponential_,
        Tensor.geometric_, Tensor.log_normal_, Tensor.cauchy_,
        nn.init.uniform_, nn.init.normal_, nn.init.trunc_normal_, nn.init.kaiming_uniform_,
        nn.init.kaiming_normal_, nn.init.xavier_uniform_, nn.init.xavier_normal_, nn.init.orthogonal_,
        nn.init.sparse_,
    }
)  # fmt: skip
_RANDOM_FACTORIES = frozenset(
    {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.bernoulli, torch.multinomial}
)


_SEED_SALT = 0x5A17_C0DE


class _LocalRandom(TorchFunctionMode):
    """Route every random draw that takes a ``generator`` to local generators seeded by ``seed``.

    ``reset_parameters`` and ``nn.init`` draw from the global RNG; inside this mode they draw
    from a private ``torch.Generator`` per device instead, so re-initialisation is reproducible
    and the training loop's random stream is not consumed.
    """

    def __init__(self, seed: int, salt: int = _SEED_SALT) -> None:
        super().__init__()
        self.seed = seed
        self.salt = salt
        self.generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if device.type == "meta":
            return None
        if device not in self.generators:
            # salted, so that seed s does not replay the stream of torch.manual_seed(s), from which
            # the model itself may have been initialised
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed + self.salt)
        return self.generators[device]

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is None and (func in _RANDOM_METHODS or func in _RANDOM_FACTORIES):
            tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
            device = tensor.device if tensor is not None else torch.device(kwargs.get("device") or "cpu")
            generator = self._generator(device)
            if generator is not None:
                kwargs["generator"] = generator
        return func(*args, **kwargs)


def _forward_order_after(model: nn.Module, x: Tensor, layers: list[nn.Module]) -> list[nn.Module]:
    """Modules of ``model`` that run after the first of ``layers`` ends, or inside one of them.

    Found with pre- and post-forward hooks on one forward of ``x`` (removed on exit).
    """
    clock = 0
    starts: dict[nn.Module, list[int]] = {}
    ends: dict[nn.Module, int] = {}

    def pre_hook(module: nn.Module, args: Any) -> None:
        nonlocal clock
        clock += 1
        starts.setdefault(module, []).append(clock)

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal clock
        clock += 1
        ends.setdefault(module, clock)

    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
        with frozen_model(model), torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer for layer in layers if layer not in ends]
    if missing:
        raise RuntimeError(f"target layer(s) {[type(m).__name__ for m in missing]} did not run in the forward")
    first_end = min(ends[layer] for layer in layers)
    inside = {id(m) for layer in layers for m in layer.modules()}
    return [
        module
        for module in model.modules()
        if id(module) in inside or any(start > first_end for start in starts.get(module, ()))
    ]


@torch.no_grad()
def _reinitialise(module: nn.Module) -> None:
    """``reset_parameters()`` where a module has it, else a Linear-style default for its own tensors."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for parameter in module.parameters(recurse=False):
        if parameter.dim() >= 2:
            nn.init.kaiming_uniform_(parameter, a=math.sqrt(5))
        else:
            bound = 1 / math.sqrt(max(parameter.numel(), 1))
            nn.init.uniform_(parameter, -bound, bound)


def reset_seeded(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` drawing as after ``torch.manual_seed(seed)``, without touching the global RNG.

    The re-initialisation of Quantus' ``get_random_layer_generator`` (``torch.manual_seed(seed); reset_parameters()``
    per module), with every draw from local generators seeded with ``seed`` (the same numbers on the CPU and on
    a CUDA device) and the global RNG state restored on exit.

    Args:
        module: a module with ``reset_parameters``; changed in place.
        seed: the seed of the draws.

    Example:
        >>> layer, twin = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> reset_seeded(layer, 7); reset_seeded(twin, 7)
        >>> torch.equal(layer.weight, twin.weight)
        True
    """
    device = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
    with torch.no_grad(), rng_guard(device), _LocalRandom(seed, salt=0):
        torch.default_generator.manual_seed(seed)  # forked by rng_guard: draws outside the mode
        module.reset_parameters()


def randomized_copy(
    model: nn.Module,
    x: Tensor,
    target_layers: str | nn.Module | Sequence[str | nn.Module],
    seed: int = 0,
) -> nn.Module:
    """A deep copy of ``model`` with the target layer and every module after it re-initialised.

    The cascading model-parameter randomisation of Adebayo et al., *Sanity Checks for Saliency
    Maps*, NeurIPS 2018, https://arxiv.org/abs/1810.03292: the weights from the output down to the
    target layer are re-initialised. "After" is forward order, found with hooks on one forward of
    ``x[:1]`` through the copy: a module is re-initialised when it is (inside) a target layer or
    starts after the first target layer has finished (the classifier head, pooling, later blocks).

    Re-initialisation calls ``reset_parameters()`` where a module has one (BatchNorm statistics
    reset to ``0``/``1`` included), else draws Kaiming-uniform weights (``a = sqrt(5)``, as
    ``nn.Linear``) for tensors with ``dim >= 2`` and ``U(-1/sqrt(n), 1/sqrt(n))`` for the rest.
    Every draw comes from local ``torch.Generator``s seeded from ``seed`` (plus a fixed salt, so
    that ``seed=0`` does not replay a model built after ``torch.manual_seed(0)``): the result
    depends only on ``seed``, and the global RNG is left untouched. ``model`` itself is not modified.

    Args:
        model: the model; deep-copied (a LightningModule's trainer is not copied).
        x: ``(B, C, H, W)`` input; only ``x[:1]`` runs, once, to find the forward order.
        target_layers: a module of ``model``, a dotted name (``"layer4"``), or a list of those.
        seed: seed of the local generators.

    Returns:
        the re-initialised copy, in the same modes and on the same device as ``model``.

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(num_classes=3)
        >>> copy = randomized_copy(model, torch.randn(1, 3, 32, 32), "layer4.1")
        >>> torch.equal(copy.fc.weight, model.fc.weight), torch.equal(copy.layer4[1].conv2.weight,
        ...     model.layer4[1].conv2.weight), torch.equal(copy.layer4[0].conv1.weight, model.layer4[0].conv1.weight)
        (False, False, True)
    """
    specs = [target_layers] if isinstance(target_layers, (str, nn.Module)) else list(target_layers)
    if not specs:
        raise ValueError("target_layers: got an empty list; pass a layer name such as 'layer4'")
    names = []
    for spec in specs:
        if isinstance(spec, str):
            find_layer(model, spec)
            names.append(spec)
        else:
            found = [name for name, module in model.named_modules() if module is spec and name]
            if not found:
                raise ValueError(
                    f"target_layers: the {type(spec).__name__} module given is not a sub-module of the model"
                )
            names.append(found[0])
    duplicate = copy.deepcopy(model)
    layers = [find_layer(duplicate, name) for name in names]
    device = next((t.device for t in (*duplicate.parameters(), *duplicate.buffers())), x.device)
    selected = _forward_order_after(duplicate, x[:1].detach().to(device), layers)
    with rng_guard(device), _LocalRandom(seed):
        torch.default_generator.manual_seed(seed + _SEED_SALT)  # forked by rng_guard: draws outside the mode
        for module in selected:
            _reinitialise(module)
    return duplicate


def sanity_check(
    model: nn.Module,
    x: Tensor,
    target_layers: str | nn.Module | Sequence[str | nn.Module] | None = None,
    method: str = "gradcam",
    targets: Targets = None,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Model-parameter randomisation test: how similar are the maps of a re-initialised model?

    Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018,
    https://arxiv.org/abs/1810.03292 (cascading randomisation, section 3.1). With :math:`M_i` the
    map of image :math:`i` from ``model`` and :math:`\tilde M_i` from :func:`randomized_copy` (the
    target layer and everything after it re-initialised), both for the class ``model`` predicts
    (or ``targets``), computed with :class:`cams.CamEngine`:

    .. math:: s_i = \rho_{\text{Spearman}}(M_i, \tilde M_i)

    A map that explains the model should change when its parameters do: values near ``1`` mean
    the method fails the check, values near ``0`` (or below) mean it passes. Conventions for
    constant maps are those of :func:`spearman`.

    Args:
        model: the model; left as found (the copy is discarded).
        x: ``(B, C, H, W)`` images.
        target_layers: as in :class:`cams.CamEngine` (``None``: its automatic choice).
        method: a name from :data:`cams.METHODS`.
        targets: as in :class:`cams.CamEngine`; ``None`` explains each image's predicted class
            of ``model``, and the randomised copy explains the same classes. A task target from
            :mod:`cams.targets` is given to both as it is: pass ``target.fixed(model(x))`` so that the copy
            explains what ``model`` chose (its predicted mask, its classes above the threshold).
        seed: seed of the re-initialisation (see :func:`randomized_copy`).
        batch_size: rows per forward for perturbation methods (``None``: the engine's defaults).
        reshape_transform: as in :class:`cams.CamEngine`.

    Returns:
        ``(B,)`` float32 Spearman correlations in ``[-1, 1]``.

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(num_classes=3)
        >>> similarity = sanity_check(model, torch.randn(2, 3, 32, 32), "layer4")
        >>> similarity.shape, bool((similarity.abs() <= 1).all())
        (torch.Size([2]), True)
    """
    name = get_method(method, argument="method").name
    engine = CamEngine(model, target_layers, reshape_transform)
    original = engine(x, methods=name, targets=targets, batch_size=batch_size)
    layer_names = engine.layer_names
    randomized = randomized_copy(model, x, layer_names, seed=seed)
    # a task target (segmentation, detection, ...) is passed on as given: its classes alone would not fit the model
    task = isinstance(targets, Target)
    same_classes = original.classes if original.classes is not None and not task else targets
    other = CamEngine(randomized, layer_names, reshape_transform)(
        x, methods=name, targets=same_classes, batch_size=batch_size
    )
    return spearman(original[name], other[name])
