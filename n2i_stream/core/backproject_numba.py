"""Compiled CPU backprojection (numba): the same sums as :func:`.fbp.backproject_reference`.

Two loop orders, chosen by the number of slices, both parallel over output rows ``y``:

- *many slices*: the filtered data is transposed to ``(angles, cols, rows)`` so that one
  interpolation position (column and fraction, shared by every slice) drives a contiguous,
  vectorised update of all slices of a pixel; angles are taken in blocks small enough to stay
  in the L2 cache while a row of pixels is swept.
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
MANY_SLICES = 8

# Zero columns padded on each side of a projection row (few-slice kernel): reads just outside
# the reachable range land on zeros, so rounding at the range ends can never index out of bounds.
_PAD = 2
# Fused multiply-add and sign-of-zero freedom only: no NaN/Inf assumptions, no reassociation.
_FASTMATH = {"contract", "nsz", "arcp"}
# Bytes of filtered data per angle block of the many-slice kernel (kept in L2 while a row of
# pixels is swept).
_BLOCK_BYTES = 256 * 1024


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


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backproject_many(q, cosv, sinv, weights, axis, n, block, out):  # type: ignore[no-untyped-def]
    """``q`` ``(angles, cols + 2, rows)`` (one zero column each side) → ``out`` ``(n, n, rows)``."""
    n_angles, width, rows = q.shape
    cols = width - 2
    half = (n - 1) * 0.5
    t = q.dtype.type
    one = np.uint32(1)
    for i in prange(n):
        y = i - half
        base = np.empty(n_angles)
        for a in range(n_angles):
            base[a] = y * sinv[a] + axis + 1.0  # +1: the zero column on the left
        for a0 in range(0, n_angles, block):
            a1 = min(n_angles, a0 + block)
            for j in range(n):
                x = j - half
                acc = out[i, j]
                for a in range(a0, a1):
                    c = x * cosv[a] + base[a]
                    # Padded column c in (0, cols + 1) touches the detector; elsewhere zeros only.
                    if c <= 0.0 or c >= cols + 1.0:
                        continue
                    k = np.uint32(c)
                    g1 = t(weights[a] * (c - k))
                    g0 = t(weights[a]) - g1
                    q0 = q[a, k]
                    q1 = q[a, k + one]
                    for r in range(rows):
                        acc[r] += g0 * q0[r] + g1 * q1[r]
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


@njit(parallel=True, cache=True)
def _to_slices_outermost(volume, out):  # type: ignore[no-untyped-def]
    """``volume`` ``(n, n, rows)`` → ``out`` ``(rows, n, n)``."""
    n, _, rows = volume.shape
    for i in prange(n):
        for j in range(n):
            for r in range(rows):
                out[r, i, j] = volume[i, j, r]
    return out


def backproject_numba(filtered: Any, geometry: ParallelGeometry, *, n: int | None = None) -> Any:
    """Backproject filtered projections ``(angles, rows, cols)`` → ``(rows, n, n)`` on the CPU.

    Same result as :func:`.fbp.backproject_reference` (float32 rounding aside). Float32 and
    float64 inputs are computed and returned in their own precision; other dtypes become float32.
    Threads: numba's (``numba.set_num_threads`` or ``NUMBA_NUM_THREADS``).
    """
    arr = np.asarray(filtered)
    expected = (len(geometry), geometry.rows, geometry.cols)
    if arr.shape != expected:
        raise GeometryError(
            f"projections have shape {arr.shape}; "
            f"the geometry expects (angles, rows, cols) = {expected}"
        )
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    n = geometry.cols if n is None else int(n)
    if n < 1:
        raise GeometryError(f"reconstruction size n must be >= 1, got {n}")
    n_angles, rows, cols = arr.shape
    cosv = np.cos(geometry.angles)
    sinv = np.sin(geometry.angles)
    weights = np.asarray(geometry.angular_weights(), dtype=np.float64)
    axis = float(geometry.axis_column)
    if rows >= MANY_SLICES:
        q = np.zeros((n_angles, cols + 2, rows), dtype=dtype)
        _to_slices_innermost(np.ascontiguousarray(arr, dtype=dtype), q)
        per_angle = (cols + 2) * rows * q.itemsize
        block = int(min(64, max(2, _BLOCK_BYTES // per_angle)))
        volume = np.zeros((n, n, rows), dtype=dtype)
        _backproject_many(q, cosv, sinv, weights, axis, n, block, volume)
        return _to_slices_outermost(volume, np.empty((rows, n, n), dtype=dtype))
    q = np.zeros((n_angles, rows, cols + 2 * _PAD), dtype=dtype)
    q[:, :, _PAD : _PAD + cols] = arr
    out = np.zeros((rows, n, n), dtype=dtype)
    return _backproject_few(q, cosv, sinv, weights, axis, n, out)
