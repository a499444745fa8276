"""Noise2Inverse splits: the two conditions for every strategy, and per-subset reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from n2i_stream import ConfigError, GeometryError, ParallelGeometry, fbp
from n2i_stream.core.splits import (
    Split,
    SplitPair,
    dynamic_split,
    reconstruct_pair,
    static_split,
    xrdct_split,
)
from n2i_stream.sim.analytic import Disk, disks_image, disks_sinogram


def assert_noise2inverse(split: Split) -> None:
    """Condition 1: no shared frame; condition 2: every frame a target equally often."""
    for pair in split.pairs:
        assert np.intersect1d(pair.input, pair.target).size == 0
        assert pair.input.size > 0
        assert pair.target.size > 0
    counts = split.target_counts()
    assert counts.min() == counts.max() >= 1
    split.check()


@pytest.mark.parametrize("sizes", [[120, 120, 120, 120], [5, 7], [10, 11, 9]])
def test_dynamic_split_round_robin(sizes):
    split = dynamic_split(sizes)
    assert_noise2inverse(split)
    assert len(split) == len(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for j, pair in enumerate(split.pairs):
        # Input is exactly step j; target is everything else.
        np.testing.assert_array_equal(pair.input, np.arange(starts[j], starts[j + 1]))
        assert pair.input.size + pair.target.size == split.n_frames
    np.testing.assert_array_equal(split.target_counts(), len(sizes) - 1)


@pytest.mark.parametrize("sizes", [[], [120]])
def test_dynamic_split_needs_two_steps(sizes):
    with pytest.raises(ConfigError, match="at least 2 training time steps"):
        dynamic_split(sizes)


@pytest.mark.parametrize(("n", "sections"), [(120, 4), (121, 4), (9, 3), (8, 2)])
@pytest.mark.parametrize("make", [static_split, xrdct_split])
def test_angle_sections_are_interleaved(make, n, sections):
    split = make(n, sections)
    assert_noise2inverse(split)
    assert len(split) == sections
    for j, pair in enumerate(split.pairs):
        np.testing.assert_array_equal(pair.target, np.arange(n)[j::sections])
        assert pair.input.size + pair.target.size == n  # "X:1": input is all the rest
    np.testing.assert_array_equal(split.target_counts(), 1)


def test_angle_sections_reject_bad_counts():
    with pytest.raises(ConfigError, match="at least 2 sections"):
        static_split(100, 1)
    with pytest.raises(ConfigError, match="3 frames into 4 sections"):
        xrdct_split(3, 4)


def test_check_reports_every_violation():
    shared = SplitPair(input=[0, 1, 2], target=[2, 3])
    lopsided = SplitPair(input=[3], target=[0, 1, 2])  # frame 2 a target twice
    with pytest.raises(ConfigError) as info:
        Split("static", 4, (shared, lopsided)).check()
    message = str(info.value)
    assert "share frames [2]" in message
    assert "unequally often" in message


def reference(p, g):
    return fbp(p, g, backend="reference")


def test_reconstruct_pair_weights_each_subset(xp):
    """Interlaced steps combined: the target is weighted by its own, denser angle set."""
    per_step, steps, cols = 15, 3, 48
    inc = np.pi / per_step
    angles = np.concatenate(
        [np.arange(per_step) * inc + s * inc / steps + s * np.pi for s in range(steps)]
    )
    geom = ParallelGeometry.from_radians(angles, rows=2, cols=cols)
    disks = [Disk(0.0, 0.0, 18.0, 0.02), Disk(6.0, -4.0, 5.0, 0.03)]
    p = np.repeat(disks_sinogram(geom, disks)[:, None, :], 2, axis=1).astype(np.float32)
    split = dynamic_split([per_step] * steps)
    pair = split.pairs[1]
    inp, tgt = reconstruct_pair(xp.asarray(p), geom, pair, reconstruct=reference)
    inp, tgt = np.asarray(inp), np.asarray(tgt)
    assert inp.shape == tgt.shape == (2, cols, cols)
    np.testing.assert_allclose(
        inp, reference(p[pair.input], geom[pair.input]), rtol=1e-5, atol=1e-6
    )
    truth = disks_image(cols, disks)
    yy, xx = np.mgrid[:cols, :cols] - (cols - 1) / 2
    inside = xx**2 + yy**2 < 15**2
    # Doubled sampling makes the target the better reconstruction; both are unbiased.
    err_in = np.abs(inp[0] - truth)[inside].mean()
    err_tgt = np.abs(tgt[0] - truth)[inside].mean()
    assert err_tgt < err_in
    assert tgt[0][inside].mean() == pytest.approx(truth[inside].mean(), rel=0.02)


def test_reconstruct_pair_multichannel_and_shape_check():
    geom = ParallelGeometry.from_degrees(np.arange(12) * 15.0, rows=1, cols=16)
    sino = np.random.default_rng(0).random((3, 12, 1, 16)).astype(np.float32)
    split = xrdct_split(12, 4)
    inp, tgt = reconstruct_pair(sino, geom, split.pairs[0], reconstruct=reference)
    assert inp.shape == tgt.shape == (3, 1, 16, 16)
    np.testing.assert_allclose(
        tgt[2], reference(sino[2][split.pairs[0].target], geom[0::4]), rtol=1e-5
    )
    with pytest.raises(GeometryError, match="12 angles"):
        reconstruct_pair(sino[:, :10], geom, split.pairs[0], reconstruct=reference)
