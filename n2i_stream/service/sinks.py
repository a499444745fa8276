"""Where results go: the :class:`StepResult` value, the :class:`ResultSink` protocol and sinks.

A sink receives every result of a scan in publication order from one thread (the pipeline's
publisher) and must not block it for long: a sink that can be slow wraps itself in
:class:`QueuedSink` (a bounded queue and its own thread, counting what it drops).

* :class:`MemorySink` keeps results in a list (tests, the demo, the latency benchmark);
* :class:`ResultsFileSink` writes the HDF5 results file of DESIGN.md §3 (SWMR);
* :class:`~n2i_stream.io.zmq_sink.ZmqResultSink` publishes ``n2i-recon-1.0`` messages.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import ServiceError

__all__ = ["MemorySink", "QueuedSink", "ResultSink", "ResultsFileSink", "StepResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class StepResult:
    """One published reconstruction of one time step.

    ``volume`` is ``(rows, n, n)`` float32 (axes z, y, x); ``incomplete`` and ``missing`` say
    that ``missing`` projections never arrived and the step was reconstructed from the rest;
    ``latency_s`` is the time from the step's last frame received to this result's
    publication (None where not measured). ``slices`` are the z-slices a scan asked to publish
    on the wire (None: the whole volume); sinks that store volumes ignore it.
    """

    time_step: int
    kind: Literal["fbp", "denoised"]
    volume: np.ndarray
    incomplete: bool = False
    missing: int = 0
    latency_s: float | None = None
    scan_id: str | None = None
    slices: tuple[int, ...] | None = None


@runtime_checkable
class ResultSink(Protocol):
    """Receives results in order from one thread; ``close`` flushes and releases (idempotent)."""

    def put(self, result: StepResult) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps every result; :meth:`wait_for` blocks until a condition on them holds."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []
        self.closed = False
        self._cond = threading.Condition()

    def put(self, result: StepResult) -> None:
        with self._cond:
            self.results.append(result)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def of_kind(self, kind: str) -> dict[int, StepResult]:
        """The latest result of ``kind`` per time step."""
        with self._cond:
            return {r.time_step: r for r in self.results if r.kind == kind}

    def wait_for(
        self, predicate: Callable[[list[StepResult]], bool], timeout: float = 30.0
    ) -> list[StepResult]:
        """Wait until ``predicate(results)`` is true; ServiceError after ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.results), timeout):
                raise ServiceError(
                    f"memory sink: condition not met within {timeout} s "
                    f"({len(self.results)} results so far)"
                )
            return list(self.results)


class QueuedSink:
    """Runs a slow sink on its own thread behind a queue of at most ``maxsize`` results.

    When the queue is full the oldest queued result is dropped (counted in ``dropped``), so the
    pipeline never waits for the wrapped sink. ``close`` delivers what is queued, then closes it.
    """

    def __init__(self, sink: ResultSink, *, maxsize: int = 8, name: str = "queued-sink") -> None:
        if maxsize < 1:
            raise ServiceError(f"{name}: maxsize must be >= 1, got {maxsize}")
        self.sink = sink
        self.dropped = 0
        self.failed: BaseException | None = None
        self._queue: queue.Queue[StepResult | None] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, result: StepResult) -> None:
        with self._lock:
            if self._closed:
                return
            while True:
                try:
                    self._queue.put_nowait(result)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass  # the thread took one meanwhile: there is room now

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                self.sink.put(item)
        except Exception as exc:  # the wrapped sink broke: record it, keep the pipeline alive
            self.failed = exc
            log.exception("%s: the wrapped sink failed; its results are dropped", self._thread.name)
            while self._queue.get() is not None:
                self.dropped += 1
        finally:
            self.sink.close()


class ResultsFileSink:
    """Writes every result into the scan's HDF5 results file (readable during the scan: SWMR).

    The file is created when the sink is; ``config`` (the scan configuration as plain data) and
    ``attrs`` are stored as attributes. Training losses go to ``/training/loss``
    (:meth:`put_losses`), the centre used to ``/reconstruction/center_offset``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rows: int,
        n: int,
        config: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        from ..io.live_results import LiveResultsWriter

        self.path = Path(path)
        self._writer = LiveResultsWriter(
            self.path,
            rows=rows,
            n=n,
            kinds=("fbp", "denoised"),
            config=config,
            attrs=attrs,
            overwrite=overwrite,
        )

    def put(self, result: StepResult) -> None:
        self._writer.write_result(
            result.kind, result.time_step, result.volume, missing_frames=result.missing
        )

    def put_losses(self, values: Iterable[float]) -> None:
        self._writer.append_loss(list(values))

    def put_center(self, offset: float) -> None:
        self._writer.write_center(offset)

    def close(self) -> None:
        self._writer.close()

    @property
    def closed(self) -> bool:
        return self._writer.closed
