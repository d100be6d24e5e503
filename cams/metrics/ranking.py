r"""Localisation by rank: do the pixels a map ranks first lie on the object? Top-k intersection, relevance rank
accuracy and the ROC AUC of the map as a detector of the object.

Each takes maps with boxes or masks as :func:`cams.metrics.pointing_game` does (``(B, H, W)`` with ``(B, 4)``
boxes or ``(B, H, W)`` masks; volumes ``(B, D, H, W)`` with ``(B, 6)`` boxes or ``(B, D, H, W)`` masks) and
returns ``(B,)`` float32, ``nan`` where an image has no object. Only the order of a map's values matters, so the
defaults equal Quantus 0.6.0's (``abs=False``, ``normalise=True``: dividing by a positive maximum keeps the
order).

**Ties.** Quantus ranks with ``numpy.argsort``, whose order among equal values is an accident of the sort. Here a
group of equal values that straddles the cut is counted at its expected value under a uniformly random order:
the pixels above the cut count whole, and the ``r`` places left for the tied group count ``r`` times the share of
the group on the object. On maps with distinct values this is exactly Quantus' number; a **constant map** (the
engine's all-zero map too) scores the object's area fraction ``|O| / (H W)`` on both rank accuracies and ``0.5``
on the AUC: chance, what a map without information is worth. An upsampled CAM has distinct values except where
its ReLU left exact zeros, which matter only when the cut reaches them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cams.metrics.localisation import maps_and_objects

__all__ = ["relevance_rank_accuracy", "roc_auc", "top_k_intersection"]


def _flat(maps: Tensor, boxes: Tensor | None, masks: Tensor | None) -> tuple[Tensor, Tensor]:
    """Maps as ``(B, N)`` and their objects as ``(B, N)`` bool; a map with ``nan`` is an error."""
    maps, objects = maps_and_objects(maps, boxes, masks)
    flat = maps.flatten(1)
    if bool(torch.isnan(flat.min())):  # min propagates nan
        raise ValueError("maps contain nan: a rank is undefined there; fix the maps (torch.nan_to_num) first")
    return flat, objects.flatten(1)


def sorted_rows(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Each row of ``flat`` ``(B, N)`` sorted increasingly: ``(values, indices)`` as :func:`torch.sort` gives them.

    On the CPU a float32 row is sorted as the int32 keys that order as the floats do (the bits of a
    non-negative float as they are, of a negative one with its 31 lower bits flipped): the same order in about
    two thirds of the time (equal floats, ``-0.0`` and ``0.0`` too, stay neighbours). Maps with no negative
    value (every CAM) skip the flipping.
    """
    if flat.device.type != "cpu" or flat.dtype != torch.float32:
        return torch.sort(flat, dim=1)
    bits = flat.view(torch.int32)
    if bool(flat.min() >= 0):  # -0.0 (the smallest int32) sorts first, next to 0.0: no value lies between
        keys, indices = torch.sort(bits, dim=1)
        return keys.view(torch.float32), indices
    keys, indices = torch.sort(bits ^ ((bits >> 31) & 0x7FFFFFFF), dim=1)
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(torch.float32), indices


def _kth_largest(flat: Tensor, k: Tensor) -> Tensor:
    """Each row's ``k[i]``-th highest value, ``(B,)``: a selection per row on the CPU (linear, where a batched
    top-k sorts its ``max(k)`` first), one batched top-k elsewhere."""
    pixels = flat.shape[1]
    if flat.device.type != "cpu":
        return torch.topk(flat, int(k.max()), dim=1, sorted=True).values.gather(1, (k - 1)[:, None])[:, 0]
    if bool((k == k[0]).all()):
        return torch.kthvalue(flat, pixels - int(k[0]) + 1, dim=1).values
    return torch.stack([torch.kthvalue(row, pixels - int(n) + 1).values for row, n in zip(flat, k, strict=True)])


