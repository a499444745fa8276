"""A completed time step, as the assembler hands it to the pipeline.

Raw counts as received plus the dark and flat means that go with each projection; correction to
line integrals (:meth:`TimeStep.line_integrals`, the offline path's numerics) happens on request,
in whichever worker processes the step. See
:mod:`n2i_stream.service.assembly` for how steps are assembled and closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.preprocess import MIN_TRANSMISSION, Corrected, line_integrals
from ..errors import DataError

__all__ = ["TimeStep"]


@dataclass(frozen=True, eq=False)
class TimeStep:
    """One assembled time step: raw projections as received and what is needed to correct them.

    ``frames`` (``n`` raw-count ``(rows, cols)`` arrays), ``frame_ids`` (unwrapped) and
    ``angles`` (degrees) are in acquisition order. Projection ``i`` goes with dark
    ``darks[dark_index[i]]`` and flat ``flats[flat_index[i]]`` (float32 means; index -1: none
    had arrived yet). ``missing_ids``/``missing_angles`` list the step's projections that never
    arrived. ``last_frame_at`` is the ``received_at`` of the step's latest-arriving frame (for
    latency). The pixels belong to the assembler's pool or the source: call :meth:`release` when
    done, and use none of them afterwards.
    """

    index: int
    frames: tuple[np.ndarray, ...]
    frame_ids: np.ndarray
    angles: np.ndarray
    darks: tuple[np.ndarray, ...]
    flats: tuple[np.ndarray, ...]
    dark_index: np.ndarray
    flat_index: np.ndarray
    missing_ids: np.ndarray
    missing_angles: np.ndarray
    last_frame_at: float
    _stack: np.ndarray | None = field(default=None, repr=False)
    _release: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        """True when every projection of the step arrived."""
        return self.missing_ids.size == 0

    @property
    def projections(self) -> np.ndarray:
        """The raw counts as one ``(n, rows, cols)`` array: a view of the step buffer, or, for
        held frames, a new stacked copy (prefer :attr:`frames` or :meth:`line_integrals`)."""
        return self._stack if self._stack is not None else np.stack(self.frames)

    def release(self) -> None:
        """Return the projection buffer to the assembler's pool; idempotent, any thread."""
        release = self._release
        object.__setattr__(self, "_release", None)
        if release is not None:
            release()

    def line_integrals(
        self, out: np.ndarray | None = None, *, min_transmission: float = MIN_TRANSMISSION
    ) -> Corrected:
        """Line integrals ``(n, rows, cols)`` (float32 unless ``out`` says otherwise), each
        projection corrected with its own dark and flat, and the count of clipped values.

        The numerics are :func:`n2i_stream.core.preprocess.line_integrals`, the offline path's;
        held frames are corrected one by one, so they are never stacked into a raw copy.
        """
        if np.any(self.dark_index < 0) or np.any(self.flat_index < 0):
            raise DataError(
                f"time step {self.index}: projections arrived before any dark or flat; "
                "correct them once references are known, or send darks and flats first"
            )
        if out is None:
            out = np.empty((len(self.frames), *self.darks[0].shape), dtype=np.float32)
        pairs = set(zip(self.dark_index.tolist(), self.flat_index.tolist(), strict=True))
        if len(pairs) == 1 and self._stack is not None:
            ((d, f),) = pairs
            return line_integrals(
                self._stack,
                self.darks[d],
                self.flats[f],
                min_transmission=min_transmission,
                out=out,
            )
        clipped = 0
        for i, (frame, d, f) in enumerate(
            zip(self.frames, self.dark_index.tolist(), self.flat_index.tolist(), strict=True)
        ):
            part = line_integrals(
                frame[None],
                self.darks[d],
                self.flats[f],
                min_transmission=min_transmission,
                out=out[i : i + 1],
            )
            clipped += part.clipped
        return Corrected(out, clipped)
