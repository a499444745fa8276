"""Data Exchange reader: lazy chunked reads, references with positions, and bad-file errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from n2i_stream.errors import DataFileError
from n2i_stream.io.dxchange import DARK, DATA, THETA, WHITE, DataExchangeFile


def write_dx(path, *, data, dark, white, theta, data_attrs=None, extra=None):
    """A minimal Data Exchange file; ``extra`` maps dataset path -> array (or None to skip)."""
    with h5py.File(path, "w") as f:
        for name, value in ((DATA, data), (DARK, dark), (WHITE, white), (THETA, theta)):
            if value is not None:
                f.create_dataset(name, data=value)
        for key, value in (data_attrs or {}).items():
            f[DATA].attrs[key] = value
        for name, value in (extra or {}).items():
            f.create_dataset(name, data=value)
    return path


@pytest.fixture
def scan(tmp_path, rng):
    """10 frames of 3 x 8 uint16 counts with known line integrals."""
    truth = rng.uniform(0, 2, (10, 3, 8))
    flat = rng.uniform(900, 1100, (3, 8))
    raw = np.round(100 + (flat - 100) * np.exp(-truth)).astype(np.uint16)
    path = write_dx(
        tmp_path / "scan.h5",
        data=raw,
        dark=np.full((2, 3, 8), 100, np.uint16),
        white=np.stack([np.round(flat)] * 4).astype(np.uint16),
        theta=np.arange(10) * 18.0,
        data_attrs={"frames_per_step": 5},
    )
    return path, raw, np.round(flat)


def test_metadata_and_chunked_reads(scan):
    path, raw, _ = scan
    with DataExchangeFile(path) as f:
        assert f.shape == (10, 3, 8)
        assert f.frames_per_step == 5
        np.testing.assert_allclose(f.theta, np.arange(10) * 18.0)
        assert f.times is None
        chunks = list(f.chunks(2, 9, 3, rows=slice(1, 3)))
        assert [a for a, _ in chunks] == [2, 5, 8]
        got = np.concatenate([c for _, c in chunks])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, raw[2:9, 1:3])
    assert not f._file.id.valid  # the context manager closed the file


def test_line_integrals_match_the_formula_whatever_the_chunk(scan):
    path, raw, flat = scan
    expected = -np.log((raw.astype(np.float64) - 100) / (flat - 100))
    with DataExchangeFile(path) as f:
        whole = f.line_integrals(0, 10)
        chunked = f.line_integrals(0, 10, chunk=3)
        rows = f.line_integrals(4, 7, rows=slice(2, 3), chunk=2)
    assert whole.clipped == 0
    np.testing.assert_allclose(whole.data, expected, rtol=1e-5)
    np.testing.assert_array_equal(chunked.data, whole.data)
    np.testing.assert_array_equal(rows.data, whole.data[4:7, 2:3])


def drifting_scan(tmp_path, rng, **placement):
    """A beam brightening over 40 frames; flats before, midway and after, placed as given."""
    truth = rng.uniform(0, 2, (40, 2, 6))
    profile = rng.uniform(800, 1200, (2, 6))

    def beam(position):
        return (1 + 0.01 * position) * profile

    raw = np.stack([beam(k) * np.exp(-truth[k]) for k in range(40)])
    flat_at = [-0.5, -0.5, 19.5, 39.5]
    white = np.stack([beam(p) for p in flat_at])
    path = write_dx(
        tmp_path / "drift.h5",
        data=raw.astype(np.float32),
        dark=np.zeros((1, 2, 6), np.float32),
        white=white.astype(np.float32),
        theta=np.arange(40) * 4.5,
        extra=placement.get("extra"),
    )
    if "frame_index" in placement:
        with h5py.File(path, "a") as f:
            f[WHITE].attrs["frame_index"] = placement["frame_index"]
    return path, truth


@pytest.mark.parametrize(
    "placement",
    [
        {"frame_index": np.array([-1, -1, 19, 39])},
        {
            "extra": {
                "/exchange/time": np.arange(40) * 2.0 + 10,
                "/exchange/time_white": np.array([0.0, 1.0, 49.0, 100.0]),
            }
        },
        {"extra": {"/exchange/theta_white": np.array([-5.0, -5.0, 87.75, 400.0])}},
    ],
    ids=["frame_index", "time", "theta_white"],
)
def test_mid_scan_flats_are_placed_and_interpolated(tmp_path, rng, placement):
    path, truth = drifting_scan(tmp_path, rng, **placement)
    with DataExchangeFile(path) as f:
        flats = f.flats()
        assert flats.blocks.shape == (3, 2, 6)
        np.testing.assert_allclose(flats.positions, [-0.5, 19.5, 39.5])
        res = f.line_integrals(0, 40, chunk=7)
    np.testing.assert_allclose(res.data, truth, atol=2e-5)


def test_flats_without_positions_are_averaged_into_one(tmp_path, rng):
    path, truth = drifting_scan(tmp_path, rng)
    with DataExchangeFile(path) as f:
        assert f.flats().blocks.shape == (1, 2, 6)
        err = np.abs(f.line_integrals(0, 40).data - truth).max()
    assert err > 0.05  # the drift is not corrected: positions matter


def test_nan_in_data_is_reported_with_its_frame(scan, tmp_path):
    _, raw, _ = scan
    bad = raw.astype(np.float32)
    bad[7, 1, 2] = np.nan
    path = write_dx(
        tmp_path / "nan.h5",
        data=bad,
        dark=np.zeros((1, 3, 8)),
        white=np.ones((1, 3, 8)),
        theta=np.arange(10.0),
    )
    with DataExchangeFile(path) as f:
        f.read(0, 7)  # frames before the bad one read fine
        with pytest.raises(DataFileError, match=r"/exchange/data: frame 7 contains NaN"):
            f.read(5, 10)


GOOD = {
    "data": np.ones((4, 2, 5)),
    "dark": np.zeros((1, 2, 5)),
    "white": np.full((3, 2, 5), 2.0),
    "theta": np.arange(4.0),
}


@pytest.mark.parametrize(
    ("change", "dataset", "expected"),
    [
        ({"data": None}, DATA, "missing; expected (frames, rows, cols)"),
        ({"dark": None}, DARK, "missing; expected (k, rows, cols) dark"),
        ({"white": None}, WHITE, "missing; expected (k, rows, cols) flat"),
        ({"theta": None}, THETA, "missing; expected one rotation angle"),
        ({"theta": np.arange(5.0)}, THETA, "expected (4,), one angle per frame"),
        ({"dark": np.zeros((1, 2, 4))}, DARK, "expected (k >= 1, 2, 5)"),
        ({"white": np.zeros((0, 2, 5))}, WHITE, "expected (k >= 1, 2, 5)"),
        ({"data": np.ones((0, 2, 5)), "theta": np.zeros(0)}, DATA, "is empty"),
        ({"data": np.ones((4, 10))}, DATA, "expected (frames, rows, cols)"),
        ({"theta": np.array([0, 1, np.nan, 3])}, THETA, "non-finite angles (first at frame 2)"),
        ({"attrs": {"frames_per_step": 0}}, DATA, "frames_per_step is 0"),
        ({"attrs": {"frames_per_step": 2.5}}, DATA, "frames_per_step is 2.5"),
    ],
)
def test_bad_files_name_the_dataset_and_expectation(tmp_path, change, dataset, expected):
    spec = {**GOOD, **change}
    attrs = spec.pop("attrs", None)
    path = write_dx(tmp_path / "bad.h5", data_attrs=attrs, **spec)
    with pytest.raises(DataFileError) as info:
        DataExchangeFile(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{dataset}: ")
    assert expected in message
    assert "\n" not in message
    assert info.value.dataset == dataset


def test_several_problems_are_reported_together(tmp_path):
    path = write_dx(tmp_path / "bad.h5", data=GOOD["data"], dark=None, white=None, theta=None)
    with pytest.raises(
        DataFileError,
        match=r"theta: missing.*also /exchange/data_dark: .*also /exchange/data_white: ",
    ):
        DataExchangeFile(path)


def test_bad_frame_index_attribute(tmp_path):
    path = write_dx(tmp_path / "bad.h5", **GOOD)
    with h5py.File(path, "a") as f:
        f[WHITE].attrs["frame_index"] = [0, 1]
    with DataExchangeFile(path) as f, pytest.raises(DataFileError, match="frame_index"):
        f.flats()


def test_empty_hdf5_file_and_non_hdf5_file(tmp_path):
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(DataFileError, match=r"empty\.h5:/exchange/data: missing"):
        DataExchangeFile(empty)
    text = tmp_path / "notes.txt"
    text.write_text("not a scan\n")
    with pytest.raises(DataFileError, match="cannot open as HDF5") as info:
        DataExchangeFile(text)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(DataFileError, match="no such file"):
        DataExchangeFile(tmp_path / "absent.h5")


def test_real_tooth_scan(tooth_path):
    with DataExchangeFile(tooth_path) as f:
        assert f.shape == (181, 2, 640)
        assert f.frames_per_step is None
        res = f.line_integrals(0, 181, chunk=50)
    assert np.isfinite(res.data).all()
    assert 0.0 < float(np.median(res.data)) < 3.0
