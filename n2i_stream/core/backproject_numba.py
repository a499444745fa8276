"""Compiled CPU backprojection (numba): the same sums as :func:`.fbp.backproject_reference`.

Two loop orders, chosen by the number of slices, both parallel over output rows ``y``:

- *many slices*: the filtered data is transposed to ``(angles, cols, rows)`` so that one
  interpolation position (column and weights, shared by every slice and computed once per
  row and angle) drives a contiguous, vectorised update of all slices of a pixel, four angles
  at a time; threads take tiles of output rows whose sums stay in the cache while the angles
  pass in small blocks.
- *one or few slices*: ``x`` is innermost and the detector position advances by ``cos θ`` per
  pixel; each angle's pixel range is cut to the columns it can reach, so the loop needs no
  bounds tests, and four angles share one pass over the output row.

Both interpolate linearly in ``t`` with columns outside the detector reading as zero, and weigh
each angle by its share of the half circle (Kak & Slaney eq. 3.61 with uneven-angle weights).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from ..errors import GeometryError
from .geometry import ParallelGeometry

__all__ = ["MANY_SLICES", "backproject_numba"]

#: From this many slices on, the slice-innermost loop order is faster than ``x`` innermost.
MANY_SLICES = 4

# Zero columns padded on each side of a projection row (few-slice kernel): reads just outside
# the reachable range land on zeros, so rounding at the range ends can never index out of bounds.
_PAD = 2
# Fused multiply-add and sign-of-zero freedom only: no NaN/Inf assumptions, no reassociation.
_FASTMATH = {"contract", "nsz", "arcp"}
# Many-slice kernel: angles per block, and the bytes of sums a thread keeps for its tile of
# output rows (tiles stay in L2 together with a block of filtered data).
_BLOCK = 8
_TILE_BYTES = 256 * 1024


@njit(inline="always")
def _reach(base: float, step: float, lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixels ``j`` in ``[0, n)`` with ``lo <= base + j * step <= hi`` as ``(j0, j1)``."""
    if abs(step) < 1e-12:
        if base < lo or base > hi:
            return 0, 0
        return 0, n
    t0 = (lo - base) / step
    t1 = (hi - base) / step
    if t0 > t1:
        t0, t1 = t1, t0
    j0 = max(0, math.ceil(t0))
    j1 = min(n, math.floor(t1) + 1)
    return j0, max(j0, j1)


@njit(inline="always")
def _smear(orow, p, base, step, weight, j0, j1):  # type: ignore[no-untyped-def]
    """``orow[j] += weight * lerp(p, base + j * step)`` for ``j0 <= j < j1``."""
    t = orow.dtype.type
    w = t(weight)
    s = t(step)
    o = orow[j0:j1]
    b = t(base + j0 * step)
    for j in range(j1 - j0):
        c = b + t(j) * s
        fl = np.floor(c)
        k = np.uint32(fl)
        g0 = p[k]
        o[j] += w * (g0 + (c - fl) * (p[k + np.uint32(1)] - g0))


