"""The bounded hand-off between pipeline stages, with an explicit overload policy and counters.

A :class:`StageQueue` holds at most ``maxsize`` *items* (time steps, volumes, results) plus any
number of *markers* (end of input, training window complete, loss values): markers are small,
never dropped and never wait, so a stage always learns that its input ended. When the queue is
full, ``block`` makes the producer wait for the consumer (back-pressure) and ``drop_oldest``
drops the oldest queued item (``on_drop`` is called with it, e.g. to release its buffer; counted
in ``dropped``). :meth:`StageQueue.cancel` (abort) drops every queued item and every later one,
and wakes a waiting producer; markers still pass.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..wire import OverloadPolicy

__all__ = ["StageQueue"]


class StageQueue:
    """A FIFO of items and markers between two pipeline threads (see the module docstring)."""

    def __init__(
        self,
        maxsize: int,
        overload: OverloadPolicy = "block",
        *,
        on_drop: Callable[[Any], None] | None = None,
        name: str = "queue",
    ) -> None:
        if maxsize < 1:
            raise ConfigError(f"{name}: expected maxsize >= 1, got {maxsize}")
        if overload not in ("block", "drop_oldest"):
            raise ConfigError(
                f"{name}: expected overload 'block' or 'drop_oldest', got {overload!r}"
            )
        self.name = name
        self.maxsize = maxsize
        self.overload = overload
        self._on_drop = on_drop
        self._queue: deque[tuple[bool, Any]] = deque()  # (is_marker, value)
        self._items = 0
        self._cond = threading.Condition()
        self._cancelled = False
        self.put_count = 0  # items accepted
        self.dropped = 0  # items dropped by drop_oldest
        self.discarded = 0  # items dropped by cancel()
        self.max_depth = 0  # the most items queued at once
        self.blocked_seconds = 0.0  # time producers waited (block policy)

    def __len__(self) -> int:
        """Items queued now (markers not counted)."""
        return self._items

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def put(self, item: Any) -> bool:
        """Queue ``item`` under the overload policy; False when it was dropped (cancelled)."""
        dropped: list[Any] = []
        with self._cond:
            if self._items >= self.maxsize and not self._cancelled:
                if self.overload == "drop_oldest":
                    dropped.append(self._pop_oldest_item())
                    self.dropped += 1
                else:
                    t0 = time.monotonic()
                    self._cond.wait_for(lambda: self._items < self.maxsize or self._cancelled)
                    self.blocked_seconds += time.monotonic() - t0
            if self._cancelled:
                self.discarded += 1
                dropped.append(item)
                accepted = False
            else:
                self._queue.append((False, item))
                self._items += 1
                self.put_count += 1
                self.max_depth = max(self.max_depth, self._items)
                self._cond.notify_all()
                accepted = True
        self._drop(dropped)
        return accepted

    def put_marker(self, marker: Any) -> None:
        """Queue a marker: never waits, never dropped."""
        with self._cond:
            self._queue.append((True, marker))
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item or marker; blocks until there is one. TimeoutError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue, timeout):
                raise TimeoutError(f"{self.name}: nothing arrived within {timeout} s")
            is_marker, value = self._queue.popleft()
            if not is_marker:
                self._items -= 1
                self._cond.notify_all()
            return value

    def cancel(self) -> None:
        """Drop every queued item and every later one; markers stay and still pass."""
        with self._cond:
            self._cancelled = True
            dropped = [v for m, v in self._queue if not m]
            self._queue = deque((m, v) for m, v in self._queue if m)
            self._items = 0
            self.discarded += len(dropped)
            self._cond.notify_all()
        self._drop(dropped)

    def _pop_oldest_item(self) -> Any:
        for i, (is_marker, value) in enumerate(self._queue):
            if not is_marker:
                del self._queue[i]
                self._items -= 1
                return value
        raise AssertionError("no item to drop in a full queue")

    def _drop(self, items: list[Any]) -> None:
        if self._on_drop is not None:
            for item in items:
                self._on_drop(item)
