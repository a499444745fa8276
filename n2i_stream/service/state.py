"""The service's named states, the transitions between them, and waiting for them.

::

    idle ──configure──► acquiring ──K steps in, training starts──► training
                            │  └──model given, or training impossible──┐   │
                            │                                          ▼   ▼
                            │                                       streaming
                            ▼                                          │
    done ◄── the scan ends, is stopped or aborted (from any scan state) ┘
    failed ◄── a worker crashed (from any scan state), or the frame source died (also from idle)
    done / failed ──configure──► acquiring (the next scan)

``streaming`` means results are published as steps arrive: denoised once a model exists, or FBP
only when training failed (the reason says so). ``reason`` explains ``failed``, an aborted or
stopped ``done``, and a ``streaming`` without denoising.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Literal, get_args

from ..errors import ServiceError

__all__ = [
    "SCAN_STATES",
    "STATES",
    "TRAINING_STATES",
    "ServiceState",
    "StateMachine",
    "TrainingState",
]

ServiceState = Literal["idle", "acquiring", "training", "streaming", "done", "failed"]
TrainingState = Literal["waiting", "running", "done", "failed", "skipped"]

STATES: tuple[str, ...] = get_args(ServiceState)
TRAINING_STATES: tuple[str, ...] = get_args(TrainingState)
#: states in which a scan is in progress (configure is refused: busy)
SCAN_STATES: frozenset[str] = frozenset({"acquiring", "training", "streaming"})

_NEXT: dict[str, frozenset[str]] = {
    "idle": frozenset({"acquiring", "failed"}),  # failed: the frame source itself died
    "acquiring": frozenset({"training", "streaming", "done", "failed"}),
    "training": frozenset({"streaming", "done", "failed"}),
    "streaming": frozenset({"done", "failed"}),
    "done": frozenset({"acquiring"}),
    "failed": frozenset({"acquiring"}),
}

Listener = Callable[[str, "str | None"], None]


class StateMachine:
    """The current state and its reason, changed only along the allowed transitions.

    Thread-safe; :meth:`wait_for` blocks until one of the given states is reached. Listeners are
    called (outside the lock, on the thread that made the change) with ``(state, reason)``.
    """

    def __init__(self) -> None:
        self._state: str = "idle"
        self._reason: str | None = None
        self._cond = threading.Condition()
        self._listeners: list[Listener] = []

    @property
    def state(self) -> str:
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    def snapshot(self) -> tuple[str, str | None]:
        with self._cond:
            return self._state, self._reason

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def move(self, to: str, reason: str | None = None, *, only_from: Collection[str] = ()) -> bool:
        """Go to state ``to`` (with ``reason``); False, unchanged, when the current state is not
        in ``only_from`` (if given). An illegal transition raises ServiceError: it is a bug."""
        with self._cond:
            if only_from and self._state not in only_from:
                return False
            if to not in _NEXT[self._state]:
                raise ServiceError(f"cannot go from state {self._state!r} to {to!r}")
            self._state, self._reason = to, reason
            self._cond.notify_all()
        for listener in self._listeners:
            listener(to, reason)
        return True

    def set_reason(self, reason: str | None) -> None:
        """Change the reason without changing the state (e.g. training failed while streaming)."""
        with self._cond:
            self._reason = reason
            self._cond.notify_all()

    def wait_for(self, states: Collection[str], timeout: float | None = None) -> str:
        """Block until the state is one of ``states``; returns it. ServiceError on timeout."""
        unknown = set(states) - set(STATES)
        if unknown:
            raise ServiceError(f"unknown states {sorted(unknown)}; expected some of {STATES}")
        with self._cond:
            if not self._cond.wait_for(lambda: self._state in states, timeout):
                raise ServiceError(
                    f"state {self._state!r} after {timeout} s; expected one of {sorted(states)}"
                )
            return self._state
