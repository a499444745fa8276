"""Dark/flat correction, -log, clipping with counts, and mid-scan flats (NumPy and array-API)."""

from __future__ import annotations

import numpy as np
import pytest

from n2i_stream.core.preprocess import (
    average_blocks,
    line_integrals,
    mean_frames,
    reference_weights,
    references_for_frames,
)
from n2i_stream.errors import ConfigError, DataError


def host(x):
    return np.asarray(x)


def test_mean_frames_and_exact_log(xp, rng):
    truth = rng.uniform(0.0, 3.0, (5, 4, 6))
    flats = rng.uniform(900, 1100, (3, 4, 6))
    dark = np.full((4, 6), 100.0)
    flat = flats.mean(axis=0)
    raw = dark + (flat - dark) * np.exp(-truth)
    mean = mean_frames(xp.asarray(flats))
    np.testing.assert_allclose(host(mean), flat, rtol=1e-12)
    res = line_integrals(xp.asarray(raw), xp.asarray(dark), mean)
    assert res.clipped == 0
    np.testing.assert_allclose(host(res.data), truth, atol=1e-10)


def test_integer_counts_give_float32(xp):
    raw = xp.asarray(np.full((2, 3, 4), 500, dtype=np.uint16))
    dark = mean_frames(xp.asarray(np.zeros((2, 3, 4), dtype=np.uint16)))
    flat = mean_frames(xp.asarray(np.full((2, 3, 4), 1000, dtype=np.uint16)))
    res = line_integrals(raw, dark, flat)
    assert res.data.dtype == xp.float32
    np.testing.assert_allclose(host(res.data), np.log(2.0), rtol=1e-6)


def test_zero_negative_and_nan_counts_are_clipped_and_counted(xp):
    raw = np.full((2, 3, 4), 500.0)
    raw[0, 0, 0] = 0.0  # zero counts: transmission 0
    raw[0, 1, 1] = -7.0  # negative after dark subtraction
    raw[1, 2, 3] = np.nan
    raw[1, 0, 2] = 1e9  # far above the flat
    dark = np.zeros((3, 4))
    flat = np.full((3, 4), 1000.0)
    res = line_integrals(xp.asarray(raw), xp.asarray(dark), xp.asarray(flat), min_transmission=1e-3)
    out = host(res.data)
    assert np.all(np.isfinite(out))
    assert res.clipped == 4
    assert out[0, 0, 0] == pytest.approx(-np.log(1e-3))
    assert out[0, 1, 1] == pytest.approx(-np.log(1e-3))
    assert out[1, 0, 2] == pytest.approx(np.log(1e-3))
    assert out[0, 2, 2] == pytest.approx(np.log(2.0))


def test_dead_flat_pixels_read_zero_and_count_once_per_frame(xp):
    raw = np.full((3, 2, 2), 50.0)
    dark = np.full((2, 2), 10.0)
    flat = np.full((2, 2), 90.0)
    flat[1, 0] = 10.0  # flat equals dark: no signal in this pixel
    res = line_integrals(xp.asarray(raw), xp.asarray(dark), xp.asarray(flat))
    out = host(res.data)
    assert res.clipped == 3
    np.testing.assert_allclose(out[:, 1, 0], 0.0)
    np.testing.assert_allclose(out[:, 0, 0], np.log(2.0), rtol=1e-12)


def test_out_buffer_is_filled_and_returned(xp, rng):
    raw = xp.asarray(rng.uniform(100, 900, (4, 3, 5)))
    dark = xp.asarray(np.full((3, 5), 50.0))
    flat = xp.asarray(np.full((3, 5), 1000.0))
    out = xp.zeros((4, 3, 5), dtype=xp.float32)
    res = line_integrals(raw, dark, flat, out=out)
    assert res.data is out
    expected = -np.log((host(raw) - 50.0) / 950.0)
    np.testing.assert_allclose(host(out), expected, rtol=1e-6)
    with pytest.raises(DataError, match="out has shape"):
        line_integrals(raw, dark, flat, out=xp.zeros((4, 3, 4), dtype=xp.float32))


def test_shape_and_parameter_errors(xp):
    raw = xp.asarray(np.ones((2, 3, 4)))
    with pytest.raises(DataError, match="flat has shape"):
        line_integrals(raw, xp.asarray(np.zeros((3, 4))), xp.asarray(np.ones((3, 5))))
    with pytest.raises(ConfigError, match="min_transmission"):
        line_integrals(raw, raw, raw, min_transmission=0.0)


def test_reference_weights_nearest_and_linear():
    pos = [-0.5, 99.5]  # before frame 0 and after frame 99
    lo, hi, w = reference_weights(pos, [0, 49, 50, 99, 150], mode="linear")
    np.testing.assert_array_equal(lo, 0)
    np.testing.assert_array_equal(hi, 1)
    np.testing.assert_allclose(w, [0.005, 0.495, 0.505, 0.995, 1.0])
    _, _, nearest = reference_weights(pos, [0, 49, 50, 99], mode="nearest")
    np.testing.assert_array_equal(nearest, [0, 0, 1, 1])
    with pytest.raises(DataError, match="increase"):
        reference_weights([3.0, 3.0], [0])


def test_mid_scan_flats_follow_a_drifting_beam(xp, rng):
    # The beam brightens linearly over 100 frames; flats before, in the middle and after.
    frames = np.arange(100)
    gain = 1.0 + 0.004 * frames
    profile = rng.uniform(800, 1200, (2, 3))
    flat_frames = np.stack([(1.0 + 0.004 * p) * profile for p in (-0.5, -0.5, 49.5, 99.5)])
    blocks, positions = average_blocks(xp.asarray(flat_frames), [-0.5, -0.5, 49.5, 99.5])
    assert blocks.shape == (3, 2, 3)
    np.testing.assert_allclose(positions, [-0.5, 49.5, 99.5])
    truth = rng.uniform(0, 2, (100, 2, 3))
    raw = gain[:, None, None] * profile * np.exp(-truth)
    dark = xp.asarray(np.zeros((2, 3)))

    linear = references_for_frames(blocks, positions, frames, mode="linear")
    res = line_integrals(xp.asarray(raw), dark, linear)
    np.testing.assert_allclose(host(res.data), truth, atol=1e-9)

    nearest = references_for_frames(blocks, positions, frames, mode="nearest")
    err_nearest = np.abs(host(line_integrals(xp.asarray(raw), dark, nearest).data) - truth)
    # Nearest-in-time is off by at most a quarter of the block spacing's drift (50 frames).
    assert err_nearest.max() == pytest.approx(np.log(1 + 0.004 * 25), rel=0.05)

    single = mean_frames(xp.asarray(flat_frames))
    err_single = np.abs(host(line_integrals(xp.asarray(raw), dark, single).data) - truth)
    assert err_single.max() > 1.8 * err_nearest.max()


def test_one_block_broadcasts_without_copies(xp):
    blocks = xp.asarray(np.ones((1, 2, 3)))
    assert references_for_frames(blocks, [0.0], np.arange(50)).shape == (1, 2, 3)
