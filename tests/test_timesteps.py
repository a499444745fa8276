"""Time steps and interlacing: steps found from angles, offsets recovered, coverage measured."""

from __future__ import annotations

import numpy as np
import pytest

from n2i_stream.core.timesteps import (
    assign_time_steps,
    choose_steps_to_combine,
    interlace_report,
    largest_gap,
    unwrap_degrees,
)
from n2i_stream.errors import ConfigError, GeometryError


def interlaced_scan(steps: int, per_step: int, interlace: int, jitter: float = 0.0, seed=0):
    """Step s starts one half turn after step s-1 plus increment / interlace: the offsets of
    an interlaced scan are then (s mod interlace) · increment / interlace."""
    inc = 180.0 / per_step
    s, k = np.divmod(np.arange(steps * per_step), per_step)
    theta = s * (180.0 + inc / interlace) + k * inc
    return theta + np.random.default_rng(seed).normal(0, jitter, theta.size), inc


def continuous_scan(steps: int, per_step: int, interlace: int):
    """Continuous rotation slightly faster than one half turn per ``per_step`` frames, so every
    frame advances by a little more than 180°/per_step and the steps interlace."""
    inc = 180.0 / per_step
    return np.arange(steps * per_step) * inc * (1 + 1 / (interlace * per_step)), inc


def test_frames_per_step_splits_and_drops_the_remainder():
    steps = assign_time_steps(np.arange(250) * 1.5, frames_per_step=100)
    assert steps.bounds == ((0, 100), (100, 200))
    assert steps.dropped == 50
    assert list(steps.frames(1)) == list(range(100, 200))
    assert steps.slice(-1) == slice(100, 200)


def test_one_step_per_half_turn_even_when_the_file_wraps_angles():
    theta = np.arange(480) * 1.5  # four half turns, 120 frames each
    for stored in (theta, np.mod(theta, 360.0), np.mod(theta, 180.0), -theta):
        steps = assign_time_steps(stored)
        assert steps.bounds == ((0, 120), (120, 240), (240, 360), (360, 480))
        assert steps.dropped == 0


def test_half_turn_scans_with_an_endpoint_frame():
    # The real tooth scan: 181 frames spaced 180/181 degrees -> one complete step.
    tooth = assign_time_steps(np.arange(181) * 180 / 181)
    assert tooth.bounds == ((0, 181),)
    # 0..180 inclusive: the frame at 180 repeats the one at 0 and starts an incomplete step.
    inclusive = assign_time_steps(np.linspace(0, 180, 181))
    assert inclusive.bounds == ((0, 180),)
    assert inclusive.dropped == 1
    # A short scan keeps its only (incomplete) step rather than returning none.
    assert assign_time_steps(np.arange(100) * 1.0).bounds == ((0, 100),)


def test_bad_step_requests_are_rejected():
    with pytest.raises(ConfigError, match="frames_per_step"):
        assign_time_steps(np.arange(10.0), frames_per_step=0)
    with pytest.raises(GeometryError, match="only 10 frames"):
        assign_time_steps(np.arange(10.0), frames_per_step=11)
    with pytest.raises(GeometryError, match="do not advance"):
        assign_time_steps(np.zeros(10))
    with pytest.raises(GeometryError, match="at least one frame"):
        assign_time_steps(np.array([]))


def test_unwrap_restores_a_monotonic_rotation():
    theta = np.arange(1000) * 0.9
    np.testing.assert_allclose(unwrap_degrees(np.mod(theta, 360)), theta, atol=1e-9)


def circular_error(offsets, expected, inc):
    return np.abs((np.asarray(offsets) - expected + inc / 2) % inc - inc / 2).max()


@pytest.mark.parametrize("interlace", [1, 2, 4, 5])
def test_offsets_recover_the_interlace_pattern(interlace):
    theta, inc = interlaced_scan(steps=10, per_step=60, interlace=interlace, jitter=0.01)
    steps = assign_time_steps(theta, frames_per_step=60)
    report = interlace_report([theta[steps.slice(s)] for s in range(len(steps))])
    assert report.increment == pytest.approx(inc)
    expected = [(s % interlace) * inc / interlace for s in range(10)]
    assert circular_error(report.offsets, expected, inc) < 0.01 * inc
    assert all(0 <= o < inc for o in report.offsets)


@pytest.mark.parametrize("interlace", [3, 4, 5])
def test_offsets_of_a_continuous_rotation(interlace):
    theta, inc = continuous_scan(steps=8, per_step=60, interlace=interlace)
    steps = assign_time_steps(theta, frames_per_step=60)
    report = interlace_report([theta[steps.slice(s)] for s in range(len(steps))])
    assert report.increment == pytest.approx(inc)  # 180/60, not the slightly larger jump
    expected = [(s % interlace) * inc / interlace for s in range(8)]
    assert circular_error(report.offsets, expected, inc) < 0.01 * inc


def test_combining_interlace_factor_steps_shrinks_the_gap_by_that_factor():
    interlace = 4
    theta, inc = interlaced_scan(steps=8, per_step=90, interlace=interlace)
    steps = assign_time_steps(theta)  # no frames_per_step: one step per half turn
    assert len(steps) == 8
    per_step = [theta[steps.slice(s)] for s in range(len(steps))]
    one = interlace_report(per_step[:1])
    combined = interlace_report(per_step[:interlace])
    assert one.max_gap == pytest.approx(inc, rel=0.02)
    assert combined.max_gap == pytest.approx(inc / interlace, rel=0.05)
    assert combined.gap_ratio == pytest.approx(1.0, abs=0.05)
    assert combined.n_angles == interlace * 90


@pytest.mark.parametrize(("interlace", "jitter"), [(1, 0.0), (3, 0.0), (4, 0.0), (4, 0.01)])
def test_chooser_returns_the_interlace_factor(interlace, jitter):
    theta, _ = interlaced_scan(steps=12, per_step=60, interlace=interlace, jitter=jitter)
    steps = assign_time_steps(theta, frames_per_step=60)
    choice = choose_steps_to_combine([theta[steps.slice(s)] for s in range(len(steps))])
    assert choice.count == interlace
    assert len(choice.max_gaps) == 12
    assert choice.max_gap == pytest.approx(min(choice.max_gaps), rel=0.25)


def test_chooser_respects_its_maximum():
    theta, inc = interlaced_scan(steps=8, per_step=60, interlace=4)
    per_step = [theta[s * 60 : (s + 1) * 60] for s in range(8)]
    choice = choose_steps_to_combine(per_step, max_steps=3)
    assert choice.count == 3
    assert choice.max_gap == pytest.approx(inc / 2, rel=0.05)
    with pytest.raises(ConfigError, match="max_steps"):
        choose_steps_to_combine(per_step, max_steps=9)


def test_largest_gap_folds_the_half_circle():
    assert largest_gap([0.0, 90.0]) == pytest.approx(90.0)
    assert largest_gap([10.0, 190.0 + 45.0]) == pytest.approx(135.0)  # 235 folds to 55
    assert largest_gap([0.0, 180.0]) == pytest.approx(180.0)  # same line twice
