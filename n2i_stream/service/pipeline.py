"""The pipeline of one scan: assembled steps → FBP → (training) → denoising → sinks.

::

    ingest thread ──add(frame)──► Assembler ──TimeStep──► [steps queue] ──► reconstruction worker
      (service's)                                          overload policy       │ correct, FBP
                                                                                 ▼
                  training job ◄── first K steps' line integrals ── FBP ──► [out] ──► publisher
                      │ model                                                 ▲        │ sinks
                      ▼                                                       │        ▼
                 denoise worker ◄── [backlog: FBP volumes awaiting the model] ┘   PUB, HDF5, ...

* The **ingest thread** (owned by the service) only files frames: :meth:`ScanRun.add` copies a
  frame into its step and queues completed steps. It never waits on reconstruction or training
  except by the explicit overload policy of the steps queue: ``block`` (back-pressure to the
  source) or ``drop_oldest`` (the oldest unprocessed step is dropped and counted).
* The **reconstruction worker** corrects and reconstructs each step
  (:mod:`~n2i_stream.service.steps`), publishes its FBP at once, keeps the first K steps' line
  integrals for training and queues the volume for the denoiser. When the K training steps are
  settled (each emitted, or closed without frames) it starts the **training job** in the
  background (:mod:`~n2i_stream.service.training`).
* The **denoise worker** waits for a model (given in the scan configuration, or trained), then
  denoises the backlog in step order and afterwards each new step as it comes. Without a model
  (training failed or was interrupted) the scan goes on publishing FBP only.
* The **publisher** hands every result to the sinks in order, measures latency (last frame of
  the step received → published) and, when both workers have ended, closes the scan's file and
  moves the state to ``done`` (or ``failed``).

Stop (:meth:`ScanRun.request_stop` then :meth:`ScanRun.finish_input`) drains: the assembler is
flushed (incomplete steps flagged), everything queued is reconstructed, published and written;
training in progress is interrupted (no model, so no denoising). Abort drops queued work. A
crash in any worker fails the scan with the reason and winds the others down the same way.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError, N2IError
from ..wire import Frame, OverloadPolicy
from .assembly import Assembler, TimeStep
from .queues import StageQueue
from .scan_config import ScanConfig
from .sinks import ResultsFileSink, ResultSink, StepResult
from .state import StateMachine
from .steps import find_step_center, reconstruct_step, step_geometry
from .training import TrainingJob, TrainingOutcome, TrainingProgress, train_config

if TYPE_CHECKING:
    from ..core.geometry import ParallelGeometry
    from ..learn import Denoiser
    from .slabs import SlabPool

__all__ = ["PipelineOptions", "ScanRun"]

log = logging.getLogger(__name__)

#: latencies kept for the median in the status
RECENT_LATENCIES = 1000


@dataclass(frozen=True)
class PipelineOptions:
    """How the service runs every scan's pipeline (operations, not science)."""

    overload: OverloadPolicy = "block"  # steps queue full: wait ("block") or "drop_oldest" step
    queue_steps: int = 4  # assembled steps waiting for the reconstruction worker, at most
    max_backlog: int = 256  # FBP volumes kept for the denoiser (oldest dropped beyond) ...
    backlog_bytes: int = 2 << 30  # ... and no more than this much memory of them
    publish_queue: int = 8  # results waiting for the publisher before workers wait
    train_threads: int = 1  # torch threads for training (leave a core to ingest and FBP)
    infer_threads: int = 0  # torch threads for denoising (0: every core)
    fbp_threads: int = 0  # numba threads for the FBP of each step (0: numba's default)
    denoise_batch: int = 16  # slices per network call when denoising
    channels_last: bool = True  # NHWC on the CPU (faster for U-Net and DnCNN; not for MS-D)
    save_model: bool = True  # save a trained model next to the results file (.model.pt)
    join_timeout: float = 60.0  # seconds to wait for a thread at the end of a scan

    def __post_init__(self) -> None:
        problems = []
        if self.overload not in ("block", "drop_oldest"):
            problems.append(f"overload: expected 'block' or 'drop_oldest', got {self.overload!r}")
        for name in (
            "queue_steps",
            "max_backlog",
            "backlog_bytes",
            "publish_queue",
            "denoise_batch",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected >= 1, got {getattr(self, name)}")
        if min(self.train_threads, self.infer_threads, self.fbp_threads) < 0:
            problems.append("train/infer/fbp threads: expected >= 0 (0: the library's default)")
        if problems:
            raise ConfigError("pipeline options: " + "; ".join(problems))


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_END = _Marker("end of input")
_WINDOW = _Marker("training window settled")
_WORKER_END = _Marker("worker ended")


@dataclass(frozen=True, eq=False)
class _Pending:
    """An FBP volume waiting for the denoiser; ``live`` when a model existed at FBP time."""

    time_step: int
    volume: np.ndarray
    missing: int
    last_frame_at: float
    live: bool


@dataclass(frozen=True, eq=False)
class _Outgoing:
    result: StepResult
    last_frame_at: float
    final: bool  # this result ends the step's latency (denoised, or FBP when no model yet)


@dataclass(frozen=True)
class _Losses:
    values: list[float]


@dataclass(frozen=True)
class _Center:
    offset: float


def _release(item: Any) -> None:
    if isinstance(item, TimeStep):
        item.release()


class ScanRun:
    """One scan's pipeline; created by the service at ``configure`` and run once.

    ``sinks`` are the service's result sinks (kept open after the scan); ``file_sink`` is the
    scan's results file (closed at the end of the scan). ``model`` is a denoiser loaded from the
    scan's ``model`` checkpoint (training is then skipped). State changes go to ``state``.
    ``skip_steps`` are steps a resumed scan has on disk already: their frames, should they come
    again, are not reconstructed again (counted in ``steps_on_disk``); ``references`` are the
    dark and flat means it had (see :meth:`Assembler.give_references`). With ``slab_pool`` each
    step's FBP, and its denoising when the model is a checkpoint on disk, run on the pool's
    workers; should the pool fail (a worker died), the scan goes on in this process.
    """

    def __init__(
        self,
        scan: ScanConfig,
        options: PipelineOptions,
        *,
        state: StateMachine,
        sinks: Sequence[ResultSink] = (),
        file_sink: ResultsFileSink | None = None,
        model: Denoiser | None = None,
        skip_steps: Collection[int] = (),
        references: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
        slab_pool: SlabPool | None = None,
    ) -> None:
        self.scan = scan
        self._pool = slab_pool
        self.slab_failures = 0  # times the pool failed (this scan then goes on in process)
        self._skip = frozenset(skip_steps)
        self.options = options
        self.assembler = Assembler(scan.assembly)
        self.assembler.give_references(*references)
        self.training = TrainingProgress()
        self._state = state
        self._sinks = [*sinks, *([file_sink] if file_sink is not None else [])]
        self._file_sink = file_sink
        self._train_config = (
            None if model is not None else train_config(scan, threads=options.train_threads)
        )
        self._steps = StageQueue(
            options.queue_steps, options.overload, on_drop=_release, name="steps queue"
        )
        volume_bytes = 4 * scan.rows * scan.size * scan.size
        backlog = max(1, min(options.max_backlog, options.backlog_bytes // volume_bytes))
        self._backlog = StageQueue(backlog, "drop_oldest", name="denoise backlog")
        self._out = StageQueue(options.publish_queue, "block", name="publish queue")
        # model resolution: set once the denoiser is known, or known never to come
        self._model: Denoiser | None = model
        self._model_known = threading.Event()
        self._model_checked = model is None or scan.center_offset != "auto"
        self._center: float | None = (
            None if scan.center_offset == "auto" else float(scan.center_offset)
        )
        self._center_sent = False
        self._train_data: dict[int, tuple[np.ndarray, Any]] = {}
        self._job: TrainingJob | None = None
        # ingest side (ingest thread only)
        self._input_done = False
        self._window_sent = False
        self._emitted: set[int] = set()
        self._max_emitted = -1
        # lifecycle
        self._lock = threading.Lock()
        self._stopping = False
        self._aborted = False
        self._failure: str | None = None
        self._end_reason: str | None = None
        self._last_frame_at: float | None = None  # monotonic time of the newest frame filed
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._reconstruct_loop, name="n2i-reconstruct", daemon=True),
            threading.Thread(target=self._denoise_loop, name="n2i-denoise", daemon=True),
            threading.Thread(target=self._publish_loop, name="n2i-publish", daemon=True),
        ]
        # counters (publisher and workers; read by status)
        self.published = {"fbp": 0, "denoised": 0}
        self.last_published: int | None = None
        self.steps_failed = 0
        self.steps_on_disk = 0
        self.clipped = 0
        self._latencies: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self._latency_max: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers; with a given model the scan streams denoised results at once."""
        if self._model is not None:
            self.training.set("skipped", model=self.scan.model)
            self._model_known.set()
            self._state.move("streaming", only_from={"acquiring"})
        for t in self._threads:
            t.start()

    @property
    def accepting(self) -> bool:
        """True while frames are filed (until the input is finished, aborted or failed)."""
        return not (self._input_done or self._aborted)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the end of the scan (all threads finished); False on timeout."""
        return self._done.wait(timeout)

    def request_stop(self) -> None:
        """Stop asked for: interrupt training (no model then); the caller finishes the input."""
        with self._lock:
            self._stopping = True
            if self._end_reason is None:
                self._end_reason = "stopped"
            job = self._job
        if job is not None:
            job.interrupt("interrupted: the scan was stopped")

    def abort(self, reason: str = "aborted") -> None:
        """Drop queued and in-flight work and end the scan (files stay valid). Any thread."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            if self._end_reason in (None, "stopped"):
                self._end_reason = reason
            job = self._job
        log.info("scan %s: %s", self.scan.scan_id, reason)
        if job is not None:
            job.interrupt(f"interrupted: {reason}")
        self._resolve_model(None)
        for q in (self._steps, self._backlog, self._out):
            q.cancel()
        self._steps.put_marker(_END)
        self._backlog.put_marker(_END)

    def fail(self, reason: str) -> None:
        """A worker crashed: the scan fails with ``reason`` (first failure wins)."""
        with self._lock:
            if self._failure is None:
                self._failure = reason
        log.error("scan %s failed: %s", self.scan.scan_id, reason)
        self.abort(f"failed: {reason}")

    # -- ingest side (the service's ingest thread) -----------------------------------------------

    def add(self, frame: Frame) -> None:
        """File one frame, taking ownership of it (it is released here or by its step)."""
        if not self.accepting:
            frame.release()
            return
        self._last_frame_at = time.monotonic()
        steps = self.assembler.add(frame)
        self._queue_steps(steps)
        if self.assembler.finished:
            self.finish_input()

    def end_if_idle(self, now: float) -> bool:
        """End the input like a complete scan when no frame came for the scan's
        ``end_after_idle_s`` since the last one (the detector lost the last frames, or the plan
        died before its stop): open steps are flushed and flagged, training goes on. Call from
        the thread that files the frames; True if the scan was ended."""
        limit, last = self.scan.end_after_idle_s, self._last_frame_at
        if limit is None or last is None or not self.accepting or now - last < limit:
            return False
        with self._lock:
            if self._end_reason is None:
                self._end_reason = f"no frames for {limit:g} s"
        log.warning("scan %s: no frames for %g s: the scan ends", self.scan.scan_id, limit)
        self.finish_input()
        return True

    def finish_input(self) -> None:
        """No more frames: flush the assembler (partial steps flagged) and end the steps queue."""
        if self._input_done:
            return
        self._input_done = True
        if not self._aborted:
            self._queue_steps(self.assembler.flush())
            if not self._window_sent:
                self._window_sent = True
                self._steps.put_marker(_WINDOW)
        self._steps.put_marker(_END)

    def _queue_steps(self, steps: tuple[TimeStep, ...]) -> None:
        for step in steps:
            self._steps.put(step)
        if steps and not self._window_sent:
            self._emitted.update(s.index for s in steps)
            self._max_emitted = max(self._max_emitted, *(s.index for s in steps))
            horizon = self._max_emitted - self.scan.close_lag  # steps up to here are closed
            if all(i in self._emitted or i <= horizon for i in range(self.scan.train_steps)):
                self._window_sent = True
                self._steps.put_marker(_WINDOW)

    # -- reconstruction worker -------------------------------------------------------------------

    def _reconstruct_loop(self) -> None:
        try:
            if self.options.fbp_threads:
                import numba

                numba.set_num_threads(self.options.fbp_threads)  # for this thread only
            while (item := self._steps.get()) is not _END:
                if item is _WINDOW:
                    self._start_training()
                elif not self._aborted:
                    self._reconstruct(item)
                else:
                    _release(item)
        except Exception as exc:
            log.exception("scan %s: reconstruction worker crashed", self.scan.scan_id)
            self.fail(f"reconstruction worker crashed: {type(exc).__name__}: {exc}")
        finally:
            self._backlog.put_marker(_END)
            self._out.put_marker(_WORKER_END)

    def _reconstruct(self, step: TimeStep) -> None:
        scan = self.scan
        if step.index in self._skip:
            step.release()
            self.steps_on_disk += 1
            return
        angles, missing, last_at = step.angles, int(step.missing_ids.size), step.last_frame_at
        try:
            corrected = step.line_integrals()
        except DataError as exc:
            self.steps_failed += 1
            log.warning(
                "scan %s: time step %d not reconstructed: %s", scan.scan_id, step.index, exc
            )
            return
        finally:
            step.release()  # the raw counts are not needed any more: the buffer goes back
        li = corrected.data
        self.clipped += corrected.clipped
        if self._center is None:
            self._center = find_step_center(li, angles, scan)
            log.info("scan %s: rotation centre offset %.3f px", scan.scan_id, self._center)
        if not self._center_sent:
            self._center_sent = True
            self._out.put_marker(_Center(self._center))
        if not self._model_checked:
            self._check_model()
        geometry = step_geometry(angles, scan, self._center)
        volume = self._fbp(li, geometry)
        if self._train_config is not None and step.index < scan.train_steps and self._job is None:
            self._train_data[step.index] = (li, geometry)
        live = self._model is not None
        self._emit(self._result(step.index, "fbp", volume, missing), last_at, final=not live)
        if not (self._model_known.is_set() and self._model is None):
            self._backlog.put(_Pending(step.index, volume, missing, last_at, live))

    def _fbp(self, li: np.ndarray, geometry: ParallelGeometry) -> np.ndarray:
        scan = self.scan
        volume = self._on_pool(
            "fbp", li, geometry=geometry, n=scan.size, filter=scan.filter,
            oversample=scan.oversample,
        )  # fmt: skip
        return volume if volume is not None else reconstruct_step(li, geometry, scan)

    def _on_pool(self, op: str, data: np.ndarray, **task: Any) -> np.ndarray | None:
        """The volume of slab task ``op`` on ``data`` from the slab workers; None without a pool,
        or when it failed (it is then not used again in this scan: a dead worker would stall
        every step)."""
        pool = self._pool
        if pool is None:
            return None
        from .slabs import SlabTask

        try:
            return pool.run(SlabTask(op, data, **task))[0]  # type: ignore[arg-type]
        except Exception as exc:  # whatever went wrong over there, this process can do it
            self._pool = None
            self.slab_failures += 1
            log.error(
                "scan %s: the slab workers failed (%s); going on in the service process",
                self.scan.scan_id,
                exc,
            )
            return None

    def _check_model(self) -> None:
        """A given model must fit the scan; checked once the centre ("auto") is known."""
        from ..learn import check_compatible

        self._model_checked = True
        first = self.scan.assembly.projection_angles()[: self.scan.frames_per_step]
        assert self._center is not None
        assert self._model is not None
        try:
            check_compatible(
                self._model,
                geometry=step_geometry(first, self.scan, self._center),
                n=self.scan.size,
            )
        except N2IError as exc:
            self._model = None
            self.training.set("failed", str(exc))
            self._state.set_reason(f"model not used ({exc}); publishing FBP only")

    def _start_training(self) -> None:
        scan = self.scan
        if self._train_config is None or self._job is not None:
            return
        if self._stopping or self._aborted:
            self.training.set("failed", "the scan was stopped before training could start")
            self._resolve_model(None)
            return
        steps = sorted(self._train_data)
        if len(steps) < 2:
            reason = (
                f"only {len(steps)} of the first {scan.train_steps} time steps could be "
                "reconstructed; dynamic Noise2Inverse needs at least 2"
            )
            self._training_done(TrainingOutcome(None, reason))
            return
        projections = [self._train_data[s][0] for s in steps]
        geometries = [self._train_data[s][1] for s in steps]
        self._train_data.clear()
        job = TrainingJob(
            projections,
            geometries,
            self._train_config,
            scan=scan,
            progress=self.training,
            on_losses=lambda values: self._out.put_marker(_Losses(values)),
            on_done=self._training_done,
        )
        with self._lock:  # a stop between the check above and here must still reach the job
            self._job = job
            if self._stopping or self._aborted:
                job.interrupt("interrupted: the scan was stopped")
        self._state.move("training", only_from={"acquiring"})
        log.info("scan %s: training on time steps %s", scan.scan_id, steps)
        job.start()

    def _training_done(self, outcome: TrainingOutcome) -> None:
        scan = self.scan
        if outcome.denoiser is not None:
            path = self._save_model(outcome.denoiser)
            self.training.set("done", model=path)
            # state listeners first (the journal records the checkpoint, the registry copies
            # it), so that no denoised result is out before a restart would find the model
            self._state.move("streaming", only_from={"acquiring", "training"})
            self._resolve_model(outcome.denoiser)
            return
        self.training.set("failed", outcome.reason)
        self._resolve_model(None)
        if outcome.crashed:
            self.fail(outcome.reason or "training crashed")
        elif not outcome.interrupted:
            log.warning("scan %s: publishing FBP only: %s", scan.scan_id, outcome.reason)
            self._state.move(
                "streaming",
                f"training failed ({outcome.reason}); publishing FBP only",
                only_from={"acquiring", "training"},
            )

    def _save_model(self, model: Denoiser) -> str | None:
        if not (self.options.save_model and self.scan.output):
            return None
        from ..learn import save_checkpoint

        path = Path(self.scan.output).with_suffix(".model.pt")
        try:
            return str(save_checkpoint(model, path))
        except (OSError, N2IError) as exc:
            log.warning("scan %s: could not save the model to %s: %s", self.scan.scan_id, path, exc)
            return None

    def _resolve_model(self, model: Denoiser | None) -> None:
        if not self._model_known.is_set():
            self._model = model
            self._model_known.set()

    # -- denoise worker --------------------------------------------------------------------------

    def _denoise_loop(self) -> None:
        try:
            self._model_known.wait()
            model = self._model
            if model is None or self._aborted:
                while self._backlog.get() is not _END:
                    pass  # no model will come: the FBP volumes were published already
                return
            import torch

            from ..learn import denoise_volume

            if self.options.infer_threads:
                torch.set_num_threads(self.options.infer_threads)  # this thread's pool
            batch = self.options.denoise_batch
            device = next(model.network.parameters()).device
            nhwc = self.options.channels_last and device.type == "cpu" and model.spec.name != "msd"
            checkpoint = self.training.model  # the pool's workers load the model from disk
            while (item := self._backlog.get()) is not _END:
                volume = None
                if checkpoint is not None:
                    volume = self._on_pool(
                        "denoise", item.volume, model=checkpoint, context=model.context,
                        keep_low=self.scan.keep_low,
                    )  # fmt: skip
                if volume is None:
                    volume = denoise_volume(
                        model,
                        item.volume,
                        batch=batch,
                        channels_last=nhwc,
                        keep_low=self.scan.keep_low,
                    )
                result = self._result(item.time_step, "denoised", volume, item.missing)
                self._emit(result, item.last_frame_at, final=item.live)
        except Exception as exc:
            log.exception("scan %s: denoise worker crashed", self.scan.scan_id)
            self.fail(f"denoise worker crashed: {type(exc).__name__}: {exc}")
        finally:
            self._out.put_marker(_WORKER_END)

    # -- publisher -------------------------------------------------------------------------------

    def _result(self, index: int, kind: str, volume: np.ndarray, missing: int) -> StepResult:
        return StepResult(
            time_step=index,
            kind=kind,  # type: ignore[arg-type]
            volume=np.ascontiguousarray(volume, dtype=np.float32),
            incomplete=missing > 0,
            missing=missing,
            scan_id=self.scan.scan_id,
            slices=self.scan.slices,
        )

    def _emit(self, result: StepResult, last_frame_at: float, *, final: bool) -> None:
        self._out.put(_Outgoing(result, last_frame_at, final))

    def _publish_loop(self) -> None:
        ended = 0
        try:
            while ended < 2:
                item = self._out.get()
                if item is _WORKER_END:
                    ended += 1
                elif not self._aborted:
                    try:
                        self._deliver(item)
                    except Exception as exc:
                        log.exception("scan %s: a result sink failed", self.scan.scan_id)
                        self.fail(f"result sink failed: {type(exc).__name__}: {exc}")
        finally:
            self._finish()

    def _deliver(self, item: Any) -> None:
        if isinstance(item, _Losses):
            if self._file_sink is not None:
                self._file_sink.put_losses(item.values)
            return
        if isinstance(item, _Center):
            if self._file_sink is not None:
                self._file_sink.put_center(item.offset)
            return
        latency = time.monotonic() - item.last_frame_at
        result = replace(item.result, latency_s=latency)
        for sink in self._sinks:
            sink.put(result)
        self.published[result.kind] += 1
        self.last_published = result.time_step
        if item.final:
            self._latencies.append(latency)
            self._latency_max = max(latency, self._latency_max or 0.0)

    def _finish(self) -> None:
        job = self._job
        if job is not None and not job.join(self.options.join_timeout):
            log.error("scan %s: the training thread did not end", self.scan.scan_id)
        if self._file_sink is not None:
            try:
                self._file_sink.close()
            except Exception as exc:
                log.exception("scan %s: closing the results file failed", self.scan.scan_id)
                with self._lock:
                    self._failure = self._failure or f"closing the results file failed: {exc}"
        with self._lock:
            failure, reason = self._failure, self._end_reason
        if failure is not None:
            self._state.move("failed", failure, only_from={"acquiring", "training", "streaming"})
        else:
            self._state.move("done", reason, only_from={"acquiring", "training", "streaming"})
        self._done.set()

    def join(self, timeout: float | None = None) -> bool:
        """Join every thread of the run; False if one is still alive after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t.ident is not None:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- status ----------------------------------------------------------------------------------

    @property
    def center_offset(self) -> float | None:
        return self._center

    def steps_status(self) -> dict[str, Any]:
        c = self.assembler.counters()
        return {
            "total": self.scan.steps,
            "received": c.steps_emitted,
            "incomplete": c.steps_incomplete,
            "published_fbp": self.published["fbp"],
            "published_denoised": self.published["denoised"],
            "last_published": self.last_published,
            "backlog": len(self._steps) + len(self._backlog),
            "dropped_overload": self._steps.dropped,
            "backlog_dropped": self._backlog.dropped,
            "failed": self.steps_failed,
            "clipped_values": self.clipped,
            "on_disk": self.steps_on_disk,
            "buffers_in_use": c.step_buffers_in_use,
            "buffers_allocated": c.step_buffers_allocated,
            "slab_failures": self.slab_failures,
        }

    def latency_status(self) -> dict[str, float | None]:
        values = list(self._latencies)
        return {
            "last": values[-1] if values else None,
            "median": statistics.median(values) if values else None,
            "max": self._latency_max,
        }

    def latencies(self) -> list[float]:
        """Recent per-step latencies (seconds), in publication order."""
        return list(self._latencies)
