"""The control-room dashboard: a read-only web page served from the live service.

Standard library only (``http.server``): one thread per connection, so a slow or vanished
browser holds up nobody but itself, and nothing here ever waits on the pipeline. The page
(``static/``) gets live news over Server-Sent Events and pulls PNG images of the slices it shows.

Endpoints (all ``GET``; errors are JSON ``{"error": {"status": code, "message": text}}``):

``/``                     the page (``/static/app.js``, ``/static/style.css``)
``/api/status``           the service STATUS (see the service contract), 503 if unavailable
``/api/steps``            the time steps held: kinds, shapes, versions, latencies
``/api/window?step=``     automatic contrast ``{"window": [lo, hi], "range": [min, max]}``
``/api/slice.png``        ``step`` (default newest), ``kind`` denoised|fbp (default: denoised
                          where held), ``axis`` z|y|x (default z), ``index`` (default middle),
                          ``vmin`` and ``vmax`` (both or neither; default the step's window)
``/api/events``           SSE: ``hello`` (held steps), ``status`` ticks, ``step`` when a result
                          is published, ``reset`` when a new scan starts, ``closed`` when a scan's
                          stream ends, ``resync`` when the stream fell behind (refetch steps)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ... import __version__
from ...errors import ConfigError, ServiceError
from .render import AXES, PngCache, cut, to_png
from .sink import KINDS, DashboardSink, NotHeld

__all__ = ["DashboardConfig", "DashboardServer", "parse_address"]

log = logging.getLogger(__name__)

StatusProvider = Callable[[], Mapping[str, Any]]

#: static files served, name -> content type (a fixed list: no path ever reaches the disk)
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'",
}


@dataclass(frozen=True)
class DashboardConfig:
    """Where the dashboard listens and how it paces its updates."""

    host: str = "127.0.0.1"  #: interface to bind; localhost unless the page must be seen remotely
    port: int = 8080  #: TCP port; 0 picks a free one (see :attr:`DashboardServer.url`)
    status_interval_s: float = 0.5  #: how often the service status is read and sent
    keepalive_s: float = 10.0  #: longest silence on an event stream before a keep-alive
    client_timeout_s: float = 15.0  #: a browser that stops reading this long is dropped
    image_max_side: int = 1024  #: larger slices are reduced to this many pixels on a side
    image_cache: int = 128  #: encoded images kept for other browsers asking the same

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        for name in ("status_interval_s", "keepalive_s", "client_timeout_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.image_max_side < 16:
            problems.append(f"image_max_side must be >= 16 pixels, got {self.image_max_side}")
        if self.image_cache < 0:
            problems.append(f"image_cache must be >= 0, got {self.image_cache}")
        if problems:
            raise ConfigError("invalid DashboardConfig: " + "; ".join(problems))


def parse_address(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"HOST:PORT"``, ``":PORT"``, ``"PORT"`` or ``"[::1]:PORT"`` as ``(host, port)``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = "", text.strip()
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"dashboard address must look like HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}"
        )
    return host, int(port)


class _BadRequest(Exception):
    """A request the dashboard cannot answer; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _plain(value: Any) -> Any:
    """JSON-able copy: NumPy scalars to numbers, non-finite floats to null, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False)


class _HTTPServer(ThreadingHTTPServer):
    """One daemon thread per connection, all tracked so closing can end and join them."""

    daemon_threads = True  # a browser must never keep the process alive
    app: DashboardServer

    def __init__(self, address: tuple[str, int], app: DashboardServer) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.app = app
        self._open: set[socket.socket] = set()
        self._workers: list[threading.Thread] = []
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # The standard mix-in does not join daemon threads on close; these are joined.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="n2i-dashboard-connection",
            daemon=True,
        )
        with self._open_lock:
            self._open.add(request)
            self._workers = [t for t in self._workers if t.is_alive()]
            self._workers.append(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open connection, waking the threads blocked on them, and join them."""
        with self._open_lock:
            sockets, workers = list(self._open), list(self._workers)
        for sock in sockets:
            # A socket its own thread closed meanwhile has nobody left to wake.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in workers:
            thread.join()


