"""Noise2Inverse training in the background of a live scan, with progress for the status.

:class:`TrainingJob` runs :func:`n2i_stream.learn.train_dynamic` (the dynamic strategy: input =
one of the first K steps, target = the other K−1) on its own thread with few torch threads, so
ingest and FBP keep a core. Progress (iteration, loss, ETA) lands in a :class:`TrainingProgress`
that the status reads; losses are handed on for the results file. :meth:`TrainingJob.interrupt`
ends training at its next progress report (a stop or abort of the scan); the outcome — a
:class:`~n2i_stream.learn.Denoiser` or the reason there is none — goes to ``on_done``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import to_mapping
from ..core.fbp import fbp
from ..core.geometry import ParallelGeometry
from ..errors import N2IError
from .scan_config import ScanConfig

if TYPE_CHECKING:
    from ..learn import Denoiser, Progress, TrainConfig

__all__ = ["TrainingJob", "TrainingProgress", "train_config"]

log = logging.getLogger(__name__)

#: loss values kept for the status (the file keeps them all)
RECENT_LOSSES = 50
#: seconds between hand-overs of new loss values to the results file
LOSS_FLUSH_S = 0.5


def train_config(scan: ScanConfig, *, threads: int, report_every: int = 1) -> TrainConfig:
    """The learning code's training configuration for ``scan`` (ConfigError when invalid)."""
    from ..learn import TrainConfig

    chosen = {"network": scan.network, **to_mapping(scan.training)}
    return TrainConfig(
        **{key: value for key, value in chosen.items() if value is not None},  # else its default
        iterations=scan.train_iterations,
        minutes=scan.train_minutes,
        threads=threads,
        report_every=report_every,
    )


class TrainingProgress:
    """Training state and progress, written by the training thread, read by ``status()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = "waiting"
        self.reason: str | None = None
        self.iteration = 0
        self.iterations: int | None = None
        self.loss: float | None = None
        self.eta_s: float | None = None
        self.elapsed_s = 0.0
        self.model: str | None = None  # checkpoint path of the model in use, if any
        self._losses: deque[float] = deque(maxlen=RECENT_LOSSES)

    def set(self, state: str, reason: str | None = None, **fields: Any) -> None:
        with self._lock:
            self.state, self.reason = state, reason
            for key, value in fields.items():
                setattr(self, key, value)

    def report(self, p: Progress) -> None:
        with self._lock:
            self.iteration, self.iterations = p.iteration, p.iterations
            self.loss, self.elapsed_s = p.loss, p.elapsed_s
            self.eta_s = p.eta_s if math.isfinite(p.eta_s) else None
            self._losses.append(p.loss)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "reason": self.reason,
                "iteration": self.iteration,
                "iterations": self.iterations,
                "loss": self.loss,
                "eta_s": self.eta_s,
                "elapsed_s": self.elapsed_s,
                "losses": list(self._losses),
                "model": self.model,
            }


class _Interrupted(Exception):
    """Raised from the progress callback to end training early (never escapes this module)."""


@dataclass(frozen=True)
class TrainingOutcome:
    """What training produced: a denoiser, or None and why (``interrupted``: stop or abort;
    ``crashed``: a bug rather than a training failure, which fails the scan)."""

    denoiser: Denoiser | None
    reason: str | None = None
    interrupted: bool = False
    crashed: bool = False


class TrainingJob:
    """Trains on the first steps' line integrals on a thread; see the module docstring.

    ``projections[k]`` ``(angles_k, rows, cols)`` and ``geometries[k]`` are training step k.
    ``on_losses(values)`` receives each reported loss; ``on_done(outcome)`` is called once, on
    the training thread, when training ends for any reason.
    """

    def __init__(
        self,
        projections: Sequence[np.ndarray],
        geometries: Sequence[ParallelGeometry],
        config: TrainConfig,
        *,
        scan: ScanConfig,
        progress: TrainingProgress,
        on_losses: Callable[[list[float]], None],
        on_done: Callable[[TrainingOutcome], None],
    ) -> None:
        self._projections = list(projections)
        self._geometries = list(geometries)
        self._config = config
        self._scan = scan
        self._progress = progress
        self._on_losses = on_losses
        self._on_done = on_done
        self._stop = threading.Event()
        self._stop_reason = "interrupted"
        self._losses: list[float] = []
        self._flushed = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="n2i-train", daemon=True)

    def start(self) -> None:
        self._progress.set("running", iterations=self._config.iterations)
        self._thread.start()

    def interrupt(self, reason: str) -> None:
        """End training at its next progress report; the outcome says ``reason``."""
        self._stop_reason = reason
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _report(self, p: Progress) -> None:
        self._progress.report(p)
        self._losses.append(p.loss)
        now = time.monotonic()
        if now - self._flushed >= LOSS_FLUSH_S:  # the file takes losses in batches, not one by one
            self._flush_losses(now)
        if self._stop.is_set():
            raise _Interrupted

    def _flush_losses(self, now: float) -> None:
        if self._losses:
            self._on_losses(self._losses)
            self._losses = []
        self._flushed = now

    def _run(self) -> None:
        from ..learn import train_dynamic

        scan = self._scan

        def reconstruct(p: Any, g: ParallelGeometry) -> Any:
            # The scan's filter and size, so training sees what the pipeline will denoise.
            return fbp(p, g, n=scan.size, window=scan.filter, oversample=scan.oversample)

        outcome = TrainingOutcome(None, "training ended without a result")
        try:
            if self._stop.is_set():
                raise _Interrupted
            model = train_dynamic(
                self._projections,
                self._geometries,
                self._config,
                n=scan.size,
                reconstruct=reconstruct,
                progress=self._report,
            )
            outcome = TrainingOutcome(model)
        except _Interrupted:
            outcome = TrainingOutcome(None, self._stop_reason, interrupted=True)
        except N2IError as exc:  # diverged, unusable data, impossible configuration
            log.warning("scan %s: training failed: %s", scan.scan_id, exc)
            outcome = TrainingOutcome(None, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            reason = f"training crashed: {type(exc).__name__}: {exc}"
            outcome = TrainingOutcome(None, reason, crashed=True)
            log.exception("scan %s: training crashed", scan.scan_id)
        finally:
            self._projections.clear()  # the training data is not needed any more
            self._flush_losses(time.monotonic())
            self._on_done(outcome)