def _hits_in_top(flat: Tensor, objects: Tensor, k: Tensor, cut: Tensor) -> Tensor:
    """Expected number of object pixels among each row's ``k`` highest values, ``(B,)`` float64.

    ``cut`` is each row's ``k``-th highest value: the pixels above it count whole and the tied group at it
    counts by the share of its pixels on the object (the expectation under a random order of the ties).
    """
    above = flat > cut[:, None]
    tied = flat == cut[:, None]
    n_above = above.sum(dim=1)
    n_tied = tied.sum(dim=1)
    in_above = (above & objects).sum(dim=1).double()
    in_tied = (tied & objects).sum(dim=1).double()
    return in_above + (k - n_above).double() * in_tied / n_tied.double()


def top_k_intersection(
    maps: Tensor,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
    k: int = 1000,
    concept_influence: bool = False,
) -> Tensor:
    r"""Top-k intersection: the share of the map's ``k`` highest pixels that lie on the object.

    Theiner, Müller-Budack and Ewerth, *Interpretable Semantic Photo Geolocation*, arXiv 2021,
    https://arxiv.org/abs/2104.14995. With :math:`T_k(M_i)` the ``k`` pixels of highest value:

    .. math:: \operatorname{TKI}_i = \frac{|T_k(M_i) \cap O_i|}{k}, \qquad
              \text{concept influence: } \operatorname{TKI}_i \cdot \frac{H W}{|O_i|}

    Equals Quantus 0.6.0's ``TopKIntersection(k=1000)`` (its defaults ``abs=False``, ``normalise=True``) on
    maps with distinct values; ties at the cut are counted as the module docstring says.

    Args:
        maps: ``(B, H, W)``, or volumes ``(B, D, H, W)``.
        boxes: ``(B, 4)`` ``x0, y0, x1, y1`` pixels, ``x1, y1`` exclusive (volumes: ``(B, 6)``).
        masks: ``(B, H, W)`` (volumes: ``(B, D, H, W)``) bool. Pass exactly one of ``boxes``, ``masks``.
        k: how many of the highest pixels, ``1 <= k <= H W`` (Quantus' default ``1000`` suits 224² maps).
        concept_influence: divide by the object's area fraction (Quantus' ``concept_influence``), so that
            ``1`` is what a map scoring uniformly at random gets.

    Returns:
        ``(B,)`` float32 in ``[0, 1]`` (with ``concept_influence`` in ``[0, H W / |O|]``); ``nan`` where there is
        no object. Higher is better.

    Raises:
        ValueError: ``k`` outside ``[1, H W]``, maps with ``nan``, or boxes/masks as in :func:`pointing_game`.

    Example:
        >>> import torch
        >>> maps = torch.arange(16.0).view(1, 4, 4)            # the highest pixels: the bottom row
        >>> box = torch.tensor([[0, 2, 2, 4]])                 # the bottom-left 2 x 2
        >>> top_k_intersection(maps, boxes=box, k=4)           # 2 of the top 4 are on the object
        tensor([0.5000])
        >>> top_k_intersection(torch.ones(1, 4, 4), boxes=box, k=4)  # constant: the area fraction
        tensor([0.2500])
    """
    flat, objects = _flat(maps, boxes, masks)
    pixels = flat.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= pixels:
        raise ValueError(f"k must be an int in [1, {pixels}] (the maps' pixels), got {k!r}; e.g. k={min(1000, pixels)}")
    counts = torch.full((flat.shape[0],), k, dtype=torch.long, device=flat.device)
    share = _hits_in_top(flat, objects, counts, _kth_largest(flat, counts)) / k
    area = objects.sum(dim=1)
    if concept_influence:
        share = share * pixels / area.clamp_min(1).double()
    return torch.where(area > 0, share, torch.nan).float()


