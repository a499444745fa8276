"""Paganin single-material phase retrieval as a low-pass filter of the transmission."""

from __future__ import annotations

import math

import numpy as np
import pytest

from n2i_stream import ConfigError, ParallelGeometry, fbp
from n2i_stream.core.phase import paganin, paganin_alpha, paganin_line_integrals, wavelength
from n2i_stream.sim.analytic import Disk, disks_sinogram


def test_alpha_from_physical_units():
    # 20 keV → λ = 0.6199 Å; α = R δ λ / (4π β p²) with p = 1 µm, R = 10 cm, δ/β = 1000.
    assert wavelength(20.0) == pytest.approx(6.19921e-11, rel=1e-5)
    alpha = paganin_alpha(delta_beta=1000.0, pixel_size=1e-6, distance=0.1, energy=20.0)
    assert alpha == pytest.approx(0.1 * 1000 * 6.19921e-11 / (4 * math.pi * 1e-12), rel=1e-5)
    t = np.random.default_rng(0).uniform(0.5, 1.0, (2, 8, 40))
    by_physics = paganin(t, delta_beta=1000.0, pixel_size=1e-6, distance=0.1, energy=20.0)
    np.testing.assert_allclose(by_physics, paganin(t, alpha=alpha), atol=1e-12)


@pytest.mark.parametrize(("period", "alpha"), [(8.0, 4.0), (16.0, 20.0), (32.0, 1.0)])
def test_attenuates_each_frequency_per_formula(xp, period, alpha):
    cols = 256
    x = np.arange(cols)
    wave = np.cos(2 * np.pi * x / period)
    t = np.broadcast_to(1.0 + 0.1 * wave, (3, 10, cols))
    out = np.asarray(paganin(xp.asarray(t), alpha=alpha))
    centre = slice(64, 192)  # away from the edge padding
    amplitude = np.sum((out[..., centre] - 1.0) * wave[centre], axis=-1) / np.sum(wave[centre] ** 2)
    k = 2 * np.pi / period
    np.testing.assert_allclose(amplitude, 0.1 / (1 + alpha * k * k), rtol=1e-3)
    # The mean (k = 0) passes unchanged.
    assert np.mean(out[..., centre]) == pytest.approx(1.0, abs=1e-3)


def test_pure_absorber_gives_its_attenuation():
    geom = ParallelGeometry.from_degrees(np.arange(180.0), rows=4, cols=128)
    truth = disks_sinogram(geom, [Disk(0.0, 0.0, 40.0, 0.01)])
    transmission = np.broadcast_to(np.exp(-truth)[:, None, :], (180, 4, 128))
    lines = paganin_line_integrals(transmission, alpha=4.0)
    assert lines.shape == transmission.shape
    # A low-pass filter: smoother than the input, no new extremes, same total attenuation.
    assert lines.max() <= truth.max() + 1e-6
    assert lines.min() >= -1e-6
    assert np.abs(np.diff(lines, axis=-1)).max() < np.abs(np.diff(truth, axis=-1)).max()
    assert lines.sum() / transmission.shape[1] == pytest.approx(truth.sum(), rel=0.01)
    rec = fbp(lines.astype(np.float32), geom, backend="reference")[1]
    yy, xx = np.mgrid[:128, :128] - 63.5
    assert rec[xx**2 + yy**2 < 30**2].mean() == pytest.approx(0.01, rel=0.02)


def test_alpha_zero_is_plain_log_and_floor_keeps_it_finite():
    t = np.array([[[1.0, 0.5, 0.0, -0.1]] * 3])
    lines = paganin_line_integrals(t, alpha=0.0, floor=1e-3)
    np.testing.assert_allclose(lines[0, 0], [0.0, math.log(2), -math.log(1e-3), -math.log(1e-3)])


def test_parameter_errors():
    t = np.ones((4, 8))
    with pytest.raises(ConfigError, match="missing energy"):
        paganin(t, delta_beta=100.0, pixel_size=1e-6, distance=0.1)
    with pytest.raises(ConfigError, match="not both"):
        paganin(t, alpha=1.0, energy=20.0)
    with pytest.raises(ConfigError, match="pixel_size"):
        paganin(t, delta_beta=100.0, pixel_size=-1.0, distance=0.1, energy=20.0)
