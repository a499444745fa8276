"""Frames from a ZMQ socket: a receive thread that validates and copies into preallocated buffers.

The thread owns the data socket (PULL or SUB, bound or connected). For each multipart message it
parses and validates the header (:func:`~n2i_stream.wire.parse_frame_header`), takes a free slot
of its :class:`~n2i_stream.io.memory_source.FrameQueue` and receives the payload, then queues the
frame. ``payload="zero_copy"`` (the default) keeps the message ZMQ received as the frame's memory:
no copy at all, and the consumer's one copy (assembly into its preallocated time-step buffers) is
the only one. ``payload="pool"`` receives straight into one of ``buffers`` preallocated buffers
(``recv_into``: one copy out of ZMQ's message, no allocation), for consumers that keep frames.
Either way at most ``buffers`` frames exist (queued or held). The thread never waits on the
consumer except by the overload policy: ``block`` (back-pressure; on PUB/SUB, ZMQ's RCVHWM then
drops silently, upstream of us) or ``drop_oldest`` (counted).
Bad messages (malformed header, wrong size, missing or extra parts, larger than the buffers) are
counted per reason, logged and skipped; the thread keeps running. Frames of a burst are handed
over together (when the socket runs dry, or every few MiB), so the consumer wakes once per burst
rather than once per frame; small frames at high rates depend on that.

A second, in-process socket wakes the thread's poll on :meth:`ZmqFrameSource.stop`, so stopping
is immediate and needs no polling timeout. The thread closes its sockets before it ends; the
context is terminated on :meth:`~ZmqFrameSource.close` only if the source created it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import zmq

from ..errors import ConfigError, ServiceError
from ..wire import (
    Frame,
    FrameFormatError,
    FrameHeader,
    OverloadPolicy,
    SourceCounters,
    parse_frame_header,
)
from .memory_source import FrameQueue
from .zmq_thread import ReceiverThread

__all__ = ["ZmqFrameSource", "ZmqSourceConfig"]

log = logging.getLogger(__name__)

# Frames received in a burst are handed to the consumer together, at the latest after this
# many bytes or when the socket runs dry: one wake-up per burst instead of one per frame.
_HANDOFF_BYTES = 4 << 20


@dataclass(frozen=True)
class ZmqSourceConfig:
    """Where and how the frame socket receives (from plain data: ``config.from_mapping``)."""

    endpoint: str  # "tcp://host:port"; with bind, "tcp://127.0.0.1:*" picks a free port
    socket_type: Literal["pull", "sub"] = "pull"  # PUSH producers → pull; PUB producers → sub
    bind: bool = False  # bind (we are the fixed end) or connect to the detector
    rcvhwm: int = 1000  # messages ZMQ itself queues before back-pressure (PULL) or drops (SUB)
    buffers: int = 16  # frames queued or held at most: bounds our queue and its memory
    buffer_bytes: int = 2048 * 2048 * 2  # the largest payload accepted (pool: bytes per buffer)
    payload: Literal["zero_copy", "pool"] = "zero_copy"  # keep ZMQ's message, or copy to a pool
    overload: OverloadPolicy = "block"  # when all buffers are taken: "block" or "drop_oldest"
    angle_attribute: str | None = None  # ADZMQ ndattr entry carrying the angle (degrees), if any
    batch: int = 64  # messages taken per wake-up before checking for stop again

    def __post_init__(self) -> None:
        problems = []
        if "://" not in self.endpoint:
            problems.append(f"endpoint: expected 'transport://address', got {self.endpoint!r}")
        if "*" in self.endpoint and not self.bind:
            problems.append(f"endpoint {self.endpoint!r} has a wildcard: only valid with bind=true")
        if self.socket_type not in ("pull", "sub"):
            problems.append(f"socket_type: expected 'pull' or 'sub', got {self.socket_type!r}")
        if self.payload not in ("zero_copy", "pool"):
            problems.append(f"payload: expected 'zero_copy' or 'pool', got {self.payload!r}")
        if self.overload not in ("block", "drop_oldest"):
            problems.append(f"overload: expected 'block' or 'drop_oldest', got {self.overload!r}")
        for name in ("buffers", "buffer_bytes", "batch"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.rcvhwm < 0:
            problems.append(f"rcvhwm: expected >= 0 (0 = unlimited), got {self.rcvhwm}")
        if problems:
            raise ConfigError("ZmqSourceConfig: " + "; ".join(problems))


class ZmqFrameSource:
    """A :class:`~n2i_stream.wire.FrameSource` receiving frames from one ZMQ socket.

    ``context``: share the service's ZMQ context (not terminated here), or None to own one.
    Use as a context manager, or call :meth:`start` and finally :meth:`close`.
    """

    def __init__(self, config: ZmqSourceConfig, *, context: zmq.Context | None = None) -> None:
        self.config = config
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._zero_copy = config.payload == "zero_copy"
        self._queue = FrameQueue(
            slots=config.buffers,
            buffer_bytes=config.buffer_bytes,
            overload=config.overload,
            preallocate=not self._zero_copy,
            name=f"zmq-source {config.endpoint}",
        )
        self._thread = ReceiverThread(
            self._ctx,
            kind=zmq.PULL if config.socket_type == "pull" else zmq.SUB,
            endpoint=config.endpoint,
            bind=config.bind,
            rcvhwm=config.rcvhwm,
            what="frame receive",
            socket=f"{config.socket_type} socket",
            on_readable=self._receive_batch,
            on_exit=self._finish,
        )
        self._closed = False
        self._stopping = False
        self._deferred_bytes = 0  # frames committed but held back for one consumer wake-up

    @property
    def endpoint(self) -> str:
        """The socket's actual endpoint (the chosen port for a wildcard bind); after start()."""
        if self._thread.endpoint is None:
            raise ServiceError("the source has no endpoint before start()")
        return self._thread.endpoint

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the receive thread, if one did (the service should check)."""
        return self._thread.error

    @property
    def running(self) -> bool:
        return self._thread.running

    def start(self, timeout: float = 10.0) -> None:
        """Open the socket on the receive thread; raise ServiceError if it cannot bind/connect."""
        if self._thread.started or self._closed:
            raise ServiceError("start(): the source was already started (sources run once)")
        self._thread.start(timeout)

    def recv(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None after ``timeout`` s, or at once when stopped and drained.

        Raises ServiceError (the cause attached) once the receive thread has failed and the
        frames it queued before are all taken, so a consumer never waits on a dead thread.
        """
        frame = self._queue.get(timeout)
        error = self._thread.error
        if frame is None and error is not None:
            raise ServiceError(f"the frame receive thread failed: {error!r}") from error
        return frame

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving and join the thread; frames already queued stay receivable."""
        if not self._thread.running:
            return
        self._stopping = True  # take no new message from here on
        self._queue.stop_producer()  # in case the thread waits for a buffer
        self._thread.stop(timeout)

    def close(self) -> None:
        """Stop, drop queued frames, and terminate the context if this source created it."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        self._queue.close()
        if self._own_context:
            self._ctx.term()

    def counters(self) -> SourceCounters:
        return self._queue.counters()

    def __enter__(self) -> ZmqFrameSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the receive thread ----------------------------------------------------------------------

    def _receive_batch(self, sock: zmq.Socket) -> None:
        for _ in range(self.config.batch):
            if self._stopping or not self._receive_one(sock):
                break
            if self._deferred_bytes >= _HANDOFF_BYTES:
                self._flush()
        self._flush()

    def _finish(self) -> None:
        self._flush()
        self._queue.end()

    def _flush(self) -> None:
        self._queue.flush()
        self._deferred_bytes = 0

    def _receive_one(self, sock: zmq.Socket) -> bool:
        """Take one message if one is waiting; False when none is (or when stopping)."""
        q = self._queue
        if self._zero_copy:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            header = self._check_header(parts[0].bytes, len(parts))
            if header is None:
                return True
            slot = q.reserve()
            if slot is None:  # stop() while we waited for a buffer
                q.discarded_at_stop()
                return False
            payload = parts[1].buffer
            if payload.nbytes != header.nbytes:
                q.cancel(slot)
                self._reject_size(header, payload.nbytes)
                return True
            q.commit(slot, header, time.monotonic(), payload, defer=True)
            self._deferred_bytes += header.nbytes
            return True
        try:
            head = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return False
        header = self._check_header(head, 2 if sock.rcvmore else 1)
        if header is None:
            _discard_rest(sock)
            return True
        slot = q.reserve()
        if slot is None:
            _discard_rest(sock)
            q.discarded_at_stop()
            return False
        n = sock.recv_into(q.buffer(slot))  # straight into the preallocated buffer
        if sock.rcvmore:
            q.cancel(slot)
            _discard_rest(sock)
            q.reject("extra_parts", f"frame {header.frame_id}: expected 2 parts, got more")
        elif n != header.nbytes:
            q.cancel(slot)
            self._reject_size(header, n)
        else:
            q.commit(slot, header, time.monotonic(), defer=True)
            self._deferred_bytes += header.nbytes
        return True

    def _check_header(self, head: bytes, n_parts: int) -> FrameHeader | None:
        """The validated header of an ``n_parts`` message, or None when it was rejected."""
        q = self._queue
        if n_parts < 2:
            q.reject("missing_payload", f"expected [header, payload], got one part {head[:60]!r}")
            return None
        try:
            header = parse_frame_header(head, angle_attribute=self.config.angle_attribute)
        except FrameFormatError as exc:
            q.reject(exc.reason, str(exc))
            return None
        if n_parts > 2:
            q.reject("extra_parts", f"frame {header.frame_id}: expected 2 parts, got {n_parts}")
            return None
        if header.nbytes > q.buffer_bytes:
            q.reject(
                "too_large",
                f"frame {header.frame_id}: {header.nbytes} B, buffers hold {q.buffer_bytes} B "
                "(set buffer_bytes for this scan's frames)",
            )
            return None
        return header

    def _reject_size(self, header: FrameHeader, n: int) -> None:
        rows, cols = header.shape
        self._queue.reject(
            "size_mismatch",
            f"frame {header.frame_id}: expected {header.nbytes} payload bytes "
            f"({rows}×{cols} {header.dtype.name}), got {n}",
        )


_EMPTY = bytearray()


def _discard_rest(sock: zmq.Socket) -> None:
    # Receiving into an empty buffer drops the part without copying it.
    while sock.rcvmore:
        sock.recv_into(_EMPTY)
