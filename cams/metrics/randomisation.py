"""Randomisation: do the maps change when the model's weights, or the explained class, are randomised?

- :func:`mprt` / :func:`mprt_scores` (Adebayo et al., 2018): Spearman correlation of each map with the map of
  the model with its layers re-initialised one after the other (cascading) or one at a time (independent);
  :func:`cams.metrics.sanity_check` is its one-step form (the target layer and everything after it);
- :func:`smooth_mprt` (Hedström et al., 2023): the same on maps averaged over noisy copies of the input;
- :func:`efficient_mprt` (Hedström et al., 2023): the relative rise of the maps' discrete entropy from the
  model to its fully re-initialised copy;
- :func:`random_logit` (Sixt et al., 2020): SSIM between the map of the explained class and of a random other
  class (:func:`cams.metrics.ssim`).

Layers are re-initialised as Quantus 0.6.0 does (``get_random_layer_generator``): every module with
``reset_parameters``, in ``model.named_modules()`` order (reversed for ``"top_down"``), each drawn as after
``torch.manual_seed(seed + 1)``, but from local generators (:func:`cams.metrics.sanity.reset_seeded`): the
global RNG is never touched, and the model itself never changes (a deep copy is randomised).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cams.engine import CamEngine
from cams.layer_choice import find_layer
from cams.methods import get_method
from cams.metrics.map_statistics import discrete_entropy, ssim
from cams.metrics.sanity import reset_seeded
from cams.metrics.similarity import spearman
from cams.names import close_matches
from cams.state import frozen_model, model_device
from cams.targets import Target, Targets, logits_of

__all__ = [
    "ORDERS",
    "blocks",
    "efficient_mprt",
    "mprt",
    "mprt_scores",
    "random_logit",
    "randomised_models",
    "smooth_mprt",
]

ORDERS = ("top_down", "bottom_up", "independent")


def blocks(model: nn.Module) -> list[str]:
    """The model's blocks: the children holding parameters of the first module with more than one such child.

    Wrappers with a single parameterised child (a LightningModule around a network) are looked through; a
    ResNet gives ``conv1, bn1, layer1 .. layer4, fc``. Coarse steps for :func:`randomised_models`.

    Example:
        >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))
        >>> blocks(net)
        ['0.0', '0.2']
    """
    prefix, module = "", model
    while True:
        held = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        if len(held) != 1:
            break
        name, module = held[0]
        prefix = f"{prefix}{name}."
    return [f"{prefix}{n}" for n, _ in held] or ([prefix[:-1]] if prefix else [])


def randomised_models(
    model: nn.Module, order: str = "top_down", seed: int = 42, modules: Sequence[str] | str | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """One deep copy of ``model``, re-initialised step by step: ``(name, copy)`` after each step.

    Quantus' ``get_random_layer_generator``: the steps are the modules with ``reset_parameters`` in
    ``named_modules()`` order (``"bottom_up"``), reversed (``"top_down"``, Adebayo et al.'s cascading
    randomisation), or the same order with the copy restored to ``model``'s weights before each step
    (``"independent"``). With ``modules`` (dotted names, or ``"blocks"`` for :func:`blocks`), each step
    re-initialises every module with ``reset_parameters`` inside one of them (fewer, coarser steps:
    ``["fc", "layer4", ...]``). Every module is
    drawn as after ``torch.manual_seed(seed + 1)`` without touching the global RNG. The same copy is yielded
    each time, changed in place.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> [name for name, _ in randomised_models(net)]
        ['2', '0']
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}{close_matches(str(order), ORDERS)}")
    duplicate = copy.deepcopy(model)
    resettable = [(n, m) for n, m in duplicate.named_modules() if callable(getattr(m, "reset_parameters", None))]
    if modules is None:
        steps = [(name, [module]) for name, module in resettable]
    else:
        names = blocks(duplicate) if modules == "blocks" else [modules] if isinstance(modules, str) else list(modules)
        position = {name: i for i, (name, _) in enumerate(duplicate.named_modules())}
        for name in names:
            find_layer(duplicate, name)
        names.sort(key=lambda name: position[name])
        steps = [(name, [m for n, m in resettable if n == name or n.startswith(name + ".")]) for name in names]
        empty = [name for name, found in steps if not found]
        if empty:
            raise ValueError(f"modules: {empty} hold no module with reset_parameters, so nothing would change")
    if not steps:
        raise ValueError("the model has no module with reset_parameters: there is nothing to randomise")
    if order == "top_down":
        steps = steps[::-1]
    original = copy.deepcopy(duplicate.state_dict()) if order == "independent" else None
    for name, found in steps:
        if original is not None:
            duplicate.load_state_dict(original)
        for module in found:
            reset_seeded(module, seed + 1)
        yield name, duplicate


