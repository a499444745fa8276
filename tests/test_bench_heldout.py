"""``n2i-stream bench heldout``: the held-out projection check, its parts and its command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from n2i_stream.bench.heldout import (
    METHODS,
    HeldoutConfig,
    format_report,
    heldout_check,
    keep_low_name,
    mse_advantage,
    prediction_error,
    sample_support,
    split_heldout,
)
from n2i_stream.cli import main
from n2i_stream.core.geometry import ParallelGeometry
from n2i_stream.errors import ConfigError
from n2i_stream.sim.analytic import Disk, disks_sinogram

DISKS = [Disk(0.0, 0.0, 15.0, 0.02), Disk(5.0, -4.0, 5.0, 0.03), Disk(-6.0, 5.0, 3.0, -0.01)]


def static_scan(rng, *, angles=150, rows=3, cols=48, center_offset=1.5, photons=400.0):
    """Noisy line integrals of a few disks over 180° (Poisson counts), the same on every row."""
    theta = np.arange(angles) * 180.0 / angles
    geometry = ParallelGeometry.from_degrees(
        theta, rows=rows, cols=cols, center_offset=center_offset
    )
    exact = np.repeat(disks_sinogram(geometry, DISKS)[:, None, :], rows, axis=1)
    counts = rng.poisson(photons * np.exp(-exact)).clip(1, None)
    return (-np.log(counts / photons)).astype(np.float32), theta


def test_split_heldout_takes_every_nth_from_the_middle_of_the_first_block():
    held, used = split_heldout(181, 10)
    np.testing.assert_array_equal(held, np.arange(5, 181, 10))
    assert used.size == 181 - held.size
    assert np.intersect1d(held, used).size == 0
    held, _ = split_heldout(30, 3, first=0)
    np.testing.assert_array_equal(held, np.arange(0, 30, 3))
    with pytest.raises(ConfigError, match="every must be >= 3"):
        HeldoutConfig(every=2)


def test_prediction_error_and_its_gain():
    measured = np.array([[1.0, 2.0], [3.0, 4.0]])
    mask = np.array([[True, True], [True, False]])
    e = prediction_error(2 * measured, measured, mask)
    assert e.values == 3
    assert e.rmse == pytest.approx(np.sqrt((1 + 4 + 9) / 3))
    assert e.relative == pytest.approx(1.0)
    assert e.gain == pytest.approx(0.5)
    assert e.rmse_gain == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="mask is empty"):
        prediction_error(measured, measured, np.zeros_like(mask))


def test_mse_advantage_sees_through_the_noise(rng):
    truth = rng.uniform(0.5, 1.5, (40, 2, 100))
    measured = truth + rng.normal(0, 0.1, truth.shape)  # noise far above the difference
    mask = np.ones(truth.shape, bool)
    mean, se = mse_advantage(truth + 0.02, truth, measured, mask)
    assert mean == pytest.approx(0.02**2, abs=3 * se)
    assert mean > 3 * se  # the better prediction is found, however noisy the measurement
    mean, se = mse_advantage(truth, truth + 0.02, measured, mask)
    assert mean < -3 * se


def test_sample_support_covers_the_object_with_a_margin():
    n = 64
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    volume = (np.hypot(xx - 5, yy) < 10).astype(np.float32)[None] * 0.02
    support = sample_support(volume, sigma=1.0, threshold=0.1, margin=3)
    r = np.hypot(xx - 5, yy)
    assert support[0][r < 11].all()
    assert not support[0][r > 16].any()


def small_training(iterations):
    from n2i_stream.learn import TrainConfig

    return TrainConfig(
        network="unet", depth=2, width=8, crop=32, batch=4, iterations=iterations, minutes=None,
        lr=3e-3, threads=1,
    )  # fmt: skip


def test_check_on_a_simulated_scan(rng):
    projections, theta = static_scan(rng, angles=60)
    config = HeldoutConfig(every=5, center_offset=1.5, keep_low=(2.0, 4.0))
    report = heldout_check(projections, theta, small_training(5), config)
    assert report.held_out == tuple(range(2, 60, 5))
    assert report.used == 48
    assert (report.center_offset, report.center_method) == (1.5, "given")
    assert abs(report.air_level) < 0.02  # the simulation has no flat-field drift
    assert set(report.errors) == {"sample", "field of view"}
    for region, errors in report.errors.items():
        assert tuple(errors) == (*METHODS, keep_low_name(2.0), keep_low_name(4.0))
        assert all(np.isfinite(e.rmse) and e.values > 0 for e in errors.values())
        # The noise of the held-out projections is the floor no prediction gets under.
        assert 0 < report.noise_floor[region] < errors["FBP"].rmse
        assert set(report.advantage[region]) == set(errors) - {"FBP"}
        for method, (gain, se) in report.advantage[region].items():
            assert report.better(region, method) == (errors[method].rmse < errors["FBP"].rmse)
            assert (gain > 0) == report.better(region, method)
            assert se > 0
    assert report.training["iterations"] == 5
    text = format_report(report, path="sim", step="time step 0 of 1", every=5)
    assert "12 projections held out (every 5th, from 2), 48 used" in text
    assert "adjoint of our backprojector" in text
    assert f"sample: {keep_low_name(4.0)} predicts the held-out projections" in text
    with pytest.raises(ConfigError, match="keep_low sigmas must be > 0"):
        HeldoutConfig(keep_low=(0.0,))


@pytest.mark.slow
def test_a_trained_denoiser_predicts_unseen_angles_better_on_noisy_data(rng):
    projections, theta = static_scan(rng, photons=200.0)
    report = heldout_check(projections, theta, small_training(400), HeldoutConfig(every=5))
    assert report.center_offset == pytest.approx(1.5, abs=0.5)
    gain, se = report.advantage["sample"]["Noise2Inverse"]
    assert report.better("sample"), format_report(report, path="sim", step="-", every=5)
    assert gain > 2 * se


def test_missing_default_input_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "heldout", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "shared/data/tooth.h5: no scan given and none at the default place" in err
    assert "--input PATH" in err


@pytest.mark.slow
def test_bench_heldout_quick_on_the_tooth(tooth_path, tmp_path, capsys):
    out = tmp_path / "heldout.json"
    assert (
        main(["bench", "heldout", "--input", str(tooth_path), "--quick", "--json", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "18 projections held out (every 10th, from 5), 163 used" in text
    assert "Caveats:" in text
    result = json.loads(out.read_text())
    assert result["center_offset"] == pytest.approx(-23.6, abs=1.0)
    assert result["training"]["iterations"] == 10
    fbp = result["errors"]["sample"]["FBP"]
    assert 0 < result["noise_floor"]["sample"] < fbp["rmse"] < 0.05
