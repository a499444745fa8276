"""Geometry conventions and the reference FBP (DESIGN.md §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from n2i_stream import GeometryError, ParallelGeometry, angular_weights, fbp


def disk_projections(geom: ParallelGeometry, x0: float, y0: float, r: float, mu: float):
    """Exact line integrals of a uniform disk (chord lengths), ``(angles, rows, cols)``."""
    t = np.arange(geom.cols) - (geom.cols - 1) / 2 - geom.center_offset
    p = np.empty((len(geom), geom.rows, geom.cols), np.float32)
    for k, th in enumerate(geom.angles):
        d = t - (x0 * math.cos(th) + y0 * math.sin(th))
        p[k] = mu * 2 * np.sqrt(np.clip(r * r - d * d, 0, None))
    return p


def pixel_grid(n: int):
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return xx, yy


@pytest.mark.parametrize("span", [180.0, 360.0])
def test_point_reconstructs_where_design_predicts(xp, span):
    cols, n, k = 64, 64, 120
    geom = ParallelGeometry.from_degrees(
        np.arange(k) * span / k, rows=2, cols=cols, center_offset=2.5
    )
    x0, y0 = 9.5, -13.5  # pixel centres of an even grid sit on half-integers
    p = disk_projections(geom, x0, y0, 1.2, 1.0)
    rec = np.asarray(fbp(xp.asarray(p), geom, backend="reference"))
    assert rec.shape == (2, n, n)
    i, j = np.unravel_index(np.argmax(rec[1]), (n, n))
    assert (j, i) == (x0 + (n - 1) / 2, y0 + (n - 1) / 2)


def test_disk_attenuation_within_percent(xp):
    geom = ParallelGeometry.from_degrees(
        np.linspace(0, 180, 180, endpoint=False), rows=1, cols=128, center_offset=-3.0
    )
    p = disk_projections(geom, 10.0, -5.0, 20.0, 0.02)
    rec = np.asarray(fbp(xp.asarray(p), geom, backend="reference"))[0]
    xx, yy = pixel_grid(128)
    inside = (xx - 10) ** 2 + (yy + 5) ** 2 < 17**2
    outside = (xx - 10) ** 2 + (yy + 5) ** 2 > 23**2
    assert rec[inside].mean() == pytest.approx(0.02, rel=0.02)
    assert np.abs(rec[outside]).mean() < 0.02 * 0.02


def test_uniform_weights_and_duplicates():
    w = angular_weights(np.arange(8) * math.pi / 8)
    np.testing.assert_allclose(w, math.pi / 8)
    w360 = angular_weights(np.arange(16) * math.pi / 8)
    np.testing.assert_allclose(w360, math.pi / 16)
    assert angular_weights(np.array([0.1, 0.5, 2.0])).sum() == pytest.approx(math.pi)


def test_angular_weighting_reduces_error_on_uneven_angles():
    rng = np.random.default_rng(3)
    # Dense in one half, sparse in the other: uniform weights over-count the dense half.
    deg = np.sort(np.concatenate([rng.uniform(0, 90, 150), rng.uniform(90, 180, 30)]))
    geom = ParallelGeometry.from_degrees(deg, rows=1, cols=96)
    p = disk_projections(geom, 6.0, 3.0, 18.0, 0.03)
    truth_xx, truth_yy = pixel_grid(96)
    truth = np.where((truth_xx - 6) ** 2 + (truth_yy - 3) ** 2 < 18**2, 0.03, 0.0)
    weighted = fbp(p, geom, backend="reference", oversample=1)[0]
    from n2i_stream.core.fbp import backproject_reference
    from n2i_stream.core.filters import filter_projections

    uniform = backproject_reference(
        filter_projections(p), geom, weights=np.full(len(geom), math.pi / len(geom))
    )[0]
    err_w = np.sqrt(np.mean((weighted - truth) ** 2))
    err_u = np.sqrt(np.mean((uniform - truth) ** 2))
    assert err_w < 0.7 * err_u


def test_geometry_slices_like_a_list():
    geom = ParallelGeometry.from_degrees(np.arange(12) * 15.0, rows=3, cols=10)
    part = geom[1::4]
    np.testing.assert_allclose(part.angles_deg, [15, 75, 135])
    assert (part.rows, part.cols) == (3, 10)
    with pytest.raises(GeometryError, match="shape"):
        fbp(np.zeros((5, 3, 10), np.float32), geom)


def test_oversampled_filter_keeps_columns_and_interpolates_band_limited(xp):
    from n2i_stream.core.filters import filter_projections

    cols = 40
    t = np.arange(cols)
    wave = lambda u: np.cos(2 * math.pi * 3 * u / cols) + 0.5 * np.sin(2 * math.pi * 5 * u / cols)  # noqa: E731
    p = np.stack([wave(t), t * 0.1]).astype(np.float64)[:, None, :]  # (2 angles, 1 row, cols)
    plain = np.asarray(filter_projections(xp.asarray(p), window="none", padding="zero"))
    fine = np.asarray(
        filter_projections(xp.asarray(p), window="none", padding="zero", oversample=2)
    )
    assert fine.shape == (2, 1, 2 * cols)
    np.testing.assert_allclose(fine[..., ::2], plain, atol=1e-12)  # the columns themselves
    np.testing.assert_allclose(plain, p, atol=1e-12)  # "none" filters nothing
    # Half-way samples of a smooth periodic-looking signal follow its band-limited values,
    # away from the ends, where the zero padding cuts it off.
    mid = fine[0, 0, 1::2][8:-8]
    np.testing.assert_allclose(mid, wave(t[8:-8] + 0.5), atol=0.05)
    with pytest.raises(GeometryError, match="oversample"):
        filter_projections(xp.asarray(p), oversample=0)


def test_oversampling_makes_fbp_more_accurate():
    # Detector pixels integrate over their width (as the simulator's do): then the band-limited
    # interpolation of oversample=2 beats linear interpolation between columns.
    from n2i_stream.sim.analytic import Disk, disks_image, disks_sinogram

    geom = ParallelGeometry.from_degrees(np.linspace(0, 180, 240, endpoint=False), rows=1, cols=97)
    disks = [
        Disk(0.0, 0.0, 40.0, 0.01),
        Disk(12.0, -9.0, 9.0, 0.02),
        Disk(-15.0, 14.0, 5.0, -0.006),
    ]
    p = disks_sinogram(geom, disks)[:, None, :]
    truth = disks_image(96, disks)  # even grid: pixel centres fall between detector columns
    xx, yy = pixel_grid(96)
    fov = xx**2 + yy**2 < 44**2
    errors = {
        k: np.sqrt(np.mean((fbp(p, geom, n=96, oversample=k)[0] - truth)[fov] ** 2)) for k in (1, 2)
    }
    assert errors[2] < 0.9 * errors[1]
