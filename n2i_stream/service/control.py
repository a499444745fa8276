"""The control protocol of ``n2i-stream serve`` — the single source of truth — and its socket.

Sockets
    data: PULL (default) or SUB, bound or connected
    (:class:`~n2i_stream.io.zmq_source.ZmqFrameSource`);
    control: ROUTER bound (e.g. ``tcp://127.0.0.1:5560``), for REQ or DEALER clients;
    results: PUB bound (e.g. ``tcp://127.0.0.1:5561``), ``n2i-recon-1.0`` messages
    (:mod:`n2i_stream.wire.recon`): one per time step and kind (``fbp``, ``denoised``), the whole
    volume ``(rows, n, n)`` or one message per requested z-slice.

Requests and replies: one UTF-8 JSON object each, in one ZMQ frame (after the REQ/DEALER
envelope). A request is ``{"command": NAME, ...arguments}``; the reply is ``{"ok": true, ...}``
or ``{"ok": false, "error": {"type": T, "message": M}}`` where ``T`` names the package error
(``ConfigError``, ``ServiceError``, ``ModelError``, ``DataFileError``, ...). Malformed JSON, an
unknown command, unknown keys or wrong types give ``ConfigError``; the service is unaffected.

``{"command": "ping"}``
    → ``{"ok": true, "version": V, "state": S}``.
``{"command": "configure", "scan": SCAN}``
    → ``{"ok": true, "scan_id": ID, "state": S}`` (``acquiring``, or ``streaming`` at once when
    ``SCAN.model`` names a checkpoint). ``serve`` fills in the keys SCAN leaves out from its
    settings' ``[scan_defaults]`` and places a relative (or, with ``write_by_default``, a
    missing) ``output`` in ``[output] directory``, as for ``--scan`` and start documents.
    Refused with ``ServiceError`` "busy with scan X in state Y" unless the state is ``idle``,
    ``done`` or ``failed``.
``{"command": "status"}``
    → ``{"ok": true, "status": STATUS}``.
``{"command": "stop", "wait": true, "timeout": null}``
    Drain: frames already received are assembled (partial steps flushed and flagged),
    reconstructed, denoised if a model exists (training in progress is interrupted), published
    and written; the file is closed; state → ``done`` with reason ``"stopped"``. Replies
    ``{"ok": true, "state": S, "scan_id": ID}`` once done, or at once with ``"wait": false``.
    ``timeout`` (seconds) turns a longer wait into a ``ServiceError`` reply (the stop goes on).
    A scan also ends by itself (state ``done``, reason null) once every time step has been
    completed; when frames of the last steps were lost, the plan's ``stop`` ends it, or the
    scan's ``end_after_idle_s``.
``{"command": "abort", "wait": true, "timeout": null}``
    Drops queued and in-flight work and closes the file (what was written stays valid);
    state → ``done`` with reason ``"aborted"``. Replies like ``stop``.
``{"command": "shutdown"}``
    Stops a running scan (drained, like ``stop``) and ends the ``serve`` process;
    ``{"ok": true}`` is sent first.

While a ``stop`` or ``abort`` waits, other requests (``status``) are answered.

SCAN (:class:`~n2i_stream.service.scan_config.ScanConfig`; unknown keys rejected):
``scan_id`` str; ``rows``, ``cols``, ``frames_per_step``, ``steps`` int; ``dtype`` "uint16";
``angles`` [degrees per projection] or ``angle_start`` + ``angle_step`` (degrees);
``projection_ids`` / ``dark_ids`` / ``flat_ids`` lists of ``[first, count]`` runs (unwrapped
ids); ``id_bits`` int|null; ``train_steps`` K (2 <= K < steps); ``center_offset`` number|"auto";
``network`` "unet"|"msd"|"dncnn"|null (null: the learning code's default); ``train_minutes``
number; ``train_iterations`` int|null;
``model`` checkpoint path|null (skip training); ``output`` results HDF5 path|null;
``overwrite`` bool; ``publish`` "volume" or [z-slice indices]; ``filter`` ramp window;
``oversample`` 1-4 (FBP samples per detector column); ``keep_low`` pixels (the denoised volume
takes the FBP's scales coarser than this Gaussian; 0: off); ``n`` reconstruction size|null;
``close_lag`` int; ``end_after_idle_s`` seconds|null (no frame for this long after the first:
the scan ends as if complete, reason "no frames for N s"; null: only ``stop`` ends it);
``training`` {``depth``, ``width``, ``context``,
``crop``, ``batch``, ``lr``, ``seed``; each null or absent: the learning code's default}.

STATUS:
``state`` "idle"|"acquiring"|"training"|"streaming"|"done"|"failed"; ``scan_id``; ``reason``
(why failed, "stopped", "aborted", or why a scan streams FBP only); ``output``; ``version``;
``counters`` {``received``, ``bad``, ``duplicate``, ``out_of_order``, ``wrapped``, ``dropped``,
``outside_range``, ``late``, ``dropped_overload`` (frames the source dropped), ``bad_reasons``
{reason: n}, ``queued``} for the current scan; ``steps`` {``total``, ``received``,
``incomplete``, ``published_fbp``, ``published_denoised``, ``last_published``, ``backlog``
(steps assembled but not yet published in final form), ``dropped_overload`` (steps dropped by
the ``drop_oldest`` policy), ``backlog_dropped``, ``failed`` (steps that could not be
corrected), ``clipped_values`` (transmissions clipped to keep line integrals finite),
``on_disk`` (steps a resumed scan had written already), ``buffers_in_use`` (step buffers of raw
counts held right now), ``buffers_allocated`` (beyond the pool: the worker fell behind),
``slab_failures`` (the slab workers failed; the scan went on in the service process)};
``training`` {``state`` "waiting"|"running"|"done"|"failed"|"skipped", ``reason``,
``iteration``, ``iterations``, ``loss``, ``eta_s``, ``elapsed_s``, ``losses`` (recent), ``model``
(checkpoint in use or saved)}; ``latency_s`` {``last``, ``median``, ``max``} (last
frame of a step received → its denoised result published; for steps published before a model
existed: → FBP published); ``ingest`` {``frames_per_s``, ``bytes_per_s``}; ``center_offset``
(the centre used); ``frames_without_scan``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from ..config import from_mapping
from ..errors import ConfigError, N2IError, ServiceError
from ..io.zmq_thread import WakeSignal
from .scan_config import ScanConfig

__all__ = [
    "COMMANDS",
    "ControlClient",
    "ControlHandler",
    "ControlServer",
    "error_reply",
    "parse_request",
]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 << 20  # a scan with an angle table of millions of frames still fits


@dataclass(frozen=True)
class _NoArguments:
    pass


@dataclass(frozen=True)
class _Configure:
    scan: ScanConfig


@dataclass(frozen=True)
class _Wait:
    wait: bool = True  # reply once the scan has ended
    timeout: float | None = None  # seconds; a longer wait is answered with a ServiceError


#: command -> the arguments it takes (a frozen dataclass: unknown keys and wrong types rejected)
COMMANDS: dict[str, type] = {
    "ping": _NoArguments,
    "configure": _Configure,
    "status": _NoArguments,
    "stop": _Wait,
    "abort": _Wait,
    "shutdown": _NoArguments,
}


@dataclass(frozen=True)
class Request:
    command: str
    arguments: Any


def parse_request(
    raw: bytes, *, scan_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> Request:
    """Validate one request; ConfigError says what was expected and what arrived.
    ``scan_defaults`` fills in a ``configure`` request's scan before it is checked (``serve``:
    the settings' ``[scan_defaults]`` and ``[output]``)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"expected a UTF-8 JSON object, got {bytes(raw[:60])!r}: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError(f"expected a JSON object, got {type(body).__name__}")
    command = body.pop("command", None)
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; expected one of {sorted(COMMANDS)}")
    if command == "configure" and scan_defaults is not None and isinstance(body.get("scan"), dict):
        body["scan"] = scan_defaults(body["scan"])
    arguments = from_mapping(COMMANDS[command], body, source=f"{command} request")
    return Request(command, arguments)


