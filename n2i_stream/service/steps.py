"""One assembled time step to one FBP volume, with exactly the offline path's numerics.

The live service and ``n2i-stream reconstruct`` must give the same numbers for the same frames,
so correction is ``TimeStep.line_integrals`` (:func:`n2i_stream.core.preprocess.line_integrals`,
the offline clipping, in the pipeline's reconstruction worker), the geometry
is built from degrees as :class:`~n2i_stream.offline.ScanSteps` does, and the volume is
:func:`n2i_stream.core.fbp.fbp` with the scan's size and filter. A step missing projections is
reconstructed from the angles it has (FBP weights each angle by its share of the half circle).
"""

from __future__ import annotations

import numpy as np

from ..core.fbp import fbp
from ..core.geometry import ParallelGeometry
from .scan_config import ScanConfig

__all__ = ["find_step_center", "reconstruct_step", "step_geometry", "warm_up"]


def step_geometry(
    angles_deg: np.ndarray, scan: ScanConfig, center_offset: float
) -> ParallelGeometry:
    """The geometry of a step's received projections (angles in degrees, acquisition order)."""
    return ParallelGeometry.from_degrees(
        angles_deg, rows=scan.rows, cols=scan.cols, center_offset=center_offset
    )


def find_step_center(line_integrals: np.ndarray, angles_deg: np.ndarray, scan: ScanConfig) -> float:
    """The rotation-centre offset estimated on one step (``center_offset: "auto"``)."""
    from ..core.center import find_center

    return float(find_center(line_integrals, step_geometry(angles_deg, scan, 0.0)).offset)


def reconstruct_step(
    line_integrals: np.ndarray, geometry: ParallelGeometry, scan: ScanConfig
) -> np.ndarray:
    """FBP volume ``(rows, n, n)`` float32 of a step's line integrals."""
    volume = fbp(
        line_integrals, geometry, n=scan.size, window=scan.filter, oversample=scan.oversample
    )
    return np.asarray(volume)


def warm_up(*, learning: bool = True) -> None:
    """Load what the first step of the first scan would otherwise wait for: the compiled FBP
    kernels (both loop orders) and, with ``learning``, torch and the learning code."""
    from ..core.backproject_numba import MANY_SLICES

    for rows in (1, MANY_SLICES):
        geometry = ParallelGeometry.from_degrees([0.0, 90.0], rows=rows, cols=8)
        fbp(np.zeros((2, rows, 8), np.float32), geometry)
    if learning:
        from .. import learn  # noqa: F401  (the import is the work)
