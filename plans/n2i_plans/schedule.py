"""The angle schedule of a continuous-rotation scan, shared by the plans and the simulated camera.

A stage rotating at ``speed + speed_offset`` degrees per second, seen by a camera taking
``frame_rate`` frames per second, advances ``angle_step = (speed + speed_offset) / frame_rate``
degrees per frame: projection ``g`` sits at ``angle_start + g · angle_step``. No detector stream
carries the angle, so the plan sends this schedule to the service, which joins it to the frames
by frame id (PROTOCOLS.md).

Interlacing: at ``speed = 180° · frame_rate / frames_per_step`` every time step is one half turn
with increment ``Δ = 180° / frames_per_step``; the offset ``speed / (interlace · frames_per_step)``
adds ``Δ / interlace`` per step, so successive steps are shifted by ``Δ / interlace`` and
``interlace`` steps together sample the half circle ``interlace`` times more densely (the same
schedule as ``n2i_stream.sim.SimConfig``'s ``step_span``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from n2i_stream.errors import ConfigError

__all__ = ["RotationSchedule", "interlaced_speed"]

#: A step's frames must span at least this much of 180° (rounding of speeds and rates).
_HALF_TURN_TOLERANCE = 1e-6


def interlaced_speed(
    frame_rate: float, frames_per_step: int, interlace: int
) -> tuple[float, float]:
    """``(speed, speed_offset)`` in degrees per second: half a turn per time step, interlaced."""
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        raise ConfigError(f"frame_rate: expected > 0 frames per second, got {frame_rate!r}")
    if frames_per_step < 2:
        raise ConfigError(f"frames_per_step: expected >= 2, got {frames_per_step!r}")
    if interlace < 1:
        raise ConfigError(f"interlace: expected >= 1, got {interlace!r}")
    speed = 180.0 * frame_rate / frames_per_step
    offset = speed / (interlace * frames_per_step) if interlace > 1 else 0.0
    return speed, offset


@dataclass(frozen=True)
class RotationSchedule:
    """Projection angles of a continuous rotation: ``angle_start + g · angle_step`` (degrees)."""

    angle_start: float  # degrees at projection 0
    angle_step: float  # degrees per frame
    frames_per_step: int  # projections per time step

    @classmethod
    def from_motion(
        cls,
        *,
        speed: float,
        speed_offset: float,
        frame_rate: float,
        frames_per_step: int,
        angle_start: float = 0.0,
    ) -> RotationSchedule:
        """The schedule a camera at ``frame_rate`` sees on a stage at ``speed + speed_offset``."""
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            raise ConfigError(f"frame_rate: expected > 0 frames per second, got {frame_rate!r}")
        total = speed + speed_offset
        if not (math.isfinite(total) and total > 0):
            raise ConfigError(
                f"rotation speed: expected speed + speed_offset > 0 deg/s, got {speed!r} + "
                f"{speed_offset!r}"
            )
        return cls(float(angle_start), total / frame_rate, int(frames_per_step))

    @property
    def step_span(self) -> float:
        """Rotation during one time step, degrees."""
        return self.angle_step * self.frames_per_step

    @property
    def increment(self) -> float:
        """The nominal half-turn increment Δ = 180° / frames_per_step."""
        return 180.0 / self.frames_per_step

    @property
    def interlace_shift(self) -> float:
        """How far each step is shifted against the previous one modulo Δ, degrees."""
        shift = (self.step_span - 180.0) % self.increment
        return 0.0 if math.isclose(shift, self.increment, rel_tol=1e-9) else shift

    def covers_half_turn(self) -> bool:
        """Whether each time step's frames span at least 180° (a complete parallel-beam set)."""
        return self.step_span >= 180.0 * (1.0 - _HALF_TURN_TOLERANCE)

    def check(self) -> None:
        """ConfigError unless every time step covers a half turn."""
        if self.frames_per_step < 1:
            raise ConfigError(f"frames_per_step: expected >= 1, got {self.frames_per_step}")
        if not self.covers_half_turn():
            raise ConfigError(
                f"the angles do not cover 180° per time step: {self.frames_per_step} frames × "
                f"{self.angle_step:.6g}°/frame = {self.step_span:.6g}°; rotate faster, take "
                f"more frames per step or lower the frame rate"
            )

    def angles(self, count: int) -> np.ndarray:
        """The first ``count`` projection angles, degrees."""
        return self.angle_start + self.angle_step * np.arange(count, dtype=np.float64)

    def summary(self, steps: int) -> dict[str, float | int]:
        """Plain numbers describing the schedule, for a start document."""
        last = self.angle_start + self.angle_step * (steps * self.frames_per_step - 1)
        return {
            "angle_start": self.angle_start,
            "angle_step": self.angle_step,
            "angle_last": last,
            "step_span": self.step_span,
            "interlace_shift": self.interlace_shift,
            "count": steps * self.frames_per_step,
        }
