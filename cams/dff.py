"""Deep Feature Factorization (Collins et al., ECCV 2018, https://arxiv.org/abs/1806.10206).

The activations of one layer over a batch, ``(C, B·h·w)`` once shifted to be non-negative, are factorised
by non-negative matrix factorisation into ``K`` concepts: ``A ≈ W H`` with ``W`` (C, K) the concepts'
embeddings in channel space and ``H`` (K, B·h·w) where each concept is, image by image. Run a classifier
head on the concepts to name them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU())
    >>> model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    >>> result = deep_feature_factorization(model, torch.randn(2, 3, 32, 32), "0", 3, head=model[3])
    >>> result.concepts.shape, result.maps.shape, result.scores.shape
    (torch.Size([16, 3]), torch.Size([2, 3, 32, 32]), torch.Size([3, 10]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cams.hooks import capture, grad_capable, prepare
from cams.layer_choice import auto_layer, find_layer
from cams.ops import minmax, one_thread, resize
from cams.state import frozen_model, model_device

__all__ = ["Factorization", "deep_feature_factorization", "nmf"]


@dataclass
class Factorization:
    """What :func:`deep_feature_factorization` found.

    Attributes:
        concepts: (C, K) float32, each concept's embedding in the layer's channel space (``W`` plus the
            per-channel shift that made the activations non-negative).
        maps: (B, K, H, W) float32 in [0, 1], where each concept is in each image, at the input's size.
        scores: (K, classes) float32, the ``head`` applied to the concepts (``None`` without a head).
        iterations: iterations the factorisation ran.
    """

    concepts: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor | None
    iterations: int


def nmf(
    x: torch.Tensor,
    n_components: int,
    *,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Non-negative matrix factorisation ``x ≈ W H`` (x: (n, m) ≥ 0) by coordinate descent → ``(W, H, iterations)``.

    scikit-learn's ``NMF(solver="cd")`` (Cichocki & Phan 2009): each iteration updates every column of ``W``,
    then every row of ``H``, by one exact coordinate step ``w ← max(0, w − ∇/∇²)``; it stops when the
    summed projected gradient falls below ``tol`` times the first iteration's. The entries of a column do
    not interact, so a column is one step on all of them at once. The factors are held as rows, ``Wᵀ`` (K, n)
    and ``H`` (K, m), so that an iteration's two large products are ``H xᵀ`` and ``Wᵀ x`` (with MKL 1.3 to 6
    times faster than ``x Hᵀ`` and ``xᵀ W`` at these shapes), followed per concept by one matrix-vector
    product and one clamped step on a contiguous row, into buffers made once; the projected gradient is summed
    once per sweep. On the CPU the descent runs on one thread, restored afterwards: its products are a few
    million multiply-adds, for which waking a thread pool costs more than it saves (on a loaded machine, far
    more).
    The initial factors are ``init``, or scikit-learn's ``init="random"``: ``√(mean(x)/K) · |N(0, 1)|`` drawn
    from ``generator``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> w, h = torch.rand(6, 2, generator=g), torch.rand(2, 5, generator=g)
        >>> W, H, _ = nmf(w @ h, 2, generator=g, max_iter=2000, tol=1e-10)
        >>> bool(((W @ H - w @ h).norm() / (w @ h).norm()) < 1e-3)
        True
    """
    if x.dim() != 2 or bool((x < 0).any()):
        raise ValueError("nmf: x must be a non-negative (n, m) matrix")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"nmf: n_components={n_components!r}; expected a positive int")
    if init is not None:
        w, h = (t.to(x.dtype) for t in init)
    else:
        scale = (x.mean() / n_components).sqrt()
        h = scale * torch.randn(n_components, x.shape[1], generator=generator, dtype=x.dtype).abs()
        w = scale * torch.randn(x.shape[0], n_components, generator=generator, dtype=x.dtype).abs()
    # the factors as rows, (K, n) and (K, m): copies, updated in place
    wt, h = (t.to(x.device).clone(memory_format=torch.contiguous_format) for t in (w.T, h))
    sweep_w, sweep_h = _Sweep(wt, x.T), _Sweep(h, x)  # W's columns (xᵀ ≈ Hᵀ Wᵀ), H's rows (x ≈ W H)
    iterations, first = 0, None
    with one_thread(x.device):
        for iterations in range(1, max_iter + 1):  # noqa: B007
            violation = float(sweep_w(h) + sweep_h(wt))
            if first is None:
                first = violation
            if first == 0 or violation / first <= tol:
                break
    return wt.T.contiguous(), h, iterations


