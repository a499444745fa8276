"""The compiled backprojection kernels agree with the array-API reference; the FBP bench runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from n2i_stream import GeometryError, ParallelGeometry, fbp
from n2i_stream.core.backproject_numba import MANY_SLICES, backproject_numba
from n2i_stream.core.fbp import backproject, backproject_reference
from n2i_stream.core.filters import filter_projections

# (angles, rows, cols, n, center_offset, span in degrees); rows span both loop orders.
CASES = [
    pytest.param(37, 1, 20, 21, 1.3, 180.0, id="one-slice-odd-n"),
    pytest.param(40, 3, 21, 16, -2.2, 360.0, id="few-slices-360-n<cols"),
    pytest.param(50, MANY_SLICES, 16, 25, 0.7, 180.0, id="many-slices-n>cols"),
    pytest.param(13, MANY_SLICES + 3, 30, 30, 0.0, 400.0, id="many-slices-over-360"),
    pytest.param(5, 1, 9, 40, 3.1, 180.0, id="few-angles-wide-grid"),
    pytest.param(64, 2, 33, 24, -0.5, 180.0, id="even-n-half-pixel-offset"),
]


def _random_case(rng, n_angles, rows, cols, offset, span):
    angles = rng.uniform(0.0, span, n_angles)  # unsorted, uneven: weights must follow
    geom = ParallelGeometry.from_degrees(angles, rows=rows, cols=cols, center_offset=offset)
    data = rng.standard_normal((n_angles, rows, cols)).astype(np.float32)
    return geom, data


@pytest.mark.parametrize(("n_angles", "rows", "cols", "n", "offset", "span"), CASES)
def test_numba_matches_reference(rng, n_angles, rows, cols, n, offset, span):
    geom, data = _random_case(rng, n_angles, rows, cols, offset, span)
    ref = np.asarray(backproject_reference(data.astype(np.float64), geom, n=n))
    out = backproject_numba(data, geom, n=n)
    assert out.shape == (rows, n, n)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    out64 = backproject_numba(data.astype(np.float64), geom, n=n)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("rows", [2, MANY_SLICES + 1], ids=["few-slices", "many-slices"])
@pytest.mark.parametrize("oversample", [2, 3])
def test_numba_matches_reference_oversampled(rng, rows, oversample):
    geom, _ = _random_case(rng, 33, rows, 19, -1.3, 180.0)
    data = rng.standard_normal((33, rows, oversample * 19)).astype(np.float32)
    ref = np.asarray(
        backproject_reference(data.astype(np.float64), geom, n=23, oversample=oversample)
    )
    out = backproject_numba(data, geom, n=23, oversample=oversample)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    with pytest.raises(GeometryError, match=rf"{oversample}·cols"):
        backproject_numba(data[..., :-1], geom, n=23, oversample=oversample)


def test_numba_reads_zero_outside_detector():
    # Constant projections: each pixel gets the weights of the angles whose line hits the
    # detector, with a linear ramp over the half-pixel beyond each edge column.
    geom = ParallelGeometry.from_degrees(np.arange(90) * 2.0, rows=1, cols=10, center_offset=0.5)
    out = backproject_numba(np.ones((90, 1, 10), np.float32), geom, n=30)
    x = y = -14.5  # pixel (0, 0)
    c = x * np.cos(geom.angles) + y * np.sin(geom.angles) + geom.axis_column
    hit = np.clip(np.minimum(c + 1.0, geom.cols - c), 0.0, 1.0)
    expected = float(np.sum(geom.angular_weights() * hit))
    assert 0.0 < expected < 1.0
    assert out[0, 0, 0] == pytest.approx(expected, rel=1e-5)
    assert out[0, 15, 15] == pytest.approx(math.pi, rel=1e-5)  # sees the detector at every angle


def test_auto_backend_uses_numba_and_matches_reference(rng):
    geom, data = _random_case(rng, 30, MANY_SLICES + 1, 24, 1.5, 180.0)
    auto = fbp(data, geom, n=20)
    ref = fbp(data, geom, n=20, backend="reference")
    np.testing.assert_allclose(auto, ref, atol=2e-5 * np.abs(ref).max())
    filtered = filter_projections(data)
    np.testing.assert_array_equal(
        backproject(filtered, geom, n=20, backend="numba"), backproject_numba(filtered, geom, n=20)
    )


def test_numba_rejects_wrong_shape():
    geom = ParallelGeometry.from_degrees([0.0, 90.0], rows=2, cols=8)
    with pytest.raises(GeometryError, match=r"\(angles, rows, cols\) = \(2, 2, 8\)"):
        backproject_numba(np.zeros((2, 8, 2), np.float32), geom)


@pytest.mark.gpu
@pytest.mark.parametrize(("n_angles", "rows", "cols", "n", "offset", "span"), CASES)
def test_cupy_matches_reference(rng, n_angles, rows, cols, n, offset, span):
    import cupy as cp

    from n2i_stream.core.backproject_cupy import backproject_cupy

    geom, data = _random_case(rng, n_angles, rows, cols, offset, span)
    ref = np.asarray(backproject_reference(data.astype(np.float64), geom, n=n))
    out = backproject_cupy(cp.asarray(data), geom, n=n)
    assert isinstance(out, cp.ndarray)
    assert out.shape == (rows, n, n)
    assert out.dtype == cp.float32
    np.testing.assert_allclose(cp.asnumpy(out), ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    out64 = backproject_cupy(cp.asarray(data, dtype=cp.float64), geom, n=n)
    np.testing.assert_allclose(cp.asnumpy(out64), ref, rtol=0, atol=1e-11 * np.abs(ref).max())


@pytest.mark.gpu
@pytest.mark.parametrize("oversample", [1, 2])
def test_cupy_matches_reference_oversampled(rng, oversample):
    import cupy as cp

    from n2i_stream.core.backproject_cupy import backproject_cupy

    geom, _ = _random_case(rng, 33, 5, 19, -1.3, 180.0)
    data = rng.standard_normal((33, 5, oversample * 19)).astype(np.float32)
    ref = np.asarray(
        backproject_reference(data.astype(np.float64), geom, n=23, oversample=oversample)
    )
    out = backproject_cupy(cp.asarray(data), geom, n=23, oversample=oversample)
    np.testing.assert_allclose(cp.asnumpy(out), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


@pytest.mark.gpu
def test_cupy_fbp_auto_matches_numpy(rng):
    import cupy as cp

    geom, data = _random_case(rng, 45, 4, 32, -1.0, 180.0)
    gpu = cp.asnumpy(fbp(cp.asarray(data), geom, n=28))
    cpu = fbp(data, geom, n=28, backend="reference")
    np.testing.assert_allclose(gpu, cpu, atol=1e-4 * np.abs(cpu).max())


def test_bench_fbp_quick_smoke(tmp_path, capsys):
    from n2i_stream.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "fbp", "--quick", "--repeat", "1", "--peers", "none", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "GUPS" in text
    results = json.loads(out.read_text())
    methods = {(r["case"], r["method"]) for r in results["results"]}
    assert {r["case"] for r in results["results"]} == {"a", "b"}
    assert ("a", "fast") in methods
    assert ("b", "reference") in methods
    assert ("b", "fast-os2") in methods
    for r in results["results"]:
        assert r["seconds"] > 0
        assert r["gups"] > 0
        # The phantom is reconstructed, not just timed: small error inside the field of view.
        assert r["rmse"] < 0.1 * results["phantom_max"]