def error_reply(exc: BaseException) -> dict[str, Any]:
    """``{"ok": false, "error": {...}}`` for an exception (unexpected ones as InternalError)."""
    kind = type(exc).__name__ if isinstance(exc, N2IError) else "InternalError"
    return {"ok": False, "error": {"type": kind, "message": str(exc)}}


Reply = dict[str, Any] | concurrent.futures.Future


class ControlHandler:
    """Carries out requests on an :class:`~n2i_stream.service.service.N2IService`.

    ``on_shutdown`` is called for ``shutdown`` (the ``serve`` entry point ends the process);
    without it ``shutdown`` is refused. ``scan_defaults`` fills in the scans of ``configure``
    requests (see :func:`parse_request`). Waiting commands run on a helper thread and reply later.
    """

    def __init__(
        self,
        service: Any,
        *,
        on_shutdown: Callable[[], None] | None = None,
        scan_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.service = service
        self.on_shutdown = on_shutdown
        self.scan_defaults = scan_defaults

    def __call__(self, raw: bytes) -> Reply:
        try:
            request = parse_request(raw, scan_defaults=self.scan_defaults)
            return getattr(self, f"_{request.command}")(request.arguments)
        except N2IError as exc:
            return error_reply(exc)
        except Exception as exc:  # a bug: answer it, log it, keep serving
            log.exception("control request failed")
            return error_reply(exc)

    def _ping(self, _: _NoArguments) -> Reply:
        from .. import __version__

        return {"ok": True, "version": __version__, "state": self.service.state}

    def _configure(self, args: _Configure) -> Reply:
        scan = self.service.configure(args.scan)
        return {"ok": True, "scan_id": scan.scan_id, "state": self.service.state}

    def _status(self, _: _NoArguments) -> Reply:
        return {"ok": True, "status": self.service.status()}

    def _stop(self, args: _Wait) -> Reply:
        return self._end_scan(self.service.stop, args)

    def _abort(self, args: _Wait) -> Reply:
        return self._end_scan(self.service.abort, args)

    def _end_scan(self, end: Callable[..., str], args: _Wait) -> Reply:
        run = self.service.run
        scan_id = run.scan.scan_id if run is not None else None
        if not args.wait:
            return {"ok": True, "state": end(wait=False), "scan_id": scan_id}
        future: concurrent.futures.Future = concurrent.futures.Future()

        def wait() -> None:
            try:
                state = end(wait=True, timeout=args.timeout)
                future.set_result({"ok": True, "state": state, "scan_id": scan_id})
            except Exception as exc:
                future.set_result(error_reply(exc))

        threading.Thread(target=wait, name="n2i-control-wait", daemon=True).start()
        return future

    def _shutdown(self, _: _NoArguments) -> Reply:
        if self.on_shutdown is None:
            raise ServiceError("shutdown is only available in a serve process")
        self.on_shutdown()
        return {"ok": True}


class ControlServer:
    """A ROUTER socket answering JSON requests with ``handler(raw) -> reply`` on its own thread.

    A reply may be a :class:`concurrent.futures.Future` of one (a request that waits): the
    server goes on answering others and sends it when it completes. ``context``: shared (not
    terminated here) or None to own one.
    """

    def __init__(
        self,
        endpoint: str,
        handler: Callable[[bytes], Reply],
        *,
        context: zmq.Context | None = None,
    ) -> None:
        self._endpoint_asked = endpoint
        self._handler = handler
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._wake = WakeSignal(self._ctx, "control")
        self._ready = threading.Event()
        self._stopping = False
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="n2i-control", daemon=True)
        self.endpoint: str | None = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Bind on the server thread; ServiceError if the endpoint cannot be bound."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ServiceError(f"the control thread did not bind {self._endpoint_asked} in time")
        if self._start_error is not None:
            self._thread.join()
            raise ServiceError(
                f"cannot bind the control socket to {self._endpoint_asked}: {self._start_error}"
            ) from self._start_error

    def close(self, timeout: float = 10.0) -> None:
        """Stop answering (pending waits are dropped) and join the thread; idempotent."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.send()
            self._thread.join(timeout)
        if self._own_context:
            self._ctx.term()
            self._own_context = False

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        wake = None
        try:
            router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            wake = self._wake.bind()
            router.bind(self._endpoint_asked)
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._start_error = exc
            router.close()
            if wake is not None:
                wake.close()
            self._ready.set()
            return
        self._ready.set()
        pending: list[tuple[list[bytes], concurrent.futures.Future]] = []
        try:
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(wake, zmq.POLLIN)
            while not self._stopping:
                events = dict(poller.poll())
                if wake in events:
                    WakeSignal.clear(wake)
                if router in events:
                    while router.poll(0) and not self._stopping:
                        self._answer(router, router.recv_multipart(), pending)
                still = []
                for envelope, future in pending:
                    if future.done():
                        router.send_multipart([*envelope, _encode(future.result())])
                    else:
                        still.append((envelope, future))
                pending = still
        except Exception as exc:
            self.error = exc
            log.exception("the control thread failed")
        finally:
            router.close()
            wake.close()

    def _answer(
        self,
        router: zmq.Socket,
        frames: list[bytes],
        pending: list[tuple[list[bytes], concurrent.futures.Future]],
    ) -> None:
        # REQ clients send [identity, b"", body]; DEALER clients [identity, body].
        split = 2 if len(frames) >= 3 and frames[1] == b"" else 1
        envelope, body = frames[:split], frames[split:]
        if len(body) != 1:
            reply: Reply = error_reply(
                ConfigError(f"expected one JSON frame per request, got {len(body)} frames")
            )
        else:
            reply = self._handler(body[0])
        if isinstance(reply, concurrent.futures.Future):
            reply.add_done_callback(lambda _: self._wake.send())
            pending.append((envelope, reply))
        else:
            router.send_multipart([*envelope, _encode(reply)])


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity: a loss or rate that is not finite is reported as null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(_finite(reply), allow_nan=False, default=str).encode()


class ControlClient:
    """A REQ client of the control socket (CLI tools, tests, benchmarks).

    :meth:`call` returns the reply of a successful request and raises the package error the
    reply names otherwise; :meth:`request` returns any reply as it is. A reply that does not
    come within ``timeout`` seconds raises ServiceError (the socket is then replaced, as a REQ
    socket cannot send again before it has a reply).
    """

    def __init__(
        self, endpoint: str, *, context: zmq.Context | None = None, timeout: float = 30.0
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.connect(self.endpoint)
        return sock

    def request(
        self, command: str, *, reply_timeout: float | None = None, **arguments: Any
    ) -> dict:
        """Send ``{"command": command, **arguments}`` and return the reply object."""
        wait = self.timeout if reply_timeout is None else reply_timeout
        self._sock.send(json.dumps({"command": command, **arguments}).encode())
        if not self._sock.poll(int(wait * 1000)):
            self._sock.close()
            self._sock = self._connect()
            raise ServiceError(f"no reply to {command!r} from {self.endpoint} within {wait} s")
        return json.loads(self._sock.recv())

    def call(self, command: str, *, reply_timeout: float | None = None, **arguments: Any) -> dict:
        """:meth:`request`, raising the reply's error (as the package's exception) if not ok."""
        reply = self.request(command, reply_timeout=reply_timeout, **arguments)
        if reply.get("ok"):
            return reply
        error = reply.get("error") or {}
        kind, message = error.get("type"), error.get("message", "")
        from .. import errors

        cls = getattr(errors, str(kind), None)
        if cls in (errors.DataFileError, None) or not issubclass(cls, N2IError):
            raise ServiceError(f"{kind}: {message}")
        raise cls(message)

    def close(self) -> None:
        self._sock.close()
        if self._own_context:
            self._ctx.term()
            self._own_context = False

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
