"""The results file: reconstructions per time step, written as they are made (DESIGN.md §3).

Layout::

    /reconstruction/fbp        (time_steps, rows, n, n) float32, axes time_step:z:y:x
    /reconstruction/denoised   (time_steps, rows, n, n) float32 (only when asked for)
    /reconstruction/time_step  (time_steps,) int64: the scan's time step stored at each position
    /training/loss             (iterations,) float32, appended during training
    attributes of /            software_version, software, config (JSON) and any scan settings

The first axis grows one time step at a time; every dataset is chunked one slice ``(1, 1, n, n)``
so a viewer can read a single slice cheaply, and a slot not written yet reads NaN (the fill
value). The file is opened with ``libver="latest"`` and switched to SWMR mode once its layout
exists, and is flushed after every write, so another process can follow it while it grows
(``h5py.File(path, "r", libver="latest", swmr=True)`` and ``dataset.refresh()``). A reader
should take ``/reconstruction/time_step`` as the list of steps present: it grows last.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..core._xp import to_numpy
from ..errors import ConfigError, DataError, DataFileError

__all__ = ["KINDS", "ResultsWriter"]

#: Reconstruction kinds the file can hold, each a dataset under /reconstruction.
KINDS: tuple[str, ...] = ("fbp", "denoised")


def _attr(value: Any) -> Any:
    """An HDF5 attribute value: numbers, strings and flat number lists as they are, else JSON."""
    if isinstance(value, (bool, int, float, str, np.number, np.bool_)):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    return json.dumps(value, default=str)


class ResultsWriter:
    """Writes the results file of one run; a context manager that closes (and flushes) on exit.

    ``rows`` and ``n`` fix the volume shape ``(rows, n, n)``; ``kinds`` names the
    reconstruction datasets to create (``"fbp"``, ``"denoised"``). ``config`` (a mapping, e.g.
    :func:`~n2i_stream.config.to_mapping` of the run's configuration) is stored as JSON and
    ``attrs`` as individual root attributes. An existing file is replaced only with
    ``overwrite=True``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rows: int,
        n: int,
        kinds: Sequence[str] = ("fbp",),
        config: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.shape = (int(rows), int(n), int(n))
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown or not kinds:
            raise ConfigError(f"unknown result kinds {unknown}; expected some of {list(KINDS)}")
        if min(self.shape) < 1:
            raise ConfigError(f"volume shape (rows, n, n) must be positive, got {self.shape}")
        self.kinds = tuple(dict.fromkeys(kinds))
        if self.path.exists() and not overwrite:
            raise DataFileError(
                self.path, None, "exists; choose another output file or allow overwriting"
            )
        try:
            self._file = h5py.File(self.path, "w", libver="latest")
        except OSError as exc:
            raise DataFileError(self.path, None, f"cannot create the results file: {exc}") from exc
        try:
            self._create_layout(config or {}, attrs or {})
            # From here on datasets may grow but no new object or attribute can be added.
            self._file.swmr_mode = True
        except BaseException:
            self._file.close()
            raise
        self._position: dict[int, int] = {}

    def _create_layout(self, config: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        f = self._file
        f.attrs["software"] = "n2i-stream"
        f.attrs["software_version"] = __version__
        f.attrs["config"] = json.dumps(dict(config), default=str)
        for key, value in attrs.items():
            f.attrs[key] = _attr(value)
        group = f.create_group("reconstruction")
        n = self.shape[-1]
        for kind in self.kinds:
            ds = group.create_dataset(
                kind,
                shape=(0, *self.shape),
                maxshape=(None, *self.shape),
                chunks=(1, 1, n, n),
                dtype=np.float32,
                fillvalue=np.nan,
            )
            ds.attrs["axes"] = "time_step:z:y:x"
            ds.attrs["units"] = "attenuation per pixel"
        steps = group.create_dataset(
            "time_step", shape=(0,), maxshape=(None,), chunks=(256,), dtype=np.int64
        )
        steps.attrs["description"] = "scan time step stored at each position of the first axis"
        loss = f.create_group("training").create_dataset(
            "loss", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float32
        )
        loss.attrs["description"] = "training loss, one value per iteration"

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return not self._file.id.valid

    def close(self) -> None:
        """Flush and close (idempotent); everything written so far stays readable."""
        if not self.closed:
            self._file.flush()
            self._file.close()

    def _check_open(self) -> None:
        if self.closed:
            raise DataFileError(self.path, None, "the results file is already closed")

    # -- writing ----------------------------------------------------------------------------
    @property
    def time_steps(self) -> tuple[int, ...]:
        """Time steps with a slot in the file, in the order they were added."""
        return tuple(self._position)

    def write_step(self, kind: str, time_step: int, volume: Any) -> None:
        """Store the ``(rows, n, n)`` reconstruction of ``time_step`` as ``kind``, then flush.

        A time step seen for the first time gets the next slot of every kind (the others read
        NaN until written); writing a kind again for the same step replaces it.
        """
        self._check_open()
        if kind not in self.kinds:
            raise ConfigError(f"this results file holds {list(self.kinds)}, not {kind!r}")
        data = np.asarray(to_numpy(volume), dtype=np.float32)
        if data.shape != self.shape:
            raise DataError(f"{kind} volume has shape {data.shape}; expected {self.shape}")
        group = self._file["reconstruction"]
        step = int(time_step)
        pos = self._position.get(step)
        new = pos is None
        if pos is None:
            pos = len(self._position)
            for k in self.kinds:
                group[k].resize(pos + 1, axis=0)
        group[kind][pos] = data
        if new:
            # The index grows after the data, so a reader never sees a step without its slot.
            group["time_step"].resize(pos + 1, axis=0)
            group["time_step"][pos] = step
            self._position[step] = pos
        self._file.flush()

    def append_loss(self, values: float | Iterable[float]) -> None:
        """Append training loss values to ``/training/loss``, then flush."""
        self._check_open()
        new = np.atleast_1d(np.asarray(values, dtype=np.float32)).ravel()
        ds = self._file["training/loss"]
        start = ds.shape[0]
        ds.resize(start + new.size, axis=0)
        ds[start:] = new
        self._file.flush()
