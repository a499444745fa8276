"""Dark/flat correction and ``-log``: raw counts to line integrals (Beer–Lambert).

``p = -log((I - D) / (F - D))`` with ``I`` the projection, ``D`` the dark and ``F`` the flat
(Kak & Slaney ch. 4: the measured intensity falls as ``exp(-∫μ)``). Transmissions outside
``[min_transmission, 1 / min_transmission]`` (zero or negative counts, noise above the flat) are
clipped and *counted*, so the result is always finite and the caller can report how much was
clipped. Darks and flats taken in several blocks during the scan (mid-scan flats) are averaged
per block and interpolated per frame, by frame index, with :func:`references_for_frames`.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np

from ..errors import ConfigError, DataError
from ._xp import array_namespace, is_numpy

__all__ = [
    "MIN_TRANSMISSION",
    "Corrected",
    "ReferenceMode",
    "average_blocks",
    "line_integrals",
    "mean_frames",
    "reference_weights",
    "references_for_frames",
]

#: Default lowest transmission kept: a line integral of at most -log(1e-4) ≈ 9.2.
MIN_TRANSMISSION = 1e-4

ReferenceMode = Literal["nearest", "linear"]


class Corrected(NamedTuple):
    """Line integrals and the number of values that had to be clipped to stay finite."""

    data: Any
    clipped: int


def _float(x: Any) -> Any:
    xp = array_namespace(x)
    return x if xp.isdtype(x.dtype, "real floating") else xp.astype(x, xp.float32)


def mean_frames(frames: Any) -> Any:
    """Mean of a stack of darks or flats ``(k, rows, cols)`` → ``(rows, cols)``.

    Integer counts are averaged in float32; floating input keeps its dtype.
    """
    xp = array_namespace(frames)
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise DataError(f"expected a stack (k >= 1, rows, cols), got shape {tuple(frames.shape)}")
    return xp.mean(_float(frames), axis=0)


def average_blocks(frames: Any, positions: Any) -> tuple[Any, np.ndarray]:
    """Average consecutive frames that share a position into one reference per block.

    ``frames`` is ``(k, rows, cols)``, ``positions`` the k frame positions (non-decreasing; see
    :func:`references_for_frames`). Returns ``(blocks (B, rows, cols), block positions (B,))``.
    """
    pos = np.asarray(positions, dtype=np.float64).ravel()
    if pos.size != frames.shape[0]:
        raise DataError(f"expected {frames.shape[0]} positions (one per frame), got {pos.size}")
    if np.any(np.diff(pos) < 0):
        raise DataError("reference positions must be non-decreasing (in acquisition order)")
    xp = array_namespace(frames)
    starts = np.flatnonzero(np.concatenate([[True], np.diff(pos) > 0]))
    stops = np.concatenate([starts[1:], [pos.size]])
    blocks = [mean_frames(frames[int(a) : int(b), ...]) for a, b in zip(starts, stops, strict=True)]
    return xp.stack(blocks, axis=0), pos[starts]


def reference_weights(
    positions: Any, frames: Any, *, mode: ReferenceMode = "linear"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blend of reference blocks for each frame: ``(1 - w) · block[lo] + w · block[hi]``.

    ``positions`` are the blocks' places on the frame axis, increasing (a block taken after
    projection frame ``k`` sits at ``k + 0.5``); ``frames`` the frame indices to correct.
    ``"linear"`` interpolates between the blocks around a frame, ``"nearest"`` takes the closer
    one (the earlier on a tie); frames outside the blocks use the first or last block.
    """
    pos = np.asarray(positions, dtype=np.float64).ravel()
    f = np.asarray(frames, dtype=np.float64).ravel()
    if pos.size == 0:
        raise DataError("expected at least one reference block, got none")
    if np.any(np.diff(pos) <= 0):
        raise DataError("reference block positions must increase strictly")
    if mode not in ("linear", "nearest"):
        raise ConfigError(f"unknown reference mode {mode!r}; expected 'linear' or 'nearest'")
    hi = np.clip(np.searchsorted(pos, f, side="right"), 1, max(pos.size - 1, 1))
    lo = hi - 1
    if pos.size == 1:
        return np.zeros(f.size, np.int64), np.zeros(f.size, np.int64), np.zeros(f.size)
    w = np.clip((f - pos[lo]) / (pos[hi] - pos[lo]), 0.0, 1.0)
    if mode == "nearest":
        w = (w > 0.5).astype(np.float64)
    return lo.astype(np.int64), hi.astype(np.int64), w


