"""The dashboard's result sink: keeps the newest time steps for browsers to look at.

:meth:`DashboardSink.put` is what the pipeline calls for every published reconstruction. It only
stores a reference and announces the step: no copy, no rendering, no I/O, so the pipeline never
waits for a browser. The sink holds each volume by reference, so the producer must not write into
a volume after publishing it (the service hands every sink the same read-only result). Memory is
bounded by ``max_steps`` and ``max_bytes``: the oldest time steps are dropped first, the newest
one is always kept. A result of another scan (its ``scan_id`` differs) or the first put after
:meth:`DashboardSink.close` starts a fresh store. Rendering happens later, on the HTTP threads
(:mod:`.render`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.ndimage import uniform_filter

from ...errors import DataError
from .events import EventHub

__all__ = ["KINDS", "DashboardSink", "HeldResult", "NotHeld"]

#: reconstruction kinds the dashboard shows, in display order
KINDS: tuple[str, ...] = ("denoised", "fbp")

# Voxels looked at to choose a contrast window: enough for stable percentiles, cheap enough to
# compute on a request thread for a volume of any size.
_WINDOW_SAMPLES = 1 << 18
#: percentiles of the automatic contrast window, and the margin added on each side (a fraction
#: of their distance) so that the brightest material keeps its texture instead of saturating
WINDOW_PERCENTILES = (0.5, 99.5)
WINDOW_MARGIN = 0.1


class NotHeld(LookupError):
    """A requested time step, kind or slice is not in the dashboard's store."""


class StepResultLike(Protocol):
    """What the sink reads from the service's ``StepResult`` (see the service contract)."""

    time_step: int
    kind: str
    volume: Any
    incomplete: bool
    missing: int
    latency_s: float | None
    # ``scan_id`` (str | None) is read too where present: a new scan starts a fresh store.


@dataclass(frozen=True, eq=False)
class HeldResult:
    """One stored reconstruction and what the page shows about it."""

    time_step: int
    kind: str
    volume: np.ndarray  #: (rows, n, n) float32, held by reference
    incomplete: bool
    missing: int
    latency_s: float | None
    seq: int  #: publication number, increases with every put (identifies this version)
    published_at: float  #: wall-clock time of the put, seconds since the epoch

    def info(self) -> dict[str, Any]:
        """JSON-able description (no pixels)."""
        return {
            "kind": self.kind,
            "shape": list(self.volume.shape),
            "incomplete": self.incomplete,
            "missing": self.missing,
            "latency_s": self.latency_s,
            "version": self.seq,
            "published_at": self.published_at,
        }


