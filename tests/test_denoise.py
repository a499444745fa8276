"""Gaussian and TV (ROF) denoising of reconstructions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from n2i_stream import ConfigError
from n2i_stream.core.denoise import (
    divergence,
    gaussian_filter,
    gradient,
    keep_low_frequencies,
    tv_denoise,
)


def blocks(n: int = 48) -> np.ndarray:
    img = np.zeros((n, n))
    img[8:30, 10:26] = 1.0
    img[20:40, 30:44] = 0.5
    return img


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - b) ** 2)))


@pytest.mark.parametrize(("sigma", "dims"), [(0.8, 2), (2.0, 2), (1.5, 3), (9.0, 2)])
def test_gaussian_matches_scipy(xp, rng, sigma, dims):
    vol = rng.normal(size=(5, 20, 23))
    out = np.asarray(gaussian_filter(xp.asarray(vol), sigma, dims=dims))
    axes = (1, 2) if dims == 2 else (0, 1, 2)
    np.testing.assert_allclose(out, ndimage.gaussian_filter(vol, sigma, axes=axes), atol=1e-12)


def test_gaussian_per_axis_sigma_and_zero_is_identity(rng):
    vol = rng.normal(size=(6, 16, 16)).astype(np.float32)
    same = gaussian_filter(vol, 0.0, dims=3)
    np.testing.assert_array_equal(same, vol)
    assert same.dtype == np.float32
    only_z = gaussian_filter(vol, (1.0, 0.0, 0.0), dims=3)
    np.testing.assert_allclose(only_z, ndimage.gaussian_filter(vol, 1.0, axes=(0,)), atol=1e-6)


def test_gaussian_rejects_bad_sigma():
    with pytest.raises(ConfigError, match="sigma"):
        gaussian_filter(np.zeros((4, 8, 8)), -1.0)
    with pytest.raises(ConfigError, match="sigma"):
        gaussian_filter(np.zeros((4, 8, 8)), (1.0, 2.0), dims=3)
    with pytest.raises(ConfigError, match="dims"):
        gaussian_filter(np.zeros((8, 8)), 1.0, dims=3)


def test_divergence_is_negative_adjoint_of_gradient(xp, rng):
    u = rng.normal(size=(4, 7, 9))
    p = [rng.normal(size=u.shape) for _ in range(3)]
    grad = gradient(xp.asarray(u), 3)
    div = np.asarray(divergence([xp.asarray(a) for a in p], 3))
    lhs = sum(float(np.sum(np.asarray(g) * a)) for g, a in zip(grad, p, strict=True))
    assert lhs == pytest.approx(-float(np.sum(u * div)), rel=1e-12)


def test_tv_reduces_error_on_noisy_piecewise_constant(xp, rng):
    truth = blocks()
    noisy = truth + 0.25 * rng.normal(size=truth.shape)
    out = np.asarray(tv_denoise(xp.asarray(noisy), 0.15, n_iter=100, dims=2))
    assert rmse(out, truth) < 0.45 * rmse(noisy, truth)


def test_tv_weight_zero_is_identity(rng):
    noisy = rng.normal(size=(3, 16, 16)).astype(np.float32)
    out = tv_denoise(noisy, 0.0)
    np.testing.assert_array_equal(out, noisy)
    tiny = tv_denoise(noisy, 1e-6, n_iter=50)
    np.testing.assert_allclose(tiny, noisy, atol=1e-4)


def test_tv_solves_the_same_problem_as_skimage(rng):
    restoration = pytest.importorskip("skimage.restoration")
    noisy = blocks() + 0.3 * rng.normal(size=(48, 48))
    ours = tv_denoise(noisy, 0.2, n_iter=1000, dims=2)
    ref = restoration.denoise_tv_chambolle(noisy, weight=0.2, eps=1e-10, max_num_iter=3000)
    assert np.abs(ours - ref).max() < 5e-3


def test_tv_3d_uses_neighbouring_slices(rng):
    truth = np.repeat(blocks(32)[None], 6, axis=0)
    noisy = truth + 0.3 * rng.normal(size=truth.shape)
    in_plane = tv_denoise(noisy, 0.15, n_iter=100, dims=2)
    volumetric = tv_denoise(noisy, 0.15, n_iter=100, dims=3)
    assert rmse(volumetric, truth) < rmse(in_plane, truth)


def test_keep_low_frequencies_takes_coarse_scales_from_the_reference(xp, rng):
    reference = rng.standard_normal((2, 40, 40))
    yy, xx = np.mgrid[:40, :40]
    fine = 0.3 * (-1.0) ** (yy + xx)  # the finest pattern a grid holds
    shifted = reference + fine + 0.2 + 0.01 * xx  # a fine pattern and a coarse shift
    out = np.asarray(keep_low_frequencies(xp.asarray(shifted), xp.asarray(reference), 3.0))
    # The coarse shift is gone (up to the mirrored edges); the fine pattern is kept.
    inner = (slice(None), slice(12, -12), slice(12, -12))
    np.testing.assert_allclose(out[inner], (reference + fine)[inner], atol=2e-3)
    same = np.asarray(keep_low_frequencies(xp.asarray(reference), xp.asarray(reference), 2.0))
    np.testing.assert_allclose(same, reference, atol=1e-12)
    single = keep_low_frequencies(reference.astype(np.float32), reference, 2.0)
    assert single.dtype == np.float32


def test_keep_low_frequencies_rejects_bad_input():
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        keep_low_frequencies(np.zeros((4, 4)), np.zeros((4, 4)), 0.0)
    with pytest.raises(ConfigError, match=r"image \(4, 4\) and reference \(4, 5\)"):
        keep_low_frequencies(np.zeros((4, 4)), np.zeros((4, 5)), 1.0)
