"""A blocking client of the service's control socket: one JSON request, one JSON reply.

The service answers on a REP socket (``n2i_stream.service.control`` documents the protocol):
``{"command": NAME, ...}`` → ``{"ok": true, ...}`` or ``{"ok": false, "error": {"type",
"message"}}``. A REQ socket that sent a request and lost the reply cannot send again, so after a
timeout the socket is closed (linger 0, dropping the stale request) and a fresh one is opened on
the next request ("lazy pirate"). Requests are serialised by a lock, so one client may be used
from several threads (the device calls it from a worker thread, off the event loop).

Errors keep the service's words: an ``ok: false`` reply raises the package exception named by
its ``type`` (ConfigError, ServiceError, …) with the service's message, prefixed by the address
and the command; no reply in time raises :class:`ServiceUnreachableError` (also a TimeoutError).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import zmq

from n2i_stream.errors import (
    ConfigError,
    DataError,
    GeometryError,
    ModelError,
    N2IError,
    ServiceError,
    TrainingError,
)

__all__ = ["ControlClient", "ServiceBusyError", "ServiceUnreachableError", "raise_for_reply"]


class ServiceUnreachableError(ServiceError, TimeoutError):
    """The service did not answer in time (not running, wrong address, or hung)."""


class ServiceBusyError(ServiceError):
    """The service is running another scan and cannot take a new one."""


# Exception classes an error reply's "type" may name; anything else is a ServiceError.
_ERROR_TYPES: dict[str, type[N2IError]] = {
    cls.__name__: cls
    for cls in (ConfigError, DataError, GeometryError, ModelError, ServiceError, TrainingError)
}


def raise_for_reply(reply: Any, *, address: str, command: str) -> dict[str, Any]:
    """The reply's fields if ``ok``; otherwise raise the error it names, with its message."""
    where = f"n2i service at {address}: {command}"
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ServiceError(f"{where}: expected a JSON object with 'ok', got {_brief(reply)}")
    if reply["ok"]:
        return {k: v for k, v in reply.items() if k != "ok"}
    error = reply.get("error")
    if not isinstance(error, dict):
        raise ServiceError(f"{where} failed without a reason ({_brief(reply)})")
    kind = error.get("type")
    message = error.get("message") or "(no message)"
    cls = _ERROR_TYPES.get(kind, ServiceError) if isinstance(kind, str) else ServiceError
    if cls is ServiceError and "busy" in str(message):
        cls = ServiceBusyError
    raise cls(f"{where}: {message}")


class ControlClient:
    """Sends control requests to one service address and returns the replies' fields.

    ``timeout``: seconds to wait for a reply (per request unless overridden). ``context``:
    share a ZMQ context (not terminated here), or None to own one.
    """

    def __init__(
        self, address: str, *, timeout: float = 5.0, context: zmq.Context | None = None
    ) -> None:
        if "://" not in address:
            raise ConfigError(
                f"control address: expected 'transport://host:port' such as "
                f"'tcp://127.0.0.1:5560', got {address!r}"
            )
        if not timeout > 0:
            raise ConfigError(f"control timeout: expected > 0 seconds, got {timeout!r}")
        self.address = address
        self.timeout = float(timeout)
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.resets = 0  # sockets dropped after a lost reply

    def request(
        self, command: str, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send ``{"command": command, **fields}``; the reply's fields without ``ok``.

        Raises the error the reply names (ConfigError, ServiceError, ServiceBusyError …) or
        :class:`ServiceUnreachableError` when no reply comes within ``timeout`` seconds.
        """
        wait = self.timeout if timeout is None else float(timeout)
        body = json.dumps({"command": command, **fields}).encode()
        with self._lock:
            if self._closed:
                raise ServiceError(f"the control client for {self.address} is closed")
            sock = self._socket()
            try:
                sock.send(body)
                ready = sock.poll(int(wait * 1000), zmq.POLLIN)
                raw = sock.recv() if ready else None
            except zmq.ZMQError as exc:
                self._reset()
                raise ServiceError(
                    f"n2i service at {self.address}: {command}: socket error: {exc}"
                ) from exc
            if raw is None:
                self._reset()
                raise ServiceUnreachableError(
                    f"no reply from the n2i service at {self.address} within {wait:g} s "
                    f"(command {command!r}): is `n2i-stream serve` running with its control "
                    f"socket at this address?"
                )
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise ServiceError(
                f"n2i service at {self.address}: {command}: expected a JSON reply, got {raw[:60]!r}"
            ) from None
        return raise_for_reply(reply, address=self.address, command=command)

    def close(self) -> None:
        """Close the socket, and the context if this client created it (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            if self._own_context:
                self._ctx.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.linger = 0
            try:
                sock.connect(self.address)
            except zmq.ZMQError as exc:
                sock.close()
                raise ConfigError(
                    f"cannot connect to the n2i service at {self.address}: {exc}"
                ) from exc
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        # A REQ socket waiting for a lost reply refuses to send again: replace it.
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            self.resets += 1


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
