"""Results on a ZMQ PUB socket: one ``n2i-recon-1.0`` message per time step, kind and slice.

A :class:`ZmqResultSink` is a result sink (``put``/``close``) for the service's publisher
thread. Each result is sent as the whole volume, or — when the scan asked for slices
(``StepResult.slices``) — as one message per requested z-slice (``slice: {"axis": "z",
"index": k}``). PUB never waits for subscribers: a slow or absent subscriber loses messages at
its high-water mark (``sndhwm``), and the service goes on; that is PUB/SUB's contract. Payloads
are sent without copying; ZMQ keeps the array alive until it has gone out.

The socket is an XPUB — a PUB to its subscribers — so that
:meth:`ZmqResultSink.wait_for_subscribers` can tell when a subscriber's subscription has arrived
(PUB/SUB's "slow joiner": messages sent before that are lost for it). Tests and the demo call it
before a scan starts.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from ..errors import ConfigError, ServiceError
from ..wire import encode_recon

if TYPE_CHECKING:
    from ..service.sinks import StepResult

__all__ = ["ZmqResultSink", "ZmqSinkConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZmqSinkConfig:
    """Where results are published (from plain data: ``config.from_mapping``)."""

    endpoint: str  # "tcp://host:port"; with bind, "tcp://127.0.0.1:*" picks a free port
    bind: bool = True  # bind (subscribers connect to us) or connect to a forwarder
    sndhwm: int = 100  # messages queued per subscriber before PUB drops for it

    def __post_init__(self) -> None:
        if "://" not in self.endpoint:
            raise ConfigError(
                f"results endpoint: expected 'transport://address', got {self.endpoint!r}"
            )
        if "*" in self.endpoint and not self.bind:
            raise ConfigError(f"results endpoint {self.endpoint!r} has a wildcard: bind only")
        if self.sndhwm < 0:
            raise ConfigError(f"sndhwm: expected >= 0 (0 = unlimited), got {self.sndhwm}")


class ZmqResultSink:
    """Publishes results on a PUB socket; ``context`` shared (not terminated here) or owned."""

    def __init__(self, config: ZmqSinkConfig, *, context: zmq.Context | None = None) -> None:
        self.config = config
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.linger = 0
        self._sock.sndhwm = config.sndhwm
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only new topics
        try:
            if config.bind:
                self._sock.bind(config.endpoint)
            else:
                self._sock.connect(config.endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            if self._own_context:
                self._ctx.term()
            verb = "bind" if config.bind else "connect"
            raise ServiceError(
                f"cannot {verb} results PUB socket to {config.endpoint}: {exc}"
            ) from exc
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.subscriptions = 0  # subscribe messages seen (a subscriber may send several)
        self._closed = False
        # put() runs on the service's publisher thread, wait_for_subscribers() on another:
        # the lock keeps them off the socket at the same time.
        self._lock = threading.Lock()

    def _take_subscriptions(self, timeout_ms: int = 0) -> None:
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            if self._sock.recv()[:1] == b"\x01":
                self.subscriptions += 1
            timeout_ms = 0

    def wait_for_subscribers(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``count`` subscriptions have arrived (ServiceError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._take_subscriptions()
                if self.subscriptions >= count:
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceError(
                    f"{self.subscriptions} of {count} subscribers on {self.endpoint} after "
                    f"{timeout} s"
                )
            with self._lock:
                self._take_subscriptions(int(min(left, 0.05) * 1000) + 1)

    def put(self, result: StepResult) -> None:
        if self._closed:
            raise ServiceError("put() on a closed results sink")
        common = {
            "time_step": result.time_step,
            "kind": result.kind,
            "complete": not result.incomplete,
            "missing_frames": result.missing,
            "scan_id": result.scan_id,
        }
        if result.slices is None:
            messages = [encode_recon(result.volume, **common)]
        else:
            messages = [
                encode_recon(result.volume[z], slice_axis="z", slice_index=z, **common)
                for z in result.slices
            ]
        with self._lock:
            self._take_subscriptions()
            for parts in messages:
                self._sock.send_multipart(parts, copy=False)
                self.sent += 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> ZmqResultSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