def relevance_rank_accuracy(
    maps: Tensor,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
) -> Tensor:
    r"""Relevance rank accuracy: the share of the object covered by the map's ``|O|`` highest pixels.

    Arras, Osman and Samek, *CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network
    explanations*, Information Fusion 81 (2022), https://arxiv.org/abs/2003.07258. With :math:`K_i = |O_i|`:

    .. math:: \operatorname{RRA}_i = \frac{|T_{K_i}(M_i) \cap O_i|}{K_i}

    Equals Quantus 0.6.0's ``RelevanceRankAccuracy()`` (defaults ``abs=False``, ``normalise=True``) on maps with
    distinct values; ties at the cut are counted as the module docstring says. A map equal to the mask scores
    ``1``; a constant map, the area fraction.

    Args:
        maps, boxes, masks: as in :func:`top_k_intersection`.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``; ``nan`` where there is no object. Higher is better.

    Example:
        >>> import torch
        >>> maps = torch.arange(16.0).view(1, 4, 4)
        >>> relevance_rank_accuracy(maps, boxes=torch.tensor([[0, 2, 2, 4]]))  # 2 of its 4 pixels in the top 4
        tensor([0.5000])
    """
    flat, objects = _flat(maps, boxes, masks)
    area = objects.sum(dim=1)
    k = area.clamp_min(1)
    share = _hits_in_top(flat, objects, k, _kth_largest(flat, k)) / k.double()
    return torch.where(area > 0, share, torch.nan).float()


def roc_auc(
    maps: Tensor,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
) -> Tensor:
    r"""The area under the ROC curve of the map read as a pixel-wise detector of the object.

    Fawcett, *An introduction to ROC analysis*, Pattern Recognition Letters 27 (2006),
    https://doi.org/10.1016/j.patrec.2005.10.010 (Quantus' ``AUC``). Every threshold on the map gives a
    true-positive rate (object pixels above it) and a false-positive rate (background pixels above it); the
    area under that curve is the Mann-Whitney statistic, computed here from ranks in one batched sort:

    .. math:: \operatorname{AUC}_i = \frac{1}{|O_i| \, |\bar O_i|} \sum_{p \in O_i} \sum_{q \notin O_i}
              \left(\mathbb{1}[M_i(p) > M_i(q)] + \tfrac12 \mathbb{1}[M_i(p) = M_i(q)]\right)

    Ties count one half, as the trapezoids of ``sklearn.metrics.roc_curve`` + ``auc`` that Quantus 0.6.0 uses
    (defaults ``abs=False``, ``normalise=True``) count them, so the two agree on any map. ``0.5`` is chance
    (a constant map), ``1`` a map that ranks every object pixel above every other pixel.

    Args:
        maps, boxes, masks: as in :func:`top_k_intersection`.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``; ``nan`` where the object is empty or covers the whole map (no negatives:
        the ROC curve is undefined, and Quantus returns ``nan`` too). Higher is better.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]])
        >>> masks = torch.tensor([[[True, False], [True, False]]])
        >>> roc_auc(maps, masks=masks)   # 0.9 beats both others; 0.5 beats 0.1 and ties 0.5
        tensor([0.8750])
    """
    flat, objects = _flat(maps, boxes, masks)
    batch, pixels = flat.shape
    values, order = sorted_rows(flat)
    positive = objects.gather(1, order)
    index = torch.arange(pixels, device=flat.device, dtype=torch.int32).expand(batch, pixels)
    same = values[:, 1:] == values[:, :-1]
    if bool(same.any()):  # a tie group's pixels share its mean rank, (first + last) / 2
        starts = torch.ones_like(positive)
        starts[:, 1:] = ~same
        ends = torch.ones_like(positive)
        ends[:, :-1] = ~same
        first = torch.cummax(torch.where(starts, index, 0), dim=1).values
        last = torch.cummin(torch.where(ends, index, pixels - 1).flip(1), dim=1).values.flip(1)
        twice = first + last  # int32 scans: the fast ones on the CPU
    else:
        twice = 2 * index
    n_pos = positive.sum(dim=1)
    n_neg = pixels - n_pos
    # Mann-Whitney: the positives' (0-based, tie-averaged) ranks less the ranks they would hold below every negative
    ranks = torch.where(positive, twice, 0).sum(dim=1, dtype=torch.int64).double() / 2
    wins = ranks - n_pos.double() * (n_pos.double() - 1) / 2
    auc = wins / (n_pos * n_neg).clamp_min(1).double()
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.nan).float()
