"""``n2i-stream reconstruct`` end to end, its bad-input errors, and the results file it writes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import n2i_stream
from n2i_stream import cli
from n2i_stream.config import from_mapping
from n2i_stream.core.geometry import ParallelGeometry
from n2i_stream.errors import ConfigError, DataError, DataFileError
from n2i_stream.io.dxchange import DARK, DATA, THETA, WHITE
from n2i_stream.io.results import ResultsWriter
from n2i_stream.offline import ReconstructConfig, reconstruct_file
from n2i_stream.sim.analytic import Disk, disks_sinogram

DISK = Disk(x=6.0, y=-4.0, r=18.0, mu=0.03)
COLS, ROWS, PER_STEP, STEPS, INTERLACE = 64, 2, 90, 3, 3
FLAT_COUNTS, DARK_COUNTS = 20000.0, 100.0


@pytest.fixture
def n2i(capsys):
    """Run ``n2i-stream reconstruct ...``; returns (exit code, stdout, stderr)."""

    def call(*argv):
        code = cli.main(["reconstruct", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def interlaced_angles():
    inc = 180.0 / PER_STEP
    s, k = np.divmod(np.arange(STEPS * PER_STEP), PER_STEP)
    return s * (180.0 + inc / INTERLACE) + k * inc


def write_scan(path, *, rng, center_offset=0.0, frames_per_step=True, change=None):
    """A noisy dynamic scan of one disk as raw counts, with darks and flats (Poisson noise)."""
    theta = interlaced_angles()
    geom = ParallelGeometry.from_degrees(theta, rows=ROWS, cols=COLS, center_offset=center_offset)
    sino = disks_sinogram(geom, [DISK])  # (angles, cols): same on every row
    profile = FLAT_COUNTS * (1 + 0.1 * np.cos(np.linspace(0, 3, COLS)))[None, :]
    expected = DARK_COUNTS + profile * np.exp(-sino[:, None, :])
    datasets = {
        DATA: rng.poisson(np.broadcast_to(expected, (theta.size, ROWS, COLS))).astype(np.uint16),
        DARK: rng.poisson(DARK_COUNTS, (4, ROWS, COLS)).astype(np.uint16),
        WHITE: rng.poisson(DARK_COUNTS + profile, (6, ROWS, COLS)).astype(np.uint16),
        THETA: theta,
    }
    datasets.update(change or {})
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            if value is not None:
                f.create_dataset(name, data=value)
        if frames_per_step and DATA in f:
            f[DATA].attrs["frames_per_step"] = PER_STEP
    return path


def disk_masks(n):
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    d = np.hypot(xx - DISK.x, yy - DISK.y)
    return d < DISK.r - 3, (d > DISK.r + 4) & (np.hypot(xx, yy) < n / 2 - 4)


def test_end_to_end_recovers_the_disk(tmp_path, rng, n2i):
    scan = write_scan(tmp_path / "scan.h5", rng=rng, center_offset=1.5)
    out = tmp_path / "recon.h5"
    code, stdout, stderr = n2i(scan, "--out", out, "--method", "fbp", "--center-offset", 1.5)
    assert code == 0, stderr
    assert "wrote /reconstruction/fbp (3, 2, 64, 64)" in stdout
    with h5py.File(out, "r") as f:
        fbp = f["reconstruction/fbp"]
        assert fbp.shape == (STEPS, ROWS, COLS, COLS)
        assert fbp.dtype == np.float32
        np.testing.assert_array_equal(f["reconstruction/time_step"][()], [0, 1, 2])
        assert f.attrs["software_version"] == n2i_stream.__version__
        assert f.attrs["center_offset"] == 1.5
        assert f.attrs["time_step_rule"] == f"frames_per_step={PER_STEP}"
        config = json.loads(f.attrs["config"])
        assert config["method"] == "fbp"
        assert config["center_offset"] == 1.5
        volume = fbp[()]
    inside, outside = disk_masks(COLS)
    for step in range(STEPS):
        assert volume[step, 1][inside].mean() == pytest.approx(DISK.mu, rel=0.03)
        assert abs(volume[step, 1][outside].mean()) < 0.05 * DISK.mu


def test_selecting_steps_rows_size_and_filter(tmp_path, rng, n2i):
    scan = write_scan(tmp_path / "scan.h5", rng=rng, frames_per_step=False)
    out = tmp_path / "recon.h5"
    code, _, stderr = n2i(
        scan,
        "--out",
        out,
        "--frames-per-step",
        PER_STEP,
        "--steps",
        "1:",
        "--rows",
        "1:2",
        "--size",
        48,
        "--filter",
        "shepp-logan",
        "--oversample",
        2,
        "--quiet",
    )
    assert code == 0, stderr
    with h5py.File(out, "r") as f:
        assert f["reconstruction/fbp"].shape == (2, 1, 48, 48)
        np.testing.assert_array_equal(f["reconstruction/time_step"][()], [1, 2])
        assert f.attrs["filter"] == "shepp-logan"
        assert f.attrs["oversample"] == 2
        assert f.attrs["first_row"] == 1


def test_without_frames_per_step_one_step_per_half_turn(tmp_path, rng):
    scan = write_scan(tmp_path / "scan.h5", rng=rng, frames_per_step=False)
    progress = []
    result = reconstruct_file(
        ReconstructConfig(input=str(scan), output=str(tmp_path / "r.h5"), rows=(0, 1)),
        progress=lambda done, total: progress.append((done, total)),
    )
    # Each step starts a third of an increment later than a half turn after the previous one,
    # which still keeps every step inside its own half turn.
    assert result.time_steps == (0, 1, 2)
    assert result.dropped_frames == 0
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert result.shape == (1, COLS, COLS)


def test_existing_output_needs_overwrite(tmp_path, rng, n2i):
    scan = write_scan(tmp_path / "scan.h5", rng=rng)
    out = tmp_path / "recon.h5"
    out.write_bytes(b"keep me")
    code, _, stderr = n2i(scan, "--out", out, "--steps", "0", "--quiet")
    assert code == 2
    assert "exists" in stderr
    assert "--overwrite" in stderr
    assert out.read_bytes() == b"keep me"
    code, _, stderr = n2i(scan, "--out", out, "--steps", "0", "--quiet", "--overwrite")
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("change", "dataset", "expected"),
    [
        ({DARK: None}, DARK, "missing"),
        ({WHITE: None}, WHITE, "missing"),
        ({THETA: None}, THETA, "missing"),
        ({DATA: None}, DATA, "missing"),
        ({THETA: np.arange(100.0)}, THETA, f"expected ({STEPS * PER_STEP},)"),
        ({DARK: np.zeros((2, ROWS, COLS + 1))}, DARK, f"expected (k >= 1, {ROWS}, {COLS})"),
        ({WHITE: np.zeros((2, ROWS + 1, COLS))}, WHITE, f"expected (k >= 1, {ROWS}, {COLS})"),
        ({DATA: np.zeros((0, ROWS, COLS)), THETA: np.zeros(0)}, DATA, "is empty"),
        ({THETA: np.where(np.arange(270) == 5, np.inf, 1.0 * np.arange(270))}, THETA, "non-finite"),
    ],
)
def test_bad_input_exits_2_naming_the_dataset(tmp_path, rng, n2i, change, dataset, expected):
    scan = write_scan(tmp_path / "scan.h5", rng=rng, change=change)
    code, _stdout, stderr = n2i(scan, "--out", tmp_path / "recon.h5", "--quiet")
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"{scan}:{dataset}: " in lines[0]
    assert expected in lines[0]
    assert not (tmp_path / "recon.h5").exists()


def test_nan_counts_exit_2_naming_the_frame(tmp_path, rng, n2i):
    data = np.ones((STEPS * PER_STEP, ROWS, COLS), np.float32) * 1000
    data[200, 0, 3] = np.nan
    scan = write_scan(tmp_path / "scan.h5", rng=rng, change={DATA: data})
    code, _, stderr = n2i(scan, "--out", tmp_path / "recon.h5", "--quiet")
    assert code == 2
    assert f"{scan}:{DATA}: frame 200 contains NaN" in stderr


def test_other_bad_input(tmp_path, rng, n2i):
    text = tmp_path / "scan.txt"
    text.write_text("hello\n")
    code, _, stderr = n2i(text, "--out", tmp_path / "r.h5")
    assert code == 2
    assert "cannot open as HDF5" in stderr
    scan = write_scan(tmp_path / "scan.h5", rng=rng)
    code, _, stderr = n2i(scan, "--out", tmp_path / "r.h5", "--frames-per-step", 1000)
    assert code == 2
    assert f"{scan}:{DATA}: frames_per_step is 1000" in stderr
    code, _, stderr = n2i(scan, "--out", tmp_path / "r.h5", "--steps", "7:9")
    assert code == 2
    assert "--steps 7:9 selects none of the 3" in stderr
    code, _, stderr = n2i(scan, "--out", scan)
    assert code == 2
    assert "output file must differ" in stderr
    with pytest.raises(SystemExit) as info:
        n2i(scan, "--out", tmp_path / "r.h5", "--center-offset", "left")
    assert info.value.code == 2


def test_config_is_a_typed_frozen_mapping():
    config = from_mapping(
        ReconstructConfig,
        {"input": "a.h5", "output": "b.h5", "center_offset": "auto", "steps": [1, None]},
    )
    assert config.center_offset == "auto"
    assert config.steps == (1, None)
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        from_mapping(ReconstructConfig, {"input": "a.h5", "output": "b.h5", "bogus": 1})
    with pytest.raises(ConfigError, match="filter 'sharp'"):
        ReconstructConfig(input="a.h5", output="b.h5", filter="sharp")
    with pytest.raises(ConfigError, match="oversample must be 1, 2, 3 or 4, got 0"):
        ReconstructConfig(input="a.h5", output="b.h5", oversample=0)


def test_auto_center_recovers_a_known_offset(tmp_path, rng, n2i):
    pytest.importorskip("n2i_stream.core.center")
    scan = write_scan(tmp_path / "scan.h5", rng=rng, center_offset=3.0)
    out = tmp_path / "recon.h5"
    code, _, stderr = n2i(scan, "--out", out, "--center-offset", "auto", "--steps", "0")
    assert code == 0, stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["center_offset"] == pytest.approx(3.0, abs=0.5)


def test_real_tooth_scan_is_one_step_with_finite_values(tooth_path, tmp_path, n2i):
    out = tmp_path / "tooth.h5"
    code, _, stderr = n2i(tooth_path, "--out", out, "--quiet")
    assert code == 0, stderr
    with h5py.File(out, "r") as f:
        volume = f["reconstruction/fbp"][()]
        assert f.attrs["time_step_rule"] == "one step per 180 degrees"
    assert volume.shape == (1, 2, 640, 640)
    assert np.isfinite(volume).all()
    assert volume.std() > 0


# -- the results file ------------------------------------------------------------------------
def volume(value: float, rows=2, n=8):
    return np.full((rows, n, n), value, dtype=np.float32)


def test_layout_steps_and_attributes(tmp_path):
    path = tmp_path / "recon.h5"
    config = {"method": "fbp", "center_offset": 1.5, "steps": [None, 3]}
    with ResultsWriter(
        path, rows=2, n=8, kinds=("fbp", "denoised"), config=config, attrs={"cols": 8}
    ) as out:
        out.write_step("fbp", 5, volume(1.0))
        out.write_step("fbp", 6, volume(2.0))
        out.write_step("denoised", 5, volume(3.0))
        out.write_step("fbp", 6, volume(4.0))  # replaces, adds no slot
        out.append_loss([0.5, 0.25])
        out.append_loss(0.125)
        assert out.time_steps == (5, 6)
    assert out.closed
    with h5py.File(path, "r") as f:
        fbp, den = f["reconstruction/fbp"], f["reconstruction/denoised"]
        assert fbp.shape == den.shape == (2, 2, 8, 8)
        assert fbp.dtype == np.float32
        assert fbp.chunks == (1, 1, 8, 8)
        assert fbp.maxshape[0] is None
        np.testing.assert_array_equal(f["reconstruction/time_step"][()], [5, 6])
        np.testing.assert_array_equal(fbp[0], 1.0)
        np.testing.assert_array_equal(fbp[1], 4.0)
        np.testing.assert_array_equal(den[0], 3.0)
        assert np.isnan(den[1]).all()  # not written yet: the fill value
        np.testing.assert_allclose(f["training/loss"][()], [0.5, 0.25, 0.125])
        assert f.attrs["software_version"] == n2i_stream.__version__
        assert json.loads(f.attrs["config"]) == config
        assert f.attrs["cols"] == 8


def test_existing_files_are_kept_unless_overwrite(tmp_path):
    path = tmp_path / "recon.h5"
    path.write_bytes(b"precious")
    with pytest.raises(DataFileError, match="exists"):
        ResultsWriter(path, rows=1, n=4)
    assert path.read_bytes() == b"precious"
    with ResultsWriter(path, rows=1, n=4, overwrite=True) as out:
        out.write_step("fbp", 0, volume(0.0, rows=1, n=4))
    with h5py.File(path, "r") as f:
        assert f["reconstruction/fbp"].shape == (1, 1, 4, 4)


def test_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="unknown result kinds"):
        ResultsWriter(tmp_path / "a.h5", rows=1, n=4, kinds=("fbp", "noisy"))
    with ResultsWriter(tmp_path / "b.h5", rows=1, n=4) as out:
        with pytest.raises(DataError, match=r"expected \(1, 4, 4\)"):
            out.write_step("fbp", 0, volume(0.0, rows=2, n=4))
        with pytest.raises(ConfigError, match="not 'denoised'"):
            out.write_step("denoised", 0, volume(0.0, rows=1, n=4))
    with pytest.raises(DataFileError, match="already closed"):
        out.write_step("fbp", 0, volume(0.0, rows=1, n=4))


READER = textwrap.dedent(
    """
    import json, sys
    import h5py
    import numpy as np

    f = h5py.File(sys.argv[1], "r", libver="latest", swmr=True)
    steps, fbp = f["reconstruction/time_step"], f["reconstruction/fbp"]
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "check":
            break
        steps.refresh()
        fbp.refresh()
        n = steps.shape[0]
        means = [float(np.mean(fbp[i])) for i in range(n)]
        print(json.dumps({"steps": steps[:n].tolist(), "shape": list(fbp.shape),
                          "means": means}), flush=True)
    f.close()
    """
)


def test_a_swmr_reader_sees_each_step_as_it_is_written(tmp_path):
    path = tmp_path / "live.h5"
    seen = []
    with (
        ResultsWriter(path, rows=2, n=8) as out,
        subprocess.Popen(
            [sys.executable, "-c", READER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as reader,
    ):
        try:
            # The reader opens the file only now, while the writer holds it in SWMR mode.
            assert reader.stdout.readline().strip() == "ready"
            for step in range(3):
                out.write_step("fbp", 10 + step, volume(float(step) + 0.5))
                reader.stdin.write("check\n")
                reader.stdin.flush()
                seen.append(json.loads(reader.stdout.readline()))
            reader.stdin.write("stop\n")
            reader.stdin.flush()
            assert reader.wait(timeout=30) == 0
        finally:
            if reader.poll() is None:
                reader.kill()
    assert [s["steps"] for s in seen] == [[10], [10, 11], [10, 11, 12]]
    assert [s["shape"][0] for s in seen] == [1, 2, 3]
    assert seen[-1]["means"] == [0.5, 1.5, 2.5]
