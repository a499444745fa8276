"""Filtered backprojection for arbitrary parallel-beam angle sets.

``f(x, y) ≈ Σ_k w_k q_k(x cos θ_k + y sin θ_k)`` with ``q_k`` the ramp-filtered projection at
angle θ_k and ``w_k`` the angle's share of the half circle (Kak & Slaney eq. 3.61 generalised to
uneven angles). :func:`backproject_reference` is the array-API version every fast kernel is
tested against; :func:`backproject` picks the fastest kernel for the input's array library.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..errors import GeometryError
from ._xp import array_namespace, is_cupy, is_numpy
from .filters import filter_projections
from .geometry import ParallelGeometry

__all__ = ["Backend", "backproject", "backproject_reference", "fbp"]

Backend = Literal["auto", "reference", "numba", "cupy"]


def backproject_reference(
    filtered: Any,
    geometry: ParallelGeometry,
    *,
    n: int | None = None,
    weights: Any = None,
    oversample: int = 1,
) -> Any:
    """Weighted linear-interpolation backprojection of ``(angles, rows, cols)`` → ``(rows, n, n)``.

    Pure array-API code (one gather per angle, all slices at once). Samples outside the
    detector read as zero. ``weights`` default to :meth:`ParallelGeometry.angular_weights`.
    With ``oversample`` the input holds that many samples per column (``(angles, rows,
    oversample·cols)``, see :func:`.filters.filter_projections`).
    """
    geometry.check_filtered(tuple(filtered.shape), oversample)
    xp = array_namespace(filtered)
    n = geometry.cols if n is None else int(n)
    rows, cols = geometry.rows, int(filtered.shape[-1])
    dtype = filtered.dtype
    w = geometry.angular_weights() if weights is None else np.asarray(weights, dtype=np.float64)
    cosv, sinv, axis = geometry.sample_steps(oversample)
    # Two zero columns on each side: clipped coordinates land on zeros, never out of range.
    zeros = xp.zeros((len(geometry), rows, 2), dtype=dtype)
    padded = xp.concat([zeros, filtered, zeros], axis=-1)
    coord = xp.arange(n, dtype=dtype) - (n - 1) / 2
    x = xp.reshape(coord, (1, n))
    y = xp.reshape(coord, (n, 1))
    out = xp.zeros((rows, n * n), dtype=dtype)
    for k in range(len(geometry)):
        c = x * float(cosv[k]) + y * float(sinv[k]) + axis
        c = xp.reshape(xp.clip(c, -2.0, float(cols)), (n * n,))
        c0 = xp.floor(c)
        frac = c - c0
        i0 = xp.astype(c0, xp.int64) + 2
        g0 = xp.take(padded[k, ...], i0, axis=1)
        g1 = xp.take(padded[k, ...], i0 + 1, axis=1)
        out = out + float(w[k]) * (g0 + frac * (g1 - g0))
    return xp.reshape(out, (rows, n, n))


def backproject(
    filtered: Any,
    geometry: ParallelGeometry,
    *,
    n: int | None = None,
    backend: Backend = "auto",
    oversample: int = 1,
) -> Any:
    """Backproject filtered projections with the fastest kernel available for their array type.

    ``backend="auto"`` uses the numba kernel for NumPy input, the CuPy raw kernel for CuPy input
    and :func:`backproject_reference` otherwise. ``oversample``: samples per detector column
    in ``filtered`` (as :func:`.filters.filter_projections` made them).
    """
    geometry.check_filtered(tuple(filtered.shape), oversample)
    xp = array_namespace(filtered)
    if backend == "auto":
        backend = "numba" if is_numpy(xp) else "cupy" if is_cupy(xp) else "reference"
    if backend == "reference":
        return backproject_reference(filtered, geometry, n=n, oversample=oversample)
    if backend == "numba":
        from .backproject_numba import backproject_numba

        return backproject_numba(filtered, geometry, n=n, oversample=oversample)
    if backend == "cupy":
        from .backproject_cupy import backproject_cupy

        return backproject_cupy(filtered, geometry, n=n, oversample=oversample)
    raise GeometryError(f"unknown backend {backend!r}; expected auto, reference, numba or cupy")


def fbp(
    projections: Any,
    geometry: ParallelGeometry,
    *,
    n: int | None = None,
    window: str = "ramlak",
    padding: Literal["edge", "zero"] = "edge",
    backend: Backend = "auto",
    oversample: int = 1,
) -> Any:
    """Filtered backprojection of line integrals ``(angles, rows, cols)`` → ``(rows, n, n)``.

    Input is ``-log(I/I0)`` in pixel units, so the result is attenuation per pixel. The output
    has the input's array type and floating dtype (float32 unless given float64).
    ``oversample``: the filtered projections are interpolated onto a grid this many times
    finer than the detector by zero-padding their spectrum before the backprojection
    interpolates linearly. 1 (the default) interpolates linearly between detector columns, as
    most FBP codes do; 2 removes most of that interpolation's blur: sharper and more accurate
    for detector data (whose pixels integrate over their width), but the noise is no longer
    smoothed by it (about 1.25× the noise standard deviation of ``oversample=1``).
    """
    geometry.check_filtered(tuple(projections.shape))
    xp = array_namespace(projections)
    if not xp.isdtype(projections.dtype, "real floating"):
        projections = xp.astype(projections, xp.float32)
    filtered = filter_projections(
        projections, window=window, padding=padding, oversample=oversample
    )
    return backproject(filtered, geometry, n=n, backend=backend, oversample=oversample)