class DashboardSink:
    """A ``ResultSink`` keeping the newest ``max_steps`` time steps (both kinds) in memory.

    ``max_bytes`` bounds the memory held by reference; the newest time step is kept even when it
    alone is larger. Every put publishes a ``step`` event on :attr:`events`. A new scan (another
    ``scan_id``) starts a fresh store and publishes ``reset``; :meth:`close` publishes
    ``closed``, the results stay visible and the next put starts a fresh store.
    """

    def __init__(
        self, *, max_steps: int = 16, max_bytes: int = 2 << 30, events: EventHub | None = None
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self.events = events if events is not None else EventHub()
        self._lock = threading.Lock()
        self._steps: dict[int, dict[str, HeldResult]] = {}
        self._bytes = 0
        self._seq = 0
        self._generation = 0
        self._scan_id: str | None = None
        self._closed = False
        self._evicted = 0
        self._windows: dict[tuple[int, int], tuple[float, float, float, float]] = {}

    # -- the ResultSink seam -------------------------------------------------------------------

    def put(self, result: StepResultLike) -> None:
        """Hold ``result`` and announce it; constant time, never blocks on browsers."""
        volume = result.volume
        if result.kind not in KINDS:
            raise DataError(
                f"dashboard: result kind must be one of {list(KINDS)}, got {result.kind!r}"
            )
        if not isinstance(volume, np.ndarray) or volume.ndim != 3:
            raise DataError(
                "dashboard: result volume must be a (rows, n, n) NumPy array, got "
                f"{type(volume).__name__} of shape {getattr(volume, 'shape', '?')}"
            )
        step = int(result.time_step)
        scan_id = getattr(result, "scan_id", None)
        with self._lock:
            reset = self._closed or (
                scan_id is not None and self._scan_id is not None and scan_id != self._scan_id
            )
            if reset:
                self._clear()
            if scan_id is not None:
                self._scan_id = scan_id
            self._seq += 1
            held = HeldResult(
                step,
                result.kind,
                volume,
                bool(result.incomplete),
                int(result.missing),
                None if result.latency_s is None else float(result.latency_s),
                self._seq,
                time.time(),
            )
            kinds = self._steps.setdefault(step, {})
            previous = kinds.get(held.kind)
            self._bytes += volume.nbytes - (previous.volume.nbytes if previous else 0)
            kinds[held.kind] = held
            self._evict(keep=max(self._steps))
            kept = sorted(self._steps)
            generation = self._generation
        if reset:
            self.events.publish("reset", {"generation": generation, "scan_id": scan_id})
        event = {"time_step": step, **held.info(), "kept": kept, "generation": generation}
        self.events.publish("step", event)

    def close(self) -> None:
        """End the current scan's stream; what is held stays visible until the next put."""
        with self._lock:
            self._closed = True
        self.events.publish("closed", {"generation": self._generation})

    # -- reading (HTTP threads) ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-able list of the held steps, oldest first, with the newest step's number."""
        with self._lock:
            steps = [
                {"time_step": s, "kinds": {k: h.info() for k, h in sorted(kinds.items())}}
                for s, kinds in sorted(self._steps.items())
            ]
            return {
                "steps": steps,
                "newest": max(self._steps) if self._steps else None,
                "generation": self._generation,
                "scan_id": self._scan_id,
                "closed": self._closed,
                "max_steps": self.max_steps,
                "held_bytes": self._bytes,
                "evicted": self._evicted,
            }

    def get(self, step: int, kind: str) -> HeldResult:
        """The held result of ``step`` and ``kind``; :class:`NotHeld` says what is held instead."""
        with self._lock:
            kinds = self._steps.get(step)
            held = kinds.get(kind) if kinds else None
            if held is not None:
                return held
            if not self._steps:
                raise NotHeld(f"time step {step} is not held: no results have been published yet")
            if kinds is None:
                first, last = min(self._steps), max(self._steps)
                raise NotHeld(
                    f"time step {step} is not held: the dashboard holds steps {first}..{last} "
                    f"(it keeps the newest {self.max_steps})"
                )
            raise NotHeld(
                f"time step {step} has no {kind} result (yet); it has {', '.join(sorted(kinds))}"
            )

    def newest(self) -> int | None:
        """The highest time step held, or None."""
        with self._lock:
            return max(self._steps) if self._steps else None

    def window(self, step: int) -> tuple[float, float, float, float]:
        """Automatic contrast ``(low, high, minimum, maximum)`` of ``step``, shared by its kinds.

        The :data:`WINDOW_PERCENTILES` of the FBP volume after a 3×3×3 mean, widened by
        :data:`WINDOW_MARGIN`; ``minimum`` and ``maximum`` bound the unsmoothed values (the
        range a manual window can take). Taking the window from the measurement, with most of
        its noise averaged out, gives the object's attenuation range whatever the network does,
        so both images in this window show honestly how the denoised one differs. The denoised
        volume stands in where a step has no FBP. Computed on a strided sample of at most
        :data:`_WINDOW_SAMPLES` voxels, cached per version.
        """
        with self._lock:
            kinds = self._steps.get(step)
            if not kinds:
                raise NotHeld(f"time step {step} is not held")
            held = kinds.get("fbp") or kinds["denoised"]
            cached = self._windows.get((step, held.seq))
        if cached is not None:
            return cached
        window = _auto_window(held.volume)
        with self._lock:
            self._windows[(step, held.seq)] = window
            live = {(s, h.seq) for s, ks in self._steps.items() for h in ks.values()}
            for key in [k for k in self._windows if k not in live]:
                del self._windows[key]
        return window

    # -- internals (lock held) -----------------------------------------------------------------

    def _evict(self, keep: int) -> None:
        while len(self._steps) > 1 and (
            len(self._steps) > self.max_steps or self._bytes > self.max_bytes
        ):
            oldest = min(s for s in self._steps if s != keep)
            for held in self._steps.pop(oldest).values():
                self._bytes -= held.volume.nbytes
            self._evicted += 1

    def _clear(self) -> None:
        self._steps.clear()
        self._windows.clear()
        self._bytes = 0
        self._closed = False
        self._generation += 1


def _auto_window(volume: np.ndarray) -> tuple[float, float, float, float]:
    stride = max(1, int(np.ceil((volume.size / _WINDOW_SAMPLES) ** (1 / 3))))
    sample = np.array(volume[::stride, ::stride, ::stride], dtype=np.float32)
    finite = np.isfinite(sample)
    if not finite.any():
        return (0.0, 1.0, 0.0, 1.0)
    if not finite.all():  # slots never written must not drag the window to their fill value
        sample[~finite] = np.median(sample[finite])
    smooth = uniform_filter(sample, size=3, mode="nearest")
    low, high = (float(v) for v in np.percentile(smooth, WINDOW_PERCENTILES))
    if not high > low:
        low, high = low - 0.5, low + 0.5
    margin = WINDOW_MARGIN * (high - low)
    low, high = low - margin, high + margin
    return (low, high, min(float(sample.min()), low), max(float(sample.max()), high))
