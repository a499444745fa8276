"""Lazy, validated reading of Data Exchange HDF5 scans (DESIGN.md §3, APS/TomoBank layout).

Accepted layout (datasets under ``/exchange``):

- ``data`` ``(frames, rows, cols)`` raw counts (integer or float). Optional attribute
  ``frames_per_step`` (integer ≥ 1): frames per time step of a dynamic scan.
- ``data_dark``, ``data_white`` ``(k, rows, cols)``, k ≥ 1: darks and flats (both required; a
  missing one is an error, not a silent zero). Where each was taken, first match wins:

  1. attribute ``frame_index`` on the dataset, one integer per reference frame: the projection
     frame after which it was taken (``-1`` = before the first projection). Frames sharing an
     index form one block; this is how the package's simulator marks mid-scan flats;
  2. datasets ``time_dark`` / ``time_white`` plus ``time`` (one per projection frame), any
     common clock: blocks are placed on the frame axis by time;
  3. datasets ``theta_dark`` / ``theta_white`` (the Data Exchange convention, degrees), when
     ``theta`` is strictly monotonic: blocks are placed by angle;
  4. otherwise all frames are averaged into one reference for the whole scan.

- ``theta`` ``(frames,)`` rotation angles in degrees, one per frame, finite.

Frames are read in chunks (a scan need not fit in memory) and checked for NaN/inf as they are
read. Every problem raises :class:`~n2i_stream.errors.DataFileError` naming the file, the dataset
and what was expected; h5py/OS errors are translated with the original as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from ..core.preprocess import (
    MIN_TRANSMISSION,
    Corrected,
    ReferenceMode,
    average_blocks,
    line_integrals,
    references_for_frames,
)
from ..errors import DataError, DataFileError

__all__ = ["DARK", "DATA", "THETA", "WHITE", "DataExchangeFile", "References"]

DATA = "/exchange/data"
DARK = "/exchange/data_dark"
WHITE = "/exchange/data_white"
THETA = "/exchange/theta"
TIME = "/exchange/time"
_TIME_OF = {DARK: "/exchange/time_dark", WHITE: "/exchange/time_white"}
_THETA_OF = {DARK: "/exchange/theta_dark", WHITE: "/exchange/theta_white"}


@dataclass(frozen=True)
class References:
    """Darks or flats averaged per block, with each block's place on the frame axis.

    A block taken after projection frame ``k`` sits at ``k + 0.5``; a single block covers the
    whole scan. ``blocks`` is ``(B, rows, cols)`` float32 for the rows that were read.
    """

    dataset: str
    blocks: np.ndarray
    positions: np.ndarray

    def for_frames(self, frames: Any, *, mode: ReferenceMode = "linear") -> np.ndarray:
        """References for the given frame indices (interpolated between blocks or nearest)."""
        return references_for_frames(self.blocks, self.positions, frames, mode=mode)


def _rows_slice(rows: slice | None, total: int) -> slice:
    start, stop, step = (rows or slice(None)).indices(total)
    if step != 1 or stop <= start:
        raise DataError(f"rows {rows} select no rows of {total} (expected a:b with a < b)")
    return slice(start, stop)


class DataExchangeFile:
    """An open Data Exchange scan: validated on open, frames read on demand.

    Use as a context manager (``with DataExchangeFile(path) as scan: ...``) or call
    :meth:`close`. ``shape`` is ``(frames, rows, cols)``; ``theta`` holds degrees.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError as exc:
            raise DataFileError(self.path, None, "no such file") from exc
        except OSError as exc:
            raise DataFileError(
                self.path, None, f"cannot open as HDF5 (expected a Data Exchange file): {exc}"
            ) from exc
        self._references: dict[tuple[str, int, int], References] = {}
        try:
            self._validate()
        except BaseException:
            self._file.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> DataExchangeFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file.id.valid:
            self._file.close()

    def __repr__(self) -> str:
        return f"DataExchangeFile({str(self.path)!r}, shape={self.shape})"

    # -- validation -------------------------------------------------------------------------
    def _error(self, dataset: str | None, problem: str) -> DataFileError:
        return DataFileError(self.path, dataset, problem)

    def _dataset(self, name: str, problems: list[tuple[str, str]], what: str) -> Any:
        obj = self._file.get(name)
        if obj is None:
            problems.append((name, f"missing; expected {what}"))
            return None
        if not isinstance(obj, h5py.Dataset):
            problems.append((name, f"is a {type(obj).__name__}, expected a dataset of {what}"))
            return None
        if obj.dtype.kind not in "uif":
            problems.append((name, f"has dtype {obj.dtype}; expected numbers ({what})"))
            return None
        return obj

    def _validate(self) -> None:
        problems: list[tuple[str, str]] = []
        data = self._check_data(
            self._dataset(DATA, problems, "(frames, rows, cols) raw counts"), problems
        )
        theta = self._dataset(THETA, problems, "one rotation angle in degrees per frame")
        refs = {
            DARK: self._dataset(DARK, problems, "(k, rows, cols) dark frames"),
            WHITE: self._dataset(WHITE, problems, "(k, rows, cols) flat (white) frames"),
        }
        if data is not None:
            for name, ds in refs.items():
                self._check_reference(name, ds, data.shape, problems)
            self._theta = self._check_theta(theta, data.shape[0], problems)
            self._frames_per_step = self._check_frames_per_step(data, problems)
        if problems:
            (dataset, first), rest = problems[0], problems[1:]
            raise self._error(dataset, first + "".join(f"; also {d}: {p}" for d, p in rest))
        self._data = data
        self._refs = refs
        self._times = self._read_times()

    @staticmethod
    def _check_data(data: Any, problems: list[tuple[str, str]]) -> Any:
        if data is None:
            return None
        if data.ndim != 3:
            problems.append((DATA, f"has shape {data.shape}; expected (frames, rows, cols)"))
            return None
        if data.shape[0] == 0 or data.shape[1] == 0 or data.shape[2] < 2:
            expected = "expected frames >= 1, rows >= 1, cols >= 2"
            problems.append((DATA, f"is empty: shape {data.shape}; {expected}"))
            return None
        return data

    @staticmethod
    def _check_reference(
        name: str, ds: Any, shape: tuple[int, ...], problems: list[tuple[str, str]]
    ) -> None:
        if ds is None:
            return
        _, rows, cols = shape
        if ds.ndim != 3 or ds.shape[0] < 1 or ds.shape[1:] != (rows, cols):
            problems.append(
                (
                    name,
                    f"has shape {ds.shape}; expected (k >= 1, {rows}, {cols}) to match the "
                    f"projections in {DATA} {shape}",
                )
            )

    @staticmethod
    def _check_theta(theta: Any, frames: int, problems: list[tuple[str, str]]) -> np.ndarray | None:
        if theta is None:
            return None
        if theta.shape != (frames,):
            problems.append(
                (THETA, f"has shape {theta.shape}; expected ({frames},), one angle per frame")
            )
            return None
        values = np.asarray(theta[()], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            problems.append(
                (
                    THETA,
                    f"has {bad.size} non-finite angles (first at frame {bad[0]}); "
                    "expected finite degrees",
                )
            )
            return None
        values.setflags(write=False)
        return values

    @staticmethod
    def _check_frames_per_step(data: Any, problems: list[tuple[str, str]]) -> int | None:
        fps = data.attrs.get("frames_per_step")
        if fps is None:
            return None
        value = np.asarray(fps)
        if value.size != 1 or value.dtype.kind not in "iu" or int(value) < 1:
            problems.append(
                (
                    DATA,
                    f"attribute frames_per_step is {value.tolist()!r}; expected an integer >= 1",
                )
            )
            return None
        return int(value)

    def _read_times(self) -> np.ndarray | None:
        ds = self._file.get(TIME)
        if ds is None:
            return None
        t = np.asarray(ds[()], dtype=np.float64).ravel()
        if t.size != self.n_frames or not np.all(np.isfinite(t)):
            raise self._error(TIME, f"has {t.size} values; expected {self.n_frames} finite times")
        if np.any(np.diff(t) < 0):
            raise self._error(TIME, "is not non-decreasing; expected acquisition times")
        return t

    # -- metadata ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, rows, cols)`` of the projections."""
        return tuple(int(s) for s in self._data.shape)  # type: ignore[return-value]

    @property
    def n_frames(self) -> int:
        return int(self._data.shape[0])

    @property
    def rows(self) -> int:
        return int(self._data.shape[1])

    @property
    def cols(self) -> int:
        return int(self._data.shape[2])

    @property
    def theta(self) -> np.ndarray:
        """Rotation angle of every frame, degrees (read-only)."""
        return self._theta

    @property
    def frames_per_step(self) -> int | None:
        """The file's ``frames_per_step`` attribute, or None when it has none."""
        return self._frames_per_step

    @property
    def times(self) -> np.ndarray | None:
        """Acquisition time of every frame (``/exchange/time``), or None."""
        return self._times

    # -- projections ------------------------------------------------------------------------
    def read(
        self, start: int, stop: int, *, rows: slice | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw counts of frames ``start:stop`` (and ``rows``) as float32 ``(frames, rows, cols)``.

        ``out`` (float32, the right shape) is filled in place. Raises :class:`DataFileError` on
        NaN or inf, naming the first bad frame.
        """
        if not 0 <= start < stop <= self.n_frames:
            raise self._error(
                DATA, f"frames {start}:{stop} requested; the file has {self.n_frames}"
            )
        rs = _rows_slice(rows, self.rows)
        shape = (stop - start, rs.stop - rs.start, self.cols)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise DataError(f"out is {out.dtype} {out.shape}; expected float32 {shape}")
        try:
            self._data.read_direct(out, source_sel=np.s_[start:stop, rs, :])
        except OSError as exc:
            raise self._error(DATA, f"cannot read frames {start}:{stop}: {exc}") from exc
        if self._data.dtype.kind == "f":
            finite = np.isfinite(out).all(axis=(1, 2))
            if not finite.all():
                first = start + int(np.argmin(finite))
                raise self._error(
                    DATA, f"frame {first} contains NaN or inf; expected finite counts"
                )
        return out

    def chunks(
        self, start: int, stop: int, size: int, *, rows: slice | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first frame, raw counts)`` for consecutive chunks of at most ``size`` frames."""
        if size < 1:
            raise DataError(f"chunk size must be >= 1, got {size}")
        for a in range(start, stop, size):
            yield a, self.read(a, min(a + size, stop), rows=rows)

    # -- darks and flats --------------------------------------------------------------------
    def darks(self, *, rows: slice | None = None) -> References:
        """Dark frames averaged per block, for ``rows``."""
        return self._reference(DARK, rows)

    def flats(self, *, rows: slice | None = None) -> References:
        """Flat (white) frames averaged per block, for ``rows``."""
        return self._reference(WHITE, rows)

    def _reference(self, name: str, rows: slice | None) -> References:
        rs = _rows_slice(rows, self.rows)
        key = (name, rs.start, rs.stop)
        if key not in self._references:
            ds = self._refs[name]
            try:
                frames = np.asarray(ds[:, rs, :], dtype=np.float32)
            except OSError as exc:
                raise self._error(name, f"cannot read: {exc}") from exc
            if not np.isfinite(frames).all():
                raise self._error(name, "contains NaN or inf; expected finite counts")
            positions = self._positions(name, ds)
            order = np.argsort(positions, kind="stable")
            blocks, block_pos = average_blocks(frames[order], positions[order])
            self._references[key] = References(name, blocks, block_pos)
        return self._references[key]

    def _positions(self, name: str, ds: h5py.Dataset) -> np.ndarray:
        """Place of each reference frame on the projection frame axis (see module docstring)."""
        k, n = int(ds.shape[0]), self.n_frames
        if "frame_index" in ds.attrs:
            idx = np.asarray(ds.attrs["frame_index"]).ravel()
            if idx.size != k or idx.dtype.kind not in "iu" or idx.min() < -1 or idx.max() >= n:
                raise self._error(
                    name,
                    f"attribute frame_index is {idx.dtype} of length {idx.size}; expected {k} "
                    f"integers in -1..{n - 1} (the projection frame each was taken after)",
                )
            return idx.astype(np.float64) + 0.5
        if _TIME_OF[name] in self._file:
            if self._times is None:
                raise self._error(_TIME_OF[name], f"is present but {TIME} is missing")
            t = np.asarray(self._file[_TIME_OF[name]][()], dtype=np.float64).ravel()
            if t.size != k or not np.all(np.isfinite(t)):
                raise self._error(_TIME_OF[name], f"has {t.size} values; expected {k} finite")
            return self._place(t, self._times)
        if _THETA_OF[name] in self._file:
            a = np.asarray(self._file[_THETA_OF[name]][()], dtype=np.float64).ravel()
            d = np.diff(self._theta)
            if a.size != k or not np.all(np.isfinite(a)):
                raise self._error(_THETA_OF[name], f"has {a.size} values; expected {k} finite")
            if not (np.all(d > 0) or np.all(d < 0)):
                raise self._error(
                    _THETA_OF[name],
                    f"cannot be placed: {THETA} is not strictly monotonic; add a frame_index "
                    f"attribute to {name}",
                )
            sign = 1.0 if d.size == 0 or d[0] > 0 else -1.0
            return self._place(sign * a, sign * self._theta)
        return np.zeros(k)

    @staticmethod
    def _place(values: np.ndarray, axis: np.ndarray) -> np.ndarray:
        """Fractional frame positions of ``values`` on the increasing per-frame ``axis``."""
        frames = np.arange(axis.size, dtype=np.float64)
        pos = np.interp(values, axis, frames)
        pos[values < axis[0]] = -0.5
        pos[values > axis[-1]] = axis.size - 0.5
        return pos

    # -- correction -------------------------------------------------------------------------
    def line_integrals(
        self,
        start: int,
        stop: int,
        *,
        rows: slice | None = None,
        mode: ReferenceMode = "linear",
        chunk: int = 64,
        min_transmission: float = MIN_TRANSMISSION,
        out: np.ndarray | None = None,
    ) -> Corrected:
        """Dark/flat-corrected ``-log`` of frames ``start:stop``, read ``chunk`` frames at a time.

        Mid-scan darks and flats are interpolated per frame (``mode``). Returns float32
        ``(frames, rows, cols)`` and the number of clipped values (see
        :func:`~n2i_stream.core.preprocess.line_integrals`).
        """
        rs = _rows_slice(rows, self.rows)
        shape = (stop - start, rs.stop - rs.start, self.cols)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise DataError(f"out is {out.dtype} {out.shape}; expected float32 {shape}")
        darks, flats = self.darks(rows=rs), self.flats(rows=rs)
        if chunk < 1:
            raise DataError(f"chunk size must be >= 1, got {chunk}")
        clipped = 0
        for a in range(start, stop, chunk):
            b = min(a + chunk, stop)
            # Raw counts land in the output buffer and are corrected in place: no temporaries.
            target = self.read(a, b, rows=rs, out=out[a - start : b - start])
            frames = np.arange(a, b)
            res = line_integrals(
                target,
                darks.for_frames(frames, mode=mode),
                flats.for_frames(frames, mode=mode),
                min_transmission=min_transmission,
                out=target,
            )
            clipped += res.clipped
        return Corrected(out, clipped)
