"""A received frame, the frame-source protocol, and the counters every source keeps.

A :class:`FrameSource` delivers validated :class:`Frame` objects whose pixels sit in one of the
source's preallocated buffers. The consumer must call :meth:`Frame.release` (or use the frame as
a context manager) once it has copied what it needs, which hands the buffer back to the source;
until then the source cannot reuse it. Lifecycle::

    source.start()                      # open the socket / thread; raises if it cannot
    while running:
        frame = source.recv(timeout=0.1)  # None on timeout, or at once when stopped, drained
        if frame is not None:
            with frame:
                assembler.add(frame)
    source.stop()                       # stop receiving; frames already queued stay receivable
    while (frame := source.recv(0)) is not None: ...
    source.close()                      # stop and free everything (idempotent)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from .headers import FrameHeader

__all__ = ["Frame", "FrameSource", "OverloadPolicy", "SourceCounters"]

#: What a source does when all its buffers are full: wait for the consumer (back-pressure on
#: PUSH/PULL; ZMQ's own high-water mark then drops on PUB/SUB), or drop the oldest queued frame.
OverloadPolicy = Literal["block", "drop_oldest"]


_RELEASED = np.empty((0, 0), dtype=np.uint8)
_RELEASED.flags.writeable = False


class Frame:
    """One validated frame: its header, its pixels and when it arrived.

    ``data`` is a ``(rows, cols)`` view into memory the source owns; it stays valid until
    :meth:`release`, which swaps it for an empty array so a stale read fails loudly and the
    memory can be reused. ``received_at`` is ``time.monotonic()`` when the payload had arrived.
    """

    __slots__ = ("_release", "data", "header", "received_at")

    def __init__(
        self,
        header: FrameHeader,
        data: np.ndarray,
        received_at: float,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.header = header
        self.data = data
        self.received_at = received_at
        self._release = release

    def release(self) -> None:
        """Hand the buffer back to the source; ``data`` must not be used afterwards. Idempotent."""
        release, self._release = self._release, None
        self.data = _RELEASED
        if release is not None:
            release()

    def __enter__(self) -> Frame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        h = self.header
        return f"Frame(id={h.frame_id}, kind={h.kind}, shape={h.shape}, {h.dtype.str})"


@dataclass(frozen=True)
class SourceCounters:
    """A snapshot of a source's counters (monotonic over its life, except ``queued``)."""

    received: int = 0  # frames validated and queued for the consumer
    bytes: int = 0  # payload bytes of those frames
    bad: int = 0  # messages rejected (sum of bad_reasons)
    bad_reasons: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    dropped_overload: int = 0  # queued frames dropped by the drop_oldest policy
    discarded_at_stop: int = 0  # a message half-read when stop() interrupted a wait for a buffer
    blocked_seconds: float = 0.0  # time the receiver waited for a free buffer (block policy)
    blocked: bool = False  # the receiver is waiting for a free buffer now
    queued: int = 0  # frames waiting for the consumer now


@runtime_checkable
class FrameSource(Protocol):
    """Where validated frames come from (ZMQ socket, or in memory for tests and the demo)."""

    def start(self) -> None:
        """Begin receiving; raises ServiceError if the source cannot (e.g. bind fails)."""

    def recv(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None after ``timeout`` seconds, or at once when stopped and drained."""

    def stop(self) -> None:
        """Stop receiving and join the receiver; frames already queued can still be received."""

    def close(self) -> None:
        """Stop and release everything (sockets, buffers); idempotent."""

    def counters(self) -> SourceCounters:
        """A consistent snapshot of the counters."""
