"""Prometheus metrics and a health check on one HTTP port, fed by the service's status.

:class:`MetricsExporter` reads ``status()`` (any callable returning the STATUS object of
:mod:`n2i_stream.service.control`) every ``interval_s`` seconds on its own thread — and at
once on every state change when attached to a service — and serves:

``GET /metrics``
    Prometheus text format. Frame and step counters are ``*_total`` counters summed over every
    scan the exporter has seen (the status counts per scan; a new scan is recognised by its
    ``scan_id``, by a return to ``acquiring``, or by counts going down). Gauges give the state,
    queue depths, training progress, latency and ingest rates of the current scan;
    ``n2i_step_latency_seconds`` is a histogram of every published result's latency (from
    :attr:`MetricsExporter.sink`, a result sink); ``process_*`` are the process's CPU time and
    memory, ``n2i_gpu_memory_*_bytes`` the GPU memory torch or CuPy hold.
``GET /healthz``
    ``200 {"status": "ok", ...}`` while the status is fresh (read within ``stale_after_s``) and
    reports no fatal error; ``503 {"status": "unhealthy", "reason": ...}`` otherwise.

Needs the ``metrics`` extra (``prometheus-client``). Serves only reads; binds 127.0.0.1 unless
told otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..errors import ServiceError

__all__ = ["LATENCY_BUCKETS", "LatencySink", "MetricsExporter", "StatusTotals"]

log = logging.getLogger(__name__)

StatusProvider = Callable[[], Mapping[str, Any]]

#: seconds; a step's latency runs from its last frame to its result being published
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: status ``counters`` key -> (metric name, help) of the frame counters
FRAME_COUNTERS = {
    "received": ("n2i_frames_received", "Frames received and filed into the current scan"),
    "bad": ("n2i_frames_bad", "Bad messages (malformed header, wrong size, unknown kind)"),
    "duplicate": ("n2i_frames_duplicate", "Frames whose id had been seen before"),
    "out_of_order": ("n2i_frames_out_of_order", "Frames arriving below the highest id seen"),
    "wrapped": ("n2i_frame_id_wraps", "Times the detector's frame counter wrapped"),
    "dropped": ("n2i_frames_dropped", "Projections that never arrived (step closed without)"),
    "outside_range": ("n2i_frames_outside_range", "Frame ids in no configured run"),
    "late": ("n2i_frames_late", "Projections arriving after their step was closed"),
    "dropped_overload": ("n2i_frames_dropped_overload", "Frames the source dropped, overloaded"),
}
#: status ``steps`` key -> (metric name, help) of the step counters
STEP_COUNTERS = {
    "incomplete": ("n2i_steps_incomplete", "Time steps reconstructed with frames missing"),
    "dropped_overload": ("n2i_steps_dropped_overload", "Steps dropped by the drop_oldest policy"),
    "backlog_dropped": (
        "n2i_steps_backlog_dropped",
        "FBP volumes dropped from the denoise backlog",
    ),
    "failed": ("n2i_steps_failed", "Time steps that could not be reconstructed"),
}
SCAN_STATES = ("acquiring", "training", "streaming")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class StatusTotals:
    """Counters summed over scans from successive status snapshots (thread-safe).

    The status counts per scan. A scan is over when the next one is configured (a snapshot in
    ``acquiring`` after a state without a scan), when ``scan_id`` changes, or when a count goes
    down; its last counts then join the totals. The snapshot taken as a scan is configured may
    still show the previous scan, so it starts the new scan without counting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple[str, str], float] = {}  # counts of scans that are over
        self._current: dict[tuple[str, str], float] = {}
        self._last: tuple[Any, Any] = (None, None)  # (scan_id, state) of the last snapshot
        self._configuring = False
        self.scans = 0

    @staticmethod
    def _counts(status: Mapping[str, Any]) -> dict[tuple[str, str], float]:
        counts: dict[tuple[str, str], float] = {}
        counters = status.get("counters") or {}
        for key in FRAME_COUNTERS:
            if (v := _number(counters.get(key))) is not None:
                counts["frames", key] = v
        for reason, n in (counters.get("bad_reasons") or {}).items():
            if (v := _number(n)) is not None:
                counts["bad_reason", str(reason)] = v
        steps = status.get("steps") or {}
        for key in (*STEP_COUNTERS, "published_fbp", "published_denoised"):
            if (v := _number(steps.get(key))) is not None:
                counts["steps", key] = v
        return counts

    def _next_scan(self) -> None:
        for key, value in self._current.items():
            self._done[key] = self._done.get(key, 0.0) + value
        self._current = {}
        self.scans += 1

    def update(self, status: Mapping[str, Any]) -> None:
        counts = self._counts(status)
        scan_id, state = status.get("scan_id"), status.get("state")
        with self._lock:
            last_id, last_state = self._last
            self._last = (scan_id, state)
            if scan_id is None:
                return
            if state == "acquiring" and last_state not in SCAN_STATES:
                self._next_scan()
                self._configuring = True
                return
            if self._configuring:
                self._configuring = False
            elif (
                last_id is None
                or scan_id != last_id
                or any(v < self._current.get(k, 0.0) for k, v in counts.items())
            ):
                self._next_scan()
            self._current = counts

    def totals(self) -> dict[tuple[str, str], float]:
        with self._lock:
            keys = self._done.keys() | self._current.keys()
            return {k: self._done.get(k, 0.0) + self._current.get(k, 0.0) for k in keys}