class _Sweep:
    """One coordinate-descent pass over the rows of one factor, in place, for ``x ≈ otherᵀ rows``.

    ``rows`` (K, n) is the factor, ``x`` (m, n) the matrix. Calling the pass with ``other`` (K, m) computes
    ``gram = other otherᵀ`` (K, K) and ``other x`` (K, n), which becomes the descent direction
    ``d = other x − gram rows`` (minus the gradient) row by row, each row's computed after the rows before it
    were updated, and returns the summed projected gradient: the whole gradient where an entry was positive,
    only its descent part where it was 0, ``Σ max(d, −[r > 0]·d)``. The buffers and their row views are made
    once: at these sizes making a tensor costs as much as the arithmetic on it.
    """

    def __init__(self, rows: torch.Tensor, x: torch.Tensor) -> None:
        k, n = rows.shape
        self.rows, self.x, self.transposed = rows, x, rows.T
        self.gram, self.descent, self.blocked = rows.new_empty(k, k), rows.new_empty(k, n), rows.new_empty(k, n)
        self.views = list(zip(self.descent.unbind(), rows.unbind(), self.gram.unbind(), strict=True))

    def __call__(self, other: torch.Tensor) -> torch.Tensor:
        torch.mm(other, other.T, out=self.gram)
        torch.mm(other, self.x, out=self.descent)
        torch.sign(self.rows, out=self.blocked).neg_()  # −1 where the entry is positive, 0 where it is 0
        for (direction, row, couplings), hess in zip(self.views, self.gram.diagonal().tolist(), strict=True):
            direction.addmv_(self.transposed, couplings, alpha=-1)
            if hess != 0:
                row.add_(direction, alpha=1 / hess).clamp_min_(0)
        return torch.maximum(self.descent, self.blocked.mul_(self.descent)).sum()


def deep_feature_factorization(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: str | nn.Module | None = None,
    n_components: int = 16,
    *,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int | torch.Generator = 0,
    max_iter: int = 200,
    tol: float = 1e-4,
) -> Factorization:
    """Factorise ``target_layer``'s activations on the batch ``x`` (B, C, H, W) into ``n_components`` concepts.

    pytorch-grad-cam's ``DeepFeatureFactorization``: one forward; the activations ``(C, B·h·w)`` are shifted
    per channel to a minimum of 0 and factorised (:func:`nmf`, float32 as scikit-learn does on them); the
    concepts are ``W`` plus the shift, the maps are ``H`` reshaped to ``(B, K, h, w)``, each min-max scaled and
    resized to the input. The model is left as found (modes, hooks, ``.grad``, global RNG).

    Args:
        model: any ``nn.Module``.
        x: input batch (B, C, H, W) on any device (results come back on it).
        target_layer: a dotted name, a module, or ``None`` for the engine's automatic choice.
        n_components: the number of concepts ``K``.
        head: applied to the concepts ``(K, C)`` to score them, e.g. the model's classifier ``model.fc``.
        reshape_transform: maps the layer output to ``(B, C, h, w)`` (transformers' tokens).
        init: initial ``(W, H)`` ((C, K), (K, B·h·w)); default scikit-learn's random init, drawn from ``seed``.
        seed: an int or a ``torch.Generator`` for the random init (never the global RNG).
        max_iter, tol: coordinate-descent stopping rule (scikit-learn's defaults).
    """
    if isinstance(target_layer, str):
        layer = find_layer(model, target_layer)
        names = [target_layer]
    elif isinstance(target_layer, nn.Module):
        layer, names = target_layer, ["target_layer"]
    elif target_layer is None:
        layer = None
        names = []
    else:
        raise TypeError(f"target_layer: expected a module or a dotted name; got {type(target_layer).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W); got {tuple(x.shape)}")
    out_device = x.device
    with grad_capable(), frozen_model(model):
        x = prepare(x, model_device(model))
        if layer is None:
            name, layer = auto_layer(model, x[:1])
            names = [name]
        with capture([layer], names, grad=False) as records, torch.no_grad():
            model(x)
        acts = records.values[0].detach()
        if reshape_transform is not None:
            acts = reshape_transform(acts)
        if acts.dim() != 4:
            raise ValueError(f"deep_feature_factorization: layer output has shape {tuple(acts.shape)}; "
                             "pass reshape_transform to make it (B, C, h, w)")  # fmt: skip
        batch, channels, h, w = acts.shape
        flat = torch.nan_to_num(acts.float().transpose(0, 1).reshape(channels, -1), nan=0.0)
        offset = flat.amin(dim=1, keepdim=True)
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        concepts, where, iterations = nmf(flat - offset, n_components, init=init, generator=generator,
                                          max_iter=max_iter, tol=tol)  # fmt: skip
        concepts = concepts + offset
        maps = where.reshape(n_components, batch, h, w).transpose(0, 1)
        scaled = minmax(maps.reshape(batch * n_components, h, w))
        maps = resize(scaled, tuple(x.shape[2:])).view(batch, n_components, *x.shape[2:])
        scores = None
        if head is not None:
            with torch.no_grad():
                scores = head(concepts.T.contiguous()).float()
    return Factorization(
        concepts=concepts.to(out_device),
        maps=maps.to(out_device),
        scores=None if scores is None else scores.to(out_device),
        iterations=iterations,
    )
