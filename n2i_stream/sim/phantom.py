"""A foam-like 3D phantom with a growing water bubble, and its exact projections.

The sample is a cylinder of material (axis along z, the detector rows, centred on the rotation
axis) with non-overlapping spherical air pores. From time step ``dynamics_start`` on, a water
bubble sits in pore 0 (placed at mid-height so every row range sees it): a sphere that touches the
pore wall at one point and grows with the step index, constant within a step, so each step has an
exact ground truth.

Coordinates are pixels: ``x, y`` as in DESIGN.md §3 (the rotation axis at 0) and ``z`` along the
rows, detector row ``r`` spanning ``[z - 1/2, z + 1/2]`` with ``z = r - (rows - 1)/2``.
Projections are exact line integrals (chord lengths) integrated over each detector pixel: exactly
in ``z`` and, for the cylinder, in ``t`` (:func:`~n2i_stream.sim.analytic.disk_segment_area`);
sphere chords are averaged over ``supersample`` positions across the pixel width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.geometry import ParallelGeometry
from .analytic import disk_segment_area

__all__ = ["FoamPhantom", "Sphere", "make_foam"]


@dataclass(frozen=True)
class Sphere:
    """A sphere: centre ``(x, y, z)`` and radius ``r``, in pixels."""

    x: float
    y: float
    z: float
    r: float


@dataclass(frozen=True)
class FoamPhantom:
    """Material cylinder with air pores and a water bubble that grows from ``dynamics_start``."""

    radius: float  #: cylinder radius (pixels), axis along z through x = y = 0
    mu_material: float  #: material attenuation per pixel
    mu_water: float  #: water attenuation per pixel
    pores: tuple[Sphere, ...]  #: air pores; the bubble grows in pores[0]
    dynamics_start: int  #: first time step with a bubble
    bubble_radius0: float  #: bubble radius at dynamics_start, as a fraction of the pore radius
    bubble_growth: float  #: added to that fraction per time step (capped at 1: the pore is full)
    bubble_direction: float  #: azimuth (radians) of the pore-wall point the bubble touches

    def bubble(self, step: int) -> Sphere | None:
        """The water bubble at time ``step`` (None before ``dynamics_start``)."""
        if step < self.dynamics_start:
            return None
        pore = self.pores[0]
        fraction = min(1.0, self.bubble_radius0 + self.bubble_growth * (step - self.dynamics_start))
        r = fraction * pore.r
        # Tangent to the pore wall at one point, so it never leaves the pore while growing.
        shift = pore.r - r
        return Sphere(
            pore.x + shift * math.cos(self.bubble_direction),
            pore.y + shift * math.sin(self.bubble_direction),
            pore.z,
            r,
        )

    def _spheres(self, step: int) -> list[tuple[Sphere, float]]:
        """Every sphere with the attenuation it adds to the material cylinder."""
        spheres = [(p, -self.mu_material) for p in self.pores]
        bubble = self.bubble(step)
        if bubble is not None and bubble.r > 0:
            spheres.append((bubble, self.mu_water))
        return spheres

    def project(self, geometry: ParallelGeometry, step: int, *, supersample: int = 4) -> np.ndarray:
        """Pixel-integrated line integrals ``(angles, rows, cols)`` float64 at time ``step``.

        Each detector pixel averages the line integrals over its area: exactly along the rows and
        for the cylinder; over ``supersample`` positions across the column for the spheres.
        """
        rows, cols = geometry.rows, geometry.cols
        theta = geometry.angles
        cos, sin = np.cos(theta), np.sin(theta)
        t = np.arange(cols) - geometry.axis_column
        cyl = disk_segment_area(t + 0.5, np.asarray(self.radius))
        cyl = cyl - disk_segment_area(t - 0.5, np.asarray(self.radius))
        out = np.empty((len(theta), rows, cols))
        out[...] = self.mu_material * cyl
        s = max(1, int(supersample))
        sub = (np.arange(s) + 0.5) / s - 0.5
        row_z = np.arange(rows) - (rows - 1) / 2
        for sphere, mu in self._spheres(step):
            _add_sphere(out, sphere, mu, cos, sin, t, row_z, sub)
        return out

    def attenuation(
        self, step: int, *, n: int, rows: int, supersample: int = 4, dtype: Any = np.float64
    ) -> np.ndarray:
        """Ground truth ``(rows, n, n)``: attenuation averaged over each voxel at time ``step``.

        Exact along z; ``supersample²`` positions per voxel in x and y.
        """
        vol = self.static_attenuation(n=n, rows=rows, supersample=supersample, dtype=dtype)
        self.add_bubble(vol, step, supersample=supersample)
        return vol

    def static_attenuation(
        self, *, n: int, rows: int, supersample: int = 4, dtype: Any = np.float64
    ) -> np.ndarray:
        """The part of :meth:`attenuation` that never changes: material with empty pores."""
        s = max(1, int(supersample))
        centre = np.arange(n) - (n - 1) / 2
        near, far = _pixel_distances(centre, centre)
        disk = (far <= self.radius).astype(np.float64)
        iy, ix = np.nonzero((near < self.radius) & (far > self.radius))
        yy, xx = _sub_positions(centre[iy], centre[ix], s)
        disk[iy, ix] = (yy * yy + xx * xx <= self.radius**2).mean(axis=1)
        vol = np.empty((rows, n, n), dtype=dtype)
        vol[...] = (self.mu_material * disk)[None]
        for pore in self.pores:
            _add_sphere_volume(vol, pore, -self.mu_material, s)
        return vol

    def add_bubble(self, vol: np.ndarray, step: int, *, supersample: int = 4) -> None:
        """Add the bubble at time ``step`` (if any) to ``vol`` from :meth:`static_attenuation`."""
        bubble = self.bubble(step)
        if bubble is not None and bubble.r > 0:
            _add_sphere_volume(vol, bubble, self.mu_water, max(1, int(supersample)))


def _pixel_distances(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest and farthest distance from the origin to unit pixels centred at ``(y, x)``."""
    ay, ax = np.abs(y)[:, None], np.abs(x)[None, :]
    near = np.hypot(np.maximum(ay - 0.5, 0.0), np.maximum(ax - 0.5, 0.0))
    return near, np.hypot(ay + 0.5, ax + 0.5)