@njit(inline="always")
def _quad(orow, q, r, a, cosv, weights, b0, b1, b2, b3, j0, j1):  # type: ignore[no-untyped-def]
    """Four angles ``a..a+3`` added to ``orow[j0:j1]`` in one pass (one load/store per pixel)."""
    t = orow.dtype.type
    p0 = q[a, r]
    p1 = q[a + 1, r]
    p2 = q[a + 2, r]
    p3 = q[a + 3, r]
    w0 = t(weights[a])
    w1 = t(weights[a + 1])
    w2 = t(weights[a + 2])
    w3 = t(weights[a + 3])
    s0 = t(cosv[a])
    s1 = t(cosv[a + 1])
    s2 = t(cosv[a + 2])
    s3 = t(cosv[a + 3])
    c0 = t(b0 + j0 * cosv[a])
    c1 = t(b1 + j0 * cosv[a + 1])
    c2 = t(b2 + j0 * cosv[a + 2])
    c3 = t(b3 + j0 * cosv[a + 3])
    one = np.uint32(1)
    o = orow[j0:j1]
    for j in range(j1 - j0):
        jf = t(j)
        x0 = c0 + jf * s0
        x1 = c1 + jf * s1
        x2 = c2 + jf * s2
        x3 = c3 + jf * s3
        f0 = np.floor(x0)
        f1 = np.floor(x1)
        f2 = np.floor(x2)
        f3 = np.floor(x3)
        k0 = np.uint32(f0)
        k1 = np.uint32(f1)
        k2 = np.uint32(f2)
        k3 = np.uint32(f3)
        g0 = p0[k0]
        g1 = p1[k1]
        g2 = p2[k2]
        g3 = p3[k3]
        v = w0 * (g0 + (x0 - f0) * (p0[k0 + one] - g0)) + w1 * (
            g1 + (x1 - f1) * (p1[k1 + one] - g1)
        )
        v += w2 * (g2 + (x2 - f2) * (p2[k2 + one] - g2)) + w3 * (
            g3 + (x3 - f3) * (p3[k3 + one] - g3)
        )
        o[j] += v


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backproject_few(q, cosv, sinv, weights, axis, n, out):  # type: ignore[no-untyped-def]
    """``q`` ``(angles, rows, cols + 2·_PAD)`` zero-padded → ``out`` ``(rows, n, n)`` (added to)."""
    n_angles, rows, width = q.shape
    half = (n - 1) * 0.5
    # Padded coordinates in [lo, hi] read the detector or its zero border; outside, only zeros.
    lo = _PAD - 1.0
    hi = width - _PAD + 0.0
    shift = axis + _PAD
    for idx in prange(rows * n):
        r = idx // n
        i = idx - r * n
        y = i - half
        orow = out[r, i]
        a = 0
        while a + 4 <= n_angles:
            b0 = y * sinv[a] + shift - half * cosv[a]
            b1 = y * sinv[a + 1] + shift - half * cosv[a + 1]
            b2 = y * sinv[a + 2] + shift - half * cosv[a + 2]
            b3 = y * sinv[a + 3] + shift - half * cosv[a + 3]
            s0, e0 = _reach(b0, cosv[a], lo, hi, n)
            s1, e1 = _reach(b1, cosv[a + 1], lo, hi, n)
            s2, e2 = _reach(b2, cosv[a + 2], lo, hi, n)
            s3, e3 = _reach(b3, cosv[a + 3], lo, hi, n)
            j0 = max(max(s0, s1), max(s2, s3))
            j1 = max(j0, min(min(e0, e1), min(e2, e3)))
            _quad(orow, q, r, a, cosv, weights, b0, b1, b2, b3, j0, j1)
            # The ends of each angle's range that the shared pass did not cover.
            for m, s, e, b in ((0, s0, e0, b0), (1, s1, e1, b1), (2, s2, e2, b2), (3, s3, e3, b3)):
                p = q[a + m, r]
                _smear(orow, p, b, cosv[a + m], weights[a + m], s, min(e, j0))
                _smear(orow, p, b, cosv[a + m], weights[a + m], max(s, j1), e)
            a += 4
        for rest in range(a, n_angles):
            b = y * sinv[rest] + shift - half * cosv[rest]
            s, e = _reach(b, cosv[rest], lo, hi, n)
            _smear(orow, q[rest, r], b, cosv[rest], weights[rest], s, e)
    return out


