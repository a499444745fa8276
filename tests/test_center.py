"""Rotation-centre estimation on simulated scans with known offsets and on the real tooth scan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from n2i_stream import GeometryError, ParallelGeometry
from n2i_stream.core.center import (
    CenterEstimate,
    center_from_mass,
    center_from_opposing,
    center_from_sharpness,
    find_center,
    negativity,
    opposing_pairs,
    total_variation,
)
from n2i_stream.core.fbp import fbp
from n2i_stream.sim.analytic import Disk, disks_sinogram

PHANTOM = (
    Disk(0.0, 0.0, 36.0, 0.012),
    Disk(14.0, -9.0, 10.0, 0.02),
    Disk(-19.0, 13.0, 6.0, 0.03),
    Disk(4.0, 22.0, 4.0, -0.006),
)
ANGLE_SETS = {
    "180": np.arange(180) * 1.0,
    # four interlaced sets of 45 angles over 180°, offset a quarter step each
    "interlaced": np.concatenate([np.arange(45) * 4.0 + j for j in range(4)]) + 0.37,
    "360": np.arange(240) * 1.5,
    # interlaced over a full turn: pairs 180° apart exist
    "interlaced-360": np.concatenate([np.arange(30) * 12.0 + 3.0 * j for j in range(4)]),
}


def noisy_scan(degrees, offset, *, cols=112, rows=2, photons=3000.0, seed=0):
    """Poisson-noisy ``-log`` data of the disk phantom with its axis at ``offset``.

    Returns the projections and the geometry with the offset *unknown* (0).
    """
    rng = np.random.default_rng(seed)
    truth = ParallelGeometry.from_degrees(degrees, rows=rows, cols=cols, center_offset=offset)
    line_integrals = disks_sinogram(truth, PHANTOM)[:, None, :].repeat(rows, axis=1)
    counts = rng.poisson(photons * np.exp(-line_integrals))
    data = -np.log(np.maximum(counts, 1) / photons)
    return data.astype(np.float32), truth.with_center(0.0)


@pytest.mark.parametrize("angles", ["180", "interlaced", "360"])
@pytest.mark.parametrize("offset", [0.0, 2.3, -5.7])
def test_center_of_mass_recovers_offset(xp, angles, offset):
    data, geom = noisy_scan(ANGLE_SETS[angles], offset)
    est = center_from_mass(xp.asarray(data), geom)
    assert isinstance(est, CenterEstimate)
    assert est.method == "com"
    assert est.offset == pytest.approx(offset, abs=0.5)
    assert est.details["mass_variation"] < 0.02


@pytest.mark.parametrize("angles", ["360", "interlaced-360"])
@pytest.mark.parametrize("offset", [1.5, -4.25])
def test_opposing_projections_recover_offset(xp, angles, offset):
    data, geom = noisy_scan(ANGLE_SETS[angles], offset)
    est = center_from_opposing(xp.asarray(data), geom)
    assert est.offset == pytest.approx(offset, abs=0.5)
    assert est.details["pairs"] == len(geom) // 2
    assert est.score > 0.5


def test_opposing_needs_pairs():
    data, geom = noisy_scan(ANGLE_SETS["180"], 1.0)
    with pytest.raises(GeometryError, match="no angle pairs 180° apart"):
        center_from_opposing(data, geom)


def test_opposing_pairs_match_angles_half_a_turn_apart():
    angles = np.deg2rad([10.0, 100.0, 190.0, 250.0, 280.0, 70.001])
    pairs = opposing_pairs(angles, tolerance=np.deg2rad(0.01))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 2), (1, 4), (5, 3)]


@pytest.mark.parametrize(
    ("angles", "offset", "start"),
    [("180", 2.3, 0.0), ("interlaced", -5.7, -3.2), ("360", 0.6, 3.0)],
)
def test_sharpness_search_recovers_offset(angles, offset, start):
    data, geom = noisy_scan(ANGLE_SETS[angles], offset, rows=1)
    est = center_from_sharpness(data, geom, initial=start, radius=2.0)
    assert est.method == "sharpness"
    assert est.offset == pytest.approx(offset, abs=0.5)
    assert not est.details["hit_search_limit"]


def test_sharpness_search_is_array_api_clean(xp):
    data, geom = noisy_scan(ANGLE_SETS["interlaced"], 1.7, cols=96, rows=1)
    est = center_from_sharpness(xp.asarray(data), geom, initial=0.5, radius=2.0)
    assert est.offset == pytest.approx(1.7, abs=0.5)


def test_auto_uses_opposing_pairs_when_present_and_com_otherwise():
    data, geom = noisy_scan(ANGLE_SETS["interlaced-360"], -3.4, rows=1)
    est = find_center(data, geom)
    assert est.method == "opposing+sharpness"
    assert est.offset == pytest.approx(-3.4, abs=0.5)
    data, geom = noisy_scan(ANGLE_SETS["interlaced"], 4.6, rows=1)
    est = find_center(data, geom)
    assert est.method == "com+sharpness"
    assert est.offset == pytest.approx(4.6, abs=0.5)
    assert est.details["start"] == pytest.approx(4.6, abs=0.5)


def test_scores_prefer_the_true_centre():
    data, geom = noisy_scan(ANGLE_SETS["180"], 1.0, rows=1, photons=1e5)
    right = fbp(data, geom.with_center(1.0), window="hann")
    wrong = fbp(data, geom.with_center(4.0), window="hann")
    assert negativity(right, radius=40) < 0.5 * negativity(wrong, radius=40)
    assert total_variation(right, radius=40) < total_variation(wrong, radius=40)


def test_center_rejects_bad_requests():
    data, geom = noisy_scan(ANGLE_SETS["180"], 0.0, rows=1)
    with pytest.raises(GeometryError, match="unknown centre method"):
        find_center(data, geom, method="magic")  # type: ignore[arg-type]
    with pytest.raises(GeometryError, match=r"rows must be indices in \[0, 1\)"):
        center_from_mass(data, geom, rows=[3])
    with pytest.raises(GeometryError, match="shape"):
        center_from_mass(data[:, :, :-1], geom)
    with pytest.raises(GeometryError, match="positive total"):
        center_from_mass(np.zeros_like(data), geom)
    with pytest.raises(GeometryError, match="unknown sharpness metric"):
        center_from_sharpness(data, geom, metric="entropy")  # type: ignore[arg-type]


def _tooth_line_integrals(path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as f:
        counts = f["/exchange/data"][...].astype(np.float64)
        dark = f["/exchange/data_dark"][...].mean(axis=0)
        flat = f["/exchange/data_white"][...].mean(axis=0)
        theta = f["/exchange/theta"][...]
    transmission = np.clip((counts - dark) / (flat - dark), 1e-6, None)
    data = np.clip(-np.log(transmission), 0.0, None).astype(np.float32)
    return data, ParallelGeometry.from_degrees(theta, rows=data.shape[1], cols=data.shape[2])


def test_tooth_centre_is_found_and_sharp(tooth_path):
    data, geom = _tooth_line_integrals(tooth_path)
    com = find_center(data, geom, method="com")
    est = find_center(data, geom, rows=[0])
    assert est.method == "com+sharpness"
    assert abs(est.offset - com.offset) < 1.0  # the two estimators agree
    assert not est.details["hit_search_limit"]
    # The reconstruction at the found centre is sharper than ±3 px away, by both scores.
    radius = est.details["fov_radius"]
    row0 = ParallelGeometry(geom.angles, 1, geom.cols)
    recs = {
        d: fbp(data[:, :1], row0.with_center(est.offset + d), window="hann") for d in (-3, 0, 3)
    }
    for score in (negativity, total_variation):
        at = score(recs[0], radius=radius)
        assert at < score(recs[-3], radius=radius)
        assert at < score(recs[3], radius=radius)
    # The rotation axis sits well left of the detector centre (column 319.5).
    assert -26.0 < est.offset < -21.0
    assert math.isfinite(est.score)
