"""Time steps of a dynamic scan and how well the angles of several steps interlace.

A time step is a run of consecutive frames: ``frames_per_step`` of them when the scan says so,
else one half turn (180°) of the unwrapped rotation angle (DESIGN.md §3). When the rotation speed
is not commensurate with the frame rate, step ``s`` is shifted by an angular offset against step 0;
combining several steps then samples the half circle more densely. :func:`interlace_report`
measures those offsets and the largest angular gap of a combined set, and
:func:`choose_steps_to_combine` picks how many consecutive steps give the most even coverage.

All angles here are degrees (they come straight from files and the wire); NumPy only, since
angle lists are small host arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, GeometryError

__all__ = [
    "HALF_TURN",
    "CombineChoice",
    "InterlaceReport",
    "TimeSteps",
    "angular_increment",
    "assign_time_steps",
    "choose_steps_to_combine",
    "interlace_report",
    "largest_gap",
    "unwrap_degrees",
]

HALF_TURN = 180.0


def unwrap_degrees(theta: object) -> np.ndarray:
    """Continuous rotation angles from angles that may wrap at 180° or 360°.

    Each jump between neighbouring frames is shifted by the multiple of 180° that brings it
    closest to the median jump, so a file that stores ``θ mod 360`` (or ``mod 180``) unwraps to
    one monotonic rotation. Assumes one rotation direction (no back-and-forth scans).
    """
    a = np.asarray(theta, dtype=np.float64).ravel()
    if a.size < 2:
        return a.copy()
    d = np.diff(a)
    d = d + HALF_TURN * np.round((np.median(d) - d) / HALF_TURN)
    return np.concatenate([a[:1], a[0] + np.cumsum(d)])


def angular_increment(theta: object) -> float:
    """Typical angle between consecutive frames (median absolute jump after unwrapping), degrees."""
    u = unwrap_degrees(theta)
    if u.size < 2:
        raise GeometryError(f"expected at least two angles to find the increment, got {u.size}")
    inc = float(np.median(np.abs(np.diff(u))))
    if not inc > 0:
        raise GeometryError("the angles do not advance: the median increment is 0 degrees")
    return inc


@dataclass(frozen=True)
class TimeSteps:
    """Frames ``bounds[s][0] <= f < bounds[s][1]`` make time step ``s``.

    ``n_frames`` counts all frames of the scan; frames in no step (a trailing incomplete step)
    are :attr:`dropped`. ``rule`` says how the steps were found, for logs and file attributes.
    """

    bounds: tuple[tuple[int, int], ...]
    n_frames: int
    rule: str

    def __len__(self) -> int:
        return len(self.bounds)

    def slice(self, step: int) -> slice:
        """Frame slice of time step ``step`` (negative indices count from the end)."""
        start, stop = self.bounds[step]
        return slice(start, stop)

    def frames(self, step: int) -> range:
        """Frame indices of time step ``step``."""
        start, stop = self.bounds[step]
        return range(start, stop)

    @property
    def dropped(self) -> int:
        """Number of frames that belong to no time step."""
        return self.n_frames - sum(b - a for a, b in self.bounds)


def assign_time_steps(theta: object, *, frames_per_step: int | None = None) -> TimeSteps:
    """Split the frames of a scan with angles ``theta`` (degrees) into time steps.

    With ``frames_per_step`` N: steps of N consecutive frames; a remainder shorter than N is
    dropped. Without: frame ``f`` belongs to step ``floor(|u_f - u_0| / 180°)`` of the unwrapped
    angles ``u`` (one step per half turn); a trailing step that covers less than the half circle
    (its span short of 180° by more than 1.5 increments) is dropped unless it is the only step.
    """
    a = np.asarray(theta, dtype=np.float64).ravel()
    n = int(a.size)
    if n == 0:
        raise GeometryError("expected at least one frame, got none")
    if frames_per_step is not None:
        fps = int(frames_per_step)
        if fps < 1:
            raise ConfigError(f"frames_per_step must be >= 1, got {frames_per_step}")
        if fps > n:
            raise GeometryError(f"frames_per_step is {fps} but the scan has only {n} frames")
        bounds = tuple((s * fps, (s + 1) * fps) for s in range(n // fps))
        return TimeSteps(bounds, n, f"frames_per_step={fps}")
    if n == 1:
        return TimeSteps(((0, 1),), 1, "one step (single frame)")
    u = unwrap_degrees(a)
    inc = angular_increment(u)
    # The tolerance keeps a frame rounded to just below k·180° out of step k.
    rel = np.abs(u - u[0]) / HALF_TURN + 1e-9
    step_of = np.floor(rel).astype(np.int64)
    if np.any(np.diff(step_of) < 0):
        raise GeometryError("the unwrapped angles do not rotate in one direction")
    edges = np.flatnonzero(np.diff(step_of)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [n]])
    bounds = [(int(s), int(e)) for s, e in zip(starts, stops, strict=True)]
    last = u[bounds[-1][0] : bounds[-1][1]]
    if len(bounds) > 1 and abs(last[-1] - last[0]) < HALF_TURN - 1.5 * inc:
        bounds.pop()
    return TimeSteps(tuple(bounds), n, "one step per 180 degrees")


def largest_gap(theta: object) -> float:
    """Largest angular gap (degrees) of an angle set folded onto the half circle [0°, 180°).

    θ and θ + 180° see the same lines, so the set is folded modulo 180° and the gap that wraps
    from the last angle back to the first counts too.
    """
    a = np.asarray(theta, dtype=np.float64).ravel()
    if a.size == 0:
        raise GeometryError("expected at least one angle, got none")
    s = np.sort(np.mod(a, HALF_TURN))
    return float(np.max(np.diff(np.concatenate([s, s[:1] + HALF_TURN]))))


def _lattice_increment(jump: float) -> float:
    """The increment 180°/N nearest to the measured frame-to-frame ``jump``.

    Offsets are only meaningful modulo an increment that tiles the half circle: a continuous
    rotation a little faster than one half turn per step advances by slightly more than
    180°/N per frame, and measuring phases modulo that jump would hide the interlacing.
    Sets whose jump is not close to 180°/N (e.g. golden-angle scans) keep the jump itself.
    """
    if not jump > 0:
        return jump
    per_half_turn = max(1, round(HALF_TURN / jump))
    lattice = HALF_TURN / per_half_turn
    return lattice if abs(lattice - jump) <= 0.02 * jump else jump


def _phase(theta: np.ndarray, increment: float) -> float:
    """Circular mean of ``theta mod increment`` in [0, increment): robust to jitter and wrap."""
    z = np.exp(2j * math.pi * theta / increment)
    return float(np.mod(np.angle(np.mean(z)) / (2 * math.pi) * increment, increment))


@dataclass(frozen=True)
class InterlaceReport:
    """Angular offsets of time steps against the first, and the coverage of all combined.

    ``offsets[s]`` is step ``s``'s offset modulo the increment, in [0, increment) degrees (an
    interlace factor I gives ``(s mod I) · increment / I``). ``max_gap`` is the largest gap of
    the combined angles folded onto the half circle; ``ideal_gap`` = 180° / number of angles.
    """

    increment: float
    offsets: tuple[float, ...]
    max_gap: float
    ideal_gap: float
    n_angles: int

    @property
    def gap_ratio(self) -> float:
        """``max_gap / ideal_gap``: 1 for perfectly even coverage, larger when angles bunch."""
        return self.max_gap / self.ideal_gap


def _as_steps(step_angles: Sequence[object]) -> list[np.ndarray]:
    steps = [np.asarray(a, dtype=np.float64).ravel() for a in step_angles]
    if not steps:
        raise GeometryError("expected at least one time step, got none")
    for s, a in enumerate(steps):
        if a.size == 0:
            raise GeometryError(f"time step {s} has no angles")
    return steps


def interlace_report(
    step_angles: Sequence[object], *, increment: float | None = None
) -> InterlaceReport:
    """Offsets of each step against the first (mod the increment) and their combined coverage.

    ``step_angles`` holds one array of angles (degrees) per time step. ``increment`` defaults
    to the 180°/N nearest the median frame-to-frame jump within the steps (N frames per half
    turn). Offsets are circular means, so small jitter averages out and an offset just below
    the increment is not mistaken for a large one.
    """
    steps = _as_steps(step_angles)
    if increment is None:
        jumps = [np.abs(np.diff(unwrap_degrees(a))) for a in steps if a.size > 1]
        if not jumps:
            raise GeometryError("cannot find the increment: every step has a single angle")
        increment = _lattice_increment(float(np.median(np.concatenate(jumps))))
    if not increment > 0:
        raise GeometryError(f"the angular increment must be > 0 degrees, got {increment}")
    ref = _phase(steps[0], increment)
    offsets = tuple(float(np.mod(_phase(a, increment) - ref, increment)) for a in steps)
    # A jittered offset of -0.001° must read as 0, not as one increment.
    offsets = tuple(0.0 if increment - o < 1e-9 * increment else o for o in offsets)
    combined = np.concatenate(steps)
    return InterlaceReport(
        increment=float(increment),
        offsets=offsets,
        max_gap=largest_gap(combined),
        ideal_gap=HALF_TURN / combined.size,
        n_angles=int(combined.size),
    )


@dataclass(frozen=True)
class CombineChoice:
    """How many consecutive steps to combine, and the evidence.

    ``max_gaps[k - 1]`` is the worst largest gap (degrees) over every run of ``k`` consecutive
    steps; ``count`` is the smallest ``k`` whose gap is within the tolerance of the best.
    """

    count: int
    max_gaps: tuple[float, ...]

    @property
    def max_gap(self) -> float:
        """Worst largest gap of the chosen count, degrees."""
        return self.max_gaps[self.count - 1]


def choose_steps_to_combine(
    step_angles: Sequence[object], *, max_steps: int | None = None, tolerance: float = 0.25
) -> CombineChoice:
    """The fewest consecutive steps whose combined angles cover the half circle most evenly.

    For each ``k`` up to ``max_steps`` (default: all steps) the largest folded gap is taken over
    every run of ``k`` consecutive steps (the worst run counts, so the choice holds wherever the
    run starts). The smallest ``k`` with a gap at most ``(1 + tolerance)`` × the best gap wins:
    combining more steps costs time resolution, so it must buy a clearly smaller gap.
    """
    steps = _as_steps(step_angles)
    limit = len(steps) if max_steps is None else int(max_steps)
    if not 1 <= limit <= len(steps):
        raise ConfigError(f"max_steps must be between 1 and {len(steps)}, got {max_steps}")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
    gaps = []
    for k in range(1, limit + 1):
        worst = max(
            largest_gap(np.concatenate(steps[s : s + k])) for s in range(len(steps) - k + 1)
        )
        gaps.append(worst)
    best = min(gaps)
    count = next(k for k, g in enumerate(gaps, start=1) if g <= (1 + tolerance) * best)
    return CombineChoice(count=count, max_gaps=tuple(gaps))