@njit(inline="always")
def _taps(cosv, sinv, weights, axis, cols, half, y, a0, nb, n, col, w0, w1):  # type: ignore[no-untyped-def]
    """Interpolation taps of angles ``a0 .. a0+nb-1`` for the pixels of output row ``y``.

    ``col[m, j]`` is the left padded column, ``w0``/``w1`` its weight and its right
    neighbour's (angular weight included); a position off the detector gets zero weights on
    the zero column, so the sweep that uses them needs no bounds tests.
    """
    t = w0.dtype.type
    for m in range(nb):
        a = a0 + m
        base = y * sinv[a] + axis + 1.0 - half * cosv[a]  # +1: the zero column on the left
        step = cosv[a]
        wa = weights[a]
        for j in range(n):
            c = base + j * step
            inside = c > 0.0 and c < cols + 1.0
            c = c if inside else 0.0
            k = np.uint32(c)
            g1 = (wa if inside else 0.0) * (c - k)
            col[m, j] = k
            w0[m, j] = t((wa if inside else 0.0) - g1)
            w1[m, j] = t(g1)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backproject_many(q, cosv, sinv, weights, axis, n, block, tile, out):  # type: ignore[no-untyped-def]
    """``q`` ``(angles, cols + 2, rows)`` (one zero column each side) → ``out`` ``(rows, n, n)``.

    Threads take tiles of ``tile`` output rows; a tile's sums stay in a small buffer while the
    angles pass in blocks of ``block``, so each block of filtered data is read from the cache
    once per tile rather than once per row, and four angles update a pixel's slices together.
    """
    n_angles, width, rows = q.shape
    cols = width - 2
    half = (n - 1) * 0.5
    one = np.uint32(1)
    for it in prange((n + tile - 1) // tile):
        i0 = it * tile
        i1 = min(n, i0 + tile)
        col = np.empty((block, n), np.uint32)
        w0 = np.empty((block, n), q.dtype)
        w1 = np.empty((block, n), q.dtype)
        acc = np.zeros((i1 - i0, n, rows), q.dtype)
        for a0 in range(0, n_angles, block):
            nb = min(n_angles, a0 + block) - a0
            for i in range(i0, i1):
                _taps(cosv, sinv, weights, axis, cols, half, i - half, a0, nb, n, col, w0, w1)
                for j in range(n):
                    o = acc[i - i0, j]
                    m = 0
                    while m + 4 <= nb:
                        a = a0 + m
                        l0 = q[a, col[m, j]]
                        r0 = q[a, col[m, j] + one]
                        l1 = q[a + 1, col[m + 1, j]]
                        r1 = q[a + 1, col[m + 1, j] + one]
                        l2 = q[a + 2, col[m + 2, j]]
                        r2 = q[a + 2, col[m + 2, j] + one]
                        l3 = q[a + 3, col[m + 3, j]]
                        r3 = q[a + 3, col[m + 3, j] + one]
                        u0, v0 = w0[m, j], w1[m, j]
                        u1, v1 = w0[m + 1, j], w1[m + 1, j]
                        u2, v2 = w0[m + 2, j], w1[m + 2, j]
                        u3, v3 = w0[m + 3, j], w1[m + 3, j]
                        for r in range(rows):
                            o[r] += (u0 * l0[r] + v0 * r0[r] + u1 * l1[r] + v1 * r1[r]) + (
                                u2 * l2[r] + v2 * r2[r] + u3 * l3[r] + v3 * r3[r]
                            )
                        m += 4
                    while m < nb:
                        l0 = q[a0 + m, col[m, j]]
                        r0 = q[a0 + m, col[m, j] + one]
                        u0, v0 = w0[m, j], w1[m, j]
                        for r in range(rows):
                            o[r] += u0 * l0[r] + v0 * r0[r]
                        m += 1
        for i in range(i0, i1):
            for j in range(n):
                for r in range(rows):
                    out[r, i, j] = acc[i - i0, j, r]
    return out


@njit(parallel=True, cache=True)
def _to_slices_innermost(filtered, q):  # type: ignore[no-untyped-def]
    """``filtered`` ``(angles, rows, cols)`` → ``q[:, 1:-1, :]`` ``(angles, cols, rows)``."""
    n_angles, rows, cols = filtered.shape
    for a in prange(n_angles):
        for r in range(rows):
            for c in range(cols):
                q[a, c + 1, r] = filtered[a, r, c]
    return q


def backproject_numba(
    filtered: Any, geometry: ParallelGeometry, *, n: int | None = None, oversample: int = 1
) -> Any:
    """Backproject filtered projections ``(angles, rows, cols)`` → ``(rows, n, n)`` on the CPU.

    Same result as :func:`.fbp.backproject_reference` (float32 rounding aside). Float32 and
    float64 inputs are computed and returned in their own precision; other dtypes become float32.
    ``oversample``: samples per detector column (input ``(angles, rows, oversample·cols)``).
    Threads: numba's (``numba.set_num_threads`` or ``NUMBA_NUM_THREADS``).
    """
    arr = np.asarray(filtered)
    geometry.check_filtered(arr.shape, oversample)
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    n = geometry.cols if n is None else int(n)
    if n < 1:
        raise GeometryError(f"reconstruction size n must be >= 1, got {n}")
    n_angles, rows, cols = arr.shape
    cosv, sinv, axis = geometry.sample_steps(oversample)
    weights = np.asarray(geometry.angular_weights(), dtype=np.float64)
    if rows >= MANY_SLICES:
        q = np.zeros((n_angles, cols + 2, rows), dtype=dtype)
        _to_slices_innermost(np.ascontiguousarray(arr, dtype=dtype), q)
        tile = int(min(16, max(1, _TILE_BYTES // (n * rows * q.itemsize))))
        out = np.empty((rows, n, n), dtype=dtype)
        return _backproject_many(q, cosv, sinv, weights, axis, n, _BLOCK, tile, out)
    q = np.zeros((n_angles, rows, cols + 2 * _PAD), dtype=dtype)
    q[:, :, _PAD : _PAD + cols] = arr
    out = np.zeros((rows, n, n), dtype=dtype)
    return _backproject_few(q, cosv, sinv, weights, axis, n, out)
