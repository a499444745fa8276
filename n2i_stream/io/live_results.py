"""The results file of a live scan: :class:`~n2i_stream.io.results.ResultsWriter` plus what only
a live scan knows.

Added to the layout of :mod:`n2i_stream.io.results`::

    /reconstruction/missing_frames  (time_steps,) int64: projections of the step that never
                                    arrived (0: complete); -1 until the step is written
    /reconstruction/center_offset   () float64: the rotation-centre offset used (NaN until
                                    known, e.g. while "auto" waits for the first step)

Both exist before the file switches to SWMR mode (no object can be added afterwards); their
values are written as the scan goes. ``missing_frames`` grows just after ``time_step``, so a
reader following the file may briefly see -1 for the newest step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .results import ResultsWriter

__all__ = ["LiveResultsWriter"]


class LiveResultsWriter(ResultsWriter):
    """A :class:`ResultsWriter` that also records missing frames per step and the centre."""

    def _create_layout(self, config: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        super()._create_layout(config, attrs)
        group = self._file["reconstruction"]
        missing = group.create_dataset(
            "missing_frames",
            shape=(0,),
            maxshape=(None,),
            chunks=(256,),
            dtype=np.int64,
            fillvalue=-1,
        )
        missing.attrs["description"] = "projections of the step that never arrived (0: complete)"
        center = group.create_dataset("center_offset", shape=(), dtype=np.float64)
        center[()] = np.nan
        center.attrs["units"] = "detector pixels (rotation axis minus detector centre)"

    def write_result(self, kind: str, time_step: int, volume: Any, *, missing_frames: int) -> None:
        """:meth:`write_step`, and the step's missing-frame count when the step is new."""
        new = int(time_step) not in self.time_steps
        self.write_step(kind, time_step, volume)
        if new:
            ds = self._file["reconstruction/missing_frames"]
            position = len(self.time_steps) - 1
            ds.resize(position + 1, axis=0)
            ds[position] = int(missing_frames)
            self._file.flush()

    def write_center(self, offset: float) -> None:
        """Record the rotation-centre offset used for every step."""
        self._check_open()
        self._file["reconstruction/center_offset"][()] = float(offset)
        self._file.flush()