class _Maps:
    """The maps of ``methods`` for ``x`` from any model: plain, or averaged over noisy copies (SmoothMPRT)."""

    def __init__(self, x: Tensor, layers: Any, methods: Sequence[str], targets: Any, *, batch_size: int | None,
                 reshape_transform: Callable[[Tensor], Tensor] | None,
                 noise: Callable[[], Iterator[Tensor]] | None = None, samples: int = 1) -> None:  # fmt: skip
        self.x, self.layers, self.methods, self.targets = x, layers, list(methods), targets
        self.batch_size, self.reshape_transform = batch_size, reshape_transform
        self.noise, self.samples = noise, samples

    def __call__(self, model: nn.Module) -> dict[str, Tensor]:
        engine = CamEngine(model, self.layers, self.reshape_transform)
        if self.noise is None:
            result = engine(self.x, methods=self.methods, targets=self.targets)
            return {m: result[m].float() for m in self.methods}
        # x plus each noise draw, then x itself (Quantus' last sample has no noise), averaged; copies stacked
        batch = self.x.shape[0]
        per_call = max(1, (self.batch_size or 256) // batch)
        copies = [*self.noise(), torch.zeros_like(self.x)]
        total = {m: torch.zeros(self.x.shape[0], *self.x.shape[2:], device=self.x.device) for m in self.methods}
        tiled = isinstance(self.targets, Tensor)
        for start in range(0, len(copies), per_call):
            chunk = copies[start : start + per_call]
            noisy = torch.cat([self.x + n for n in chunk])
            targets = self.targets.repeat(len(chunk)) if tiled else self.targets
            if not tiled and len(chunk) > 1:  # a task target scores its own images only: one copy per call
                result = [engine(self.x + n, methods=self.methods, targets=self.targets) for n in chunk]
                maps = {m: torch.cat([r[m] for r in result]) for m in self.methods}
            else:
                result = engine(noisy, methods=self.methods, targets=targets)
                maps = {m: result[m] for m in self.methods}
            for m in self.methods:
                total[m] += maps[m].float().view(len(chunk), batch, *maps[m].shape[1:]).sum(dim=0)
        return {m: total[m] / len(copies) for m in self.methods}


def _same_targets(model: nn.Module, x: Tensor, layers: Any, methods: Sequence[str], targets: Targets,
                  reshape_transform: Any) -> tuple[dict[str, Tensor], Any, list[str]]:  # fmt: skip
    """The original maps, the classes every other model explains (the model's, or a task target as given), layers."""
    engine = CamEngine(model, layers, reshape_transform)
    result = engine(x, methods=list(methods), targets=targets)
    task = isinstance(targets, Target)
    classes = result.classes if result.classes is not None and not task else targets
    return {m: result[m].float() for m in methods}, classes, list(engine.layer_names)


def _names(method: str | Sequence[str]) -> list[str]:
    methods = [method] if isinstance(method, str) else list(method)
    if not methods:
        raise ValueError("methods: got an empty list; pass a method name such as 'gradcam'")
    return [get_method(m, argument="method").name for m in methods]


def _std_noise(x: Tensor, samples: int, magnitude: float, noise: Tensor | None,
               generator: torch.Generator | None) -> Callable[[], Iterator[Tensor]]:  # fmt: skip
    """``samples - 1`` noise tensors ``N(0, 1) * magnitude * (max - min)`` per image, the same at every call."""
    dims = tuple(range(1, x.dim()))
    std = magnitude * (x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True))
    if noise is not None:
        noise = torch.as_tensor(noise, device=x.device, dtype=x.dtype)
        if tuple(noise.shape) != (samples - 1, *x.shape):
            raise ValueError(f"noise must be (nr_samples - 1, *x.shape) = {(samples - 1, *x.shape)} standard normal "
                             f"draws, got {tuple(noise.shape)}")  # fmt: skip
        return lambda: iter([n * std for n in noise])
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
    state = generator.get_state()

    def draws() -> Iterator[Tensor]:
        generator.set_state(state)
        for _ in range(samples - 1):
            yield torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype) * std

    return draws


