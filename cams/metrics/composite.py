r"""Composite measures: one number from a faithfulness, a coherency and a complexity term. ARCC and ADCC.

Both are the harmonic mean of three terms in ``[0, 1]`` (higher is better), so one bad term pulls the score
down (a term of ``0`` makes it ``0``):

- **ADCC** (Poppi, Cornia, Baraldi and Cucchiara, *Revisiting The Evaluation of Class Activation Mapping for
  Explainability: A Novel Metric and Experimental Analysis*, CVPR-W 2021, https://arxiv.org/abs/2104.10252):
  :math:`3 \left(\frac{1}{\text{Coherency}} + \frac{1}{1 - \text{Complexity}} + \frac{1}{1 - \text{AD}}\right)^{-1}`
  with Average Drop :math:`\text{AD} = \max(0, Y - O) / Y` (a fraction, softmax probabilities; see
  :func:`cams.metrics.average_drop`). The authors' ``metrics/adcc.py`` (aimagelab/ADCC) returns
  ``3 * (1/coh + ...)`` without the inverse; OpenVINO XAI's ``ADCC`` has it, as here.
- **ARCC** (pytorch-grad-cam 1.5.7, ``pytorch_grad_cam/metrics/arcc.py``): the same with ROAD's combined score
  in place of :math:`1 - \text{AD}`: ``clip(2 * ROADCombined(percentiles=[20, 40, 60, 80]), 0, 1)``
  (:func:`cams.metrics.road`; ROAD's combined score is in ``[-0.5, 0.5]`` for probabilities). pytorch-grad-cam
  adds ``1e-8`` to each term's denominator; here a term of ``0`` gives exactly ``0``.

The shared terms (:func:`coherency`, :func:`l1_complexity`) are Poppi et al.'s:

- Coherency: :math:`\tfrac12 \left(1 + \rho(M(x), M(x \odot M(x)))\right)`, the Pearson correlation of the map
  with the map the same method gives for the image masked by it (the image as the model takes it, times the
  map, as pytorch-grad-cam masks it), rescaled to ``[0, 1]``;
- Complexity: :math:`\lVert M \rVert_1 / (H W)`, the mean of the map (not :func:`cams.metrics.complexity`,
  Bhatt et al.'s entropy).

Both composites need the method itself, to explain the masked images: ``explain(images) -> (B, H, W)`` maps
for the same targets (a closure over :class:`cams.CamEngine`, or pytorch-grad-cam's ``base_method``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cams.metrics._inputs import as_maps, check_images_and_maps
from cams.metrics.faithfulness import average_drop
from cams.metrics.road import road
from cams.targets import Targets

__all__ = ["ARCC_PERCENTILES", "adcc", "arcc", "coherency", "l1_complexity"]

ARCC_PERCENTILES = (20, 40, 60, 80)
"""ROAD's percentiles in pytorch-grad-cam's ``ARCC``."""

Explain = Callable[[Tensor], Tensor]


def coherency(maps: Tensor, again: Tensor) -> Tensor:
    r"""Coherency: :math:`\tfrac12 (1 + \rho)`, with :math:`\rho` the Pearson correlation of each map and the map
    of its masked image (Poppi et al. 2021, https://arxiv.org/abs/2104.10252).

    Where either map is constant the correlation is undefined and taken as ``0`` (coherency ``0.5``), which is
    what pytorch-grad-cam's ``1e-8`` in the denominator gives.

    Args:
        maps: ``(B, H, W)`` the maps :math:`M(x)`.
        again: ``(B, H, W)`` the maps :math:`M(x \odot M(x))` of the masked images.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``; higher is better.

    Example:
        >>> maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
        >>> coherency(maps, 2 * maps), coherency(maps, -maps)
        (tensor([1.]), tensor([0.]))
    """
    a, b = as_maps(maps).flatten(1).double(), as_maps(again, "again").flatten(1).double()
    if a.shape != b.shape:
        raise ValueError(f"again must have the maps' shape {tuple(maps.shape)}, got {tuple(again.shape)}")
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    scale = (a.square().sum(dim=1) * b.square().sum(dim=1)).sqrt()
    rho = torch.where(scale > 0, (a * b).sum(dim=1) / torch.where(scale > 0, scale, 1.0), 0.0)
    return ((1 + rho.clamp(-1, 1)) / 2).float()


def l1_complexity(maps: Tensor) -> Tensor:
    r"""Poppi et al.'s complexity: :math:`\lVert M \rVert_1 / (H W)`, the mean magnitude of each map.

    Args:
        maps: ``(B, H, W)`` (or volumes, any ``(B, ...)``) maps in ``[0, 1]``.

    Returns:
        ``(B,)`` float32 in ``[0, 1]`` for maps in ``[0, 1]``; lower is better.

    Example:
        >>> l1_complexity(torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]))
        tensor([0.5000])
    """
    return as_maps(maps, volumes=maps.dim() == 4 and maps.shape[1] != 1).flatten(1).double().abs().mean(dim=1).float()


def _harmonic(*terms: Tensor) -> Tensor:
    """``3 / sum(1 / t)`` of three ``(B,)`` terms, ``0`` where a term is ``0``, ``nan`` where one is ``nan``."""
    stacked = torch.stack([t.double() for t in terms])
    return (len(terms) / (1 / stacked).sum(dim=0)).float()


def _masked_maps(x: Tensor, maps: Tensor, explain: Explain) -> tuple[Tensor, Tensor]:
    """The maps at ``x``'s size and the maps ``explain`` gives for ``x`` masked by them, ``(B, H, W)`` each."""
    maps = check_images_and_maps(x, maps)
    again = explain(x.detach() * maps[:, None].to(x.dtype))
    if not isinstance(again, Tensor) or again.shape[0] != x.shape[0]:
        raise ValueError("explain(images) must return one map (B, H, W) per image")
    return maps, check_images_and_maps(x, again.detach())