class DashboardServer:
    """Serves the dashboard for ``status`` (e.g. ``N2IService.status``) and ``sink``.

    :meth:`start` binds and returns at once; the server runs on its own threads until
    :meth:`close` (also on leaving a ``with`` block), which ends every browser connection and
    joins every thread it started.
    """

    def __init__(
        self,
        status: StatusProvider,
        sink: DashboardSink,
        config: DashboardConfig | None = None,
    ) -> None:
        self.config = config or DashboardConfig()
        self.sink = sink
        self._status = status
        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._images = PngCache(self.config.image_cache)
        self._clients = 0
        self._clients_lock = threading.Lock()
        self._static = {
            name: (resources.files(__package__) / "static" / name).read_bytes() for name in _STATIC
        }

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> DashboardServer:
        """Bind the port and start serving; :class:`ServiceError` if the port cannot be bound."""
        if self._httpd is not None:
            raise ServiceError("the dashboard is already running at " + self.url)
        address = (self.config.host, self.config.port)
        try:
            self._httpd = _HTTPServer(address, self)
        except OSError as exc:
            raise ServiceError(
                f"dashboard cannot listen on {self.config.host}:{self.config.port}: {exc}; "
                "choose another port with --dashboard HOST:PORT (port 0 picks a free one)"
            ) from exc
        self._poll_status()
        for name, target in (("serve", self._serve), ("status", self._status_loop)):
            thread = threading.Thread(target=target, name=f"n2i-dashboard-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("dashboard at %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving, end every connection and join the server's threads (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stop.set()
        self.sink.events.wake()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> DashboardServer:
        return self.start() if self._httpd is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._httpd is None:
            raise ServiceError("the dashboard is not running")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/``."""
        host, port = self.address
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"

    @property
    def clients(self) -> int:
        """Browsers currently connected to the event stream."""
        with self._clients_lock:
            return self._clients

    # -- threads -------------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._httpd is not None
        self._httpd.serve_forever(poll_interval=0.05)  # bounds how long close() waits

    def _status_loop(self) -> None:
        while not self._stop.wait(self.config.status_interval_s):
            self._poll_status()

    def _poll_status(self) -> None:
        status, error = self.read_status()
        tick = {
            "status": status,
            "error": error,
            "dashboard": {"clients": self.clients, "time": time.time()},
        }
        self.sink.events.set_status(_dumps(tick))

    def read_status(self) -> tuple[dict[str, Any] | None, str | None]:
        """The service status as plain data, or ``(None, why)`` when it cannot be read."""
        try:
            return _plain(self._status()), None
        except Exception as exc:  # the page must show any failure of the status source
            log.warning("dashboard: the service status cannot be read: %r", exc)
            return None, f"the service status cannot be read: {type(exc).__name__}: {exc}"

    @contextmanager
    def _client(self) -> Iterator[None]:
        with self._clients_lock:
            self._clients += 1
        try:
            yield
        finally:
            with self._clients_lock:
                self._clients -= 1

    # -- request handling (connection threads) -------------------------------------------------

    def slice_png(self, query: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
        """The PNG answering a ``/api/slice.png`` query and headers describing it."""
        _known(query, _SLICE_PARAMS)
        sink = self.sink
        step = _int(query, "step") if "step" in query else sink.newest()
        if step is None:
            raise NotHeld("no time step has been published yet")
        kind = query.get("kind")
        if kind is not None and kind not in KINDS:
            raise _BadRequest(400, f"kind must be one of {list(KINDS)}, got {kind!r}")
        if kind is None:
            try:
                held = sink.get(step, "denoised")
            except NotHeld:
                held = sink.get(step, "fbp")
        else:
            held = sink.get(step, kind)
        axis = query.get("axis", "z")
        if axis not in AXES:
            raise _BadRequest(400, f"axis must be one of {list(AXES)}, got {axis!r}")
        size = held.volume.shape[AXES[axis]]
        index = _int(query, "index") if "index" in query else size // 2
        if not 0 <= index < size:
            raise NotHeld(
                f"slice {axis}={index} does not exist: time step {step} has {axis} in 0..{size - 1}"
            )
        if ("vmin" in query) != ("vmax" in query):
            raise _BadRequest(400, "give both vmin and vmax, or neither for automatic contrast")
        if "vmin" in query:
            vmin, vmax = _float(query, "vmin"), _float(query, "vmax")
            if not vmax > vmin:
                raise _BadRequest(400, f"vmax must exceed vmin, got vmin={vmin}, vmax={vmax}")
        else:
            vmin, vmax = sink.window(step)[:2]
        key = (held.seq, axis, index, vmin, vmax)  # seq never repeats: a version's pixels
        body = self._images.get(
            key,
            lambda: to_png(
                cut(held.volume, axis, index), vmin, vmax, max_side=self.config.image_max_side
            ),
        )
        headers = {
            "X-Step": str(step),
            "X-Kind": held.kind,
            "X-Version": str(held.seq),
            "X-Window": f"{vmin:.6g} {vmax:.6g}",
        }
        return body, headers

    def window(self, query: Mapping[str, str]) -> dict[str, Any]:
        """The answer of ``/api/window``."""
        _known(query, ("step",))
        step = _int(query, "step") if "step" in query else self.sink.newest()
        if step is None:
            raise NotHeld("no time step has been published yet")
        low, high, minimum, maximum = self.sink.window(step)
        return {"time_step": step, "window": [low, high], "range": [minimum, maximum]}


#: parameters of /api/slice.png; ``v`` (the result's version) only makes each version's URL unique
_SLICE_PARAMS = ("step", "kind", "axis", "index", "vmin", "vmax", "v")


def _known(query: Mapping[str, str], names: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(names))
    if unknown:
        raise _BadRequest(
            400, f"unknown parameter {', '.join(unknown)}; this endpoint takes {', '.join(names)}"
        )


def _int(query: Mapping[str, str], name: str) -> int:
    text = query[name]
    try:
        return int(text)
    except ValueError:
        raise _BadRequest(400, f"{name} must be an integer, got {text!r}") from None


def _float(query: Mapping[str, str], name: str) -> float:
    text = query[name]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _BadRequest(400, f"{name} must be a finite number, got {text!r}")
    return value


class _Handler(BaseHTTPRequestHandler):
    """One browser connection; every method runs on that connection's own thread."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"n2i-stream-dashboard/{__version__}"

    def setup(self) -> None:
        self.timeout = self.server.app.config.client_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard %s: " + format, self.address_string(), *args)

    # -- responses -----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in {**_SECURITY_HEADERS, **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, _dumps(value).encode(), "application/json")

    def _send_error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": {"status": status, "message": message}})

    # -- methods -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
            query = _single_values(parse_qs(url.query, keep_blank_values=True))
            self._route(url.path, query)
        except _BadRequest as exc:
            self._send_error(exc.status, str(exc))
        except NotHeld as exc:
            self._send_error(404, str(exc.args[0]))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the browser left; nothing to answer
        except Exception as exc:  # one bad request must not take the server down
            log.exception("dashboard: %s failed", self.path)
            self._send_error(500, f"internal error: {type(exc).__name__}: {exc}")

    def _not_allowed(self) -> None:
        self._send(
            405,
            _dumps(
                {"error": {"status": 405, "message": "the dashboard is read-only: GET only"}}
            ).encode(),
            "application/json",
            Allow="GET",
        )

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _route(self, path: str, query: dict[str, str]) -> None:
        app = self.server.app
        if path in ("/", "/index.html"):
            self._send(200, app._static["index.html"], _STATIC["index.html"])
        elif path.startswith("/static/") and path[len("/static/") :] in _STATIC:
            name = path[len("/static/") :]
            self._send(200, app._static[name], _STATIC[name])
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path == "/api/status":
            status, error = app.read_status()
            if status is None:
                self._send_error(503, error or "the service status is unavailable")
            else:
                self._send_json(200, status)
        elif path == "/api/steps":
            self._send_json(200, app.sink.snapshot())
        elif path == "/api/window":
            self._send_json(200, app.window(query))
        elif path == "/api/slice.png":
            body, headers = app.slice_png(query)
            self._send(200, body, "image/png", **headers)
        elif path == "/api/events":
            self._stream_events()
        else:
            raise _BadRequest(
                404,
                f"no such page {path!r}; the dashboard serves /, /api/status, /api/steps, "
                "/api/window, /api/slice.png and /api/events",
            )

    def _stream_events(self) -> None:
        app = self.server.app
        hub = app.sink.events
        self.close_connection = True  # the stream ends only when one side closes it
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        cursor, status_cursor = hub.cursor, 0
        hello = {
            "version": __version__,
            "steps": app.sink.snapshot(),
            "status_interval_s": app.config.status_interval_s,
        }
        try:
            self.wfile.write(b"retry: 2000\n\n" + _sse("hello", _dumps(hello)))
            with app._client():
                while True:
                    update = hub.wait(cursor, status_cursor, app.config.keepalive_s, app._stop)
                    if update.stopped:
                        return
                    chunks = []
                    if update.missed:
                        chunks.append(_sse("resync", _dumps(app.sink.snapshot())))
                    else:
                        chunks += [_sse(e.name, _dumps(e.data), e.seq) for e in update.events]
                    if update.status is not None:
                        chunks.append(_sse("status", update.status))
                    self.wfile.write(b"".join(chunks) or b": keep-alive\n\n")
                    cursor, status_cursor = update.cursor, update.status_cursor
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError) as exc:
            log.debug("dashboard: event stream to %s ended: %r", self.address_string(), exc)


def _sse(name: str, data: str, seq: int | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {seq}\n" if seq is not None else "")
    return (head + f"data: {data}\n\n").encode()


def _single_values(query: dict[str, list[str]]) -> dict[str, str]:
    repeated = sorted(k for k, v in query.items() if len(v) > 1)
    if repeated:
        raise _BadRequest(400, f"give each parameter once; repeated: {', '.join(repeated)}")
    return {k: v[0] for k, v in query.items()}
