"""Slab workers: each time step's FBP and denoising split into slabs of slices over processes.

Parallel-beam FBP reconstructs every detector row on its own, so slab ``[a, b)`` of a volume is
the FBP of rows ``[a, b)``. Denoising is 2.5D: slice ``z`` needs slices ``z ± context``, so a
worker gets its slab with ``context`` halo slices on either side (fewer at the volume's ends,
where the network then replicates the end slice exactly as for the whole volume) and sends back
only its own slices: slice for slice, the result is the whole-volume one.

:class:`SlabPool` (in the service) binds a PUSH socket that deals tasks to the workers and a
PULL socket that gathers their results; workers connect to both, so they can run here
(``spawn="process"``, or ``"thread"`` for tests) or on other nodes
(``python -m n2i_stream.service.slabs --tasks tcp://HEAD:5570 --results tcp://HEAD:5571``).
ZMQ's PUSH deals tasks round-robin to the connected workers. A step's slabs are gathered by
task id and assembled by rows, and :meth:`SlabPool.imap` keeps several steps in flight while
yielding them in step order.

Messages are multipart ``[JSON header, raw float32 payload, ...]`` (no pickle)::

    task    {"htype": "n2i-slab-task-1.0", "task", "op": "fbp"|"denoise"|"both", "rows": [a, b],
             "halo": [lo, hi], "shape", "angles" (radians), "cols", "center_offset", "n",
             "filter", "model", "context"}  + rows [lo, hi) of projections (fbp, both) or of
             the FBP volume (denoise)
    result  {"htype": "n2i-slab-result-1.0", "task", "worker", "rows": [a, b], "kinds",
             "shape": [b - a, n, n]}  + one payload per kind
    error   {"htype": "n2i-slab-error-1.0", "task", "worker", "message"}
    hello   {"htype": "n2i-slab-hello-1.0", "worker"}   (a worker is connected and ready)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq

from ..core.geometry import ParallelGeometry
from ..errors import ConfigError, FrameError, ModelError, ServiceError
from ..io.zmq_thread import WakeSignal

__all__ = ["SlabPool", "SlabTask", "slab_bounds", "worker_loop"]

log = logging.getLogger(__name__)

TASK, RESULT, ERROR, HELLO = (f"n2i-slab-{k}-1.0" for k in ("task", "result", "error", "hello"))
Op = Literal["fbp", "denoise", "both"]
_ids = itertools.count()


def slab_bounds(rows: int, slabs: int) -> list[tuple[int, int]]:
    """``slabs`` nearly equal, non-empty row ranges covering ``rows`` (fewer if rows < slabs)."""
    edges = np.linspace(0, rows, min(slabs, rows) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


@dataclass(frozen=True)
class SlabTask:
    """One step's work: ``op`` on ``data`` (projections ``(angles, rows, cols)`` for fbp and
    both, an FBP volume ``(rows, n, n)`` for denoise)."""

    op: Op
    data: np.ndarray
    geometry: ParallelGeometry | None = None
    n: int | None = None
    filter: str = "ramlak"
    model: str | None = None  # checkpoint path, on a filesystem every worker sees
    context: int = 0  # the model's context slices (the halo)
    oversample: int = 1  # FBP: filtered samples per detector column
    keep_low: float = 0.0  # denoised: the FBP's scales coarser than this Gaussian, px


def _header(message: list[Any]) -> dict[str, Any]:
    try:
        header = json.loads(bytes(message[0]))
    except (ValueError, IndexError) as exc:
        raise FrameError(f"slab message: expected a JSON header, got {message[:1]!r}") from exc
    if not isinstance(header, dict) or not str(header.get("htype", "")).startswith("n2i-slab-"):
        raise FrameError(f"slab message: unknown header {header!r}")
    return header


def _array(buffer: Any, shape: Sequence[int]) -> np.ndarray:
    data = np.frombuffer(buffer, dtype="<f4")
    if data.size != int(np.prod(shape)):
        raise FrameError(f"slab payload: {data.size} values, expected shape {list(shape)}")
    return data.reshape(shape)


# -- the worker -----------------------------------------------------------------------------------


class _Worker:
    """Carries out tasks; keeps the last model loaded."""

    def __init__(self, name: str, device: str = "auto") -> None:
        self.name = name
        self.device = device
        self._model: tuple[str, float, Any] | None = None

    def model(self, path: str) -> Any:
        from ..learn import load_checkpoint
        from ..learn.device import resolve_device

        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            raise ModelError(f"{path}: no such model file ({exc.strerror})") from exc
        if self._model is None or self._model[:2] != (path, mtime):
            self._model = (path, mtime, load_checkpoint(path, device=resolve_device(self.device)))
        return self._model[2]

    def run(self, header: dict[str, Any], payload: np.ndarray) -> list[np.ndarray]:
        from ..core.fbp import fbp

        a, b = header["rows"]
        lo, hi = header["halo"]
        op = header["op"]
        volume = payload
        if op in ("fbp", "both"):
            geometry = ParallelGeometry.from_radians(
                header["angles"], rows=hi - lo, cols=header["cols"],
                center_offset=header["center_offset"],
            )  # fmt: skip
            volume = np.asarray(
                fbp(
                    payload, geometry, n=header["n"], window=header["filter"],
                    oversample=header["oversample"],
                )
            )  # fmt: skip
        out = [] if op == "denoise" else [volume[a - lo : b - lo]]
        if op in ("denoise", "both"):
            from ..learn import denoise_volume

            model = self.model(header["model"])
            denoised = denoise_volume(model, volume, keep_low=header["keep_low"])
            out.append(np.asarray(denoised)[a - lo : b - lo])
        return [np.ascontiguousarray(v, dtype=np.float32) for v in out]


def worker_loop(
    tasks: str,
    results: str,
    *,
    context: zmq.Context | None = None,
    name: str | None = None,
    device: str = "auto",
) -> None:
    """Serve tasks from ``tasks`` (connect PULL) to ``results`` (connect PUSH) until the
    context is terminated (threads) or the process ends (processes)."""
    ctx = context or zmq.Context.instance()
    worker = _Worker(name or f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}", device)
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.linger = push.linger = 0
    try:
        pull.connect(tasks)
        push.connect(results)
        push.send(json.dumps({"htype": HELLO, "worker": worker.name}).encode())
        while True:
            message = pull.recv_multipart(copy=False)
            header: dict[str, Any] = {}
            try:
                header = _header(message)
                if len(message) != 2:
                    raise FrameError(f"slab task: expected 2 parts, got {len(message)}")
                parts = worker.run(header, _array(message[1].buffer, header["shape"]))
                reply = {"htype": RESULT, "task": header["task"], "worker": worker.name,
                         "rows": header["rows"], "kinds": header["kinds"],
                         "shape": list(parts[0].shape)}  # fmt: skip
                push.send_multipart([json.dumps(reply).encode(), *parts], copy=False)
            except Exception as exc:  # the task fails, the worker lives on
                log.exception("slab worker %s: task failed", worker.name)
                error = {"htype": ERROR, "task": header.get("task"), "worker": worker.name,
                         "message": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                push.send(json.dumps(error).encode())
    except zmq.ContextTerminated:
        return
    finally:
        pull.close()
        push.close()


# -- the pool -------------------------------------------------------------------------------------


@dataclass
class _Pending:
    future: concurrent.futures.Future
    rows: tuple[int, int]


class SlabPool:
    """Deals each step's slabs to ``workers`` workers and gathers them (see the module docstring).

    ``spawn``: ``"process"`` starts local worker processes (``threads`` torch and numba threads
    each), ``"thread"`` runs them as threads of this process, ``"none"`` waits for ``workers``
    workers started elsewhere. ``slabs`` per worker (default 1) splits finer for balance.
    """

    def __init__(
        self,
        workers: int,
        *,
        tasks: str = "tcp://127.0.0.1:*",
        results: str = "tcp://127.0.0.1:*",
        spawn: Literal["process", "thread", "none"] = "process",
        threads: int | None = None,
        slabs: int = 1,
        device: str = "cpu",
        timeout: float = 120.0,
    ) -> None:
        if workers < 1 or slabs < 1:
            raise ConfigError(f"workers and slabs: expected >= 1, got {workers}, {slabs}")
        if spawn not in ("process", "thread", "none"):
            raise ConfigError(f"spawn: expected process, thread or none, got {spawn!r}")
        self.workers = workers
        self.slabs = workers * slabs
        self.spawn = spawn
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.device = device
        self.timeout = timeout
        self._ctx = zmq.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._pull = self._ctx.socket(zmq.PULL)
        self._push.linger = self._pull.linger = 0
        try:
            self._push.bind(tasks)
            self._pull.bind(results)
        except zmq.ZMQError as exc:
            self._push.close()
            self._pull.close()
            self._ctx.term()
            raise ServiceError(f"slab pool cannot bind {tasks} / {results}: {exc}") from exc
        self.tasks_endpoint = self._push.getsockopt_string(zmq.LAST_ENDPOINT)
        self.results_endpoint = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self.completed = 0  # tasks whose every slab came back (volumes assembled)
        self._hellos: list[str] = []
        self._ready = threading.Condition(self._lock)
        self._wake = WakeSignal(self._ctx, "slabs")
        self._closing = False
        self._processes: list[subprocess.Popen] = []
        self._worker_ctx: zmq.Context | None = None
        self._worker_threads: list[threading.Thread] = []
        self._gather = threading.Thread(
            target=self._gather_loop, name="n2i-slab-gather", daemon=True
        )
        self._gather.start()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> SlabPool:
        """Start (or wait for) the workers; returns once every one has said hello."""
        if self.spawn == "process":
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
                   "NUMBA_NUM_THREADS": str(self.threads)}  # fmt: skip
            command = [sys.executable, "-m", "n2i_stream.service.slabs",
                       "--tasks", self.tasks_endpoint, "--results", self.results_endpoint,
                       "--threads", str(self.threads), "--device", self.device]  # fmt: skip
            for i in range(self.workers):
                name = ["--name", f"slab-worker-{i}"]
                self._processes.append(subprocess.Popen([*command, *name], env=env))
        elif self.spawn == "thread":
            self._worker_ctx = zmq.Context()
            for i in range(self.workers):
                thread = threading.Thread(
                    target=worker_loop,
                    args=(self.tasks_endpoint, self.results_endpoint),
                    kwargs={
                        "context": self._worker_ctx,
                        "name": f"slab-thread-{i}",
                        "device": self.device,
                    },
                    name=f"n2i-slab-worker-{i}",
                    daemon=True,
                )
                thread.start()
                self._worker_threads.append(thread)
        with self._ready:
            ready = self._ready.wait_for(lambda: len(self._hellos) >= self.workers, timeout)
            hellos = len(self._hellos)
        if not ready:
            self.close()
            raise ServiceError(
                f"only {hellos} of {self.workers} slab workers connected to "
                f"{self.tasks_endpoint} / {self.results_endpoint} within {timeout} s"
            )
        log.info("slab pool: %d workers (%s)", self.workers, ", ".join(self._hellos))
        return self

    def close(self) -> None:
        """Stop the workers this pool started and the gather thread; idempotent."""
        if self._closing:
            return
        self._closing = True
        for proc in self._processes:
            proc.terminate()
        for proc in self._processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._worker_ctx is not None:
            self._worker_ctx.term()  # their blocking receives end with ContextTerminated
            for thread in self._worker_threads:
                thread.join()
        self._wake.send()
        self._gather.join()
        with self._send_lock:
            self._push.close()
        self._ctx.term()
        with self._lock:
            for pending in self._pending.values():
                pending.future.set_exception(ServiceError("the slab pool was closed"))
            self._pending.clear()

    def __enter__(self) -> SlabPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work ------------------------------------------------------------------------------------

    def submit(self, task: SlabTask) -> concurrent.futures.Future:
        """Deal ``task``'s slabs; the future gives ``[volume per kind]`` (fbp first), each
        ``(rows, n, n)`` float32."""
        if self._closing:
            raise ServiceError("the slab pool is closed")
        rows = task.data.shape[1] if task.op != "denoise" else task.data.shape[0]
        kinds = {"fbp": ["fbp"], "denoise": ["denoised"], "both": ["fbp", "denoised"]}[task.op]
        if task.op != "fbp" and task.model is None:
            raise ConfigError(f"slab task {task.op!r} needs a model checkpoint")
        if task.op != "denoise" and (task.geometry is None or task.n is None):
            raise ConfigError(f"slab task {task.op!r} needs the geometry and n")
        halo = task.context if task.op != "fbp" else 0
        parts = []
        for a, b in slab_bounds(rows, self.slabs):
            lo, hi = max(0, a - halo), min(rows, b + halo)
            data = task.data[:, lo:hi] if task.op != "denoise" else task.data[lo:hi]
            data = np.ascontiguousarray(data, dtype=np.float32)
            task_id = next(_ids)
            header = {
                "htype": TASK, "task": task_id, "op": task.op, "rows": [a, b], "halo": [lo, hi],
                "shape": list(data.shape), "kinds": kinds, "n": task.n, "filter": task.filter,
                "model": task.model, "context": task.context, "oversample": task.oversample,
                "keep_low": task.keep_low,
            }  # fmt: skip
            if task.geometry is not None:
                g = task.geometry
                header |= {"angles": np.asarray(g.angles, dtype=np.float64).tolist(),
                           "cols": g.cols, "center_offset": float(g.center_offset)}  # fmt: skip
            future: concurrent.futures.Future = concurrent.futures.Future()
            with self._lock:
                self._pending[task_id] = _Pending(future, (a, b))
            parts.append((header, data, future))
        with self._send_lock:
            for header, data, _ in parts:
                self._push.send_multipart([json.dumps(header).encode(), data], copy=False)
        return self._assemble([(f, h["rows"]) for h, _, f in parts], rows, len(kinds))

    def _assemble(
        self, parts: list[tuple[concurrent.futures.Future, list[int]]], rows: int, kinds: int
    ) -> concurrent.futures.Future:
        whole: concurrent.futures.Future = concurrent.futures.Future()
        left = [len(parts)]
        lock = threading.Lock()

        def one_done(_: concurrent.futures.Future) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            try:
                pieces = [f.result() for f, _ in parts]
                n = pieces[0][0].shape[-1]
                out = [np.empty((rows, n, n), dtype=np.float32) for _ in range(kinds)]
                for (_, (a, b)), volumes in zip(parts, pieces, strict=True):
                    for k in range(kinds):
                        out[k][a:b] = volumes[k]
                with self._lock:
                    self.completed += 1
                whole.set_result(out)
            except Exception as exc:
                whole.set_exception(exc)

        for future, _ in parts:
            future.add_done_callback(one_done)
        return whole

    def run(self, task: SlabTask) -> list[np.ndarray]:
        """:meth:`submit` and wait (ServiceError after ``timeout`` s: a worker may have died)."""
        future = self.submit(task)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            raise ServiceError(
                f"slabs did not come back within {self.timeout} s; is every worker alive?"
            ) from None

    def imap(self, tasks: Iterable[SlabTask], *, depth: int = 2) -> Iterator[list[np.ndarray]]:
        """Results of ``tasks`` in order, with up to ``depth`` tasks in flight."""
        flight: deque[concurrent.futures.Future] = deque()
        for task in tasks:
            flight.append(self.submit(task))
            if len(flight) >= depth:
                yield flight.popleft().result(self.timeout)
        while flight:
            yield flight.popleft().result(self.timeout)

    # -- gathering -------------------------------------------------------------------------------

    def _gather_loop(self) -> None:
        wake = self._wake.bind()
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if wake in events:
                    return
                while self._pull.poll(0):
                    self._receive(self._pull.recv_multipart(copy=False))
        finally:
            wake.close()
            self._pull.close()

    def _receive(self, message: list[Any]) -> None:
        try:
            header = _header(message)
        except FrameError as exc:
            log.error("slab pool: bad message dropped: %s", exc)
            return
        if header["htype"] == HELLO:
            with self._ready:
                self._hellos.append(str(header.get("worker")))
                self._ready.notify_all()
            return
        with self._lock:
            pending = self._pending.pop(header.get("task"), None)  # type: ignore[arg-type]
        if pending is None:
            log.warning("slab pool: result of unknown task %s dropped", header.get("task"))
            return
        if header["htype"] == ERROR:
            pending.future.set_exception(
                ServiceError(f"slab worker {header.get('worker')}: {header.get('message')}")
            )
            return
        try:
            a, b = pending.rows
            shape = header["shape"]
            if shape[0] != b - a or len(message) - 1 != len(header["kinds"]):
                raise FrameError(f"expected rows {a}..{b} in {len(header['kinds'])} parts")
            pending.future.set_result([_array(p.buffer, shape).copy() for p in message[1:]])
        except (FrameError, KeyError, TypeError) as exc:
            pending.future.set_exception(ServiceError(f"slab result: {exc}"))


# -- the worker process ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m n2i_stream.service.slabs --tasks EP --results EP``: one slab worker."""
    p = argparse.ArgumentParser(prog="python -m n2i_stream.service.slabs", description=__doc__)
    p.add_argument("--tasks", required=True, help="the pool's task endpoint (PUSH), to connect")
    p.add_argument("--results", required=True, help="the pool's result endpoint (PULL)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--name", help="worker name in logs (default host:pid)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    worker_loop(args.tasks, args.results, name=args.name, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