def _sub_positions(y: np.ndarray, x: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``s × s`` sub-positions of the pixels centred at ``(y[i], x[i])``: two ``(i, s²)``."""
    sub = (np.arange(s) + 0.5) / s - 0.5
    dy, dx = np.repeat(sub, s), np.tile(sub, s)
    return y[:, None] + dy[None, :], x[:, None] + dx[None, :]


def _add_sphere(
    out: np.ndarray,
    sphere: Sphere,
    mu: float,
    cos: np.ndarray,
    sin: np.ndarray,
    t: np.ndarray,
    row_z: np.ndarray,
    sub: np.ndarray,
) -> None:
    """Add ``mu`` × the sphere's pixel-integrated chords to ``out`` (angles, rows, cols).

    Only the columns and rows the sphere's shadow can reach are computed: per angle a window of
    ``2r + 2`` columns around the projected centre, so the cost scales with the sphere, not the
    detector.
    """
    rows, cols = out.shape[1:]
    rlo = max(0, math.ceil(sphere.z - sphere.r + (rows - 1) / 2 - 0.5))
    rhi = min(rows, math.floor(sphere.z + sphere.r + (rows - 1) / 2 + 0.5) + 1)
    if rlo >= rhi:
        return
    centre_t = sphere.x * cos + sphere.y * sin  # projected centre, per angle
    first = np.floor(centre_t - sphere.r - t[0]).astype(np.int64)  # column index of window start
    width = math.ceil(2 * sphere.r) + 2
    window = first[:, None] + np.arange(width)[None, :]  # (angles, width)
    valid = (window >= 0) & (window < cols)
    # Distance of every sub-position from the projected centre: (angles, width, s).
    d = (t[0] + window - centre_t[:, None])[:, :, None] + sub[None, None, :]
    a = np.sqrt(np.maximum(sphere.r**2 - d * d, 0.0))  # half-height of the shadow in z
    # Row boundaries relative to the centre; the z-integral over a row is a segment area of a.
    edges = np.concatenate([row_z[rlo:rhi] - 0.5, row_z[rhi - 1 : rhi] + 0.5]) - sphere.z
    area = disk_segment_area(edges[None, :, None, None], a[:, None, :, :])
    value = mu * np.diff(area, axis=1).mean(axis=3)  # (angles, rows, width)
    k, w = np.nonzero(valid)
    out[k, rlo:rhi, window[k, w]] += value[k, :, w]


def _add_sphere_volume(vol: np.ndarray, sphere: Sphere, mu: float, s: int) -> None:
    """Add ``mu`` × the fraction of each voxel inside the sphere to ``vol`` (rows, n, n).

    Exact in z; averaged over ``s × s`` positions in x and y. Only voxels the sphere's surface
    crosses are sub-sampled: the others lie wholly inside (1) or outside (0).
    """
    rows, n, _ = vol.shape
    half = (n - 1) / 2
    lo = [max(0, math.floor(c - sphere.r + half)) for c in (sphere.y, sphere.x)]
    hi = [min(n, math.ceil(c + sphere.r + half) + 1) for c in (sphere.y, sphere.x)]
    if lo[0] >= hi[0] or lo[1] >= hi[1]:
        return
    y = np.arange(lo[0], hi[0]) - half - sphere.y
    x = np.arange(lo[1], hi[1]) - half - sphere.x
    near, far = _pixel_distances(y, x)
    r2 = sphere.r**2
    for row in range(rows):
        z0 = row - (rows - 1) / 2 - 0.5 - sphere.z
        z1 = z0 + 1.0
        if z0 >= sphere.r or z1 <= -sphere.r:
            continue
        z_far = max(abs(z0), abs(z1))
        z_near = 0.0 if z0 < 0 < z1 else min(abs(z0), abs(z1))
        # Columns of radius <= rho_full span the whole voxel height; beyond rho_any, none of it.
        rho_full = math.sqrt(r2 - z_far**2) if z_far < sphere.r else -1.0
        rho_any = math.sqrt(r2 - z_near**2)
        frac = (far <= rho_full).astype(np.float64)
        iy, ix = np.nonzero((far > rho_full) & (near < rho_any))
        yy, xx = _sub_positions(y[iy], x[ix], s)
        h = np.sqrt(np.maximum(r2 - yy * yy - xx * xx, 0.0))  # half-height of the sphere
        frac[iy, ix] = np.clip(np.minimum(z1, h) - np.maximum(z0, -h), 0.0, None).mean(axis=1)
        vol[row, lo[0] : hi[0], lo[1] : hi[1]] += mu * frac


def _slab_volume(sphere: Sphere, z0: float, z1: float) -> float:
    """Volume of the sphere between the planes z0 and z1 (spherical segment formula)."""
    lo = max(z0 - sphere.z, -sphere.r)
    hi = min(z1 - sphere.z, sphere.r)
    if hi <= lo:
        return 0.0
    return math.pi * (sphere.r**2 * (hi - lo) - (hi**3 - lo**3) / 3)


def make_foam(
    *,
    n: int,
    rows: int,
    rng: np.random.Generator,
    sample_radius: float = 0.4,
    pore_radius: tuple[float, float] = (0.03, 0.1),
    porosity: float = 0.2,
    wall: float = 1.5,
    absorption: float = 1.5,
    water: float = 0.55,
    dynamics_start: int = 0,
    bubble_radius0: float = 0.3,
    bubble_growth: float = 0.08,
    max_tries: int = 5000,
) -> FoamPhantom:
    """Random foam around the detector's rows: a cylinder of radius ``sample_radius·n`` with pores
    of radii in ``pore_radius·n`` (log-uniform, at least 1 px), added at random until ``porosity``
    of the volume is air (random sequential addition; stops early after ``max_tries`` candidates).

    Pores keep at least ``wall`` pixels of material between each other and the cylinder surface.
    The foam fills a band reaching two pore radii above and below the imaged rows, so the rows see
    the same pore density throughout; pores that miss the rows are then dropped. Pore 0, the
    bubble's, has the largest radius and sits at mid-height. ``absorption`` is the material's
    optical depth across the cylinder's diameter, ``water`` the water's attenuation relative to
    the material.
    """
    radius = sample_radius * n
    rmax = max(pore_radius[1] * n, 1.0)
    rmin = min(max(pore_radius[0] * n, 1.0), rmax)  # sub-pixel pores would be invisible
    band = rows / 2 + 2 * rmax
    target = porosity * math.pi * radius**2 * 2 * band
    # The bubble's pore: largest, at mid-height, halfway between axis and surface.
    reach = max(radius - rmax - wall, 0.0)
    phi = rng.uniform(0, 2 * math.pi)
    centres = np.zeros((max_tries + 1, 3))
    radii = np.zeros(max_tries + 1)
    centres[0] = (0.5 * reach * math.cos(phi), 0.5 * reach * math.sin(phi), 0.0)
    radii[0] = rmax
    count = 1
    air = _slab_volume(Sphere(0, 0, 0, rmax), -band, band)
    # Candidates drawn up front: radius log-uniform, centre uniform in the cylinder and the band.
    cand_r = np.exp(rng.uniform(math.log(rmin), math.log(rmax), max_tries))
    reach = np.maximum(radius - cand_r - wall, 0.0) * np.sqrt(rng.uniform(size=max_tries))
    ang = rng.uniform(0, 2 * math.pi, max_tries)
    cand = np.stack(
        [reach * np.cos(ang), reach * np.sin(ang), rng.uniform(-band, band, max_tries)], axis=1
    )
    # Random sequential addition, tested against the accepted pores a batch at a time.
    batch = 64
    for start in range(0, max_tries, batch):
        if air >= target:
            break
        cb, rb = cand[start : start + batch], cand_r[start : start + batch]
        d2 = ((cb[:, None, :] - centres[None, :count, :]) ** 2).sum(axis=2)
        free = np.all(d2 >= (rb[:, None] + radii[None, :count] + wall) ** 2, axis=1)
        first = count
        for c, r in zip(cb[free], rb[free], strict=True):
            new = slice(first, count)  # pores accepted earlier in this batch
            if count > first and np.any(
                ((centres[new] - c) ** 2).sum(axis=1) < (radii[new] + r + wall) ** 2
            ):
                continue
            if r + wall >= radius or air >= target:
                continue
            centres[count], radii[count] = c, r
            count += 1
            air += _slab_volume(Sphere(0, 0, float(c[2]), float(r)), -band, band)
    centres, radii = centres[:count], radii[:count]
    seen = np.abs(centres[:, 2]) < rows / 2 + radii
    pores = tuple(
        Sphere(float(x), float(y), float(z), float(r))
        for (x, y, z), r in zip(centres[seen], radii[seen], strict=True)
    )
    mu = absorption / (2 * radius)
    return FoamPhantom(
        radius=radius,
        mu_material=mu,
        mu_water=water * mu,
        pores=pores,
        dynamics_start=dynamics_start,
        bubble_radius0=bubble_radius0,
        bubble_growth=bubble_growth,
        bubble_direction=float(rng.uniform(0, 2 * math.pi)),
    )
