"""Waiting in tests for state another thread reaches with no event to wait on."""

from __future__ import annotations

import threading
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, every: float = 0.01) -> None:
    """Poll ``predicate`` every ``every`` seconds until true; fail after ``timeout`` seconds."""
    pause = threading.Event()
    for _ in range(max(1, int(timeout / every))):
        if predicate():
            return
        pause.wait(every)
    raise AssertionError(f"condition not reached within {timeout} s")
