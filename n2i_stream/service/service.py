"""The live service: one frame source, one scan at a time, result sinks, status.

:class:`N2IService` owns the concurrency of the process (STYLE: in one place). Lifecycle::

    service = N2IService(source, options=PipelineOptions())
    service.add_sink(ZmqResultSink(...))      # sinks that outlive scans, before start()
    service.start()                           # source + ingest thread; state "idle"
    service.configure(scan)                   # a scan's pipeline; state "acquiring"
    ... status() ... stop() / abort() ...     # or the scan ends by itself: state "done"
    service.close()                           # drains a running scan, joins every thread

The **ingest thread** lives as long as the service: it takes frames from the source and files
them into the current scan (:meth:`ScanRun.add <n2i_stream.service.pipeline.ScanRun.add>`);
frames arriving while no scan is configured are counted (``frames_without_scan``) and dropped.
A stop is carried out on this thread too, so that the frames the source had received when the
stop came are filed before the scan's input is closed: nothing received is lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from ..config import to_mapping
from ..errors import ServiceError
from ..wire import FrameSource, SourceCounters
from .pipeline import PipelineOptions, ScanRun
from .scan_config import ScanConfig
from .sinks import ResultsFileSink, ResultSink
from .state import SCAN_STATES, StateMachine
from .training import train_config

if TYPE_CHECKING:
    from ..learn import Denoiser
    from .resume import ResumePlan, ScanJournal, ScanRecord
    from .slabs import SlabPool

__all__ = ["N2IService"]

log = logging.getLogger(__name__)

#: ingest-rate samples kept (taken every RATE_PERIOD s): the rate is over ~2 s
RATE_SAMPLES = 9
RATE_PERIOD = 0.25
#: frames arriving with no scan are logged one by one up to LOG_FIRST, then every LOG_EVERY-th
LOG_FIRST = 10
LOG_EVERY = 1000


class N2IService:
    """Runs scans on frames from ``source`` (a :class:`~n2i_stream.wire.FrameSource`).

    ``recv_timeout`` bounds how long the ingest thread waits for a frame before it looks at
    its commands (stop) again. ``warm_up`` loads the compiled FBP kernels and the learning code
    in the background at :meth:`start`, so the first scan's first step does not wait for them.
    With a ``journal``
    (:class:`~n2i_stream.service.resume.ScanJournal`) every scan is recorded on disk, so that
    a restarted service can resume it. With a started ``slab_pool``
    (:class:`~n2i_stream.service.slabs.SlabPool`, owned by the caller) each step's FBP and
    denoising are split over its workers.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        options: PipelineOptions | None = None,
        recv_timeout: float = 0.05,
        journal: ScanJournal | None = None,
        warm_up: bool = True,
        slab_pool: SlabPool | None = None,
    ) -> None:
        self.options = options or PipelineOptions()
        self._slab_pool = slab_pool
        self._source = source
        self._recv_timeout = recv_timeout
        self._sinks: list[ResultSink] = []
        self._machine = StateMachine()
        self._lock = threading.RLock()
        self._run: ScanRun | None = None
        self._baseline = SourceCounters()
        self._commands: queue.SimpleQueue[tuple[str, ScanRun]] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._ingest_loop, name="n2i-ingest", daemon=True)
        self._started = False
        self._closed = False
        self._fatal: str | None = None
        self._ingest_ended = False
        self._no_scan = 0
        self._rates: deque[tuple[float, int, int]] = deque(maxlen=RATE_SAMPLES)
        self._warm_up = warm_up
        self._warm_thread: threading.Thread | None = None
        self._journal = journal
        self._record: ScanRecord | None = None
        self._references_kept = 0  # the run's references_closed last written to the journal
        if journal is not None:
            self._machine.add_listener(self._journal_state)

    # -- lifecycle -------------------------------------------------------------------------------

    def add_sink(self, sink: ResultSink) -> None:
        """Add a sink that receives every result of every scan (before :meth:`start`)."""
        if self._started:
            raise ServiceError("add_sink() after start(): add every sink before starting")
        self._sinks.append(sink)

    def start(self) -> None:
        """Start the frame source and the ingest thread; the service is then ``idle``."""
        if self._started:
            raise ServiceError("the service was already started")
        self._source.start()
        self._started = True
        self._thread.start()
        if self._warm_up:
            self._warm_thread = threading.Thread(target=_warm_up, name="n2i-warm-up", daemon=True)
            self._warm_thread.start()

    def configure(
        self, scan: ScanConfig | Mapping[str, Any], *, resume: ResumePlan | None = None
    ) -> ScanConfig:
        """Start a scan. Refused (ServiceError) while another scan is in progress.

        ``resume`` (from :func:`~n2i_stream.service.resume.resume_unfinished`) continues a scan
        a killed service left unfinished: its results file is recovered and written on.
        Raises ConfigError for an invalid scan, ModelError for a model that cannot be used,
        DataFileError when the results file cannot be created.
        """
        if not isinstance(scan, ScanConfig):
            scan = ScanConfig.from_mapping(scan)
        with self._lock:
            if not self._started or self._closed:
                raise ServiceError("configure() needs a started, open service")
            if self._fatal is not None:
                raise ServiceError(f"the service cannot take scans: {self._fatal}")
            state, _ = self._machine.snapshot()
            old = self._run
            if state in SCAN_STATES and old is not None:
                raise ServiceError(
                    f"busy with scan {old.scan.scan_id!r} in state {state!r}; stop or abort it "
                    "before configuring another"
                )
            if old is not None and not old.join(self.options.join_timeout):
                raise ServiceError(f"the threads of scan {old.scan.scan_id!r} did not end")
            model = self._load_model(scan)
            if model is None:
                train_config(scan, threads=self.options.train_threads)  # ConfigError early
            file_sink = (
                self._open_file(scan)
                if resume is None
                else resume.open_results(model, batch=self.options.denoise_batch)
            )
            record = None
            try:
                if self._journal is not None:
                    record = resume.record if resume is not None else self._journal.begin(scan)
                run = ScanRun(
                    scan,
                    self.options,
                    state=self._machine,
                    sinks=self._sinks,
                    file_sink=file_sink,
                    model=model,
                    skip_steps=resume.skip_steps if resume is not None else (),
                    references=resume.references if resume is not None else (None, None),
                    slab_pool=self._slab_pool,
                )
            except BaseException as exc:
                if file_sink is not None:
                    file_sink.close()
                if record is not None and self._journal is not None:
                    self._journal.finish(record, f"failed to start: {exc}")
                raise
            self._record = record
            self._references_kept = run.assembler.references_closed  # given ones are kept
            self._baseline = self._source.counters()
            self._run = run  # before the state changes: listeners look at the run
            self._machine.move("acquiring")
            run.start()
        log.info("scan %s configured (%d steps of %d frames)", scan.scan_id, scan.steps,
                 scan.frames_per_step)  # fmt: skip
        return scan

    def stop(self, *, wait: bool = True, timeout: float | None = None) -> str:
        """Drain and end the current scan (see the pipeline); returns the state.

        With ``wait`` returns once the scan is done (ServiceError after ``timeout`` s).
        """
        run = self._run
        if run is None or run.done:
            return self._machine.state
        run.request_stop()
        self._finish_input(run)
        if wait and not run.wait(timeout):
            raise ServiceError(f"scan {run.scan.scan_id!r} did not finish within {timeout} s")
        return self._machine.state

    def abort(self, *, wait: bool = True, timeout: float | None = None) -> str:
        """Drop the current scan's queued work and end it (state ``done``, reason ``aborted``)."""
        run = self._run
        if run is None or run.done:
            return self._machine.state
        run.abort("aborted")
        self._finish_input(run)
        if wait and not run.wait(timeout):
            raise ServiceError(f"scan {run.scan.scan_id!r} did not end within {timeout} s")
        return self._machine.state

    def _finish_input(self, run: ScanRun) -> None:
        """End the scan's input on the ingest thread (after filing what the source holds), or
        here when that thread is gone (the frame source failed)."""
        with self._lock:
            if not self._ingest_ended:
                self._commands.put(("finish", run))  # taken by the loop or its last words
                return
        run.finish_input()

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop a running scan (drained), stop the source, join every thread, close the sinks."""
        if self._closed:
            return
        self._closed = True
        run = self._run
        if self._started:
            if run is not None and not run.done and self._thread.is_alive():
                try:
                    self.stop(wait=True, timeout=timeout)
                except ServiceError:
                    log.error("the scan did not drain in time; aborting it")
                    run.abort("aborted: the service closed")
            self._closing.set()
            self._source.stop()
            self._thread.join(timeout)
            if run is not None and not run.done:  # the ingest thread had died
                run.finish_input()
                run.wait(timeout)
            if run is not None:
                run.join(timeout)
            if self._warm_thread is not None:
                self._warm_thread.join(timeout)
        self._source.close()
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> N2IService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what other threads read ------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._machine.state

    @property
    def run(self) -> ScanRun | None:
        """The current (or last) scan's pipeline."""
        return self._run

    def wait_for(self, states: Collection[str], timeout: float | None = None) -> str:
        """Block until the state is one of ``states`` (ServiceError after ``timeout`` s)."""
        return self._machine.wait_for(states, timeout)

    def add_state_listener(self, listener: Any) -> None:
        """Call ``listener(state, reason)`` on every state change (on the changing thread)."""
        self._machine.add_listener(listener)

    def status(self) -> dict[str, Any]:
        """The STATUS object of the service contract (see :mod:`n2i_stream.service.control`)."""
        from .. import __version__

        state, reason = self._machine.snapshot()
        run = self._run
        training = (
            run.training.snapshot()
            if run is not None
            else {"state": "waiting", "reason": None, "iteration": 0, "iterations": None,
                  "loss": None, "eta_s": None, "elapsed_s": 0.0, "losses": [], "model": None}
        )  # fmt: skip
        return {
            "state": state,
            "scan_id": run.scan.scan_id if run is not None else None,
            "reason": reason,
            "output": run.scan.output if run is not None else None,
            "version": __version__,
            "counters": self._counters(run),
            "steps": run.steps_status() if run is not None else _NO_STEPS,
            "training": training,
            "latency_s": run.latency_status()
            if run is not None
            else {"last": None, "median": None, "max": None},
            "ingest": self._ingest_rates(),
            "center_offset": run.center_offset if run is not None else None,
            "frames_without_scan": self._no_scan,
        }

    def _counters(self, run: ScanRun | None) -> dict[str, Any]:
        src, base = self._source.counters(), self._baseline
        reasons = {
            k: n - base.bad_reasons.get(k, 0)
            for k, n in src.bad_reasons.items()
            if n - base.bad_reasons.get(k, 0) > 0
        }
        counters: dict[str, Any] = {
            "received": 0,
            "bad": src.bad - base.bad,
            "duplicate": 0,
            "out_of_order": 0,
            "wrapped": 0,
            "dropped": 0,
            "outside_range": 0,
            "late": 0,
            "dropped_overload": src.dropped_overload - base.dropped_overload,
            "bad_reasons": reasons,
            "queued": src.queued,
        }
        if run is not None:
            c = run.assembler.counters()
            for key in ("received", "duplicate", "out_of_order", "wrapped", "dropped"):
                counters[key] = getattr(c, key)
            counters["outside_range"], counters["late"] = c.outside_range, c.late
            counters["bad"] += c.bad
            for k, n in c.bad_reasons.items():
                reasons[k] = reasons.get(k, 0) + n
        return counters

    def _ingest_rates(self) -> dict[str, float]:
        samples = list(self._rates)
        if len(samples) < 2:
            return {"frames_per_s": 0.0, "bytes_per_s": 0.0}
        (t0, f0, b0), (t1, f1, b1) = samples[0], samples[-1]
        dt = max(t1 - t0, 1e-9)
        return {"frames_per_s": (f1 - f0) / dt, "bytes_per_s": (b1 - b0) / dt}

    # -- scan set-up -------------------------------------------------------------------------------

    def _load_model(self, scan: ScanConfig) -> Denoiser | None:
        if scan.model is None:
            return None
        from ..learn import check_compatible, load_checkpoint
        from ..learn.device import resolve_device
        from .steps import step_geometry

        model = load_checkpoint(scan.model, device=resolve_device("auto"))
        if scan.center_offset != "auto":  # else checked once the first step gives the centre
            first = scan.assembly.projection_angles()[: scan.frames_per_step]
            geometry = step_geometry(first, scan, float(scan.center_offset))
            check_compatible(model, geometry=geometry, n=scan.size)
        return model

    @staticmethod
    def _open_file(scan: ScanConfig) -> ResultsFileSink | None:
        if scan.output is None:
            return None
        return ResultsFileSink(
            scan.output,
            rows=scan.rows,
            n=scan.size,
            config=to_mapping(scan),
            attrs={"scan_id": scan.scan_id, "method": "n2i-stream serve"},
            overwrite=scan.overwrite,
        )

    # -- the ingest thread -------------------------------------------------------------------------

    def _ingest_loop(self) -> None:
        source = self._source
        next_sample = 0.0
        try:
            while not self._closing.is_set():
                self._run_commands()
                now = time.monotonic()
                if now >= next_sample:
                    c = source.counters()
                    self._rates.append((now, c.received, c.bytes))
                    next_sample = now + RATE_PERIOD
                frame = source.recv(self._recv_timeout)
                if frame is not None:
                    self._file(frame)
                elif (run := self._run) is not None:
                    run.end_if_idle(time.monotonic())
        except Exception as exc:
            self._fatal = f"the frame source failed: {type(exc).__name__}: {exc}"
            log.exception("the ingest thread ended")
            run = self._run
            if run is not None and not run.done:
                run.fail(self._fatal)
            else:
                self._machine.move("failed", self._fatal, only_from={"idle", "done", "failed"})
        finally:
            with self._lock:
                self._ingest_ended = True
            self._run_commands()

    def _file(self, frame: Any) -> None:
        """Hand ``frame`` to the current scan, which owns it from then on, or drop it."""
        run = self._run
        if run is None or not run.accepting:
            self._no_scan += 1
            n = self._no_scan
            if n <= LOG_FIRST or n % LOG_EVERY == 0:  # a stream with no scan must not flood the log
                log.warning(
                    "frame %d arrived while no scan is running: dropped (%d so far)",
                    frame.header.frame_id,
                    n,
                )
            frame.release()
            return
        try:
            run.add(frame)
        except Exception as exc:
            log.exception("scan %s: filing a frame failed", run.scan.scan_id)
            run.fail(f"assembly failed: {type(exc).__name__}: {exc}")
        if self._journal is not None and self._record is not None:
            closed = run.assembler.references_closed
            if closed != self._references_kept:
                self._references_kept = closed
                self._keep_references(run, self._record)

    def _keep_references(self, run: ScanRun, record: ScanRecord) -> None:
        """Write the newest darks and flats to the scan's state (rare: when a set closes)."""
        assert self._journal is not None
        try:
            self._journal.references_saved(record, *run.assembler.newest_references())
        except OSError as exc:
            log.error("scan %s: darks and flats not kept in the state: %s", record.scan_id, exc)

    def _journal_state(self, state: str, reason: str | None) -> None:
        """Keep the scan's record in step: its model once there is one, and its end."""
        run, record, journal = self._run, self._record, self._journal
        if run is None or record is None or journal is None or state not in _RECORDED:
            return
        try:
            if state == "streaming" and run.training.model:
                self._record = journal.model_saved(record, run.training.model)
            elif state in ("done", "failed"):
                journal.finish(record, reason or state)
        except OSError as exc:
            log.error("scan %s: the scan state could not be written: %s", record.scan_id, exc)

    def _run_commands(self) -> None:
        while True:
            try:
                command, run = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "finish" and run is self._run:
                self._drain_into(run)
                run.finish_input()

    def _drain_into(self, run: ScanRun) -> None:
        """File the frames the source holds now (received before the stop)."""
        for _ in range(self._source.counters().queued):
            frame = self._source.recv(0)
            if frame is None:
                break
            self._file(frame)


def _warm_up() -> None:
    # Compiled kernels and torch load in seconds; better now than on the first time step.
    from .steps import warm_up

    try:
        warm_up()
    except Exception:  # not fatal: the first step then pays for the loading itself
        log.exception("warming up the FBP kernels and the learning code failed")


_RECORDED = frozenset({"streaming", "done", "failed"})

_NO_STEPS: dict[str, Any] = {
    "total": 0,
    "received": 0,
    "incomplete": 0,
    "published_fbp": 0,
    "published_denoised": 0,
    "last_published": None,
    "backlog": 0,
    "dropped_overload": 0,
    "backlog_dropped": 0,
    "failed": 0,
    "clipped_values": 0,
    "on_disk": 0,
    "buffers_in_use": 0,
    "buffers_allocated": 0,
    "slab_failures": 0,
}