def mprt_scores(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    methods: str | Sequence[str] = "gradcam",
    targets: Targets = None,
    *,
    order: str = "top_down",
    seed: int = 42,
    modules: Sequence[str] | str | None = None,
    nr_samples: int = 1,
    noise_magnitude: float = 0.1,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """:func:`mprt` (``nr_samples=1``) or :func:`smooth_mprt` for several methods from one pass per step.

    Returns:
        ``method -> {step name -> (B,) float32}``, the steps in randomisation order.
    """
    methods = _names(methods)
    with frozen_model(model), torch.no_grad():
        x = x.detach().to(model_device(model))
        if nr_samples < 1 or isinstance(nr_samples, bool):
            raise ValueError(f"nr_samples must be a positive int (noisy copies averaged), got {nr_samples!r}")
        smooth = _std_noise(x, nr_samples, noise_magnitude, noise, generator) if nr_samples > 1 else None
        if smooth is None:
            original, classes, layers = _same_targets(model, x, target_layers, methods, targets, reshape_transform)
        else:
            _, classes, layers = _same_targets(model, x, target_layers, methods, targets, reshape_transform)
        maps = _Maps(x, layers, methods, classes, batch_size=batch_size, reshape_transform=reshape_transform,
                     noise=smooth, samples=nr_samples)  # fmt: skip
        if smooth is not None:
            original = maps(model)
        scores: dict[str, dict[str, Tensor]] = {m: {} for m in methods}
        for name, randomised in randomised_models(model, order, seed, modules):
            other = maps(randomised)
            for m in methods:
                scores[m][name] = spearman(original[m], other[m])
    return scores


def mprt(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    order: str = "top_down",
    seed: int = 42,
    modules: Sequence[str] | str | None = None,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    r"""Model parameter randomisation test: Spearman's rho of each map with the map after each randomisation step.

    Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018, https://arxiv.org/abs/1810.03292,
    section 3.1. With :math:`M_i` the map of image :math:`i` and :math:`\tilde M_i^{(l)}` the map of the copy
    randomised up to step :math:`l` (:func:`randomised_models`), both for the class the model explains:

    .. math:: s_i^{(l)} = \rho_{\text{Spearman}}\big(M_i, \tilde M_i^{(l)}\big)

    A map that depends on the weights has :math:`s` near 0: lower is better. The callback's ``"mprt"`` is
    the mean over the steps. Equals Quantus' ``MPRT(layer_order=order, seed=seed)`` per layer, with its
    explain function calling :class:`cams.CamEngine` (its ``abs``/``normalise`` do not change a rank
    correlation of CAM maps). Quantus' ``return_average_correlation`` averages in its ``"original"`` entry
    too (it skips a key ``"orig"`` that does not exist); the mean over the steps here does not. Constant maps
    follow :func:`cams.metrics.spearman` (Quantus: ``nan``).

    Args:
        model: the model; left as found (a deep copy is randomised).
        x: ``(B, C, H, W)`` images.
        target_layers: as in :class:`cams.CamEngine` (``None``: its automatic choice).
        method: a name from :data:`cams.METHODS`.
        targets: as in :class:`cams.CamEngine`; the randomised copies explain the classes the model explains
            (pass a task target's ``target.fixed(model(x))``).
        order: ``"top_down"`` (cascading from the output, default, as Quantus' MPRT), ``"bottom_up"`` or
            ``"independent"``.
        seed: the re-initialisation's seed (Quantus' ``seed``).
        modules: coarser steps, one per named module or ``"blocks"`` (see :func:`randomised_models`); ``None``:
            one per module with ``reset_parameters`` (Quantus).
        reshape_transform: as in :class:`cams.CamEngine`.

    Returns:
        ``{step name: (B,) float32}`` in randomisation order; ``1 + steps`` engine calls.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> scores = mprt(net, torch.randn(2, 3, 32, 32), "layer4", modules=["fc", "layer4"])
        >>> list(scores), tuple(scores["fc"].shape)
        (['fc', 'layer4'], (2,))
    """
    return mprt_scores(model, x, target_layers, method, targets, order=order, seed=seed, modules=modules,
                       reshape_transform=reshape_transform)[get_method(method).name]  # fmt: skip


def smooth_mprt(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    order: str = "bottom_up",
    seed: int = 42,
    modules: Sequence[str] | str | None = None,
    nr_samples: int = 50,
    noise_magnitude: float = 0.1,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    r"""Smooth MPRT: :func:`mprt` on maps averaged over noisy copies of the input (denoised before comparing).

    Hedström et al., *Sanity Checks Revisited: An Exploration to Repair the Model Parameter Randomisation
    Test*, XAI in Action workshop, NeurIPS 2023, https://arxiv.org/abs/2401.06465. Every map (of the model and
    of each randomised copy) is

    .. math:: \bar M = \frac{1}{N} \Big( \sum_{n=1}^{N-1} M(x + \epsilon_n) + M(x) \Big), \qquad
              \epsilon_n \sim \mathcal{N}\big(0, (\sigma (\max x - \min x))^2\big)

    (:math:`N` = ``nr_samples``, :math:`\sigma` = ``noise_magnitude``, the range per image), with the same
    :math:`\epsilon_n` for every model; the copies of a model are explained together, ``batch_size`` rows per
    engine call. Lower is better. Equals Quantus' ``SmoothMPRT`` (defaults: ``bottom_up``, 50 samples, 0.1)
    fed the same noise; note that Quantus ignores the ``explain_func`` there and calls ``quantus.explain``
    (a parity test has to replace that function).

    Args:
        model, x, target_layers, method, targets, order, seed, modules, reshape_transform: as in :func:`mprt`.
        nr_samples: :math:`N`, copies averaged (the last one without noise).
        noise_magnitude: :math:`\sigma`.
        noise: ``(N - 1, B, C, H, W)`` standard normal draws to use (scaled here).
        generator: where the draws come from (default: seeded with 0; never the global RNG).
        batch_size: most rows per engine call (default 256).

    Returns:
        ``{step name: (B,) float32}``; ``(1 + steps) N B`` images explained.
    """
    return mprt_scores(model, x, target_layers, method, targets, order=order, seed=seed, modules=modules,
                       nr_samples=nr_samples, noise_magnitude=noise_magnitude, noise=noise, generator=generator,
                       batch_size=batch_size, reshape_transform=reshape_transform)[get_method(method).name]  # fmt: skip


def efficient_mprt(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    seed: int = 42,
    modules: Sequence[str] | str | None = None,
    n_bins: int = 100,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Efficient MPRT: the relative rise in the maps' complexity from the model to its fully randomised copy.

    Hedström et al., 2023 (see :func:`smooth_mprt`), https://arxiv.org/abs/2401.06465. With :math:`H` the
    :func:`cams.metrics.discrete_entropy` of a map, :math:`M` the model's and :math:`\tilde M` the copy's with
    every layer re-initialised (:func:`randomised_models`, all steps):

    .. math:: \text{eMPRT} = \frac{H(\tilde M) - H(M)}{H(M)}

    A map that depends on the weights becomes noisier when they are random: higher is better. Two engine
    calls. Equals Quantus' ``EfficientMPRT()`` (its defaults: 100 bins, ``skip_layers=True``; the last step
    of any order re-initialises every layer, each seeded alike, so its order does not matter).

    Args:
        model, x, target_layers, method, targets, seed, modules, reshape_transform: as in :func:`mprt`.
        n_bins: histogram bins of :func:`cams.metrics.discrete_entropy`.

    Returns:
        ``(B,)`` float32; ``inf``/``nan`` where the model's map has zero entropy (a constant map).
    """
    name = get_method(method, argument="method").name
    with frozen_model(model), torch.no_grad():
        x = x.detach().to(model_device(model))
        original, classes, layers = _same_targets(model, x, target_layers, [name], targets, reshape_transform)
        *_, (_, randomised) = randomised_models(model, "bottom_up", seed, modules)  # every step done
        other = CamEngine(randomised, layers, reshape_transform)(x, methods=name, targets=classes)[name]
    before, after = discrete_entropy(original[name], n_bins), discrete_entropy(other.float(), n_bins)
    return ((after - before) / before).float()


def random_logit(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    maps: Tensor | None = None,
    off_classes: Tensor | None = None,
    generator: torch.Generator | None = None,
    flat: bool = False,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Random logit test: SSIM between the map of the explained class and the map of a random other class.

    Sixt, Granz and Landgraf, *When Explanations Lie: Why Many Modified BP Attributions Fail*, ICML 2020,
    https://arxiv.org/abs/1912.09818, section 5. With :math:`c` the explained class and :math:`c'` drawn
    uniformly from the other :math:`K - 1` classes:

    .. math:: s_i = \text{SSIM}\big(M_i^{(c)}, M_i^{(c')}\big)

    A class-sensitive map changes with the class: lower is better. The paper compares the 2-D maps
    (:func:`cams.metrics.ssim`, 7 x 7 windows); Quantus' ``RandomLogit`` hands its SSIM flattened maps, so its
    windows are 7 pixels of the flattened map, across rows: ``flat=True`` gives Quantus' number (tested), the
    default the paper's. Its draw (``np.random.seed(seed)`` then ``randint(0, K - 1)``, the other classes in order) is
    :math:`c' = r + [r \ge c]` for a draw :math:`r`; pass its classes as ``off_classes``.

    Args:
        model, x, target_layers, method, targets, reshape_transform: as in :func:`mprt`; ``targets`` must
            give one class per image (``None``: the predicted class).
        maps: the maps of ``targets`` ``(B, H, W)`` if already computed (Quantus' ``a_batch``); with ``targets``
            given as classes, one engine call is then saved.
        off_classes: ``(B,)`` the other classes to explain, instead of random ones.
        generator: where the other classes are drawn from (default: seeded with 0; never the global RNG).
        flat: Quantus' flattened SSIM.

    Returns:
        ``(B,)`` float32 in ``[-1, 1]``; two engine calls (one with ``maps`` and class ``targets``).
    """
    name = get_method(method, argument="method").name
    with frozen_model(model), torch.no_grad():
        x = x.detach().to(model_device(model))
        engine = CamEngine(model, target_layers, reshape_transform)
        given = maps is not None and isinstance(targets, (Tensor, list, tuple, int))
        if given:
            count = None if off_classes is not None else logits_of(model(x), "targets").shape[1]
            classes = torch.as_tensor(targets, device=x.device).long().expand(len(x))
            first = {name: torch.as_tensor(maps, device=x.device)}
        else:
            result = engine(x, methods=name, targets=targets)
            if result.classes is None or result.logits is None:
                raise ValueError("random_logit explains another class: targets must be classes (None, an int or one "
                                 "per image) of a model whose output is class scores (B, K)")  # fmt: skip
            first, classes, count = result, result.classes.to(x.device), result.logits.shape[1]
        if count is not None and count < 2:
            raise ValueError(f"random_logit needs at least 2 classes to draw another one; the model has {count}")
        if off_classes is None:
            generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
            draw = torch.randint(0, count - 1, (len(x),), generator=generator, device=generator.device)
            off_classes = draw.to(x.device) + (draw.to(x.device) >= classes).long()
        off_classes = torch.as_tensor(off_classes, device=x.device).long()
        if bool((off_classes == classes).any()):
            raise ValueError("off_classes: must differ from the explained class of each image")
        second = engine(x, methods=name, targets=off_classes)
    return ssim(first[name], second[name], flat=flat).float()

