"""Offline reconstruction of Data Exchange scans into a results file (library code).

:func:`reconstruct_file` runs one :class:`ReconstructConfig`; :class:`ScanSteps` turns an open
scan into corrected line integrals and a geometry per time step; :func:`fbp_step` makes one
step's volume and :func:`resolve_center` fixes the rotation centre. ``n2i-stream reconstruct``
is the command line over these; the live service reuses :class:`ScanSteps`' conventions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .core.filters import FILTERS
from .core.preprocess import MIN_TRANSMISSION
from .errors import ConfigError, DataFileError

if TYPE_CHECKING:
    import numpy as np

    from .core.geometry import ParallelGeometry
    from .core.timesteps import TimeSteps
    from .io.dxchange import DataExchangeFile

__all__ = [
    "METHODS",
    "Range",
    "ReconstructConfig",
    "ReconstructResult",
    "ScanSteps",
    "fbp_step",
    "reconstruct_file",
    "resolve_center",
]

METHODS: tuple[str, ...] = ("fbp",)
#: datasets under /reconstruction that each method writes
_KINDS: dict[str, tuple[str, ...]] = {"fbp": ("fbp",)}

#: a Python-slice-like selection ``a:b`` (None = open end, negative counts from the end)
Range = tuple[int | None, int | None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructConfig:
    """One offline reconstruction run.

    ``steps`` and ``rows`` select like Python slices ``a:b`` (None = open end, negative counts
    from the end); ``center_offset`` is in detector pixels or ``"auto"`` (estimated from the
    first selected step).
    """

    input: str  # Data Exchange file to read
    output: str  # results file to write
    method: Literal["fbp"] = "fbp"  # reconstruction method
    frames_per_step: int | None = None  # overrides the file's attribute; None: file or 180°
    center_offset: float | Literal["auto"] = 0.0  # rotation-axis offset, px, or "auto"
    filter: str = "ramlak"  # ramp filter window
    steps: Range = (None, None)  # time steps to reconstruct, a:b
    rows: Range = (None, None)  # detector rows (slices) to reconstruct, a:b
    n: int | None = None  # reconstruction size n x n; None: detector columns
    references: Literal["linear", "nearest"] = "linear"  # mid-scan darks/flats per frame
    chunk_frames: int = 64  # frames read and corrected at a time
    min_transmission: float = MIN_TRANSMISSION  # lowest transmission before clipping
    overwrite: bool = False  # replace an existing output file

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {list(METHODS)}")
        if self.filter not in FILTERS:
            problems.append(f"filter {self.filter!r} is not one of {list(FILTERS)}")
        if self.frames_per_step is not None and self.frames_per_step < 1:
            problems.append(f"frames_per_step must be >= 1, got {self.frames_per_step}")
        if self.n is not None and self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        if self.chunk_frames < 1:
            problems.append(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if not 0 < self.min_transmission < 1:
            problems.append(f"min_transmission must be in (0, 1), got {self.min_transmission}")
        if isinstance(self.center_offset, str) and self.center_offset != "auto":
            problems.append(f"center_offset must be a number or 'auto', got {self.center_offset!r}")
        if Path(self.input).resolve() == Path(self.output).resolve():
            problems.append("the output file must differ from the input file")
        if problems:
            raise ConfigError("reconstruct: " + "; ".join(problems))


@dataclass(frozen=True)
class ReconstructResult:
    """What a run wrote: the file, the time steps, the centre used and what was clipped."""

    output: Path
    time_steps: tuple[int, ...]
    shape: tuple[int, int, int]  # (rows, n, n) of each step
    center_offset: float
    clipped: int  # transmissions clipped to stay finite, all steps together
    dropped_frames: int  # frames in no complete time step
    seconds: float


def _select(bounds: Range, total: int, what: str) -> range:
    selected = range(total)[slice(*bounds)]
    if len(selected) == 0:
        a, b = ("" if v is None else v for v in bounds)
        raise ConfigError(f"{what} {a}:{b} selects none of the {total} available")
    return selected


class ScanSteps:
    """An open Data Exchange scan seen as time steps of corrected line integrals.

    Steps come from ``config.frames_per_step``, else the file's attribute, else one per 180°.
    Problems with the file's angles are reported as :class:`DataFileError` naming the file.
    """

    def __init__(self, scan: DataExchangeFile, config: ReconstructConfig) -> None:
        from .core.timesteps import assign_time_steps
        from .errors import GeometryError
        from .io.dxchange import DATA, THETA

        self.scan = scan
        self.config = config
        fps = config.frames_per_step or scan.frames_per_step
        try:
            self.steps: TimeSteps = assign_time_steps(scan.theta, frames_per_step=fps)
        except GeometryError as exc:
            dataset = DATA if fps is not None else THETA
            raise DataFileError(scan.path, dataset, str(exc)) from exc
        self.selected = _select(config.steps, len(self.steps), "--steps")
        rows = _select(config.rows, scan.rows, "--rows")
        self.rows = slice(rows.start, rows.stop)
        self.n = config.n or scan.cols

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """``(rows, n, n)`` of one reconstructed step."""
        return (self.rows.stop - self.rows.start, self.n, self.n)

    def geometry(self, step: int, center_offset: float) -> ParallelGeometry:
        """Geometry of time step ``step`` for the selected rows."""
        from .core.geometry import ParallelGeometry

        return ParallelGeometry.from_degrees(
            self.scan.theta[self.steps.slice(step)],
            rows=self.volume_shape[0],
            cols=self.scan.cols,
            center_offset=center_offset,
        )

    def projections(self, step: int) -> tuple[np.ndarray, int]:
        """Line integrals ``(frames, rows, cols)`` of time step ``step`` and the clipped count."""
        frames = self.steps.frames(step)
        res = self.scan.line_integrals(
            frames.start,
            frames.stop,
            rows=self.rows,
            mode=self.config.references,
            chunk=self.config.chunk_frames,
            min_transmission=self.config.min_transmission,
        )
        return res.data, res.clipped


def fbp_step(
    steps: ScanSteps, step: int, *, center_offset: float, window: str = "ramlak"
) -> tuple[np.ndarray, int]:
    """FBP volume ``(rows, n, n)`` float32 of one time step, and its clipped-value count."""
    from .core.fbp import fbp

    projections, clipped = steps.projections(step)
    return fbp(projections, steps.geometry(step, center_offset), n=steps.n, window=window), clipped


def resolve_center(steps: ScanSteps, config: ReconstructConfig) -> float:
    """The configured centre offset, or the one found on the first selected step (``auto``)."""
    if config.center_offset != "auto":
        return float(config.center_offset)
    from .core.center import find_center

    first = steps.selected[0]
    projections, _ = steps.projections(first)
    return float(find_center(projections, steps.geometry(first, 0.0)).offset)


def reconstruct_file(
    config: ReconstructConfig, *, progress: Callable[[int, int], None] | None = None
) -> ReconstructResult:
    """Reconstruct the selected time steps of ``config.input`` into ``config.output``.

    Each step is read chunk by chunk, corrected, reconstructed and written (and flushed) before
    the next, so the output can be followed while it grows. ``progress(done, total)`` is called
    after every step.
    """
    from .config import to_mapping
    from .io.dxchange import DataExchangeFile
    from .io.results import ResultsWriter

    start = time.perf_counter()
    if Path(config.output).exists() and not config.overwrite:
        # Checked before any work: an "auto" centre search can take a while.
        raise DataFileError(config.output, None, "exists; choose another --out or pass --overwrite")
    with DataExchangeFile(config.input) as scan:
        steps = ScanSteps(scan, config)
        center = resolve_center(steps, config)
        rows, n, _ = steps.volume_shape
        attrs = {
            "source": str(Path(config.input).resolve()),
            "method": config.method,
            "center_offset": center,
            "filter": config.filter,
            "time_step_rule": steps.steps.rule,
            "first_row": steps.rows.start,
            "detector_shape": [scan.rows, scan.cols],
        }
        clipped = 0
        with ResultsWriter(
            config.output,
            rows=rows,
            n=n,
            kinds=_KINDS[config.method],
            config=to_mapping(config),
            attrs=attrs,
            overwrite=config.overwrite,
        ) as writer:
            for done, step in enumerate(steps.selected, start=1):
                volume, step_clipped = fbp_step(
                    steps, step, center_offset=center, window=config.filter
                )
                writer.write_step("fbp", step, volume)
                clipped += step_clipped
                if progress is not None:
                    progress(done, len(steps.selected))
        if clipped:
            log.warning("%s: clipped %d transmissions to stay finite", scan.path, clipped)
        return ReconstructResult(
            output=Path(config.output),
            time_steps=tuple(steps.selected),
            shape=steps.volume_shape,
            center_offset=center,
            clipped=clipped,
            dropped_frames=steps.steps.dropped,
            seconds=time.perf_counter() - start,
        )
