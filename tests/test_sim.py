"""The simulated dynamic beamline: exact projections, dynamics, angles, noise, files and CLI."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest

from n2i_stream import ConfigError, DataFileError, FrameError, ParallelGeometry, fbp
from n2i_stream.config import from_mapping
from n2i_stream.io.dxchange_writer import DataExchangeWriter
from n2i_stream.sim.phantom import FoamPhantom, make_foam
from n2i_stream.sim.scan import DynamicScan, SimConfig

SMALL = {"width": 48, "rows": 3, "steps": 4, "per_step": 16, "dynamics_start": 2}


def mu_at(ph: FoamPhantom, x, y, z, step: int) -> np.ndarray:
    """Attenuation at points, by plain membership tests (independent of the chord formulas)."""
    mu = np.where(x * x + y * y <= ph.radius**2, ph.mu_material, 0.0)
    for p in ph.pores:
        mu = np.where((x - p.x) ** 2 + (y - p.y) ** 2 + (z - p.z) ** 2 <= p.r**2, 0.0, mu)
    b = ph.bubble(step)
    if b is not None:
        mu = np.where((x - b.x) ** 2 + (y - b.y) ** 2 + (z - b.z) ** 2 <= b.r**2, ph.mu_water, mu)
    return mu


def ray_march(ph: FoamPhantom, geom: ParallelGeometry, step: int, sub=8, ds=0.1) -> np.ndarray:
    """Pixel-averaged line integrals by marching ``sub × sub`` rays per pixel in steps ``ds``."""
    out = np.zeros((len(geom), geom.rows, geom.cols))
    u = (np.arange(sub) + 0.5) / sub - 0.5
    s = np.arange(-ph.radius, ph.radius, ds)[None, None, :] + ds / 2
    t = ((np.arange(geom.cols)[:, None] + u).ravel() - geom.axis_column)[:, None, None]
    for k, th in enumerate(geom.angles):
        c, sn = math.cos(th), math.sin(th)
        for r in range(geom.rows):
            z = (r - (geom.rows - 1) / 2 + u)[None, :, None]
            val = mu_at(ph, t * c - s * sn, t * sn + s * c, z, step).sum(axis=-1) * ds
            out[k, r] = val.reshape(geom.cols, sub, sub).mean(axis=(1, 2))
    return out


@pytest.fixture(scope="module")
def foam() -> FoamPhantom:
    return make_foam(
        n=40,
        rows=6,
        rng=np.random.default_rng(3),
        pore_radius=(0.06, 0.15),
        dynamics_start=1,
        bubble_radius0=0.6,
    )


def test_projections_match_a_brute_force_ray_march(foam):
    assert foam.bubble(2) is not None
    assert len(foam.pores) > 3
    geom = ParallelGeometry.from_radians([0.3, 2.2], rows=6, cols=40, center_offset=1.3)
    exact = foam.project(geom, 2, supersample=16)
    brute = ray_march(foam, geom, 2)
    # One pore chord is ~0.3 here; the march itself errs by ~ds·μ per boundary.
    assert np.abs(exact - brute).max() < 0.006
    assert np.abs(exact - brute).mean() < 0.001
    assert np.abs(exact).max() > 1.0


def test_ground_truth_is_the_voxel_average(foam):
    n, rows, s = 40, 6, 6
    truth = foam.attenuation(2, n=n, rows=rows, supersample=4)
    sub = (np.arange(s) + 0.5) / s - 0.5
    c = (np.arange(n)[:, None] + sub).ravel() - (n - 1) / 2
    z = (np.arange(rows)[:, None] + sub).ravel() - (rows - 1) / 2
    brute = mu_at(foam, c[None, None, :], c[None, :, None], z[:, None, None], 2)
    brute = brute.reshape(rows, s, n, s, n, s).mean(axis=(1, 3, 5))
    assert np.abs(truth - brute).max() < 0.12 * foam.mu_material
    assert np.abs(truth - brute).mean() < 0.005 * foam.mu_material


def test_bubble_absent_before_dynamics_start_and_grows():
    scan = DynamicScan(SimConfig(**{**SMALL, "steps": 6}))
    ph = scan.phantom
    truths = [scan.ground_truth(s) for s in range(6)]
    np.testing.assert_array_equal(truths[0], truths[1])
    assert ph.bubble(1) is None
    radii = [ph.bubble(s).r for s in range(2, 6)]
    assert np.all(np.diff(radii) > 0)
    pore = ph.pores[0]
    for s in range(2, 6):
        b = ph.bubble(s)
        gap = math.dist((b.x, b.y, b.z), (pore.x, pore.y, pore.z))
        assert gap + b.r <= pore.r + 1e-9  # stays inside its pore
    water = [float((t - truths[0]).sum()) for t in truths]
    assert water[1] == 0
    assert all(np.diff(water[1:]) > 0)
    # The bubble shows in the projections too, only from dynamics_start on.
    np.testing.assert_array_equal(scan.line_integrals(1), ph.project(scan.step_geometry(1), 0))
    assert (scan.line_integrals(3) != ph.project(scan.step_geometry(3), 0)).any()


@pytest.mark.parametrize("jitter", [0.0, 0.02])
def test_steps_interlace_with_the_documented_offsets(jitter):
    cfg = SimConfig(**{**SMALL, "steps": 9, "per_step": 30}, interlace=4, jitter=jitter)
    scan = DynamicScan(cfg)
    delta = 180 / 30
    assert cfg.increment == delta
    assert cfg.step_span == 180 + delta / 4
    assert np.all(np.diff(scan.theta) > 0)
    assert scan.theta[-1] > 8 * 180
    first = scan.step_angles(0)
    for s in range(cfg.steps):
        expected = (s % 4) * delta / 4
        # Offset against step 0 modulo Δ, minus the expected one, wrapped into [-Δ/2, Δ/2).
        residual = np.mod(scan.step_angles(s) - first - expected + delta / 2, delta) - delta / 2
        assert abs(residual.mean()) < 0.01 * delta
        assert np.abs(residual).max() < 0.1 * delta if jitter else np.abs(residual).max() < 1e-9
    np.testing.assert_allclose(cfg.step_offsets(), (np.arange(9) % 4) * delta / 4)


def test_seeded_scans_reproduce_and_frames_match_arrays():
    cfg = SimConfig(**SMALL, n_darks=2, n_flats=3, n_flats_end=2, seed=7)
    a, b = DynamicScan(cfg).arrays(), DynamicScan(cfg).arrays()
    for name in ("data", "darks", "flats", "theta"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other = DynamicScan(dataclasses.replace(cfg, seed=8)).arrays()
    assert (other.data != a.data).any()
    assert (other.theta != a.theta).any()
    frames = list(DynamicScan(cfg).frames())
    assert [f.frame for f in frames] == list(range(cfg.n_frames))
    kinds = [f.kind for f in frames]
    assert kinds == ["dark"] * 2 + ["flat"] * 3 + ["projection"] * 64 + ["flat"] * 2
    proj = [f for f in frames if f.kind == "projection"]
    np.testing.assert_array_equal(np.stack([f.data for f in proj]), a.data)
    assert [f.time_step for f in proj] == list(np.repeat(np.arange(4), 16))
    assert all(f.angle is None and f.time_step is None for f in frames if f.kind != "projection")
    assert a.data.dtype == np.uint16
    assert a.data.shape == (64, 3, 48)


def lines_from_counts(data, scan: DynamicScan) -> np.ndarray:
    """-log((I - dark) / (flat - dark)) with the detector's expected dark and flat."""
    dark = scan.detector.dark
    return -np.log(np.clip((data - dark) / scan.detector.flat, 1e-6, None))


