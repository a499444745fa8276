"""Time-step assembly: frames in, by frame id, completed time steps out. No sockets, no threads.

:class:`Assembler` takes validated frames in any order and files each one by its frame id:

* **Id → kind, angle, step.** The scan's detector counter is described by runs of ids per kind
  (:class:`AssemblyConfig` ``projection_ids``, ``dark_ids``, ``flat_ids``; each run is
  ``(first id, count)``). A header that names its kind (``n2i``, GigaFRoST) is filed under that
  kind; a header without one (``array-1.0``) takes the kind of the run its id falls in. Projection
  ``p`` (counted over the projection runs in order) belongs to step ``p // frames_per_step`` and
  has angle ``angles[p]`` or ``angle_start + p * angle_step`` (degrees); a header angle wins when
  ``prefer_header_angle``. Darks or flats whose kind comes from the header and for which no runs
  are configured are grouped by arrival instead (their ids are only checked for repeats).
* **Id faults, counted, never silently absorbed.** ``duplicate`` (an id seen before),
  ``out_of_order`` (an id below the highest seen; still used), ``wrapped`` (times an ``id_bits``
  counter passed its maximum: ids are unwrapped to the value nearest the highest seen, so runs
  are given in unwrapped ids), ``outside_range`` (an id in no configured run), ``late`` (a
  projection whose step was already closed: not used), ``dropped`` (projections missing when their
  step was closed), and ``bad`` per reason (``shape_mismatch``, ``dtype_mismatch``,
  ``id_too_large``). ``received`` counts every frame offered.
* **Darks and flats**, retaken mid-scan or not, are averaged per set. A set closes when a
  projection arrives after it, when its configured run is complete, when a later run of its kind
  begins, or on :meth:`Assembler.flush`; from then on it is the one the arriving projections
  use. Each projection keeps the sets that were current when it arrived.
* **Closing a step.** A step is emitted as soon as its last frame arrives; otherwise it is closed,
  flagged incomplete, once a projection of step ``s + close_lag`` arrives (frames still in flight
  for it then count as late), or on :meth:`Assembler.flush` (end of scan or stop: every open step
  is emitted with whatever arrived, so nothing received is lost). Steps are therefore emitted in
  completion order, each index at most once; a step of which no frame arrived is not emitted
  (``steps_skipped``).

A :class:`TimeStep` holds the raw counts as received (``frames``, acquisition order) plus the
dark and flat means each projection goes with, and computes line integrals on request
(:meth:`TimeStep.line_integrals`, one pass from raw counts to float32), so correction runs in the
pipeline's workers, not here. :meth:`Assembler.add` takes ownership of every frame it is given.
Where the projections live is the one choice (``hold_frames``):

* ``False`` (default): each projection is copied into a ``(frames_per_step, rows, cols)`` step
  buffer from a pool allocated up front, and the frame goes straight back to its source. The
  source needs few buffers and the pipeline's back-log never reaches it. The assembler allocates
  a new step buffer only when the pipeline holds more steps than the pool has (counted in
  ``step_buffers_allocated``; ``step_buffers_in_use`` is how many are held right now).
* ``True``: the frames themselves are kept until their step is released: no copy at all (with a
  zero-copy source the pixels stay where ZMQ received them). The source must then allow
  :meth:`AssemblyConfig.frames_held` frames, or it stalls waiting for buffers nobody releases.

:meth:`TimeStep.release` (any thread) gives the memory back, which keeps it bounded.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, DataError, ServiceError
from ..wire import Frame, FrameKind
from .timestep import TimeStep

__all__ = ["Assembler", "AssemblyConfig", "AssemblyCounters", "TimeStep"]

IdRun = tuple[int, int]  # (first frame id, number of ids)


@dataclass(frozen=True)
class AssemblyConfig:
    """How a scan's frame ids map to kinds, angles and time steps (``config.from_mapping``)."""

    rows: int  # frame rows (along the rotation axis)
    cols: int  # frame columns
    frames_per_step: int  # projections per time step
    steps: int  # time steps in the scan
    dtype: str = "uint16"  # raw pixel type kept; frames must cast to it without loss
    angles: tuple[float, ...] = ()  # degrees, one per projection in acquisition order; or
    angle_start: float = 0.0  # degrees of projection 0 ...
    angle_step: float | None = None  # ... plus this per projection
    projection_ids: tuple[IdRun, ...] = ()  # runs of projection ids; () means ((0, all),)
    dark_ids: tuple[IdRun, ...] = ()  # one run per dark set; () means kind from headers
    flat_ids: tuple[IdRun, ...] = ()  # one run per flat set; () means kind from headers
    id_bits: int | None = None  # e.g. 16: the detector counter wraps at 2**id_bits
    close_lag: int = 2  # step s is closed once a projection of step s + close_lag arrives
    prefer_header_angle: bool = True  # a header's angle wins over the configured one
    spare_buffers: int = 2  # step buffers allocated beyond the close_lag + 1 open at once
    hold_frames: bool = False  # keep received frames instead of copying them to step buffers

    def __post_init__(self) -> None:
        problems = []
        for name in ("rows", "cols", "frames_per_step", "steps", "close_lag"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.spare_buffers < 0:
            problems.append(f"spare_buffers: expected >= 0, got {self.spare_buffers}")
        try:
            dt = np.dtype(self.dtype)
            if dt.kind not in "uif":
                problems.append(f"dtype: expected a numeric pixel type, got {self.dtype!r}")
        except TypeError:
            problems.append(
                f"dtype: expected a NumPy type name such as 'uint16', got {self.dtype!r}"
            )
        total = self.frames_per_step * self.steps
        if self.angles and self.angle_step is not None:
            problems.append("give either angles (a table) or angle_step, not both")
        elif self.angles and len(self.angles) != total:
            problems.append(
                f"angles: expected one per projection ({self.steps} steps × "
                f"{self.frames_per_step} = {total}), got {len(self.angles)}"
            )
        elif not self.angles and self.angle_step is None:
            problems.append("give the angles: a table (angles) or angle_start + angle_step")
        values = [*self.angles, self.angle_start, self.angle_step or 0.0]
        if not all(math.isfinite(a) for a in values):
            problems.append("angles must be finite")
        runs = [(kind, r) for kind in ("projection", "dark", "flat") for r in self.runs(kind)]
        for kind, (first, count) in runs:
            if first < 0 or count < 1:
                problems.append(
                    f"{kind}_ids: expected (first >= 0, count >= 1), got {(first, count)}"
                )
        n_proj = sum(c for _, c in self.runs("projection"))
        if n_proj != total:
            problems.append(
                f"projection_ids: expected {total} ids in all ({self.steps} steps × "
                f"{self.frames_per_step}), the runs hold {n_proj}"
            )
        ordered = sorted(r for _, r in runs)
        for (a0, an), (b0, _) in itertools.pairwise(ordered):
            if b0 < a0 + an:
                problems.append(f"id runs overlap: {(a0, an)} and {b0}")
        if self.id_bits is not None and not 8 <= self.id_bits <= 63:
            problems.append(f"id_bits: expected 8..63 or null, got {self.id_bits}")
        if problems:
            raise ConfigError("AssemblyConfig: " + "; ".join(problems))

    def runs(self, kind: FrameKind) -> tuple[IdRun, ...]:
        """The id runs of ``kind`` (projections default to one run of all ids from 0)."""
        if kind == "projection":
            return self.projection_ids or ((0, self.frames_per_step * self.steps),)
        return self.dark_ids if kind == "dark" else self.flat_ids

    @property
    def n_projections(self) -> int:
        return self.frames_per_step * self.steps

    def frames_held(self, pipeline_steps: int) -> int:
        """Frames a source must be able to hand out at once under ``hold_frames``, while the
        pipeline holds up to ``pipeline_steps`` emitted steps (plus darks/flats in flight)."""
        return (self.close_lag + 1 + pipeline_steps) * self.frames_per_step + 2

    def projection_angles(self) -> np.ndarray:
        """The configured angle of every projection, degrees, acquisition order."""
        if self.angles:
            return np.asarray(self.angles, dtype=np.float64)
        step = self.angle_step or 0.0
        return self.angle_start + step * np.arange(self.n_projections, dtype=np.float64)


@dataclass(frozen=True)
class AssemblyCounters:
    """A snapshot of the assembler's counters (see the module docstring for their meaning)."""

    received: int = 0
    bad: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    duplicate: int = 0
    out_of_order: int = 0
    wrapped: int = 0
    dropped: int = 0
    outside_range: int = 0
    late: int = 0
    steps_emitted: int = 0
    steps_incomplete: int = 0
    steps_skipped: int = 0
    step_buffers_allocated: int = 0
    step_buffers_in_use: int = 0  # a gauge: step buffers held by open or unreleased steps


class _Runs:
    """Sorted id runs of one kind: id → (run index, ordinal over the kind's runs)."""

    def __init__(self, runs: tuple[IdRun, ...]) -> None:
        order = sorted(range(len(runs)), key=lambda i: runs[i][0])
        self.firsts = [runs[i][0] for i in order]
        self.counts = [runs[i][1] for i in order]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).tolist()

    def locate(self, uid: int) -> tuple[int, int] | None:
        r = bisect.bisect_right(self.firsts, uid) - 1
        if r < 0 or uid >= self.firsts[r] + self.counts[r]:
            return None
        return r, self.offsets[r] + uid - self.firsts[r]


