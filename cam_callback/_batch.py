"""The callback's fixed batch: read once from a dataloader or from the user's tensors, kept on the CPU.

Batches may be tensors, ``(x, y, ...)`` tuples or lists, or dicts (Hugging Face ``BatchFeature`` too).
Dict keys recognised (first match wins):

- images: ``"image"``, ``"images"``, ``"img"``, ``"pixel_values"``, ``"input"``, ``"x"``
  (``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes)
- labels: ``"label"``, ``"labels"``, ``"target"``, ``"targets"``, ``"y"``
- boxes: ``"box"``, ``"boxes"`` (``(B, 4)`` ``x0, y0, x1, y1`` in pixels; volumes: ``(B, 6)``
  ``x0, y0, z0, x1, y1, z1`` in voxels, ``z`` along ``D``)
- masks: ``"mask"``, ``"masks"`` (``(B, H, W)``, volumes ``(B, D, H, W)``, non-zero inside the object)
- spurious regions: ``"spurious_mask"``, ``"spurious_masks"`` (``(B, H, W)``, non-zero on a cue the model
  should not use, e.g. a watermark; all zero where an image has none)

Anything else goes through a user ``batch_to_images`` function first. :func:`choose_batch` picks the
callback's batch from the Trainer's first validation dataloader or the user's ``images``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from cams.state import rng_guard

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

__all__ = [
    "BATCH_KEYS",
    "BOX_KEYS",
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "MASK_KEYS",
    "SPURIOUS_KEYS",
    "FixedBatch",
    "choose_batch",
    "ensure_val_dataloaders",
    "first_key",
    "parse_batch",
    "take_first",
]

IMAGE_KEYS = ("image", "images", "img", "pixel_values", "input", "x")
LABEL_KEYS = ("label", "labels", "target", "targets", "y")
BOX_KEYS = ("box", "boxes")
MASK_KEYS = ("mask", "masks")
SPURIOUS_KEYS = ("spurious_mask", "spurious_masks")
BATCH_KEYS = frozenset((*IMAGE_KEYS, *LABEL_KEYS, *BOX_KEYS, *MASK_KEYS, *SPURIOUS_KEYS))
"""Every key a dict batch (or ``CAMCallback(images={...})``) may use."""

BatchToImages = Callable[[Any], Any]


@dataclass
class FixedBatch:
    """The images the callback explains at every run, on the CPU.

    Attributes:
        images: ``(N, C, H, W)`` model inputs (normalised as the model expects them), or volumes
            ``(N, C, D, H, W)``.
        labels: ``(N,)`` long class labels, or ``None``.
        boxes: ``(N, 4)`` float ``x0, y0, x1, y1`` object boxes in pixels (volumes: ``(N, 6)``
            ``x0, y0, z0, x1, y1, z1`` in voxels), or ``None``.
        masks: ``(N, H, W)`` (volumes: ``(N, D, H, W)``) bool object masks, or ``None``.
        spurious: ``(N, H, W)`` (volumes: ``(N, D, H, W)``) bool masks of regions marked spurious
            (``CAMCallback(spurious_masks=...)``), or ``None``.
    """

    images: Tensor
    labels: Tensor | None = None
    boxes: Tensor | None = None
    masks: Tensor | None = None
    spurious: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dim() not in (4, 5):
            shape = (
                tuple(self.images.shape) if isinstance(self.images, Tensor) else type(self.images).__name__
            )
            raise ValueError(f"images must be a (N, C, H, W) or (N, C, D, H, W) tensor; got {shape}")
        n, spatial = self.images.shape[0], tuple(self.images.shape[2:])
        self.images = _own(self.images)
        if self.labels is not None:
            labels = torch.as_tensor(self.labels)
            if labels.dim() == 2 and labels.shape[0] == n and labels.is_floating_point():
                labels = labels.argmax(dim=1)  # one-hot or soft labels
            if labels.dim() != 1 or labels.shape[0] != n or labels.is_floating_point():
                labels = None  # not class labels (e.g. regression targets): "label" targets unavailable
            self.labels = None if labels is None else _own(labels.long())
        if self.boxes is not None:
            boxes = torch.as_tensor(self.boxes)
            columns = 2 * len(spatial)
            if boxes.shape != (n, columns):
                what = "x0, y0, x1, y1 in pixels" if columns == 4 else "x0, y0, z0, x1, y1, z1 in voxels"
                raise ValueError(f"boxes must be (N, {columns}) = ({n}, {columns}) {what}; got {tuple(boxes.shape)}")
            self.boxes = _own(boxes.float())
        self.masks = None if self.masks is None else _region(self.masks, "masks", n, spatial)
        self.spurious = None if self.spurious is None else _region(self.spurious, "spurious masks", n, spatial)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to_state(self) -> dict[str, Tensor | None]:
        """Plain tensors for a checkpoint (``weights_only`` loadable)."""
        return {
            "images": self.images,
            "labels": self.labels,
            "boxes": self.boxes,
            "masks": self.masks,
            "spurious": self.spurious,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor | None]) -> FixedBatch:
        """Inverse of :meth:`to_state`."""
        images = state["images"]
        assert images is not None
        return cls(images, state.get("labels"), state.get("boxes"), state.get("masks"), state.get("spurious"))


def _region(value: Any, what: str, n: int, spatial: tuple[int, ...]) -> Tensor:
    """``(N, H, W)`` (volumes ``(N, D, H, W)``; a channel of 1 is dropped) as a bool CPU tensor, or ``ValueError``."""
    region = torch.as_tensor(value)
    if region.dim() == len(spatial) + 2 and region.shape[1] == 1:
        region = region[:, 0]
    if tuple(region.shape) != (n, *spatial):
        names = "(N, H, W)" if len(spatial) == 2 else "(N, D, H, W)"
        raise ValueError(f"{what} must be {names} = {(n, *spatial)}; got {tuple(region.shape)}")
    return _own(region != 0)


def _own(t: Tensor) -> Tensor:
    """A detached CPU copy that owns its memory and is a normal (not inference-mode) tensor."""
    with torch.inference_mode(False):
        return t.detach().to("cpu", copy=True).contiguous()


def first_key(batch: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in batch:
            return batch[key]
    return None


def parse_batch(batch: Any, batch_to_images: BatchToImages | None = None) -> dict[str, Any]:
    """Split one batch into ``images``, ``labels``, ``boxes``, ``masks`` and ``spurious`` (missing ones ``None``).

    Args:
        batch: a tensor, an ``(x, y, ...)`` tuple or list, or a dict with the documented keys.
        batch_to_images: optional function applied first; it may return a tensor of images, an
            ``(x, y)`` pair, or a dict with the documented keys.

    Raises:
        TypeError: when no ``(B, C, H, W)`` or ``(B, C, D, H, W)`` tensor is found; the message names
            what was found (its key and shape) and suggests ``batch_to_images``.

    Example:
        >>> out = parse_batch({"image": torch.zeros(2, 3, 4, 4), "label": torch.tensor([1, 0])})
        >>> out["images"].shape, out["labels"].tolist()
        (torch.Size([2, 3, 4, 4]), [1, 0])
    """
    if batch_to_images is not None:
        batch = batch_to_images(batch)
    found: dict[str, Any] = {"images": None, "labels": None, "boxes": None, "masks": None, "spurious": None}
    if isinstance(batch, Tensor):
        found["images"] = batch
    elif isinstance(batch, Mapping):
        found["images"] = first_key(batch, IMAGE_KEYS)
        found["labels"] = first_key(batch, LABEL_KEYS)
        found["boxes"] = first_key(batch, BOX_KEYS)
        found["masks"] = first_key(batch, MASK_KEYS)
        found["spurious"] = first_key(batch, SPURIOUS_KEYS)
    elif isinstance(batch, (tuple, list)) and batch:
        found["images"] = batch[0]
        if len(batch) > 1 and isinstance(batch[1], Tensor):
            found["labels"] = batch[1]
    images = found["images"]
    if not isinstance(images, Tensor) or images.dim() not in (4, 5):
        raise TypeError(_not_images(batch, images))
    return found


def _not_images(batch: Any, images: Any) -> str:
    """Name what the batch holds instead of an image batch, and say how to pass one."""
    if isinstance(batch, Tensor):
        where = "the batch"
    elif isinstance(batch, Mapping):
        key = next((k for k in IMAGE_KEYS if k in batch), None)
        where = f"batch[{key!r}]" if key is not None else f"the dict batch (keys {sorted(map(str, batch))})"
    elif isinstance(batch, (tuple, list)) and batch:
        where = f"batch[0] of the {type(batch).__name__} batch"
    else:
        where = f"the batch of type {type(batch).__name__}"
    if isinstance(images, Tensor):
        what = (
            f"{where} is a tensor of shape {tuple(images.shape)}, not a (B, C, H, W) image batch or a "
            "(B, C, D, H, W) volume batch"
        )
        if images.dim() == 3:
            what += " (one-channel images? add the channel dimension: x.unsqueeze(1))"
        elif images.dim() == 2:
            what += " (flattened images? reshape them to (B, C, H, W))"
    elif images is None:
        what = f"no image tensor in {where}"
    else:
        what = f"{where} holds a {type(images).__name__}, not a tensor"
    return (
        f"CAMCallback: {what}. Use a tensor, an (x, y) tuple, or a dict keyed "
        f"{'/'.join(IMAGE_KEYS)} (labels: {'/'.join(LABEL_KEYS)}); or pass CAMCallback(batch_to_images=fn) "
        "with fn(batch) -> images or (images, labels)."
    )


def _concat(parts: list[dict[str, Any]], key: str, n: int) -> Tensor | None:
    values = [p[key] for p in parts]
    if any(v is None for v in values):
        return None
    tensors = [torch.as_tensor(v) for v in values]
    return torch.cat(tensors)[:n]


def take_first(dataloader: Iterable[Any], n: int, batch_to_images: BatchToImages | None = None) -> FixedBatch:
    """The first ``n`` samples of ``dataloader`` as a :class:`FixedBatch` on the CPU.

    For a :class:`~torch.utils.data.DataLoader` over a map-style dataset the samples are
    ``dataset[0], ..., dataset[n - 1]`` collated with the loader's ``collate_fn``: no worker processes
    start, and neither shuffling nor a distributed sampler changes the choice. Other iterables are
    iterated until ``n`` samples are collected. The global RNG is left as found in both cases
    (a dataloader iterator draws a seed from it, random transforms may draw more).

    Args:
        dataloader: the first validation dataloader.
        n: how many samples to keep.
        batch_to_images: see :func:`parse_batch`.

    Raises:
        ValueError: when the dataloader yields no samples.
        TypeError: when a batch has no recognisable image tensor.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 2, 2), torch.arange(10))
        >>> fixed = take_first(DataLoader(data, batch_size=4, shuffle=True), 3)
        >>> fixed.labels.tolist()
        [0, 1, 2]
    """
    parts: list[dict[str, Any]] = []
    with rng_guard(), torch.inference_mode(False):
        dataset = getattr(dataloader, "dataset", None)
        if (
            isinstance(dataloader, DataLoader)
            and dataset is not None
            and not isinstance(dataset, IterableDataset)
            and hasattr(dataset, "__len__")
        ):
            count = min(n, len(dataset))  # type: ignore[arg-type]
            if count > 0:
                collate = dataloader.collate_fn
                parts.append(parse_batch(collate([dataset[i] for i in range(count)]), batch_to_images))
        else:
            seen = 0
            for batch in dataloader:
                part = parse_batch(batch, batch_to_images)
                parts.append(part)
                seen += int(part["images"].shape[0])
                if seen >= n:
                    break
    if not parts:
        raise ValueError("CAMCallback: the first validation dataloader yielded no samples to explain")
    images = torch.cat([p["images"] for p in parts])[:n]
    return FixedBatch(
        images,
        labels=_concat(parts, "labels", n),
        boxes=_concat(parts, "boxes", n),
        masks=_concat(parts, "masks", n),
        spurious=_concat(parts, "spurious", n),
    )


def ensure_val_dataloaders(trainer: Trainer, user_batch: FixedBatch | None) -> None:
    """Load the val dataloaders now if the sanity check did not (as the first validation would).

    Every rank must take the same branch (Lightning's data setup holds a barrier), so the
    condition uses only what all ranks share.
    """
    if user_batch is None and trainer.val_dataloaders is None and trainer.enable_validation:
        with rng_guard():
            trainer.fit_loop.epoch_loop.val_loop.setup_data()


def choose_batch(
    trainer: Trainer,
    user_batch: FixedBatch | None,
    n: int,
    batch_to_images: BatchToImages | None,
    regions: Mapping[str, Tensor],
    target: Any,
) -> FixedBatch:
    """The callback's fixed batch: ``user_batch``, else the first ``n`` samples of the first val dataloader.

    Args:
        trainer: the Trainer, for ``trainer.val_dataloaders``.
        user_batch: the checked ``images=`` of the callback, or ``None``.
        n: how many samples to take from the dataloader.
        batch_to_images: see :func:`parse_batch`.
        regions: ``"boxes"`` ``(N, 4)``, ``"masks"`` ``(N, H, W)`` and ``"spurious"`` ``(N, H, W)`` given to the
            callback for the validation images (``images={"boxes": ...}``), each replacing the batch's own.
        target: the callback's ``target``; ``"label"`` needs labels.

    Raises:
        MisconfigurationException: with no validation dataloader, boxes/masks that do not fit, no
            labels for ``target="label"``, or spurious regions without an object to compare them with.
    """
    if user_batch is not None:
        batch = user_batch
    else:
        loaders = trainer.val_dataloaders
        if isinstance(loaders, Mapping):
            loaders = next(iter(loaders.values()), None)
        elif isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise MisconfigurationException(
                "CAMCallback found no validation dataloader to take its fixed batch from; pass `images=`."
            )
        batch = take_first(loaders, n, batch_to_images)
    boxes = regions.get("boxes", batch.boxes)
    masks = regions.get("masks", batch.masks)
    spurious = regions.get("spurious", batch.spurious)
    try:
        batch = FixedBatch(batch.images, batch.labels, boxes, masks, spurious)
    except ValueError as err:
        raise MisconfigurationException(
            f"CAMCallback(images={{'boxes'/'masks'/'spurious_mask': ...}}) do not fit the fixed batch: {err}"
        ) from err
    if batch.spurious is not None and batch.boxes is None and batch.masks is None:
        raise MisconfigurationException(
            "CAMCallback has spurious regions (images={'spurious_mask': ...} or a 'spurious_mask' batch key) but no "
            "object to compare them with: give the object's boxes or masks too (images={'boxes': ...}, or a "
            "'box'/'mask' batch key)."
        )
    if target == "label" and batch.labels is None:
        raise MisconfigurationException(
            "CAMCallback(target='label') but the fixed batch has no class labels: yield (x, y) batches "
            "or a dict with a 'label' key, pass images=(x, y), or use target='pred' or a class index."
        )
    return batch