def references_for_frames(
    blocks: Any, positions: Any, frames: Any, *, mode: ReferenceMode = "linear"
) -> Any:
    """Per-frame darks or flats ``(len(frames), rows, cols)`` from blocks taken during the scan.

    ``blocks`` is ``(B, rows, cols)`` (see :func:`average_blocks`); weights from
    :func:`reference_weights`. With one block every frame gets that block (no copy per frame
    is made: the result broadcasts, shape ``(1, rows, cols)``).
    """
    xp = array_namespace(blocks)
    if blocks.shape[0] == 1:
        return blocks
    lo, hi, w = reference_weights(positions, frames, mode=mode)
    # Host-side index arrays go to the blocks' device once per chunk, not per frame.
    below = xp.take(blocks, xp.asarray(lo), axis=0)
    if not np.any(w):
        return below
    above = xp.take(blocks, xp.asarray(hi), axis=0)
    wx = xp.reshape(xp.asarray(w, dtype=blocks.dtype), (-1, 1, 1))
    return below + wx * (above - below)


def _count(mask: Any) -> int:
    xp = array_namespace(mask)
    return int(xp.sum(xp.astype(mask, xp.int64)))


def line_integrals(
    projections: Any,
    dark: Any,
    flat: Any,
    *,
    min_transmission: float = MIN_TRANSMISSION,
    out: Any = None,
) -> Corrected:
    """``-log((projections - dark) / (flat - dark))``, clipped to stay finite; returns the count.

    ``projections`` is ``(frames, rows, cols)`` raw counts; ``dark`` and ``flat`` are
    ``(rows, cols)`` or per frame ``(frames or 1, rows, cols)``. Transmissions below
    ``min_transmission`` or above its inverse (also NaN) are clipped to those bounds; pixels
    whose flat is not above the dark carry no signal and get transmission 1 (line integral 0).
    Every such value is counted in :attr:`Corrected.clipped`. ``out`` (floating, the
    projections' shape) receives the result; with NumPy nothing larger than a boolean mask is
    allocated, which keeps the hot path of a scan free of float temporaries.
    """
    xp = array_namespace(projections)
    if not 0 < min_transmission < 1:
        raise ConfigError(f"min_transmission must be in (0, 1), got {min_transmission}")
    if projections.ndim != 3:
        raise DataError(
            f"expected projections (frames, rows, cols), got shape {tuple(projections.shape)}"
        )
    for name, ref in (("dark", dark), ("flat", flat)):
        if tuple(ref.shape[-2:]) != tuple(projections.shape[-2:]) or ref.ndim not in (2, 3):
            raise DataError(
                f"{name} has shape {tuple(ref.shape)}; expected (rows, cols) or "
                f"(frames, rows, cols) matching projections {tuple(projections.shape)}"
            )
    if out is None:
        dtype = projections.dtype if xp.isdtype(projections.dtype, "real floating") else None
        out = xp.empty(projections.shape, dtype=dtype or xp.float32)
    elif tuple(out.shape) != tuple(projections.shape) or not xp.isdtype(out.dtype, "real floating"):
        raise DataError(
            f"out has shape {tuple(out.shape)} and dtype {out.dtype}; expected floating "
            f"{tuple(projections.shape)}"
        )
    lo, hi = float(min_transmission), 1.0 / float(min_transmission)
    den = _float(flat) - _float(dark)
    dead = ~(den > 0)
    den = xp.where(dead, xp.ones_like(den), den)
    n_dead = _count(dead) * (out.shape[0] if dead.ndim == 2 or dead.shape[0] == 1 else 1)

    if is_numpy(xp) and isinstance(out, np.ndarray):
        np.subtract(projections, dark, out=out, casting="unsafe")
        np.divide(out, den, out=out)
        if n_dead:
            np.copyto(out, 1.0, where=np.broadcast_to(dead, out.shape))
        bad = np.count_nonzero(~((out >= lo) & (out <= hi)))
        np.fmax(out, lo, out=out)  # fmax ignores NaN, so NaN becomes lo
        np.fmin(out, hi, out=out)
        np.log(out, out=out)
        np.negative(out, out=out)
        return Corrected(out, int(bad) + n_dead)

    t = (_float(projections) - _float(dark)) / den
    t = xp.where(dead, xp.ones_like(t), t)
    bad = _count(~((t >= lo) & (t <= hi)))
    t = xp.where(t >= lo, t, xp.full_like(t, lo))  # NaN fails the test and becomes lo
    t = xp.where(t <= hi, t, xp.full_like(t, hi))
    out[...] = xp.astype(-xp.log(t), out.dtype)
    return Corrected(out, bad + n_dead)