class _RefSet:
    """Darks or flats being averaged: one configured run, or one arrival group."""

    def __init__(self, run: int | None, shape: tuple[int, int], count: int | None) -> None:
        self.run = run
        self.total = np.zeros(shape, dtype=np.float64)
        self.n = 0
        self.expected = count
        self.ids: set[int] = set()


class _OpenStep:
    def __init__(self, index: int, buffer: np.ndarray | None, fps: int) -> None:
        self.index = index
        self.buffer = buffer  # None: the frames themselves are held
        self.held: list[Frame | None] = [None] * fps if buffer is None else []
        self.received = np.zeros(fps, dtype=bool)
        self.ids = np.zeros(fps, dtype=np.int64)
        self.angles = np.zeros(fps, dtype=np.float64)
        self.dark = np.full(fps, -1, dtype=np.int64)
        self.flat = np.full(fps, -1, dtype=np.int64)
        self.n = 0
        self.last_at = -math.inf


class Assembler:
    """Files frames into time steps per :class:`AssemblyConfig`; one thread calls add/flush.

    :meth:`add` returns the steps the frame completed or closed (usually none), :meth:`flush`
    the rest. :meth:`counters` and :meth:`TimeStep.release` may be called from other threads.
    """

    def __init__(self, config: AssemblyConfig) -> None:
        self.config = config
        c = config
        self._dtype = np.dtype(c.dtype)
        self._shape = (c.rows, c.cols)
        self._fps = c.frames_per_step
        self._angles = c.projection_angles()
        self._runs: dict[str, _Runs | None] = {
            k: (_Runs(c.runs(k)) if c.runs(k) else None) for k in ("projection", "dark", "flat")
        }
        self._projection_ids = c.runs("projection")
        self._modulus = None if c.id_bits is None else 1 << c.id_bits
        firsts = [r[0] for k in ("projection", "dark", "flat") for r in c.runs(k)]
        self._ref_id = min(firsts)  # unwrap reference: the highest id seen, or the first run
        self._high: int | None = None
        # Projections ever received (n_projections bits), to tell duplicates from late frames.
        self._seen = np.zeros(c.n_projections, dtype=bool)
        self._step_closed = np.zeros(c.steps, dtype=bool)
        self._horizon = -1  # steps <= horizon are closed or closable
        self._last_step = -1  # the highest step any projection was filed in
        self._open: dict[int, _OpenStep] = {}
        self._ref_seen = {
            k: [np.zeros(n, dtype=bool) for _, n in c.runs(k)] for k in ("dark", "flat")
        }
        self._ref_open: dict[str, _RefSet | None] = {"dark": None, "flat": None}
        self._ref_closed_runs: dict[str, set[int]] = {"dark": set(), "flat": set()}
        # Every closed set, by version; None once no open step or later projection can use it.
        self._ref_means: dict[str, list[np.ndarray | None]] = {"dark": [], "flat": []}
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        for _ in range(0 if c.hold_frames else c.close_lag + 1 + c.spare_buffers):
            buf = np.empty((self._fps, *self._shape), dtype=self._dtype)
            buf.fill(0)  # touch the pages now, not when the first frames arrive
            self._free.append(buf)
        self._pool_size = len(self._free)
        self._n = {
            name: 0
            for name in AssemblyCounters.__dataclass_fields__
            if name not in ("bad_reasons", "step_buffers_in_use")
        }
        self._bad: dict[str, int] = {}

    # -- public ----------------------------------------------------------------------------------

    def add(self, frame: Frame) -> tuple[TimeStep, ...]:
        """File one frame, taking ownership: do not use or release it afterwards."""
        self._kept = False
        try:
            return self._add(frame)
        finally:
            if not self._kept:
                frame.release()

    def _add(self, frame: Frame) -> tuple[TimeStep, ...]:
        h = frame.header
        self._n["received"] += 1
        if h.shape != self._shape:
            return self._reject("shape_mismatch")
        if h.dtype != self._dtype and not np.can_cast(h.dtype, self._dtype, "safe"):
            return self._reject("dtype_mismatch")
        uid = h.frame_id
        kind = h.kind
        if kind in ("dark", "flat") and self._runs[kind] is None:
            self._add_reference_by_arrival(kind, uid, frame)
            return ()
        if self._modulus is not None:
            if uid >= self._modulus:
                return self._reject("id_too_large")
            uid = self._unwrap(uid)
        if kind is None:
            located = self._locate_any(uid)
        else:
            runs = self._runs[kind]
            loc = runs.locate(uid) if runs is not None else None
            located = None if loc is None else (kind, *loc)
        if located is None:
            self._n["outside_range"] += 1
            return ()
        kind, run, ordinal = located
        if self._high is not None and uid < self._high:
            out_of_order = True
        else:
            out_of_order = False
            self._high = uid
        if kind == "projection":
            return self._add_projection(ordinal, uid, frame, out_of_order)
        self._add_reference_by_run(kind, run, ordinal, frame, out_of_order)
        return ()

    def flush(self) -> tuple[TimeStep, ...]:
        """Close every open set and step (end of scan or stop); nothing received is lost."""
        self._close_reference("dark")
        self._close_reference("flat")
        return tuple(self._close_through(max(self._last_step, self._horizon)))

    @property
    def finished(self) -> bool:
        """True once every step of the scan has been emitted or closed."""
        return bool(self._step_closed.all())

    @property
    def references_closed(self) -> int:
        """How many dark and flat sets have closed (or been given): changes with the newest."""
        return len(self._ref_means["dark"]) + len(self._ref_means["flat"])

    def newest_references(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The newest closed dark and flat means (read-only float32), None where none closed."""
        dark, flat = self._ref_means["dark"], self._ref_means["flat"]
        return (dark[-1] if dark else None), (flat[-1] if flat else None)

    def give_references(self, dark: np.ndarray | None, flat: np.ndarray | None) -> None:
        """Start from dark and flat means kept from before (a resumed scan whose detector does
        not send its references again); sets that arrive later take over from them. Only
        before the first frame; DataError for means of another shape."""
        if self._n["received"]:
            raise ServiceError("references can only be given before the first frame")
        for kind, mean in (("dark", dark), ("flat", flat)):
            if mean is None:
                continue
            if mean.shape != self._shape:
                raise DataError(f"kept {kind} mean: expected shape {self._shape}, got {mean.shape}")
            kept = np.array(mean, dtype=np.float32)
            kept.setflags(write=False)
            self._ref_means[kind].append(kept)

    def counters(self) -> AssemblyCounters:
        with self._lock:
            in_use = self._pool_size + self._n["step_buffers_allocated"] - len(self._free)
        return AssemblyCounters(**self._n, bad_reasons=dict(self._bad), step_buffers_in_use=in_use)

    # -- projections -----------------------------------------------------------------------------

    def _add_projection(
        self, ordinal: int, uid: int, frame: Frame, out_of_order: bool
    ) -> tuple[TimeStep, ...]:
        step, k = divmod(ordinal, self._fps)
        if self._seen[ordinal]:
            self._n["duplicate"] += 1
            return ()
        if self._step_closed[step]:
            self._n["late"] += 1
            return ()
        self._n["out_of_order"] += out_of_order
        # A projection closes the reference sets before it: they are what it goes with.
        if self._ref_open["dark"] is not None:
            self._close_reference("dark")
        if self._ref_open["flat"] is not None:
            self._close_reference("flat")
        self._last_step = max(self._last_step, step)
        st = self._open.get(step)
        if st is None:
            buffer = None if self.config.hold_frames else self._take_buffer()
            st = self._open[step] = _OpenStep(step, buffer, self._fps)
        if st.buffer is None:
            st.held[k] = frame
            self._kept = True
        else:
            np.copyto(st.buffer[k], frame.data, casting="safe")
        self._seen[ordinal] = True
        st.received[k] = True
        st.ids[k] = uid
        angle = frame.header.angle
        st.angles[k] = (
            angle
            if angle is not None and self.config.prefer_header_angle
            else (self._angles[ordinal])
        )
        st.dark[k] = len(self._ref_means["dark"]) - 1
        st.flat[k] = len(self._ref_means["flat"]) - 1
        st.n += 1
        st.last_at = max(st.last_at, frame.received_at)
        emitted = [self._emit(st)] if st.n == self._fps else []
        if step - self.config.close_lag > self._horizon:
            emitted += self._close_through(step - self.config.close_lag)
        return tuple(emitted)

    def _close_through(self, last: int) -> list[TimeStep]:
        """Close steps up to ``last``: emit the open ones (index order), count the empty ones."""
        out = []
        for s in range(self._horizon + 1, min(last, self.config.steps - 1) + 1):
            if not self._step_closed[s] and s not in self._open:
                self._step_closed[s] = True
                self._n["steps_skipped"] += 1
                self._n["dropped"] += self._fps
        for s in sorted(self._open):
            if s <= last:
                out.append(self._emit(self._open[s]))
        self._horizon = max(self._horizon, last)
        return out

    def _emit(self, st: _OpenStep) -> TimeStep:
        del self._open[st.index]
        self._step_closed[st.index] = True
        fps = self._fps
        got = np.flatnonzero(st.received)
        n = got.size
        buffer = st.buffer
        if buffer is None:
            held = [st.held[k] for k in got.tolist()]
            frames = tuple(f.data for f in held if f is not None)
            stack = None

            def release() -> None:
                for f in held:
                    if f is not None:
                        f.release()
        else:
            # Move received frames to the front, in order; later slots are never read again.
            for j, k in enumerate(got.tolist()):
                if j != k:
                    buffer[j] = buffer[k]
            stack = buffer[:n]
            frames = tuple(stack)

            def release() -> None:
                self._give_back(buffer)

        if n < fps:
            missing = np.flatnonzero(~st.received)
            self._n["dropped"] += missing.size
            self._n["steps_incomplete"] += 1
        else:
            missing = np.zeros(0, dtype=np.int64)
        first = st.index * fps
        missing_ids = np.array([self._projection_id(first + k) for k in missing.tolist()], np.int64)
        darks, dark_index = self._references("dark", st.dark[got])
        flats, flat_index = self._references("flat", st.flat[got])
        self._n["steps_emitted"] += 1
        return TimeStep(
            index=st.index,
            frames=frames,
            frame_ids=st.ids[got],
            angles=st.angles[got],
            darks=darks,
            flats=flats,
            dark_index=dark_index,
            flat_index=flat_index,
            missing_ids=missing_ids,
            missing_angles=self._angles[first + missing],
            last_frame_at=st.last_at,
            _stack=stack,
            _release=release,
        )

    def _references(
        self, kind: str, versions: np.ndarray
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        used = sorted(set(versions.tolist()) - {-1})
        means = self._ref_means[kind]
        remap = {v: i for i, v in enumerate(used)}
        index = np.array([remap.get(v, -1) for v in versions.tolist()], dtype=np.int64)
        return tuple(means[v] for v in used), index  # type: ignore[misc]

    def _projection_id(self, ordinal: int) -> int:
        for first, count in self._projection_ids:
            if ordinal < count:
                return first + ordinal
            ordinal -= count
        raise AssertionError("ordinal beyond the configured projections")

    # -- darks and flats -------------------------------------------------------------------------

    def _add_reference_by_run(
        self, kind: FrameKind, run: int, ordinal: int, frame: Frame, out_of_order: bool
    ) -> None:
        runs = self._runs[kind]
        assert runs is not None
        within = ordinal - runs.offsets[run]
        seen = self._ref_seen[kind][run]
        if seen[within]:
            self._n["duplicate"] += 1
            return
        if run in self._ref_closed_runs[kind]:
            self._n["late"] += 1
            return
        self._n["out_of_order"] += out_of_order
        seen[within] = True
        open_set = self._ref_open[kind]
        if open_set is not None and open_set.run != run:
            self._close_reference(kind)
            open_set = None
        if open_set is None:
            open_set = self._ref_open[kind] = _RefSet(run, self._shape, runs.counts[run])
        open_set.total += frame.data
        open_set.n += 1
        if open_set.n == open_set.expected:
            self._close_reference(kind)

    def _add_reference_by_arrival(self, kind: FrameKind, fid: int, frame: Frame) -> None:
        open_set = self._ref_open[kind]
        if open_set is None:
            open_set = self._ref_open[kind] = _RefSet(None, self._shape, None)
        if fid in open_set.ids:
            self._n["duplicate"] += 1
            return
        open_set.ids.add(fid)
        open_set.total += frame.data
        open_set.n += 1

    def _close_reference(self, kind: str) -> None:
        open_set = self._ref_open[kind]
        if open_set is None:
            return
        self._ref_open[kind] = None
        if open_set.run is not None:
            self._ref_closed_runs[kind].add(open_set.run)
        mean = (open_set.total / open_set.n).astype(np.float32)
        mean.setflags(write=False)
        means = self._ref_means[kind]
        # Sets no projection can use any more are forgotten (steps keep their own references).
        in_use = {int(v) for st in self._open.values() for v in getattr(st, kind)[st.received]}
        for v in range(len(means)):
            if v not in in_use:
                means[v] = None
        means.append(mean)

    # -- ids and buffers -------------------------------------------------------------------------

    def _unwrap(self, raw: int) -> int:
        m = self._modulus
        assert m is not None
        ref = self._ref_id
        d = (raw - ref) % m
        uid = ref + d if d < m // 2 else ref + d - m
        if uid > ref:
            self._n["wrapped"] += uid // m - ref // m
            self._ref_id = uid
        return uid

    def _locate_any(self, uid: int) -> tuple[str, int, int] | None:
        for kind in ("projection", "dark", "flat"):
            runs = self._runs[kind]
            loc = runs.locate(uid) if runs is not None else None
            if loc is not None:
                return (kind, *loc)
        return None

    def _reject(self, reason: str) -> tuple[TimeStep, ...]:
        self._n["bad"] += 1
        self._bad[reason] = self._bad.get(reason, 0) + 1
        return ()

    def _take_buffer(self) -> np.ndarray:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._n["step_buffers_allocated"] += 1
        return np.empty((self._fps, *self._shape), dtype=self._dtype)

    def _give_back(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)
