"""The simulated dynamic beamline: a foam with a growing bubble, rotating continuously.

Acquisition order: ``n_darks`` darks, ``n_flats`` flats, ``steps × per_step`` projections,
``n_flats_end`` flats; frame ids count all of them from 0. Rotation is continuous at a speed
slightly above half a turn per step: with increment ``Δ = 180° / per_step``, every step covers
``180° + Δ / interlace``, so frame ``g`` (counting projections) sits at
``g · (180° + Δ/interlace) / per_step`` plus Gaussian jitter of ``jitter · Δ``, unwrapped (later
steps lie beyond 180°). Modulo ``Δ``, step ``s`` is therefore offset by ``(s mod interlace) ·
Δ/interlace`` against step 0: successive steps interlace, and ``interlace`` steps together sample
the half circle ``interlace`` times more densely. The recorded angles are the true (jittered) ones.

Everything is seeded: the phantom, the detector pattern, the angles and each frame's noise (drawn
from its own stream keyed by frame id, so a frame is the same however the scan is consumed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..core.geometry import ParallelGeometry
from ..errors import ConfigError
from .detector import Detector
from .phantom import FoamPhantom, make_foam

__all__ = ["DynamicScan", "FrameKind", "ScanArrays", "SimConfig", "SimFrame", "describe"]

FrameKind = Literal["dark", "flat", "projection"]

# Independent random streams derived from the seed.
_PHANTOM, _ANGLES, _DETECTOR, _FRAME = 0, 1, 2, 3
#: at most this many line integrals are computed at once (bounds memory for wide detectors)
_BLOCK_VALUES = 1 << 22


@dataclass(frozen=True)
class SimConfig:
    """Parameters of a simulated dynamic scan; the reconstruction grid is ``width × width``."""

    width: int = 128  #: detector columns (and reconstruction size n)
    rows: int = 16  #: detector rows (slices along the rotation axis)
    steps: int = 12  #: time steps (half turns)
    per_step: int = 120  #: projection frames per time step
    interlace: int = 4  #: successive steps are offset by increment / interlace
    jitter: float = 0.02  #: standard deviation of the angle error, in increments
    photons: float = 1500.0  #: mean open-beam photon count per pixel
    dynamics_start: int = 4  #: first time step with the water bubble (steps: never)
    n_darks: int = 20  #: dark frames before the scan
    n_flats: int = 20  #: flat frames before the scan
    n_flats_end: int = 0  #: flat frames after the scan
    seed: int = 0  #: seed of every random choice (phantom, angles, noise)
    center_offset: float = 0.0  #: rotation axis column minus detector centre, pixels
    noise: bool = True  #: False: rounded expected counts (exact references)
    dark_level: float = 100.0  #: mean dark offset, counts
    read_noise: float = 2.0  #: Gaussian read noise, counts
    sample_radius: float = 0.4  #: foam cylinder radius, fraction of width
    pore_radius: tuple[float, float] = (0.03, 0.1)  #: smallest and largest pore, fraction of width
    porosity: float = 0.2  #: target air fraction of the foam (approximate: dense foams jam)
    absorption: float = 1.5  #: material attenuation × sample diameter (optical depth)
    water: float = 0.55  #: water attenuation relative to the material
    bubble_radius0: float = 0.3  #: bubble radius when it appears, fraction of its pore's
    bubble_growth: float = 0.08  #: bubble radius growth per step, fraction of its pore's
    supersample: int = 4  #: sub-positions per pixel for projections and ground truth

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.width >= 8, f"width must be >= 8 columns, got {self.width}")
        need(self.rows >= 1, f"rows must be >= 1, got {self.rows}")
        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.per_step >= 2, f"per_step must be >= 2 frames, got {self.per_step}")
        need(self.interlace >= 1, f"interlace must be >= 1, got {self.interlace}")
        need(0 <= self.jitter <= 0.5, f"jitter must be in [0, 0.5] increments, got {self.jitter}")
        need(
            0 < self.photons <= 60000,
            f"photons must be in (0, 60000] (uint16 counts), got {self.photons}",
        )
        need(
            0 <= self.dynamics_start <= self.steps,
            f"dynamics_start must be in [0, steps={self.steps}], got {self.dynamics_start}",
        )
        need(self.n_darks >= 1, f"n_darks must be >= 1, got {self.n_darks}")
        need(self.n_flats >= 1, f"n_flats must be >= 1, got {self.n_flats}")
        need(self.n_flats_end >= 0, f"n_flats_end must be >= 0, got {self.n_flats_end}")
        need(
            abs(self.center_offset) <= 0.05 * self.width,
            f"center_offset must be within 5% of the width, got {self.center_offset}",
        )
        need(
            0 <= self.dark_level <= 5000, f"dark_level must be in [0, 5000], got {self.dark_level}"
        )
        need(self.read_noise >= 0, f"read_noise must be >= 0, got {self.read_noise}")
        need(
            0 < self.sample_radius <= 0.45,
            f"sample_radius must be in (0, 0.45] of the width, got {self.sample_radius}",
        )
        lo, hi = self.pore_radius
        need(
            0 < lo <= hi < self.sample_radius / 2,
            f"pore_radius must satisfy 0 < min <= max < sample_radius/2, got {self.pore_radius}",
        )
        need(0 <= self.porosity <= 0.6, f"porosity must be in [0, 0.6], got {self.porosity}")
        need(self.absorption > 0, f"absorption must be > 0, got {self.absorption}")
        need(self.water >= 0, f"water must be >= 0, got {self.water}")
        need(
            0 < self.bubble_radius0 <= 1,
            f"bubble_radius0 must be in (0, 1], got {self.bubble_radius0}",
        )
        need(self.bubble_growth >= 0, f"bubble_growth must be >= 0, got {self.bubble_growth}")
        need(1 <= self.supersample <= 32, f"supersample must be in [1, 32], got {self.supersample}")
        if problems:
            raise ConfigError("invalid SimConfig: " + "; ".join(problems))

    @property
    def n(self) -> int:
        """Reconstruction grid size (equal to the width)."""
        return self.width

    @property
    def increment(self) -> float:
        """Nominal angular increment Δ within a step, degrees."""
        return 180.0 / self.per_step

    @property
    def step_span(self) -> float:
        """Rotation per time step, degrees: 180° + Δ / interlace."""
        return 180.0 + self.increment / self.interlace

    @property
    def n_projections(self) -> int:
        """Projection frames in the scan."""
        return self.steps * self.per_step

    @property
    def n_frames(self) -> int:
        """All frames: darks, flats, projections and closing flats."""
        return self.n_darks + self.n_flats + self.n_projections + self.n_flats_end

    def step_offsets(self) -> np.ndarray:
        """Each step's nominal angular offset against step 0 modulo Δ: (s mod I) · Δ / I."""
        s = np.arange(self.steps)
        return (s % self.interlace) * self.increment / self.interlace


