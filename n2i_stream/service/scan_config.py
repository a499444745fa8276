"""The scan configuration a plan sends with ``configure``: typed, frozen, validated at once.

:class:`ScanConfig` is what the control socket accepts (JSON keys = field names, unknown keys
rejected, every problem reported together). It composes the
:class:`~n2i_stream.service.assembly.AssemblyConfig` that files frames into time steps and the
training settings; it imports neither torch nor sockets, so validating a request is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from ..config import from_mapping
from ..core.filters import FILTERS
from ..errors import ConfigError
from .assembly import AssemblyConfig

__all__ = ["ScanConfig", "TrainingOptions"]

IdRun = tuple[int, int]
NETWORK_NAMES = ("unet", "msd", "dncnn")


@dataclass(frozen=True)
class TrainingOptions:
    """Network and optimiser details beyond the contract's ``network`` and budget (all optional).

    ``None`` keeps the learning code's default (one place decides them:
    :class:`n2i_stream.learn.TrainConfig`); the names follow that configuration.
    """

    depth: int | None = None  # network depth (U-Net levels, DnCNN / MS-D layers)
    width: int | None = None  # network width (first-level / per-layer channels)
    context: int | None = None  # slices above and below the denoised slice (2.5D)
    crop: int | None = None  # side of the square training crops, pixels
    batch: int | None = None  # crops per training step
    lr: float | None = None  # Adam learning rate
    seed: int | None = None  # weight initialisation and crop sampling seed

    def __post_init__(self) -> None:
        problems = []
        for name, least in (("depth", 1), ("width", 1), ("context", 0), ("crop", 8), ("batch", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                problems.append(f"{name}: expected >= {least} or null, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr: expected a positive number or null, got {self.lr}")
        if problems:
            raise ConfigError("training: " + "; ".join(problems))


@dataclass(frozen=True)
class ScanConfig:
    """One dynamic scan as the service sees it (the ``scan`` of a ``configure`` request).

    Angles are degrees, one per projection in acquisition order: a table (``angles``) or
    ``angle_start`` + ``angle_step`` per projection. Id runs are ``[first id, count]`` in
    unwrapped ids (see :mod:`~n2i_stream.service.assembly`); frame kinds come from them when the
    wire format carries none (``array-1.0``).
    """

    scan_id: str  # names the scan in status, result messages and the results file
    rows: int  # detector rows (slices along the rotation axis)
    cols: int  # detector columns
    frames_per_step: int  # projections per time step
    steps: int  # time steps in the scan
    dtype: str = "uint16"  # raw pixel type
    angles: tuple[float, ...] = ()  # degrees per projection, or ...
    angle_start: float = 0.0  # ... degrees of projection 0 ...
    angle_step: float | None = None  # ... plus this per projection
    projection_ids: tuple[IdRun, ...] = ()  # runs of projection ids; () = (0, all)
    dark_ids: tuple[IdRun, ...] = ()  # one run per dark set; () = kind from headers
    flat_ids: tuple[IdRun, ...] = ()  # one run per flat set; () = kind from headers
    id_bits: int | None = None  # the detector counter wraps at 2**id_bits (e.g. 16)
    train_steps: int = 4  # K: the first K steps show the unchanged sample (2 <= K < steps)
    center_offset: float | Literal["auto"] = 0.0  # rotation axis offset, px, or "auto"
    network: Literal["unet", "msd", "dncnn"] | None = None  # denoising network (None: default)
    train_minutes: float = 5.0  # training time budget
    train_iterations: int | None = None  # training step budget (whichever comes first)
    model: str | None = None  # checkpoint to use instead of training
    output: str | None = None  # results HDF5 file (None: publish only)
    overwrite: bool = False  # replace an existing output file
    publish: Literal["volume"] | tuple[int, ...] = "volume"  # whole volume or these z-slices
    filter: str = "ramlak"  # FBP ramp filter window
    oversample: int = 1  # FBP: filtered samples per detector column (2: sharper, more noise)
    keep_low: float = 0.0  # denoised: FBP's scales coarser than this Gaussian, px (0: off)
    n: int | None = None  # reconstruction size n × n (None: detector columns)
    close_lag: int = 2  # a step missing frames is closed once step s + close_lag begins
    end_after_idle_s: float | None = None  # no frame for this long after the first: the scan ends
    training: TrainingOptions = field(default_factory=TrainingOptions)  # network details

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.scan_id:
            problems.append("scan_id: expected a non-empty string")
        if not 2 <= self.train_steps < self.steps:
            problems.append(
                f"train_steps: expected 2 <= K < steps ({self.steps}), got {self.train_steps}"
            )
        if isinstance(self.center_offset, str) and self.center_offset != "auto":
            problems.append(f"center_offset: expected a number or 'auto', got {self.center_offset}")
        elif isinstance(self.center_offset, float) and not math.isfinite(self.center_offset):
            problems.append("center_offset: expected a finite number")
        if self.network is not None and self.network not in NETWORK_NAMES:
            problems.append(f"network: expected one of {list(NETWORK_NAMES)}, got {self.network}")
        if not (math.isfinite(self.train_minutes) and self.train_minutes > 0):
            problems.append(f"train_minutes: expected > 0, got {self.train_minutes}")
        if self.train_iterations is not None and self.train_iterations < 1:
            problems.append(f"train_iterations: expected >= 1 or null, got {self.train_iterations}")
        if self.filter not in FILTERS:
            problems.append(f"filter: expected one of {list(FILTERS)}, got {self.filter!r}")
        if self.oversample not in (1, 2, 3, 4):
            problems.append(f"oversample: expected 1, 2, 3 or 4, got {self.oversample!r}")
        if not (math.isfinite(self.keep_low) and self.keep_low >= 0):
            problems.append(f"keep_low: expected >= 0 pixels (0: off), got {self.keep_low}")
        idle = self.end_after_idle_s
        if idle is not None and not (math.isfinite(idle) and idle > 0):
            problems.append(f"end_after_idle_s: expected > 0 seconds or null, got {idle}")
        if self.n is not None and self.n < 1:
            problems.append(f"n: expected >= 1 or null, got {self.n}")
        if isinstance(self.publish, tuple):
            bad = [z for z in self.publish if not 0 <= z < self.rows]
            if bad or not self.publish:
                problems.append(
                    f"publish: expected 'volume' or slice indices in 0..{self.rows - 1}, "
                    f"got {list(self.publish)}"
                )
        elif self.publish != "volume":
            problems.append(f"publish: expected 'volume' or a list of slices, got {self.publish}")
        try:
            _ = self.assembly
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError(f"scan {self.scan_id!r}: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "scan") -> ScanConfig:
        """Build from plain data (JSON), rejecting unknown keys and wrong types."""
        return from_mapping(cls, data, source=source)

    @cached_property
    def assembly(self) -> AssemblyConfig:
        """How this scan's frames are filed into time steps."""
        return AssemblyConfig(
            rows=self.rows,
            cols=self.cols,
            frames_per_step=self.frames_per_step,
            steps=self.steps,
            dtype=self.dtype,
            angles=self.angles,
            angle_start=self.angle_start,
            angle_step=self.angle_step,
            projection_ids=self.projection_ids,
            dark_ids=self.dark_ids,
            flat_ids=self.flat_ids,
            id_bits=self.id_bits,
            close_lag=self.close_lag,
        )

    @property
    def size(self) -> int:
        """Reconstruction size n (each step is ``(rows, n, n)``)."""
        return self.n or self.cols

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return (self.rows, self.size, self.size)

    @property
    def slices(self) -> tuple[int, ...] | None:
        """The z-slices to publish, or None for whole volumes."""
        return None if self.publish == "volume" else tuple(self.publish)  # type: ignore[arg-type]
