"""Write scans as Data Exchange HDF5 files, frame by frame, and ground truth next to them.

Layout (DESIGN.md §3): ``/exchange/data`` (frames, rows, cols) raw counts, one frame per chunk,
with the attribute ``frames_per_step``; ``/exchange/data_dark``, ``/exchange/data_white``,
``/exchange/theta`` (degrees, one per projection frame). ``/exchange/frame_id``,
``/exchange/frame_id_dark`` and ``/exchange/frame_id_white`` hold each frame's acquisition id;
the attribute ``frame_index`` of the dark and flat datasets gives, per frame, the projection frame
after which it was taken (-1: before the first), so readers can tell flats taken before the scan
from flats taken after it. A file whose writing was interrupted carries the root attribute
``incomplete``. Parameters go to
``/process/<name>`` as attributes; the root carries ``software`` and ``software_version``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import h5py
import numpy as np

from .. import __version__
from ..errors import DataFileError, FrameError

__all__ = ["DataExchangeWriter", "FrameLike", "write_truth"]

_DATASETS = {"projection": "data", "dark": "data_dark", "flat": "data_white"}
_IDS = {"projection": "frame_id", "dark": "frame_id_dark", "flat": "frame_id_white"}
_GROW = 64  # frames added to a dataset's size at a time


class FrameLike(Protocol):
    """What :meth:`DataExchangeWriter.write_frame` needs of a frame."""

    frame: int
    kind: str
    data: np.ndarray
    angle: float | None


def _plain(value: Any) -> Any:
    """An HDF5-attribute-friendly version of a configuration value (None becomes "none")."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def _set_attrs(node: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        node.attrs[key] = _plain(value)


class DataExchangeWriter:
    """Appends frames of one ``(rows, cols)`` camera to a new Data Exchange file.

    Use as a context manager; :meth:`close` trims the datasets to the frames written.
    ``parameters`` (a mapping of group name to attribute mapping) are written under ``/process``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rows: int,
        cols: int,
        dtype: Any = np.uint16,
        frames_per_step: int | None = None,
        parameters: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.shape = (int(rows), int(cols))
        self.dtype = np.dtype(dtype)
        try:
            self._file = h5py.File(self.path, "w")
        except OSError as exc:
            raise DataFileError(self.path, None, f"cannot create the file: {exc}") from exc
        self._file.attrs["software"] = "n2i-stream"
        self._file.attrs["software_version"] = __version__
        exchange = self._file.create_group("exchange")
        self._data: dict[str, h5py.Dataset] = {}
        self._ids: dict[str, h5py.Dataset] = {}
        self.counts = {kind: 0 for kind in _DATASETS}
        self._after: dict[str, list[int]] = {"dark": [], "flat": []}
        for kind, name in _DATASETS.items():
            self._data[kind] = exchange.create_dataset(
                name,
                shape=(0, *self.shape),
                maxshape=(None, *self.shape),
                chunks=(1, *self.shape),
                dtype=self.dtype,
            )
            self._ids[kind] = exchange.create_dataset(
                _IDS[kind], shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.int64
            )
        self._theta = exchange.create_dataset(
            "theta", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float64
        )
        self._theta.attrs["units"] = "degrees"
        if frames_per_step is not None:
            self._data["projection"].attrs["frames_per_step"] = int(frames_per_step)
        for group, attrs in (parameters or {}).items():
            _set_attrs(self._file.require_group(f"process/{group}"), attrs)

    def write(
        self, kind: str, data: np.ndarray, *, angle: float | None = None, frame_id: int = -1
    ) -> None:
        """Append one frame of ``kind`` dark, flat or projection (with ``angle`` in degrees)."""
        if kind not in _DATASETS:
            raise FrameError(f"unknown frame kind {kind!r}; expected dark, flat or projection")
        if tuple(data.shape) != self.shape:
            raise FrameError(f"{kind} frame has shape {tuple(data.shape)}, expected {self.shape}")
        if (kind == "projection") != (angle is not None):
            raise FrameError(
                f"a {kind} frame {'needs' if kind == 'projection' else 'has no'} angle"
            )
        index = self.counts[kind]
        dset, ids = self._data[kind], self._ids[kind]
        if index == dset.shape[0]:
            dset.resize(index + _GROW, axis=0)
            ids.resize(index + _GROW, axis=0)
            if kind == "projection":
                self._theta.resize(index + _GROW, axis=0)
        dset[index] = data
        ids[index] = frame_id
        if kind == "projection":
            self._theta[index] = angle
        else:
            self._after[kind].append(self.counts["projection"] - 1)
        self.counts[kind] = index + 1

    def write_frame(self, frame: FrameLike) -> None:
        """Append a frame object (e.g. :class:`~n2i_stream.sim.scan.SimFrame`)."""
        self.write(frame.kind, frame.data, angle=frame.angle, frame_id=frame.frame)

    def close(self) -> None:
        """Trim the datasets to the frames written and close the file (idempotent)."""
        if not self._file.id.valid:
            return
        for kind, count in self.counts.items():
            self._data[kind].resize(count, axis=0)
            self._ids[kind].resize(count, axis=0)
        self._theta.resize(self.counts["projection"], axis=0)
        for kind, after in self._after.items():
            self._data[kind].attrs["frame_index"] = np.asarray(after, dtype=np.int64)
        self._file.close()

    def __enter__(self) -> DataExchangeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self._file.id.valid:
            # A scan cut short must not pass for a complete one.
            self._file.attrs["incomplete"] = f"writing stopped by {exc_type.__name__}"
        self.close()


def write_truth(
    path: str | Path,
    volumes: Iterable[np.ndarray],
    *,
    shape: tuple[int, int, int, int],
    datasets: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write ``/truth/attenuation`` ``(steps, rows, n, n)`` float32, one time step at a time.

    ``volumes`` yields the steps' ``(rows, n, n)`` volumes in order (a generator keeps only one in
    memory); ``datasets`` (e.g. angles per step) go under ``/truth`` too, ``attrs`` onto it.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "w")
    except OSError as exc:
        raise DataFileError(path, None, f"cannot create the file: {exc}") from exc
    with f:
        f.attrs["software"] = "n2i-stream"
        f.attrs["software_version"] = __version__
        truth = f.create_group("truth")
        _set_attrs(truth, attrs or {})
        att = truth.create_dataset(
            "attenuation", shape=shape, chunks=(1, 1, *shape[2:]), dtype=np.float32
        )
        att.attrs["units"] = "attenuation per pixel"
        written = 0
        for step, volume in enumerate(volumes):
            if step >= shape[0] or tuple(volume.shape) != shape[1:]:
                raise DataFileError(
                    path,
                    "/truth/attenuation",
                    f"step {step} has shape {tuple(volume.shape)}; expected {shape[0]} steps "
                    f"of {shape[1:]}",
                )
            att[step] = volume
            written += 1
        if written != shape[0]:
            raise DataFileError(
                path, "/truth/attenuation", f"got {written} steps, expected {shape[0]}"
            )
        for name, values in (datasets or {}).items():
            truth.create_dataset(name, data=values)