class LatencySink:
    """A result sink observing each result's latency into the exporter's histogram."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    def put(self, result: Any) -> None:
        latency = getattr(result, "latency_s", None)
        if latency is not None and math.isfinite(latency):
            self._histogram.labels(kind=str(result.kind)).observe(latency)

    def close(self) -> None:
        pass  # nothing held: the histogram lives as long as the exporter


class _StatusCollector(Collector):
    """Renders the exporter's latest snapshot and totals at scrape time."""

    def __init__(self, exporter: MetricsExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        status, age, error = self._exporter.snapshot()
        totals = self._exporter.totals.totals()
        up = GaugeMetricFamily("n2i_up", "1 when the last status read succeeded")
        up.add_metric([], 0.0 if error else 1.0)
        yield up
        stale = GaugeMetricFamily("n2i_status_age_seconds", "Seconds since the status was read")
        stale.add_metric([], age if age is not None else math.inf)
        yield stale
        yield from _counters(totals, self._exporter.totals.scans)
        if status is not None:
            yield from _gauges(status)
        yield from _gpu_memory()


def _counters(totals: Mapping[tuple[str, str], float], scans: int) -> Iterator[Metric]:
    for key, (name, doc) in FRAME_COUNTERS.items():
        family = CounterMetricFamily(name, doc + " (all scans)")
        family.add_metric([], totals.get(("frames", key), 0.0))
        yield family
    reasons = CounterMetricFamily(
        "n2i_frames_bad_by_reason", "Bad messages per reason (all scans)", labels=["reason"]
    )
    for (group, reason), value in sorted(totals.items()):
        if group == "bad_reason":
            reasons.add_metric([reason], value)
    yield reasons
    published = CounterMetricFamily(
        "n2i_steps_published", "Time steps published (all scans)", labels=["kind"]
    )
    for kind in ("fbp", "denoised"):
        published.add_metric([kind], totals.get(("steps", f"published_{kind}"), 0.0))
    yield published
    for key, (name, doc) in STEP_COUNTERS.items():
        family = CounterMetricFamily(name, doc + " (all scans)")
        family.add_metric([], totals.get(("steps", key), 0.0))
        yield family
    started = CounterMetricFamily("n2i_scans", "Scans seen by the exporter")
    started.add_metric([], float(scans))
    yield started


def _gauge(name: str, doc: str, value: Any, labels: Mapping[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
    number = _number(value)
    family.add_metric(
        list(labels.values()) if labels else [], math.nan if number is None else number
    )
    return family


def _gauges(status: Mapping[str, Any]) -> Iterator[Metric]:
    from ..service.state import STATES, TRAINING_STATES

    info = GaugeMetricFamily(
        "n2i_info", "Version and current scan of the service", labels=["version", "scan_id"]
    )
    info.add_metric([str(status.get("version")), str(status.get("scan_id") or "")], 1.0)
    yield info
    state = GaugeMetricFamily("n2i_state", "1 for the service's current state", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1.0 if status.get("state") == name else 0.0)
    yield state
    counters, steps = status.get("counters") or {}, status.get("steps") or {}
    queues = GaugeMetricFamily("n2i_queue_depth", "Items waiting", labels=["queue"])
    queues.add_metric(["frames"], _number(counters.get("queued")) or 0.0)
    queues.add_metric(["steps"], _number(steps.get("backlog")) or 0.0)
    yield queues
    yield _gauge("n2i_scan_steps", "Time steps of the current scan", steps.get("total"))
    yield _gauge("n2i_scan_steps_received", "Time steps assembled", steps.get("received"))
    yield _gauge(
        "n2i_scan_last_published_step", "Newest published step", steps.get("last_published")
    )
    yield _gauge(
        "n2i_frames_without_scan", "Frames that arrived while no scan ran",
        status.get("frames_without_scan"),
    )  # fmt: skip
    training = status.get("training") or {}
    tstate = GaugeMetricFamily(
        "n2i_training_state", "1 for the training's current state", labels=["state"]
    )
    for name in TRAINING_STATES:
        tstate.add_metric([name], 1.0 if training.get("state") == name else 0.0)
    yield tstate
    for key, doc in (
        ("iteration", "Training iterations done"),
        ("iterations", "Training iterations planned (NaN: time budget only)"),
        ("loss", "Latest training loss"),
        ("eta_s", "Seconds of training left (estimate)"),
        ("elapsed_s", "Seconds of training so far"),
    ):
        name = f"n2i_training_{key.removesuffix('_s')}" + ("_seconds" if key.endswith("_s") else "")
        yield _gauge(name, doc, training.get(key))
    latency = GaugeMetricFamily(
        "n2i_scan_latency_seconds", "Step latency of the current scan", labels=["stat"]
    )
    for key, value in (status.get("latency_s") or {}).items():
        latency.add_metric([str(key)], _number(value) if _number(value) is not None else math.nan)
    yield latency
    ingest = status.get("ingest") or {}
    yield _gauge(
        "n2i_ingest_frames_per_second", "Frames received per second", ingest.get("frames_per_s")
    )
    yield _gauge(
        "n2i_ingest_bytes_per_second", "Bytes received per second", ingest.get("bytes_per_s")
    )


def _gpu_memory() -> Iterator[Metric]:
    """GPU memory held by torch and CuPy, when the process uses them (never imports them)."""
    allocated = GaugeMetricFamily(
        "n2i_gpu_memory_allocated_bytes", "GPU memory in use", labels=["library", "device"]
    )
    reserved = GaugeMetricFamily(
        "n2i_gpu_memory_reserved_bytes", "GPU memory held by caching allocators",
        labels=["library", "device"],
    )  # fmt: skip
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            allocated.add_metric(["torch", f"cuda:{i}"], float(torch.cuda.memory_allocated(i)))
            reserved.add_metric(["torch", f"cuda:{i}"], float(torch.cuda.memory_reserved(i)))
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            pool = cupy.get_default_memory_pool()
            device = f"cuda:{cupy.cuda.runtime.getDevice()}"
            allocated.add_metric(["cupy", device], float(pool.used_bytes()))
            reserved.add_metric(["cupy", device], float(pool.total_bytes()))
        except Exception as exc:  # a CuPy without a usable device: report none
            log.debug("no CuPy memory figures: %s", exc)
    yield allocated
    yield reserved


class MetricsExporter:
    """Serves ``/metrics`` and ``/healthz`` from ``status`` (see the module docstring).

    Lifecycle: ``exporter = MetricsExporter(service.status, port=9464)``; before the service
    starts, :meth:`attach` it (adds :attr:`sink` and a state listener); :meth:`start`;
    finally :meth:`close`. ``port=0`` picks a free port (:attr:`address`).
    """

    def __init__(
        self,
        status: StatusProvider,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        interval_s: float = 1.0,
        stale_after_s: float = 10.0,
        process: bool = True,
    ) -> None:
        self._status = status
        self._host, self._port = host, port
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.totals = StatusTotals()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(self))
        if process:
            ProcessCollector(registry=self.registry)
        self.latency = Histogram(
            "n2i_step_latency_seconds",
            "Last frame of a step received -> its result published",
            labelnames=["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sink = LatencySink(self.latency)
        self._lock = threading.Lock()
        self._latest: Mapping[str, Any] | None = None
        self._read_at: float | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="n2i-metrics", daemon=True)
        self._httpd: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any, status: StatusProvider) -> MetricsExporter:
        """From the ``[metrics]`` settings (:class:`~n2i_stream.settings.MetricsSettings`)."""
        return cls(
            status,
            host=settings.host,
            port=settings.port,
            interval_s=settings.interval_s,
            stale_after_s=settings.stale_after_s,
        )

    def attach(self, service: Any) -> None:
        """Add the latency sink to ``service`` and read its status on every state change."""
        service.add_sink(self.sink)
        service.add_state_listener(lambda state, reason: self.poll())

    # -- status ----------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read the status now (any thread); a failure marks the exporter unhealthy."""
        try:
            status = self._status()
        except Exception as exc:
            with self._lock:
                first = self._error is None
                self._error = f"status() failed: {type(exc).__name__}: {exc}"
            if first:
                log.warning("metrics: %s", self._error)
            return
        self.totals.update(status)
        with self._lock:
            self._latest, self._read_at, self._error = status, time.monotonic(), None

    def snapshot(self) -> tuple[Mapping[str, Any] | None, float | None, str | None]:
        """(latest status, its age in seconds, the error of the last read or None)."""
        with self._lock:
            age = None if self._read_at is None else time.monotonic() - self._read_at
            return self._latest, age, self._error

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the /healthz body)."""
        status, age, error = self.snapshot()
        reason = error
        if reason is None and (age is None or age > self.stale_after_s):
            reason = "no status read yet" if age is None else f"status is {age:.1f} s old"
        if reason is None and status is not None and status.get("fatal"):
            reason = str(status["fatal"])
        body: dict[str, Any] = {"status": "ok" if reason is None else "unhealthy"}
        if reason is not None:
            body["reason"] = reason
        if status is not None:
            body |= {k: status.get(k) for k in ("state", "scan_id", "version")}
        body["status_age_s"] = None if age is None else round(age, 3)
        return reason is None, body

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    # -- HTTP ------------------------------------------------------------------------------------

    def start(self) -> MetricsExporter:
        """Read the status once, then serve; ServiceError if the port cannot be bound."""
        self.poll()
        try:
            self._httpd = _Server((self._host, self._port), self)
        except OSError as exc:
            raise ServiceError(
                f"metrics cannot listen on {self._host}:{self._port}: {exc}; choose another "
                "[metrics] port (0 picks a free one)"
            ) from exc
        self._server_thread = threading.Thread(
            target=self._httpd.serve_forever, name="n2i-metrics-http", daemon=True
        )
        self._server_thread.start()
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", *self.address)
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise ServiceError("the metrics exporter has no address before start()")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving and polling; joins both threads (idempotent)."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        for thread in (self._server_thread, self._thread):
            if thread is not None and thread.ident is not None:
                thread.join()

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], exporter: MetricsExporter) -> None:
        self.exporter = exporter
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        exporter = self.server.exporter
        if path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(exporter.registry))
        elif path == "/healthz":
            ok, body = exporter.health()
            self._reply(200 if ok else 503, "application/json", json.dumps(body).encode())
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)