def test_fbp_of_noiseless_data_matches_ground_truth():
    base = {"width": 64, "rows": 4, "steps": 1, "per_step": 90, "dynamics_start": 0}
    scan = DynamicScan(SimConfig(**base, noise=False, photons=60000, n_darks=1, n_flats=1))
    geom = scan.step_geometry(0)
    truth = scan.ground_truth(0)
    p = lines_from_counts(scan.arrays().data, scan)
    assert np.abs(p - scan.line_integrals(0)).max() < 1e-4  # only count rounding remains
    rec = np.asarray(fbp(p.astype(np.float32), geom, backend="reference"))
    assert np.sqrt(((rec - truth) ** 2).mean() / (truth**2).mean()) < 0.15
    # Away from edges FBP recovers the material's attenuation.
    mu = scan.phantom.mu_material
    pad = np.pad(truth, ((0, 0), (3, 3), (3, 3)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, (7, 7), axis=(1, 2))
    solid = (windows.min(axis=(-1, -2)) == mu) & (windows.max(axis=(-1, -2)) == mu)
    assert solid.sum() > 200
    assert rec[solid].mean() == pytest.approx(mu, rel=0.01)
    assert np.abs(rec[solid] - mu).max() < 0.1 * mu


def test_noise_follows_the_photon_count():
    base = {"width": 64, "rows": 4, "steps": 1, "per_step": 90, "dynamics_start": 0}
    exact = DynamicScan(SimConfig(**base))
    lines = exact.line_integrals(0)
    geom = exact.step_geometry(0)
    clean = np.asarray(fbp(lines.astype(np.float32), geom, backend="reference"))
    yy, xx = np.mgrid[:64, :64] - 31.5
    centre = xx**2 + yy**2 < 10**2
    noise = {}
    for photons in (400.0, 1600.0):
        scan = DynamicScan(SimConfig(**base, photons=photons))
        p = lines_from_counts(scan.arrays().data, scan)
        # Poisson + read noise + rounding, propagated through the log: z ~ N(0, 1).
        lam = scan.detector.flat * np.exp(-lines)
        z = (p - lines) * lam / np.sqrt(lam + scan.detector.read_noise**2 + 1 / 12)
        assert abs(z.mean()) < 0.05
        assert z.std() == pytest.approx(1.0, abs=0.03)
        rec = np.asarray(fbp(p.astype(np.float32), geom, backend="reference"))
        noise[photons] = (rec - clean)[:, centre].std()
        # Ramp-filtered white noise, linearly interpolated: var ≈ π² · 0.0387 · var(p) / angles.
        var_p = (1 / lam)[..., np.abs(np.arange(64) - 31.5) < 10].mean()
        predicted = math.sqrt(math.pi**2 * 0.0387 * var_p / 90)
        assert noise[photons] == pytest.approx(predicted, rel=0.15)
    assert noise[400.0] / noise[1600.0] == pytest.approx(2.0, rel=0.1)


def test_written_file_round_trips(tmp_path):
    cfg = SimConfig(**SMALL, n_darks=2, n_flats=3, n_flats_end=2)
    scan = DynamicScan(cfg)
    path = tmp_path / "scan.h5"
    params = {"simulation": {"seed": cfg.seed, "pore_radius": cfg.pore_radius}}
    shape = {"rows": cfg.rows, "cols": cfg.width}
    with DataExchangeWriter(path, **shape, frames_per_step=16, parameters=params) as writer:
        for frame in scan.frames():
            writer.write_frame(frame)
    arrays = scan.arrays()
    with h5py.File(path, "r") as f:
        data = f["/exchange/data"]
        assert data.shape == (64, 3, 48)
        assert data.dtype == np.uint16
        assert data.chunks == (1, 3, 48)
        assert data.attrs["frames_per_step"] == 16
        np.testing.assert_array_equal(data[()], arrays.data)
        np.testing.assert_array_equal(f["/exchange/data_dark"][()], arrays.darks)
        np.testing.assert_array_equal(f["/exchange/data_white"][()], arrays.flats)
        np.testing.assert_array_equal(f["/exchange/theta"][()], scan.theta)
        assert f["/exchange/theta"].shape == (64,)
        assert list(f["/exchange/data_white"].attrs["frame_index"]) == [-1] * 3 + [63] * 2
        assert list(f["/exchange/data_dark"].attrs["frame_index"]) == [-1] * 2
        np.testing.assert_array_equal(f["/exchange/frame_id"][()], np.arange(5, 69))
        assert list(f["/process/simulation"].attrs["pore_radius"]) == list(cfg.pore_radius)
        assert f.attrs["software_version"]
        assert "incomplete" not in f.attrs


def test_writer_rejects_bad_frames_and_marks_interrupted_files(tmp_path):
    with pytest.raises(DataFileError, match="cannot create"):
        DataExchangeWriter(tmp_path / "missing" / "x.h5", rows=2, cols=8)
    path = tmp_path / "cut.h5"
    frame = np.zeros((2, 8), np.uint16)

    def write_until_a_bad_frame() -> None:
        with DataExchangeWriter(path, rows=2, cols=8) as w:
            w.write("flat", frame)
            w.write("projection", frame, angle=0.0)
            w.write("projection", np.zeros((2, 9), np.uint16), angle=0.1)

    with pytest.raises(FrameError, match="shape"):
        write_until_a_bad_frame()
    with h5py.File(path, "r") as f:
        assert "FrameError" in f.attrs["incomplete"]
        assert f["/exchange/data"].shape == (1, 2, 8)
        assert f["/exchange/theta"].shape == (1,)
    with DataExchangeWriter(tmp_path / "k.h5", rows=2, cols=8) as w:
        with pytest.raises(FrameError, match="unknown frame kind"):
            w.write("bright", frame)
        with pytest.raises(FrameError, match="needs"):
            w.write("projection", frame)


def test_config_rejects_bad_values_all_at_once():
    with pytest.raises(ConfigError) as err:
        SimConfig(per_step=1, photons=-5, dynamics_start=20)
    for name in ("per_step", "photons", "dynamics_start"):
        assert name in str(err.value)
    cfg = from_mapping(SimConfig, {"width": 64, "pore_radius": [0.05, 0.08]})
    assert cfg.pore_radius == (0.05, 0.08)
    assert cfg.n == 64
    with pytest.raises(ConfigError, match="unknown key"):
        from_mapping(SimConfig, {"widht": 64})


@pytest.fixture
def cli_main():
    """``n2i_stream.cli.main``."""
    from n2i_stream import cli

    return cli.main


def test_cli_writes_scan_and_truth(cli_main, tmp_path, capsys):
    out, truth = tmp_path / "s.h5", tmp_path / "t.h5"
    args = ["simulate", "--out", str(out), "--truth", str(truth), "--width", "32", "--rows", "2"]
    args += ["--steps", "3", "--per-step", "12", "--dynamics-start", "1", "--darks", "2"]
    assert cli_main([*args, "--flats", "2", "--photons", "800", "--seed", "5"]) == 0
    with h5py.File(out, "r") as f:
        assert f["/exchange/data"].shape == (36, 2, 32)
        assert f["/exchange/theta"].shape == (36,)
        assert f["/exchange/data"].attrs["frames_per_step"] == 12
        assert f["/process/simulation"].attrs["photons"] == 800
    with h5py.File(truth, "r") as f:
        att = f["/truth/attenuation"]
        assert att.shape == (3, 2, 32, 32)
        assert att.dtype == np.float32
        assert f["/truth/theta"].shape == (3, 12)
        assert not np.array_equal(att[0], att[2])
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad",
    [["--width", "4"], ["--dynamics-start", "40"], ["--photons", "0"], ["--per-step", "ten"]],
)
def test_cli_rejects_bad_values_with_exit_2(cli_main, tmp_path, capsys, bad):
    out = tmp_path / "s.h5"
    try:
        code = cli_main(["simulate", "--out", str(out), *bad])
    except SystemExit as exc:  # argparse rejects unparsable numbers itself
        code = exc.code
    assert code == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()
