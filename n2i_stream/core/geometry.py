"""Parallel-beam scan geometry as an immutable value (DESIGN.md §3).

A frame is ``(rows, cols)``; detector column ``c`` sits at ``t = c - (cols - 1)/2 - center_offset``.
A reconstruction is ``(rows, n, n)`` with axes ``(z, y, x)``; pixel ``(i, j)`` has centre
``x = j - (n - 1)/2``, ``y = i - (n - 1)/2`` and projects to ``t = x cos θ + y sin θ``.
Angles are radians here; degrees only on the wire and in files.

Selecting angles like a list gives a new geometry, so a Noise2Inverse split of J sections is
``geometry[j::J]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import GeometryError

__all__ = ["ParallelGeometry", "angular_weights"]


def angular_weights(angles: np.ndarray) -> np.ndarray:
    """Each angle's share of the half circle, in radians; the weights sum to π.

    Angles are folded modulo π (θ + π sees the same lines as θ); each gets half the gap to its
    neighbours on the folded circle, so uneven, interlaced or combined angle sets are weighted
    as a quadrature rule (uniform K angles over 180° or 360° give π/K each).
    """
    a = np.asarray(angles, dtype=np.float64).ravel()
    if a.size == 0:
        raise GeometryError("angular_weights: expected at least one angle, got none")
    if a.size == 1:
        return np.array([math.pi])
    folded = np.mod(a, math.pi)
    order = np.argsort(folded, kind="stable")
    s = folded[order]
    gaps = np.diff(np.concatenate([s, s[:1] + math.pi]))  # gap after each sorted angle
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    w = np.empty_like(w_sorted)
    w[order] = w_sorted
    return w


@dataclass(frozen=True, eq=False)
class ParallelGeometry:
    """Angles (radians), detector shape and rotation-centre offset of a parallel-beam scan.

    Build with :meth:`from_degrees` or :meth:`from_radians` (keyword-only). ``center_offset`` is
    in detector pixels: the rotation axis projects to column ``(cols - 1)/2 + center_offset``.
    """

    angles: np.ndarray
    rows: int
    cols: int
    center_offset: float = 0.0
    _weights: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        a = np.array(self.angles, dtype=np.float64).ravel()
        problems = []
        if a.size == 0:
            problems.append("expected at least one angle, got none")
        if not np.all(np.isfinite(a)):
            problems.append("angles must be finite")
        if int(self.rows) < 1 or int(self.cols) < 2:
            problems.append(
                f"expected rows >= 1 and cols >= 2, got rows={self.rows} cols={self.cols}"
            )
        if not math.isfinite(self.center_offset):
            problems.append(f"center_offset must be finite, got {self.center_offset}")
        if problems:
            raise GeometryError("ParallelGeometry: " + "; ".join(problems))
        a.setflags(write=False)
        object.__setattr__(self, "angles", a)
        object.__setattr__(self, "rows", int(self.rows))
        object.__setattr__(self, "cols", int(self.cols))
        object.__setattr__(self, "center_offset", float(self.center_offset))
        object.__setattr__(self, "_weights", None)

    @classmethod
    def from_degrees(
        cls, degrees: Any, *, rows: int, cols: int, center_offset: float = 0.0
    ) -> ParallelGeometry:
        """Geometry from angles in degrees (the unit of files and the wire)."""
        return cls(np.deg2rad(np.asarray(degrees, dtype=np.float64)), rows, cols, center_offset)

    @classmethod
    def from_radians(
        cls, radians: Any, *, rows: int, cols: int, center_offset: float = 0.0
    ) -> ParallelGeometry:
        """Geometry from angles in radians."""
        return cls(np.asarray(radians, dtype=np.float64), rows, cols, center_offset)

    def __len__(self) -> int:
        return int(self.angles.size)

    def __getitem__(self, index: Any) -> ParallelGeometry:
        """The same detector with a subset of the angles (slice, index array or boolean mask)."""
        sub = np.atleast_1d(self.angles[index])
        return ParallelGeometry(sub, self.rows, self.cols, self.center_offset)

    def __repr__(self) -> str:
        deg = np.rad2deg(self.angles)
        return (
            f"ParallelGeometry({len(self)} angles {deg.min():.3f}..{deg.max():.3f} deg, "
            f"rows={self.rows}, cols={self.cols}, center_offset={self.center_offset:g})"
        )

    @property
    def angles_deg(self) -> np.ndarray:
        """Angles in degrees."""
        return np.rad2deg(self.angles)

    @property
    def axis_column(self) -> float:
        """Detector column (fractional) onto which the rotation axis projects."""
        return (self.cols - 1) / 2 + self.center_offset

    def with_center(self, center_offset: float) -> ParallelGeometry:
        """The same scan with another rotation-centre offset."""
        return replace(self, center_offset=float(center_offset))

    def with_angles(self, radians: Any) -> ParallelGeometry:
        """The same detector with other angles (radians)."""
        return ParallelGeometry(
            np.asarray(radians, dtype=np.float64), self.rows, self.cols, self.center_offset
        )

    def concat(self, other: ParallelGeometry) -> ParallelGeometry:
        """Angles of both geometries (same detector), e.g. to combine several time steps."""
        if (other.rows, other.cols, other.center_offset) != (
            self.rows,
            self.cols,
            self.center_offset,
        ):
            raise GeometryError(
                f"concat: detectors differ: {self.rows}x{self.cols} offset {self.center_offset} "
                f"vs {other.rows}x{other.cols} offset {other.center_offset}"
            )
        return self.with_angles(np.concatenate([self.angles, other.angles]))

    def column_of(self, t: Any) -> Any:
        """Fractional detector column at detector coordinate ``t``."""
        return t + self.axis_column

    def check_filtered(self, shape: tuple[int, ...], oversample: int = 1) -> None:
        """Raise :class:`GeometryError` unless ``shape`` is ``(angles, rows, oversample·cols)``.

        The shape of (filtered) projections that a backprojector accepts: ``oversample`` samples
        per detector column, as :func:`.filters.filter_projections` returns them.
        """
        if int(oversample) != oversample or oversample < 1:
            raise GeometryError(f"oversample must be a positive integer, got {oversample!r}")
        expected = (len(self), self.rows, int(oversample) * self.cols)
        if tuple(shape) != expected:
            what = "cols" if oversample == 1 else f"{int(oversample)}·cols"
            raise GeometryError(
                f"projections have shape {tuple(shape)}; "
                f"the geometry expects (angles, rows, {what}) = {expected}"
            )

    def sample_steps(self, oversample: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
        """``(cos θ, sin θ, axis)`` in units of samples ``1/oversample`` of a column wide.

        Pixel ``(x, y)`` reads sample ``x·cos + y·sin + axis`` of the angle's projection.
        """
        os_ = float(oversample)
        return np.cos(self.angles) * os_, np.sin(self.angles) * os_, self.axis_column * os_

    def angular_weights(self) -> np.ndarray:
        """Each angle's share of the half circle (radians, sums to π): :func:`angular_weights`."""
        if self._weights is None:
            object.__setattr__(self, "_weights", angular_weights(self.angles))
        assert self._weights is not None
        return self._weights
