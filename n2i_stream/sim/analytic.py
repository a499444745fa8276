"""Exact line integrals of disks, the building block of every simulated phantom.

A line at angle θ and detector coordinate t (DESIGN.md §3: ``t = x cos θ + y sin θ``) crosses a
disk of radius r centred at (x0, y0) along a chord of length ``2 sqrt(r² - d²)`` with
``d = t - (x0 cos θ + y0 sin θ)``. Simulations use these analytic chords, never our own
backprojector run forward, so reconstructions are not judged by the model that made the data.

Integrating the chord across an interval gives the area of a disk segment
(:func:`disk_segment_area`), which makes detector-pixel averages of disks, and row integrals of
spheres (whose cross-section at ``t`` is a disk of radius ``sqrt(r² - d²)`` in ``z``), exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..core.geometry import ParallelGeometry

__all__ = ["Disk", "disk_chords", "disk_segment_area", "disks_image", "disks_sinogram"]


@dataclass(frozen=True)
class Disk:
    """A uniform disk: centre (x, y) and radius in pixels, attenuation ``mu`` per pixel."""

    x: float
    y: float
    r: float
    mu: float


def disk_chords(t: np.ndarray, theta: np.ndarray, x0: float, y0: float, r: float) -> np.ndarray:
    """Chord lengths of the disk for every (θ, t) pair (broadcast), in pixels."""
    d = t - (x0 * np.cos(theta) + y0 * np.sin(theta))
    return 2.0 * np.sqrt(np.clip(r * r - d * d, 0.0, None))


def disk_segment_area(u: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Area of the part of a disk of radius ``r`` (centred at 0) with coordinate ≤ ``u``.

    ``∫_{-r}^{u} 2 sqrt(r² - v²) dv = u sqrt(r² - u²) + r² arcsin(u / r) + π r² / 2`` with ``u``
    clipped to ``[-r, r]`` (broadcast; ``r = 0`` gives 0). Differences of this primitive are exact
    integrals of chord lengths over an interval of detector positions.
    """
    r = np.maximum(np.asarray(r, dtype=np.float64), 0.0)
    u = np.clip(u, -r, r)
    ratio = np.divide(u, r, out=np.zeros(np.broadcast_shapes(u.shape, r.shape)), where=r > 0)
    half = 0.5 * np.pi * r * r
    return u * np.sqrt(np.maximum(r * r - u * u, 0.0)) + r * r * np.arcsin(ratio) + half


def disks_sinogram(
    geometry: ParallelGeometry, disks: Iterable[Disk], *, supersample: int = 4
) -> np.ndarray:
    """Line integrals ``(angles, cols)`` of a sum of disks, averaged over ``supersample``
    sub-positions across each detector pixel (a pixel integrates over its width)."""
    s = max(1, int(supersample))
    sub = (np.arange(s) + 0.5) / s - 0.5
    c = np.arange(geometry.cols)[:, None] + sub[None, :]
    t = (c - geometry.axis_column).ravel()[None, :]
    theta = geometry.angles[:, None]
    out = np.zeros((len(geometry), t.size))
    for disk in disks:
        out += disk.mu * disk_chords(t, theta, disk.x, disk.y, disk.r)
    return out.reshape(len(geometry), geometry.cols, s).mean(axis=2)


def disks_image(n: int, disks: Iterable[Disk], *, supersample: int = 4) -> np.ndarray:
    """The disks rasterised on the ``(n, n)`` reconstruction grid (pixel-area averaged)."""
    s = max(1, int(supersample))
    sub = (np.arange(s) + 0.5) / s - 0.5
    coord = (np.arange(n)[:, None] + sub[None, :]).ravel() - (n - 1) / 2
    y, x = coord[:, None], coord[None, :]
    img = np.zeros((n * s, n * s))
    for disk in disks:
        img += disk.mu * (((x - disk.x) ** 2 + (y - disk.y) ** 2) <= disk.r**2)
    return img.reshape(n, s, n, s).mean(axis=(1, 3))
