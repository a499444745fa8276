"""Frames in memory: the bounded hand-off every source uses, and a source fed by function calls.

:class:`FrameQueue` is the hand-off between a producer (the ZMQ receive thread, or a test) and the
consumer (the assembly thread). It holds ``slots`` frames at most, queued or in the consumer's
hands: the producer reserves a slot, fills it and commits it with its header; the consumer gets
:class:`~n2i_stream.wire.Frame` objects in arrival order and releases each one, which frees its
slot. Slots bound the queue length and the memory. A slot's pixels live either in a buffer of a
pool allocated (and touched) once, ``buffer_bytes`` each, so the hot path allocates nothing, or in
memory the producer hands over with the commit (``preallocate=False``: the ZMQ source passes the
message ZMQ received, avoiding a copy). When every slot is taken the overload policy decides:
``block`` waits for the consumer, ``drop_oldest`` drops the oldest frame still queued (counted in
``dropped_overload``).

:class:`MemoryFrameSource` is a :class:`~n2i_stream.wire.FrameSource` fed by
:meth:`~MemoryFrameSource.push_message` (raw ``[header, payload]`` parts, validated exactly as on
the wire, bad ones counted, payloads copied into the pool): the in-memory twin of
:class:`~n2i_stream.io.zmq_source.ZmqFrameSource` for tests and the demo.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, ServiceError
from ..wire import (
    Frame,
    FrameFormatError,
    FrameHeader,
    FrameKind,
    OverloadPolicy,
    SourceCounters,
    WireFormat,
    frame_message,
    parse_frame_header,
)

__all__ = ["FrameQueue", "MemoryFrameSource"]

_Item = tuple[int, FrameHeader, float, Any]  # slot, header, received_at, payload or None

log = logging.getLogger(__name__)

# Bad messages are logged one by one up to this many per reason, then every LOG_EVERY-th, so a
# broken producer cannot flood the log at frame rate.
LOG_FIRST = 10
LOG_EVERY = 1000


class FrameQueue:
    """A bounded FIFO of at most ``slots`` frames, in preallocated buffers or handed-over memory.

    One producer thread calls :meth:`reserve`, fills the slot (:meth:`buffer`) or not, then
    :meth:`commit` or :meth:`cancel`, and :meth:`reject` for bad messages; any consumer thread
    calls :meth:`get` and releases the frames it gets. ``buffer_bytes`` is the largest payload
    accepted (and each pool buffer's size when ``preallocate``).
    """

    def __init__(
        self,
        *,
        slots: int,
        buffer_bytes: int,
        overload: OverloadPolicy = "block",
        preallocate: bool = True,
        name: str = "frames",
    ) -> None:
        if slots < 1 or buffer_bytes < 1:
            raise ConfigError(
                f"{name}: expected slots >= 1 and buffer_bytes >= 1, "
                f"got slots={slots} buffer_bytes={buffer_bytes}"
            )
        if overload not in ("block", "drop_oldest"):
            raise ConfigError(
                f"{name}: expected overload 'block' or 'drop_oldest', got {overload!r}"
            )
        self.name = name
        self.overload = overload
        self.buffer_bytes = buffer_bytes
        self.slots = slots
        self._pool = [np.empty(buffer_bytes, np.uint8) for _ in range(slots if preallocate else 0)]
        for b in self._pool:
            b.fill(0)  # touch every page now, not on the first frames of a scan
        self._views = [memoryview(b) for b in self._pool]
        # SimpleQueue: C-level, no per-call lock objects; the hand-off costs microseconds.
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._ready: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._pending: list[_Item] = []  # committed, not yet handed over (producer's only)
        for i in range(slots):
            self._free.put(i)
        self._lock = threading.Lock()
        self._received = 0
        self._bytes = 0
        self._bad: dict[str, int] = {}
        self._dropped = 0
        self._discarded = 0
        self._blocked = 0.0
        self._waiting = False
        self._producer_stopped = False
        self._ended = False
        self._closed = False

    # -- producer side ---------------------------------------------------------------------------

    def reserve(self, timeout: float | None = None) -> int | None:
        """A free slot, applying the overload policy; None once the producer is stopped.

        Under ``block`` waits up to ``timeout`` seconds (None: until a buffer is free or
        :meth:`stop_producer`), then raises ServiceError.
        """
        if self._producer_stopped:
            return None
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            slot = self._reserve_slow(timeout)
        if slot is None:  # the wake-up stop_producer() sent
            self._producer_stopped = True
        return slot

    def _reserve_slow(self, timeout: float | None) -> int | None:
        self.flush()  # deferred frames hold slots: let the consumer (or the policy) have them
        if self.overload == "drop_oldest":
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                pass  # every slot is held by the consumer: nothing queued to drop
            else:
                if item is None:  # the stream was ended under us: keep the marker, stop
                    self._ready.put(None)
                    return None
                with self._lock:
                    self._dropped += 1
                return item[0]
        t0 = time.monotonic()
        self._waiting = True
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            raise ServiceError(
                f"{self.name}: no free buffer after {timeout} s; the consumer holds or has not "
                f"taken all {self.slots} frames (release frames after use)"
            ) from None
        finally:
            self._waiting = False
            with self._lock:
                self._blocked += time.monotonic() - t0

    def buffer(self, slot: int) -> memoryview:
        """The writable bytes of pool buffer ``slot`` (``buffer_bytes`` long; pool mode only)."""
        return self._views[slot]

    def commit(
        self,
        slot: int,
        header: FrameHeader,
        received_at: float,
        payload: Any = None,
        *,
        defer: bool = False,
    ) -> None:
        """Queue the frame in ``slot``: in its pool buffer, or in ``payload`` (any buffer).

        ``defer`` holds it back until :meth:`flush`, so a burst wakes the consumer once instead
        of once per frame (the producer flushes when its socket runs dry).
        """
        self._pending.append((slot, header, received_at, payload))
        if not defer:
            self.flush()

    def flush(self) -> None:
        """Hand every committed frame to the consumer (and count it as received)."""
        pending = self._pending
        if not pending:
            return
        with self._lock:
            self._received += len(pending)
            self._bytes += sum(item[1].nbytes for item in pending)
        for item in pending:
            self._ready.put(item)
        pending.clear()

    def cancel(self, slot: int) -> None:
        """Return a reserved buffer unused (its message turned out bad)."""
        self._free.put(slot)

    def reject(self, reason: str, message: str) -> None:
        """Count a bad message under ``reason`` and log it (rate-limited per reason)."""
        with self._lock:
            n = self._bad[reason] = self._bad.get(reason, 0) + 1
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning(
                "%s: dropped a bad message (%s, %d so far): %s", self.name, reason, n, message
            )

    def discarded_at_stop(self) -> None:
        """Count a message abandoned because the producer was stopped while waiting."""
        with self._lock:
            self._discarded += 1

    def stop_producer(self) -> None:
        """Wake a producer waiting in :meth:`reserve`; every later reserve returns None."""
        self._producer_stopped = True
        self._free.put(None)

    def end(self) -> None:
        """Mark the end of the stream (by the producer, or once it is gone): consumers get the
        frames still queued, then None at once instead of waiting. Idempotent."""
        if not self._ended:
            self._ended = True
            self._ready.put(None)

    # -- consumer side ---------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest queued frame; None after ``timeout`` s, or at once when ended and drained."""
        if self._closed:
            return None
        try:
            item = self._ready.get(timeout=timeout) if timeout != 0 else self._ready.get_nowait()
        except queue.Empty:
            return None
        if item is None:  # the end of the stream
            self._ready.put(None)  # for every other and every later get()
            return None
        slot, header, received_at, payload = item
        if payload is None:
            data = self._pool[slot][: header.nbytes].view(header.dtype).reshape(header.shape)
        else:
            data = np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
        return Frame(header, data, received_at, functools.partial(self._free.put, slot))

    def close(self) -> None:
        """Drop queued frames and wake waiting consumers and producers; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop_producer()
        self.end()

    def counters(self) -> SourceCounters:
        with self._lock:
            return SourceCounters(
                received=self._received,
                bytes=self._bytes,
                bad=sum(self._bad.values()),
                bad_reasons=dict(self._bad),
                dropped_overload=self._dropped,
                discarded_at_stop=self._discarded,
                blocked_seconds=self._blocked,
                blocked=self._waiting,
                queued=self._ready.qsize(),
            )


class MemoryFrameSource:
    """A frame source fed in memory, validating each message exactly as the ZMQ source does.

    ``push_message`` takes ``[header, payload]`` parts (bytes or buffers) from any one producer
    thread; ``push`` encodes an array first. Both return False when the message was rejected
    (counted and logged), True when it was queued.
    """

    def __init__(
        self,
        *,
        buffers: int = 8,
        buffer_bytes: int = 1 << 20,
        overload: OverloadPolicy = "block",
        angle_attribute: str | None = None,
        name: str = "memory-source",
    ) -> None:
        self._queue = FrameQueue(
            slots=buffers, buffer_bytes=buffer_bytes, overload=overload, name=name
        )
        self._angle_attribute = angle_attribute
        self._started = False
        self._stopped = False

    def start(self) -> None:
        if self._stopped:
            raise ServiceError("a stopped source cannot be started again; make a new one")
        self._started = True

    def push_message(self, parts: Sequence[Any], *, timeout: float | None = None) -> bool:
        """Validate and queue one multipart message; ``timeout`` bounds a ``block`` wait."""
        if not self._started:
            raise ServiceError("push_message() before start() (or after stop())")
        q = self._queue
        if len(parts) < 2:
            q.reject("missing_payload", f"expected [header, payload], got {len(parts)} part(s)")
            return False
        try:
            header = parse_frame_header(_as_buffer(parts[0]), angle_attribute=self._angle_attribute)
        except FrameFormatError as exc:
            q.reject(exc.reason, str(exc))
            return False
        if len(parts) > 2:
            q.reject("extra_parts", f"frame {header.frame_id}: expected 2 parts, got {len(parts)}")
            return False
        payload = _as_buffer(parts[1])
        if payload.nbytes != header.nbytes:
            q.reject(
                "size_mismatch",
                f"frame {header.frame_id}: expected {header.nbytes} payload bytes, "
                f"got {payload.nbytes}",
            )
            return False
        if header.nbytes > q.buffer_bytes:
            q.reject(
                "too_large",
                f"frame {header.frame_id}: {header.nbytes} B > {q.buffer_bytes} B buffers",
            )
            return False
        slot = q.reserve(timeout)
        if slot is None:
            q.discarded_at_stop()
            return False
        q.buffer(slot)[: header.nbytes] = payload
        q.commit(slot, header, time.monotonic())
        return True

    def push(
        self,
        data: np.ndarray,
        *,
        frame_id: int,
        kind: FrameKind | None = None,
        fmt: WireFormat = "n2i",
        angle: float | None = None,
        timestamp: float | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Encode ``data`` as a ``fmt`` frame message and :meth:`push_message` it."""
        parts = frame_message(fmt, frame_id, data, kind=kind, angle=angle, timestamp=timestamp)
        return self.push_message(parts, timeout=timeout)

    def recv(self, timeout: float | None = None) -> Frame | None:
        return self._queue.get(timeout)

    def stop(self) -> None:
        self._started = False
        self._stopped = True
        self._queue.stop_producer()
        self._queue.end()

    def close(self) -> None:
        self.stop()
        self._queue.close()

    def counters(self) -> SourceCounters:
        return self._queue.counters()

    def __enter__(self) -> MemoryFrameSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_buffer(part: Any) -> memoryview:
    # zmq.Frame exposes .buffer; bytes, bytearray, memoryview and arrays are buffers already.
    return memoryview(getattr(part, "buffer", part)).cast("B")
