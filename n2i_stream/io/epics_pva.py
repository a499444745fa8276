"""Optional: the newest denoised slice as an EPICS PV Access image (an NTNDArray, via p4p).

Phoebus, ImageJ's EPICS plugin and other areaDetector viewers can then show the live result like
any detector image. This is an extra: ``pip install p4p`` (the ``epics`` extra); p4p is imported
only when a :class:`PvaImageSink` is made, so the rest of the package never needs it.

The NTNDArray carries the slice as float32 ``(n, n)`` (ColorMode 0, gray), ``uniqueId`` = the
time step, the publication time as its timestamp, and the attributes ``TimeStep``, ``Kind``,
``Axis``, ``Index``, ``Incomplete`` and ``MissingFrames``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError, ServiceError

__all__ = ["PvaImageSink"]

_AXES = {"z": 0, "y": 1, "x": 2}


def _import_p4p() -> Any:
    try:
        import p4p.nt
        import p4p.server
        import p4p.server.thread
    except ImportError as exc:
        raise ServiceError(
            "EPICS PV Access output needs the optional package p4p: pip install p4p"
        ) from exc
    return p4p


class PvaImageSink:
    """A ``ResultSink`` serving one slice of the newest ``kind`` result as the PV ``name``.

    ``axis`` and ``index`` choose the slice (default: the middle of the z axis). :meth:`put`
    only replaces the pending result and wakes a worker thread, which cuts the slice and posts
    it, so a slow PVA client never delays the pipeline; a result superseded before it was posted
    is counted in :attr:`superseded`. ``isolate=True`` serves on the loopback interface only
    (tests); ``conf`` is p4p's server configuration (e.g. ``{"EPICS_PVAS_INTF_ADDR_LIST": ...}``)
    and otherwise the ``EPICS_PVAS_*`` environment applies.
    """

    def __init__(
        self,
        name: str = "N2I:image",
        *,
        kind: str = "denoised",
        axis: str = "z",
        index: int | None = None,
        isolate: bool = False,
        conf: Mapping[str, str] | None = None,
    ) -> None:
        if kind not in ("denoised", "fbp"):
            raise ConfigError(f"PVA image kind must be 'denoised' or 'fbp', got {kind!r}")
        if axis not in _AXES:
            raise ConfigError(f"PVA image axis must be one of {list(_AXES)}, got {axis!r}")
        p4p = _import_p4p()
        self.name, self.kind, self.axis, self.index = name, kind, axis, index
        self._nt = p4p.nt.NTNDArray()
        self._pv = p4p.server.thread.SharedPV(initial=self._nt.wrap(np.zeros((1, 1), np.float32)))
        server_kws: dict[str, Any] = {"providers": [{name: self._pv}], "isolate": isolate}
        if conf is not None:
            server_kws.update(conf=dict(conf), useenv=False)
        self._server = p4p.server.Server(**server_kws)
        self.posted = 0
        self.superseded = 0
        self.failed: BaseException | None = None
        self._pending: Any = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="n2i-pva-image", daemon=True)
        self._thread.start()

    def conf(self) -> dict[str, str]:
        """Client configuration reaching this server (for ``p4p.client.thread.Context``)."""
        return dict(self._server.conf())

    def put(self, result: Any) -> None:
        """Make ``result`` the next image to post if it is of this sink's kind."""
        if result.kind != self.kind:
            return
        with self._cond:
            if self._closed:
                return
            if self._pending is not None:
                self.superseded += 1
            self._pending = result
            self._cond.notify()

    def close(self) -> None:
        """Post what is pending, stop the worker and the PVA server (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self._server.stop()
        self._pv.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                result, self._pending = self._pending, None
            if result is not None:
                try:
                    self._post(result)
                except Exception as exc:  # kept for the owner to report; the scan goes on
                    self.failed = exc
            if result is None and self._closed:
                return

    def _post(self, result: Any) -> None:
        volume = result.volume
        position = _AXES[self.axis]
        size = volume.shape[position]
        index = size // 2 if self.index is None else self.index
        if not 0 <= index < size:
            raise ConfigError(
                f"PVA image slice {self.axis}={index} does not exist: the volume has "
                f"{self.axis} in 0..{size - 1}"
            )
        image = np.ascontiguousarray(np.take(volume, index, axis=position), dtype=np.float32)
        attrib = {
            "TimeStep": int(result.time_step),
            "Kind": str(result.kind),
            "Axis": self.axis,
            "Index": int(index),
            "Incomplete": bool(result.incomplete),
            "MissingFrames": int(result.missing),
        }
        value = self._nt.wrap(image, attrib=attrib, timestamp=time.time())
        value["uniqueId"] = int(result.time_step)
        self._pv.post(value)
        self.posted += 1