@dataclass(frozen=True, eq=False)
class SimFrame:
    """One camera frame in acquisition order."""

    frame: int  #: frame id, counting every frame from 0
    kind: FrameKind
    data: np.ndarray  #: raw counts (rows, cols) uint16
    angle: float | None  #: rotation angle in degrees (unwrapped); None for darks and flats
    time_step: int | None  #: time step of a projection; None for darks and flats


@dataclass(frozen=True, eq=False)
class ScanArrays:
    """A whole simulated scan in memory, in the Data Exchange layout."""

    data: np.ndarray  #: projections (frames, rows, cols) uint16
    darks: np.ndarray  #: (n_darks, rows, cols) uint16
    flats: np.ndarray  #: (n_flats + n_flats_end, rows, cols) uint16
    theta: np.ndarray  #: projection angles, degrees
    frames_per_step: int


class DynamicScan:
    """The simulated beamline for one :class:`SimConfig`: phantom, angles, frames, ground truth."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        c = config
        self.phantom: FoamPhantom = make_foam(
            n=c.width,
            rows=c.rows,
            rng=self._rng(_PHANTOM),
            sample_radius=c.sample_radius,
            pore_radius=c.pore_radius,
            porosity=c.porosity,
            absorption=c.absorption,
            water=c.water,
            dynamics_start=c.dynamics_start,
            bubble_radius0=c.bubble_radius0,
            bubble_growth=c.bubble_growth,
        )
        self.detector = Detector.make(
            rows=c.rows,
            cols=c.width,
            photons=c.photons,
            dark_level=c.dark_level,
            read_noise=c.read_noise,
            noise=c.noise,
            rng=self._rng(_DETECTOR),
        )
        g = np.arange(c.n_projections)
        jitter = c.jitter * c.increment * self._rng(_ANGLES).standard_normal(g.size)
        theta = g * (c.step_span / c.per_step) + jitter
        theta.setflags(write=False)
        #: exact projection angles in degrees, unwrapped, in acquisition order
        self.theta: np.ndarray = theta
        self._static: np.ndarray | None = None

    def _rng(self, stream: int, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, stream, *key])

    def step_angles(self, step: int) -> np.ndarray:
        """Exact angles (degrees) of the projections of time ``step``."""
        self._check_step(step)
        p = self.config.per_step
        return self.theta[step * p : (step + 1) * p]

    def step_geometry(self, step: int) -> ParallelGeometry:
        """Geometry of time ``step`` (its exact angles, the simulated rotation centre)."""
        return ParallelGeometry.from_degrees(
            self.step_angles(step),
            rows=self.config.rows,
            cols=self.config.width,
            center_offset=self.config.center_offset,
        )

    def line_integrals(self, step: int) -> np.ndarray:
        """Exact pixel-integrated line integrals of time ``step``, ``(per_step, rows, cols)``."""
        return self.phantom.project(
            self.step_geometry(step), step, supersample=self.config.supersample
        )

    def ground_truth(self, step: int) -> np.ndarray:
        """Ground-truth attenuation per pixel at ``step``, ``(rows, n, n)`` float32."""
        self._check_step(step)
        c = self.config
        if self._static is None:
            self._static = self.phantom.static_attenuation(
                n=c.n, rows=c.rows, supersample=c.supersample, dtype=np.float32
            )
        vol = self._static.copy()
        self.phantom.add_bubble(vol, step, supersample=c.supersample)
        return vol

    def frames(self) -> Iterator[SimFrame]:
        """Every frame in acquisition order (projections computed a block of angles at a time)."""
        c = self.config
        fid = 0
        for _ in range(c.n_darks):
            yield SimFrame(
                fid, "dark", self.detector.dark_frame(self._rng(_FRAME, fid)), None, None
            )
            fid += 1
        for _ in range(c.n_flats):
            yield SimFrame(
                fid, "flat", self.detector.counts(None, self._rng(_FRAME, fid)), None, None
            )
            fid += 1
        block = max(1, min(c.per_step, _BLOCK_VALUES // (c.rows * c.width)))
        for step in range(c.steps):
            geometry = self.step_geometry(step)
            for start in range(0, c.per_step, block):
                sub = geometry[start : start + block]
                p = self.phantom.project(sub, step, supersample=c.supersample)
                for k in range(len(sub)):
                    counts = self.detector.counts(p[k], self._rng(_FRAME, fid))
                    angle = float(self.theta[step * c.per_step + start + k])
                    yield SimFrame(fid, "projection", counts, angle, step)
                    fid += 1
        for _ in range(c.n_flats_end):
            yield SimFrame(
                fid, "flat", self.detector.counts(None, self._rng(_FRAME, fid)), None, None
            )
            fid += 1

    def arrays(self) -> ScanArrays:
        """The whole scan in memory (for small scans and tests; files are written per frame)."""
        c = self.config
        shape = (c.rows, c.width)
        data = np.empty((c.n_projections, *shape), np.uint16)
        darks = np.empty((c.n_darks, *shape), np.uint16)
        flats = np.empty((c.n_flats + c.n_flats_end, *shape), np.uint16)
        count = {"dark": 0, "flat": 0, "projection": 0}
        target = {"dark": darks, "flat": flats, "projection": data}
        for f in self.frames():
            target[f.kind][count[f.kind]] = f.data
            count[f.kind] += 1
        return ScanArrays(data, darks, flats, self.theta.copy(), c.per_step)

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.config.steps:
            raise ConfigError(f"time step {step} out of range: the scan has {self.config.steps}")


def describe(config: SimConfig) -> str:
    """One line summarising the scan, for logs and the CLI."""
    return (
        f"{config.steps} steps x {config.per_step} frames of {config.rows}x{config.width}, "
        f"increment {config.increment:.4g} deg, interlace {config.interlace} "
        f"(step span {config.step_span:.4f} deg), {config.photons:g} photons, "
        f"bubble from step {config.dynamics_start}"
    )
