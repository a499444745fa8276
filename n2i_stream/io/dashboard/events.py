"""The dashboard's event hub: publishers never wait, each browser stream reads at its own pace.

Two kinds of news travel to the browsers. *Events* (a step was published, the store was reset)
must each reach every stream, so they sit in a bounded ring with increasing sequence numbers; a
stream that falls further behind than the ring is told to resynchronise instead of being fed a
gap. The *status* is a single slot that each poll overwrites, so a flood of status ticks can
never push step events out of the ring.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "EventHub", "Update"]


@dataclass(frozen=True)
class Event:
    """One published event: its sequence number, SSE event name and JSON-able data."""

    seq: int
    name: str
    data: Any


@dataclass(frozen=True)
class Update:
    """What a stream has not seen yet (see :meth:`EventHub.wait`)."""

    events: tuple[Event, ...]  #: events newer than the caller's cursor, oldest first
    missed: bool  #: True when events were dropped from the ring before the caller read them
    status: str | None  #: the newest status JSON, if it changed since the caller's status cursor
    cursor: int  #: pass back as ``after`` next time
    status_cursor: int  #: pass back as ``status_after`` next time
    stopped: bool  #: the caller's ``stop`` event is set: the stream should end


class EventHub:
    """Fan-out of events and status to any number of waiting streams.

    :meth:`publish` and :meth:`set_status` take the lock only to append and notify, so they cost
    the same however many browsers are connected and however slow they are.
    """

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._seq = 0
        self._status: str | None = None
        self._status_seq = 0
        self._cond = threading.Condition()

    @property
    def cursor(self) -> int:
        """Sequence number of the newest event (0 before any)."""
        with self._cond:
            return self._seq

    def publish(self, name: str, data: Any) -> int:
        """Append an event for every stream; returns its sequence number."""
        with self._cond:
            self._seq += 1
            self._ring.append(Event(self._seq, name, data))
            self._cond.notify_all()
            return self._seq

    def set_status(self, status_json: str) -> None:
        """Replace the status every stream sends next (already encoded as JSON)."""
        with self._cond:
            self._status = status_json
            self._status_seq += 1
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiting stream so it re-checks its ``stop`` event (used on shutdown)."""
        with self._cond:
            self._cond.notify_all()

    def wait(
        self,
        after: int,
        status_after: int,
        timeout: float,
        stop: threading.Event | None = None,
    ) -> Update:
        """Block up to ``timeout`` s until there is news past the cursors, then return it.

        Returns at once when there already is news or ``stop`` is set (set it, then call
        :meth:`wake`); an empty :class:`Update` after the timeout lets the caller send a
        keep-alive.
        """

        def stopped() -> bool:
            return stop is not None and stop.is_set()

        with self._cond:
            self._cond.wait_for(
                lambda: stopped() or self._seq > after or self._status_seq > status_after,
                timeout,
            )
            oldest = self._ring[0].seq if self._ring else self._seq + 1
            missed = self._seq > after and oldest > after + 1
            events = tuple(e for e in self._ring if e.seq > after)
            status = self._status if self._status_seq > status_after else None
            return Update(events, missed, status, self._seq, self._status_seq, stopped())