def arcc(
    model: torch.nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: Explain,
    targets: Targets = None,
    *,
    percentiles: Sequence[float] = ARCC_PERCENTILES,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""ARCC: the harmonic mean of coherency, :math:`1 -` complexity and ROAD (pytorch-grad-cam 1.5.7).

    See the module docstring. ROAD (``2 x len(percentiles)`` imputed copies of each image, noise drawn from
    ``generator``) runs under :func:`torch.inference_mode` with the model left as found; ``explain`` runs with
    autograd as it needs.

    Args:
        model: classifier.
        x: images ``(B, C, H, W)`` as the model takes them.
        maps: ``(B, H, W)`` in ``[0, 1]`` (resized bilinearly to ``x``'s size if needed), explained for
            ``targets``.
        explain: ``images -> (B, H, W)`` maps of the method that made ``maps``, for the same targets.
        targets: as in :func:`cams.metrics.road` (``None``: each image's predicted class).
        percentiles: ROAD's percentiles (pytorch-grad-cam's ``ARCC``: 20, 40, 60, 80).
        noise, generator: ROAD's imputation noise and its generator (``noise=0`` for a deterministic score).
        softmax: score probabilities (default; ROAD's ``[-0.5, 0.5]`` range, which the clip to ``[0, 1]``
            assumes, holds for them) or the raw output (pytorch-grad-cam's ``ClassifierOutputTarget``).
        batch_size: most images per forward in ROAD.

    Returns:
        ``{"arcc", "coherency", "complexity", "road"}``, each ``(B,)`` float32 in ``[0, 1]`` (``road`` is the
        clipped ``2 x`` combined score); higher is better except for ``complexity``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> explain = lambda images: images[:, 0] / images.amax(dim=(1, 2, 3)).view(-1, 1, 1)
        >>> scores = arcc(model, x, explain(x), explain, noise=0.0)
        >>> sorted(scores), scores["arcc"].shape
        (['arcc', 'coherency', 'complexity', 'road'], torch.Size([2]))
    """
    maps, again = _masked_maps(x, maps, explain)
    terms = {"coherency": coherency(maps, again), "complexity": l1_complexity(maps)}
    combined = road(model, x, maps, targets, percentiles, noise=noise, generator=generator, softmax=softmax,
                    batch_size=batch_size)["combined"]  # fmt: skip
    terms["road"] = (2 * combined.to(maps.device).float()).clamp(0, 1)
    score = _harmonic(terms["coherency"], 1 - terms["complexity"], terms["road"])
    return {"arcc": score, **terms}


def adcc(
    model: torch.nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: Explain,
    targets: Targets = None,
    *,
    softmax: bool = True,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    r"""ADCC: the harmonic mean of coherency, :math:`1 -` complexity and :math:`1 -` Average Drop (Poppi et al.).

    Poppi, Cornia, Baraldi and Cucchiara, CVPR-W 2021, https://arxiv.org/abs/2104.10252; see the module
    docstring. Per image (the paper averages the per-image ADCC over a dataset; OpenVINO XAI's ``evaluate``
    takes the harmonic mean of the averaged terms instead).

    Args:
        model, x, maps, explain, targets, batch_size: as in :func:`arcc`.
        softmax: score probabilities (default, as the paper) or the raw output.

    Returns:
        ``{"adcc", "coherency", "complexity", "average_drop"}``, each ``(B,)`` float32 in ``[0, 1]``
        (``average_drop`` as a fraction, not %); higher is better for ``adcc`` and ``coherency``. ``nan`` where
        the raw score is negative (``softmax=False``), as :func:`cams.metrics.average_drop`.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> explain = lambda images: images[:, 0] / images.amax(dim=(1, 2, 3)).view(-1, 1, 1)
        >>> sorted(adcc(model, x, explain(x), explain))
        ['adcc', 'average_drop', 'coherency', 'complexity']
    """
    maps, again = _masked_maps(x, maps, explain)
    terms = {"coherency": coherency(maps, again), "complexity": l1_complexity(maps)}
    drop = average_drop(model, x, maps, targets, softmax=softmax, batch_size=batch_size)
    terms["average_drop"] = drop.to(maps.device).float() / 100
    score = _harmonic(terms["coherency"], 1 - terms["complexity"], 1 - terms["average_drop"])
    return {"adcc": score, **terms}
