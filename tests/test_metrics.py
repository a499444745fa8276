"""PSNR and SSIM against scikit-image, on slices, volumes and masked regions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from n2i_stream import DataError
from n2i_stream.core.metrics import field_of_view, psnr, ssim

skmetrics = pytest.importorskip("skimage.metrics")


def pair(rng, shape=(3, 40, 44)):
    truth = rng.random(shape)
    truth[..., 10:30, 12:30] += 1.0
    return truth + 0.1 * rng.normal(size=shape), truth


def sk_ssim(x, truth, data_range, *, full=False):
    return skmetrics.structural_similarity(
        x,
        truth,
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=full,
    )


def test_psnr_matches_skimage(xp, rng):
    x, truth = pair(rng)
    expected = skmetrics.peak_signal_noise_ratio(truth, x, data_range=truth.max() - truth.min())
    assert psnr(xp.asarray(x), xp.asarray(truth)) == pytest.approx(expected, rel=1e-12)
    assert psnr(x, truth, data_range=2.0) == pytest.approx(
        skmetrics.peak_signal_noise_ratio(truth, x, data_range=2.0), rel=1e-12
    )
    assert psnr(truth, truth) == math.inf


def test_ssim_of_slice_matches_skimage(xp, rng):
    x, truth = pair(rng, (40, 44))
    dr = truth.max() - truth.min()
    assert ssim(xp.asarray(x), xp.asarray(truth)) == pytest.approx(sk_ssim(x, truth, dr), rel=1e-10)


def test_ssim_of_volume_is_mean_over_slices(rng):
    x, truth = pair(rng)
    dr = truth.max() - truth.min()
    per_slice = [sk_ssim(x[i], truth[i], dr) for i in range(3)]
    assert ssim(x.astype(np.float32), truth) == pytest.approx(np.mean(per_slice), rel=1e-6)
    assert ssim(truth, truth) == pytest.approx(1.0)


def test_mask_restricts_the_average(xp, rng):
    x, truth = pair(rng, (2, 40, 40))
    fov = np.asarray(field_of_view(40, xp=np))
    inside = np.broadcast_to(fov, truth.shape)
    dr = truth[inside].max() - truth[inside].min()
    expected_psnr = 10 * np.log10(dr**2 / np.mean((x - truth)[inside] ** 2))
    assert psnr(xp.asarray(x), xp.asarray(truth), mask=xp.asarray(fov)) == pytest.approx(
        expected_psnr, rel=1e-12
    )
    maps = [sk_ssim(x[i], truth[i], dr, full=True)[1][5:-5, 5:-5] for i in range(2)]
    expected_ssim = np.mean([m[fov[5:-5, 5:-5]] for m in maps])
    got = ssim(xp.asarray(x), xp.asarray(truth), mask=xp.asarray(fov))
    assert got == pytest.approx(expected_ssim, rel=1e-10)


def test_worse_image_scores_lower(rng):
    _, truth = pair(rng, (40, 40))
    mild = truth + 0.05 * rng.normal(size=truth.shape)
    strong = truth + 0.3 * rng.normal(size=truth.shape)
    assert psnr(mild, truth) > psnr(strong, truth) + 10
    assert ssim(mild, truth) > ssim(strong, truth) + 0.2


def test_bad_inputs_say_what_is_wrong():
    a = np.zeros((20, 20))
    with pytest.raises(DataError, match="shape"):
        psnr(a, np.zeros((20, 21)))
    with pytest.raises(DataError, match="constant"):
        psnr(a + 1, a)
    with pytest.raises(DataError, match="mask"):
        ssim(a, np.eye(20), mask=np.ones((20, 20)))
    with pytest.raises(DataError, match="at least 11"):
        ssim(np.zeros((8, 8)), np.eye(8))
