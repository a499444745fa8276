"""Slices of a held volume as 8-bit grayscale PNG images, with a small cache of the results.

Axes follow DESIGN.md §3: a volume is ``(rows, n, n)`` = ``(z, y, x)``. Cutting along ``z``
gives the axial ``(y, x)`` image; along ``y`` the ``xz`` view ``(z, x)``; along ``x`` the ``yz``
view ``(z, y)``. Images are drawn with z (the rotation axis) vertical, as a beamline camera shows
it.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
from PIL import Image

__all__ = ["AXES", "PngCache", "cut", "to_png"]

#: axis name -> position in (z, y, x)
AXES: dict[str, int] = {"z": 0, "y": 1, "x": 2}


def cut(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The 2-D slice of ``volume`` at ``index`` along ``axis`` (a view, no copy)."""
    selector: list[slice | int] = [slice(None)] * 3
    selector[AXES[axis]] = index
    return volume[tuple(selector)]


def to_png(image: np.ndarray, vmin: float, vmax: float, *, max_side: int = 1024) -> bytes:
    """Encode ``image`` as an 8-bit grayscale PNG mapping ``[vmin, vmax]`` to black..white.

    Values outside the window saturate; NaN (a slot never written) is black. Images larger than
    ``max_side`` pixels on a side are reduced by area averaging, which a screen could not show
    anyway, to keep every response small.
    """
    scale = 255.0 / (vmax - vmin)
    pixels = (np.asarray(image, dtype=np.float32) - np.float32(vmin)) * np.float32(scale)
    np.nan_to_num(pixels, copy=False, nan=0.0)
    np.clip(pixels, 0.0, 255.0, out=pixels)
    picture = Image.fromarray(np.rint(pixels).astype(np.uint8), mode="L")
    longest = max(picture.size)
    if longest > max_side:
        w, h = picture.size
        size = (max(1, round(w * max_side / longest)), max(1, round(h * max_side / longest)))
        picture = picture.resize(size, Image.Resampling.BOX)
    buffer = io.BytesIO()
    # Level 3 is several times faster than the default and costs little size on tomograms.
    picture.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


class PngCache:
    """A bounded least-recently-used cache of encoded images, safe to share between threads.

    Many browsers watching the same newest slice then cost one encoding. Two threads missing
    the same key at once may both encode it; the result is the same.
    """

    def __init__(self, entries: int = 128) -> None:
        self.entries = entries
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """The cached value of ``key``, or ``make()`` stored under it."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return value
            self.misses += 1
        value = make()
        if self.entries > 0:
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.entries:
                    self._items.popitem(last=False)
        return value
