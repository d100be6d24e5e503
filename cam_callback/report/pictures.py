"""The report's pictures: logged images decoded, the overlay grids cut into tiles, everything embedded as WebP.

The page carries its images as ``data:`` URIs, so it opens from disk with nothing beside it. WebP (which every
current browser shows) keeps a 64-pixel overlay tile near 1 KB at :data:`TILE_QUALITY`; the timeline images,
with their text, are kept at :data:`TIMELINE_QUALITY`.

A fixed image's tiles over the runs are one image (:func:`strip`), not one per tile: WebP encodes one strip
of 100 tiles three times faster than 100 tiles, in fewer bytes, and the page lays its captions over it.

The overlay grids are ``torchvision.utils.make_grid(nrow=min(8, N), padding=2)`` of the ``N`` fixed images
(:func:`cam_callback._overlays.grid`): tile ``i`` is at row ``i // 8``, column ``i % 8``, 2 pixels apart.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from cams.io import InputError

__all__ = [
    "GAP",
    "STRIP_TILES",
    "TILE",
    "TILE_QUALITY",
    "TIMELINE_QUALITY",
    "data_uri",
    "decode",
    "grid_tiles",
    "strip",
    "thumbnail",
]

TILE = 64
"""Longest side of a tile in the per-image strips: smaller images are enlarged by an integer factor."""
TILE_QUALITY = 70
"""WebP quality of the strips' tiles."""
TIMELINE_QUALITY = 85
"""WebP quality of the timeline and input images (they carry text)."""
GAP = 2
"""White pixels between two tiles of a strip."""
STRIP_TILES = 200
"""Tiles per strip image at most (a WebP image is at most 16383 pixels wide): longer strips are cut."""
_PADDING = 2
_PER_ROW = 8


def decode(data: bytes, what: str) -> np.ndarray:
    """A logged image (PNG bytes) as ``(H, W, 3)`` uint8 RGB; its checksums are verified as it decodes.

    Raises:
        InputError: the bytes are not an image Pillow can decode (``what`` names where they came from).

    Example:
        >>> decode(b"not a png", "cam/gradcam at step 3")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cams.io.InputError: the image cam/gradcam at step 3 does not decode: ...
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"the image {what} does not decode: {err}") from err


def grid_tiles(grid: np.ndarray, count: int) -> list[np.ndarray] | None:
    """The ``count`` tiles of an overlay grid (see the module docstring), or ``None`` when its size does not fit.

    Example:
        >>> grid = np.zeros((2 * 18 + 2, 8 * 18 + 2, 3), np.uint8)   # 10 tiles of 16 x 16: two rows
        >>> tiles = grid_tiles(grid, 10)
        >>> len(tiles), tiles[0].shape, grid_tiles(grid, 7)
        (10, (16, 16, 3), None)
    """
    if count < 1:
        return None
    columns = min(_PER_ROW, count)
    rows = math.ceil(count / columns)
    height, width = grid.shape[0] - _PADDING, grid.shape[1] - _PADDING
    if height % rows or width % columns:
        return None
    tile_h, tile_w = height // rows - _PADDING, width // columns - _PADDING
    if tile_h < 1 or tile_w < 1:
        return None
    tiles = []
    for i in range(count):
        y = _PADDING + (i // columns) * (tile_h + _PADDING)
        x = _PADDING + (i % columns) * (tile_w + _PADDING)
        tiles.append(grid[y : y + tile_h, x : x + tile_w])
    return tiles


def thumbnail(image: np.ndarray, longest: int = TILE) -> np.ndarray:
    """``image`` ``(H, W, 3)`` with its longest side at most ``longest``: enlarged by an integer factor (pixels
    stay sharp) when that fits, reduced by area averaging when it is larger.

    Example:
        >>> thumbnail(np.zeros((16, 8, 3), np.uint8)).shape, thumbnail(np.zeros((200, 100, 3), np.uint8)).shape
        ((64, 32, 3), (64, 32, 3))
    """
    from PIL import Image

    height, width = image.shape[:2]
    side = max(height, width)
    if side <= longest:
        factor = longest // side
        return image if factor == 1 else np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    size = (max(1, round(width * longest / side)), max(1, round(height * longest / side)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def strip(tiles: list[np.ndarray | None], per_image: int = STRIP_TILES) -> list[tuple[str, int]]:
    """Tiles of one size side by side, :data:`GAP` white pixels apart (grey where a tile is missing), as WebP
    ``data:`` URIs of at most ``per_image`` tiles each: ``[(uri, tiles in it), ...]``.

    Example:
        >>> parts = strip([np.zeros((4, 4, 3), np.uint8), None, np.zeros((4, 4, 3), np.uint8)], per_image=2)
        >>> [count for _, count in parts]
        [2, 1]
    """
    known = next((t for t in tiles if t is not None), None)
    if known is None:
        return []
    height, width = known.shape[:2]
    parts = []
    for start in range(0, len(tiles), per_image):
        chunk = tiles[start : start + per_image]
        canvas = np.full((height, len(chunk) * (width + GAP) - GAP, 3), 255, np.uint8)
        for i, tile in enumerate(chunk):
            x = i * (width + GAP)
            canvas[:, x : x + width] = 200 if tile is None else tile[:height, :width]
        parts.append((data_uri(canvas), len(chunk)))
    return parts


def data_uri(image: np.ndarray, quality: int = TILE_QUALITY) -> str:
    """``image`` ``(H, W, 3)`` uint8 as a ``data:image/webp;base64,...`` URI.

    Example:
        >>> data_uri(np.zeros((4, 4, 3), np.uint8))[:23]
        'data:image/webp;base64,'
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="WEBP", quality=quality, method=2)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
