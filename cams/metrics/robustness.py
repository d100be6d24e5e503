"""Robustness: how much do the maps move when the input moves a little?

- :func:`max_sensitivity`, :func:`avg_sensitivity` (Yeh et al., 2019): the largest / mean relative change of
  the map over uniform perturbations of the input;
- :func:`local_lipschitz` (Alvarez-Melis & Jaakkola, 2018): the largest ratio of the map's change to the
  input's change over Gaussian perturbations.

Each perturbed copy is explained for the class the unperturbed image is explained for. The copies are stacked
and explained together, ``batch_size`` rows per engine call (all of them in one call with the callback), and
drawn from their own generator (never the global RNG), sample after sample, so the numbers do not depend on
``batch_size``; ``noise=`` takes the very draws instead (a test hands Quantus and these functions the same).
:func:`explanation_changes` is the shared pass, for any ``explain(images, targets=...)`` that returns maps by
method (a :class:`cams.CamEngine` with its methods bound, the callback's run).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cams.engine import CamEngine
from cams.methods import get_method
from cams.state import frozen_model, model_device
from cams.targets import Targets

__all__ = ["avg_sensitivity", "explanation_changes", "local_lipschitz", "max_sensitivity", "noise_draws"]

Explain = Callable[..., Mapping[str, Tensor]]

_EPS = 1e-10  # Quantus' lipschitz_constant: added to the input distance


def noise_draws(
    shape: tuple[int, ...], nr_samples: int, kind: str, low: float, high: float, generator: torch.Generator
) -> Callable[[], Iterator[Tensor]]:
    """``nr_samples`` noise tensors of ``shape``, one after the other from ``generator`` (the same at every call).

    ``kind="uniform"``: :math:`U(\\text{low}, \\text{high})`; ``"gaussian"``: :math:`\\mathcal{N}(\\text{low},
    \\text{high}^2)` (mean, standard deviation).
    """
    state = generator.get_state()

    def draws() -> Iterator[Tensor]:
        generator.set_state(state)
        for _ in range(nr_samples):
            if kind == "uniform":
                yield torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low
            else:
                yield torch.randn(shape, generator=generator, device=generator.device) * high + low

    return draws


def explanation_changes(
    explain: Explain,
    x: Tensor,
    maps: Mapping[str, Tensor],
    noise: Callable[[], Iterator[Tensor]],
    targets: Any = None,
    *,
    lipschitz: bool = False,
    relative: bool = True,
    logits: Tensor | None = None,
    nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""Per sample and image, how much each map changed: ``method -> (N, B)`` float64.

    For the copy :math:`x + \delta_n` with map :math:`M^{(n)}`: :math:`\lVert M^{(n)} - M \rVert_F /
    \lVert M \rVert_F` (``relative``; else the numerator alone), or with ``lipschitz``
    :math:`\lVert M^{(n)} - M \rVert_2 / (\lVert \delta_n \rVert_2 + 10^{-10})` (norms over all pixels).

    Args:
        explain: ``explain(images, targets=...) -> method -> (n, H, W)``, run on ``x``'s device.
        x: the images ``(B, C, H, W)``; ``maps``: their maps, ``method -> (B, H, W)``.
        noise: ``noise()`` yields the :math:`\delta_n`, each ``(B, C, H, W)``.
        targets: what every copy explains: ``(B,)`` classes (repeated for the stacked copies), or a target that
            scores any rows (a task target then sees one copy per call).
        logits: the originals' ``(B, K)`` output, for ``nan_when_prediction_changes``: a copy whose predicted
            class differs gets ``nan``.
        batch_size: most rows per ``explain`` call (``None``: all copies at once).
    """
    batch = x.shape[0]
    per_call = None if batch_size is None else max(1, batch_size // batch)  # copies per explain call
    classes = torch.as_tensor(targets, device=x.device) if isinstance(targets, (Tensor, list, tuple)) else None
    if classes is None and targets is not None and not callable(targets):
        classes = torch.full((batch,), int(targets), device=x.device)
    if nan_when_prediction_changes and logits is None:
        raise ValueError("nan_when_prediction_changes needs the originals' logits (a model with class scores)")
    flat = {m: v.double().flatten(1) for m, v in maps.items()}
    if relative and not lipschitz:
        zero = [m for m, v in flat.items() if bool((v.norm(dim=1) == 0).any())]
        if zero:
            warnings.warn(f"sensitivity: an all-zero map of {zero} has no relative change (inf or nan there); pass "
                          "relative=False for the absolute one", RuntimeWarning, stacklevel=3)  # fmt: skip
    out: dict[str, list[Tensor]] = {m: [] for m in maps}
    pending: list[Tensor] = []

    def flush() -> None:
        stacked = torch.stack(pending)  # (n, B, C, H, W)
        images = (x[None] + stacked.to(x.dtype)).flatten(0, 1)
        one_call = classes is not None or targets is None or len(pending) == 1
        if one_call:
            result = explain(images, targets=classes.repeat(len(pending)) if classes is not None else targets)
            results = {m: result[m] for m in maps}
            rows_logits = getattr(result, "logits", None)
        else:  # a target that scores its own images only: one copy per call
            parts = [explain(x + d.to(x.dtype), targets=targets) for d in pending]
            results = {m: torch.cat([p[m] for p in parts]) for m in maps}
            rows_logits = None if parts[0].logits is None else torch.cat([p.logits for p in parts])
        changed = None
        if nan_when_prediction_changes:
            if rows_logits is None:
                raise ValueError("nan_when_prediction_changes: the explain call returned no logits")
            before = logits.argmax(dim=1).to(rows_logits.device).repeat(len(pending))
            changed = (rows_logits.argmax(dim=1) != before).view(len(pending), batch)
        for m in maps:
            other = results[m].double().flatten(1).to(x.device).view(len(pending), batch, -1)
            change = (other - flat[m][None]).norm(dim=2)
            if lipschitz:
                ratio = change / (stacked.double().flatten(2).norm(dim=2).to(change.device) + _EPS)
            else:
                ratio = change / flat[m].norm(dim=1)[None] if relative else change
            if changed is not None:
                ratio = torch.where(changed.to(ratio.device), torch.nan, ratio)
            out[m].append(ratio)
        pending.clear()

    for delta in noise():
        pending.append(delta.to(x.device))
        if per_call is not None and len(pending) == per_call:
            flush()
    if pending:
        flush()
    return {m: torch.cat(v) for m, v in out.items()}


def _run(model: nn.Module, x: Tensor, target_layers: Any, method: str, targets: Targets, *, kind: str, low: float,
         high: float, nr_samples: int, noise: Tensor | None, generator: torch.Generator | None, lipschitz: bool,
         relative: bool, nan_when: bool, batch_size: int | None, reshape_transform: Any) -> Tensor:  # fmt: skip
    """The per-sample changes ``(N, B)`` of ``method``'s maps of ``x`` under ``nr_samples`` perturbations."""
    name = get_method(method, argument="method").name
    if isinstance(nr_samples, bool) or not isinstance(nr_samples, int) or nr_samples < 1:
        raise ValueError(f"nr_samples must be a positive int (perturbed copies per image), got {nr_samples!r}")
    with frozen_model(model), torch.no_grad():
        x = x.detach().to(model_device(model))
        engine = CamEngine(model, target_layers, reshape_transform)
        first = engine(x, methods=name, targets=targets)
        classes = first.classes if first.classes is not None else targets
        if noise is not None:
            noise = torch.as_tensor(noise, device=x.device)
            if tuple(noise.shape) != (nr_samples, *x.shape):
                raise ValueError(f"noise must be (nr_samples, *x.shape) = {(nr_samples, *x.shape)}, "
                                 f"got {tuple(noise.shape)}")  # fmt: skip
            draws: Callable[[], Iterator[Tensor]] = lambda: iter(noise)  # noqa: E731
        else:
            generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
            draws = noise_draws(tuple(x.shape), nr_samples, kind, low, high, generator)
        explain = functools.partial(engine, methods=name)
        return explanation_changes(
            explain, x, {name: first[name]}, draws, classes, lipschitz=lipschitz, relative=relative,
            logits=first.logits, nan_when_prediction_changes=nan_when, batch_size=batch_size,
        )[name]  # fmt: skip


def _bounds(lower_bound: float, upper_bound: float | None) -> tuple[float, float]:
    if upper_bound is None:
        return -lower_bound, lower_bound
    if upper_bound <= lower_bound:
        raise ValueError(f"upper_bound={upper_bound!r} must be larger than lower_bound={lower_bound!r}")
    return lower_bound, upper_bound


def _reduce(ratios: Tensor, how: str, strict: bool, stacklevel: int = 3) -> Tensor:
    """Max or mean over the samples; ``strict``: a ``nan`` sample makes the image ``nan`` (Quantus' np.max).

    The warning of an undefined image is attributed ``stacklevel`` frames up (3: the public measure's caller)."""
    empty = ratios.isnan().any(dim=0) if strict else ratios.isnan().all(dim=0)
    if bool(empty.any()):
        warnings.warn(
            f"robustness: no defined value for image(s) {torch.nonzero(empty).flatten().tolist()} (nan there): an "
            "all-zero map with relative=True, or a perturbed copy that changed its prediction",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    reduced = torch.nanmean(ratios, dim=0) if how == "mean" else ratios.nan_to_num(-torch.inf).amax(dim=0)
    return torch.where(empty, torch.nan, reduced).float()


def _sensitivity(how: str, model: nn.Module, x: Tensor, target_layers: Any, method: str, targets: Targets, *,
                 nr_samples: int, lower_bound: float, upper_bound: float | None, relative: bool, nan_when: bool,
                 noise: Tensor | None, generator: torch.Generator | None, batch_size: int | None,
                 reshape_transform: Any) -> Tensor:  # fmt: skip
    """:func:`max_sensitivity` (``how="max"``) or :func:`avg_sensitivity` (``"mean"``): uniform noise, reduced."""
    low, high = _bounds(lower_bound, upper_bound)
    ratios = _run(
        model, x, target_layers, method, targets, kind="uniform", low=low, high=high, nr_samples=nr_samples,
        noise=noise, generator=generator, lipschitz=False, relative=relative, nan_when=nan_when,
        batch_size=batch_size, reshape_transform=reshape_transform,
    )  # fmt: skip
    return _reduce(ratios, how, nan_when, stacklevel=4).to(x.device)


def max_sensitivity(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    nr_samples: int = 200,
    lower_bound: float = 0.2,
    upper_bound: float | None = None,
    relative: bool = True,
    nan_when_prediction_changes: bool = False,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = 256,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Max-sensitivity: the largest relative change of the map over random perturbations of the input.

    Yeh et al., *On the (In)fidelity and Sensitivity of Explanations*, NeurIPS 2019,
    https://arxiv.org/abs/1901.09392, definition 3.1, estimated by sampling as in the paper (section 5):
    with :math:`\delta_n \sim U(-r, r)` per element (``lower_bound`` :math:`= r`; ``U(lower, upper)`` with an
    ``upper_bound``) and :math:`M(\cdot)` the map of the class explained for :math:`x`,

    .. math:: \text{SENS}_{\max} = \max_n \frac{\lVert M(x + \delta_n) - M(x) \rVert_F}{\lVert M(x) \rVert_F}

    Lower is better. The paper's measure is the numerator alone (``relative=False``); Quantus'
    ``MaxSensitivity`` divides by :math:`\lVert M(x) \rVert_F` (its ``norm_denominator``), the default here so
    that the numbers are the same (tested, with the same draws; its explain function calling
    :class:`cams.CamEngine`).

    Args:
        model: the model; left as found.
        x: ``(B, C, H, W)`` images.
        target_layers, method, targets, reshape_transform: as in :class:`cams.CamEngine` (``targets=None``:
            the predicted class of the unperturbed image, for every copy of it).
        nr_samples: perturbed copies per image :math:`N`.
        lower_bound, upper_bound: the uniform noise's bounds (Quantus' ``lower_bound``/``upper_bound``).
        relative: divide by the map's norm (Quantus) or not (the paper).
        nan_when_prediction_changes: ``nan`` for an image when a perturbed copy changes its predicted class
            (Quantus' ``return_nan_when_prediction_changes``; without it those copies count like the others).
        noise: ``(N, B, C, H, W)`` perturbations to use instead of random ones.
        generator: where the noise is drawn from (default: seeded with 0; never the global RNG).
        batch_size: most rows per engine call (``None``: all ``N B`` copies in one).

    Returns:
        ``(B,)`` float32; ``1 + ceil(N B / batch_size)`` engine calls.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> max_sensitivity(net, x, "layer3", nr_samples=4).shape
        torch.Size([2])
    """
    return _sensitivity(
        "max", model, x, target_layers, method, targets, nr_samples=nr_samples, lower_bound=lower_bound,
        upper_bound=upper_bound, relative=relative, nan_when=nan_when_prediction_changes, noise=noise,
        generator=generator, batch_size=batch_size, reshape_transform=reshape_transform,
    )  # fmt: skip


def avg_sensitivity(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    nr_samples: int = 200,
    lower_bound: float = 0.2,
    upper_bound: float | None = None,
    relative: bool = True,
    nan_when_prediction_changes: bool = False,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = 256,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Average sensitivity: the mean relative change of the map over random perturbations of the input.

    Yeh et al., NeurIPS 2019, https://arxiv.org/abs/1901.09392 (the expected rather than the largest change,
    as in their section 5): with :math:`\delta_n` and :math:`M` as in :func:`max_sensitivity`,

    .. math:: \text{SENS}_{\text{avg}} = \frac{1}{N} \sum_n
              \frac{\lVert M(x + \delta_n) - M(x) \rVert_F}{\lVert M(x) \rVert_F}

    Lower is better. Equals Quantus' ``AvgSensitivity`` (same defaults and draws).

    Args:
        as in :func:`max_sensitivity`.

    Returns:
        ``(B,)`` float32.
    """
    return _sensitivity(
        "mean", model, x, target_layers, method, targets, nr_samples=nr_samples, lower_bound=lower_bound,
        upper_bound=upper_bound, relative=relative, nan_when=nan_when_prediction_changes, noise=noise,
        generator=generator, batch_size=batch_size, reshape_transform=reshape_transform,
    )  # fmt: skip


def local_lipschitz(
    model: nn.Module,
    x: Tensor,
    target_layers: Any = None,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    nr_samples: int = 200,
    perturb_mean: float = 0.0,
    perturb_std: float = 0.1,
    nan_when_prediction_changes: bool = False,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = 256,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Local Lipschitz estimate: the largest ratio of the map's change to the input's change nearby.

    Alvarez-Melis and Jaakkola, *On the Robustness of Interpretability Methods*, ICML workshop 2018,
    https://arxiv.org/abs/1806.08049, equation 5, estimated by sampling: with
    :math:`\delta_n \sim \mathcal{N}(\mu, \sigma^2)` per element,

    .. math:: \hat L(x) = \max_n \frac{\lVert M(x + \delta_n) - M(x) \rVert_2}{\lVert \delta_n \rVert_2 + 10^{-10}}

    Lower is better. The paper maximises over a ball :math:`\lVert \delta \rVert \le \epsilon` (with an
    optimiser or samples); Quantus' ``LocalLipschitzEstimate`` samples Gaussian noise instead, as here, so
    the numbers are its (tested with the same draws; its ``normalise=True`` divides each map by the batch's
    largest value, which leaves CAM maps with a maximum of 1 as they are).

    Args:
        perturb_mean, perturb_std: the noise's mean and standard deviation (Quantus' defaults).
        the others: as in :func:`max_sensitivity`.

    Returns:
        ``(B,)`` float32.
    """
    ratios = _run(
        model, x, target_layers, method, targets, kind="gaussian", low=perturb_mean, high=perturb_std,
        nr_samples=nr_samples, noise=noise, generator=generator, lipschitz=True, relative=False,
        nan_when=nan_when_prediction_changes, batch_size=batch_size, reshape_transform=reshape_transform,
    )  # fmt: skip
    return _reduce(ratios, "max", nan_when_prediction_changes).to(x.device)
