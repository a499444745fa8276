"""Restart safety: what a scan has written is kept on disk, and a restarted service resumes it.

The **journal** (:class:`ScanJournal`) is a state directory with one subdirectory per scan
run, holding ``scan.json``: the scan configuration, the results file, the trained model's
checkpoint once saved, and whether the scan is still ``running``. Every write goes to a
temporary file that is then renamed over the old one, so a kill at any moment leaves either
the old or the new record, never a torn one.

After a crash (SIGKILL, power loss, the OOM killer) the newest record still ``running`` is
the scan to resume (:meth:`ScanJournal.unfinished`); :func:`plan_resume` reads its results
file and works out what is done. The results file is HDF5 in SWMR mode: a killed writer
leaves it readable by SWMR readers but not openable for writing, and the step being written
may be partial (its unwritten chunks read as the NaN fill value). :meth:`ResumePlan.open_results`
therefore copies every *whole* step (finite data, in its original order), the training losses,
the centre and the attributes into a fresh file, renames it over the old one (the old one stays
intact until then, so a kill during recovery loses nothing) and keeps writing to it. Results
the resumed scan makes again for steps the file already holds are not written twice.

The journal also keeps the newest dark and flat means (``references.npz``, rewritten whenever a
set closes), so a resumed scan can correct projections even when the detector does not send its
references again after the restart; sets that do arrive take over from them. The resumed scan
loads the model trained before the crash (``scan.model`` = the checkpoint) instead of training
again; steps whose FBP is on disk but whose denoised volume is not are
denoised from the file while it is recovered (:attr:`ResumePlan.backfill`). A scan that
crashed ``max_resumes`` times is given up (recorded as finished) rather than resumed into a
crash loop.

Wiring (``n2i-stream serve`` with ``[state] directory``)::

    journal = ScanJournal(settings.state.directory)
    service = N2IService(source, options=..., journal=journal)
    service.start()
    plan = resume_unfinished(journal)            # None when there is nothing to resume
    if plan is not None and settings.state.resume:
        service.configure(plan.scan, resume=plan)
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np

from ..config import to_mapping
from ..errors import DataFileError, N2IError, ServiceError
from ..io.live_results import LiveResultsWriter
from .scan_config import ScanConfig
from .sinks import ResultsFileSink, StepResult

if TYPE_CHECKING:
    from ..learn import Denoiser

__all__ = [
    "STATE_FORMAT",
    "ResumePlan",
    "ResumedFileSink",
    "ScanJournal",
    "ScanRecord",
    "atomic_write",
    "plan_resume",
    "read_results",
    "register_model",
    "register_resumed_model",
    "register_trained_models",
    "resume_unfinished",
]

log = logging.getLogger(__name__)

STATE_FORMAT = "n2i-stream-scan-state-1"
REFERENCES = "references.npz"  # the newest dark and flat means, beside scan.json
RecordState = Literal["running", "finished"]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` all at once: write a temporary file beside it, flush it to
    disk, rename it over ``path``, then flush the directory entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory itself is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ScanRecord:
    """One scan run as the journal keeps it (``scan.json`` in :attr:`directory`)."""

    directory: Path
    scan: dict[str, Any]  # the ScanConfig as plain data
    results: str | None  # the results file
    model: str | None = None  # the trained model's checkpoint, once saved
    state: RecordState = "running"
    reason: str | None = None  # how the scan ended (finished records)
    started: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    resumed: int = 0  # times the scan was resumed after a crash

    @property
    def scan_id(self) -> str:
        return str(self.scan.get("scan_id"))

    def to_json(self) -> bytes:
        body = {"format": STATE_FORMAT, **to_mapping(self)}
        body["directory"] = str(self.directory)
        return json.dumps(body, indent=2, default=str).encode()

    @classmethod
    def read(cls, directory: Path) -> ScanRecord:
        path = directory / "scan.json"
        try:
            body = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise DataFileError(path, None, f"not a readable scan state: {exc}") from exc
        if not isinstance(body, dict) or body.get("format") != STATE_FORMAT:
            raise DataFileError(path, None, f"expected format {STATE_FORMAT!r}")
        fields = {k: body[k] for k in cls.__dataclass_fields__ if k in body}
        return cls(**{**fields, "directory": directory})


class ScanJournal:
    """The state directory: ``DIR/scans/<start time>-<scan_id>/scan.json`` per scan run.

    Thread-safe; every change is written atomically (:func:`atomic_write`).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_resumes: int = 3) -> None:
        self.directory = Path(directory)
        self.max_resumes = max_resumes
        self._lock = threading.Lock()
        try:
            (self.directory / "scans").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataFileError(self.directory, None, f"cannot create the state: {exc}") from exc

    def _write(self, record: ScanRecord) -> ScanRecord:
        record = replace(record, updated=_now())
        atomic_write(record.directory / "scan.json", record.to_json())
        return record

    def begin(self, scan: ScanConfig) -> ScanRecord:
        """Record a scan that starts now (state ``running``)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", scan.scan_id)[:80] or "scan"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        with self._lock:
            base = self.directory / "scans" / f"{stamp}-{safe}"
            directory, n = base, 1
            while directory.exists():
                n += 1
                directory = base.with_name(f"{base.name}.{n}")
            directory.mkdir(parents=True)
            return self._write(ScanRecord(directory, to_mapping(scan), scan.output))

    def model_saved(self, record: ScanRecord, checkpoint: str) -> ScanRecord:
        """Record the checkpoint of the scan's trained model."""
        with self._lock:
            return self._write(replace(self._current(record), model=str(checkpoint)))

    def references_saved(
        self, record: ScanRecord, dark: np.ndarray | None, flat: np.ndarray | None
    ) -> None:
        """Keep the scan's newest dark and flat means (``references.npz`` beside its record),
        for a restart whose detector does not send them again."""
        buffer = io.BytesIO()
        kept = {k: v for k, v in (("dark", dark), ("flat", flat)) if v is not None}
        np.savez(buffer, **kept)
        with self._lock:
            atomic_write(record.directory / REFERENCES, buffer.getvalue())

    def resumed(self, record: ScanRecord) -> ScanRecord:
        """Count one more resume of ``record``."""
        with self._lock:
            current = self._current(record)
            return self._write(replace(current, resumed=current.resumed + 1))

    def finish(self, record: ScanRecord, reason: str | None = None) -> ScanRecord:
        """Record that the scan ended (done, stopped, aborted or failed): never resumed."""
        with self._lock:
            return self._write(replace(self._current(record), state="finished", reason=reason))

    def _current(self, record: ScanRecord) -> ScanRecord:
        try:
            return ScanRecord.read(record.directory)
        except DataFileError:
            return record

    def records(self) -> list[ScanRecord]:
        """Every readable record, oldest first (unreadable ones are logged and skipped)."""
        out = []
        for directory in sorted((self.directory / "scans").iterdir()):
            if not (directory / "scan.json").exists():
                continue
            try:
                out.append(ScanRecord.read(directory))
            except DataFileError as exc:
                log.warning("scan state skipped: %s", exc)
        return out

    def unfinished(self) -> ScanRecord | None:
        """The newest scan still ``running`` (older ones are marked abandoned), if any; a scan
        resumed ``max_resumes`` times already is marked given up instead."""
        running = [r for r in self.records() if r.state == "running"]
        if not running:
            return None
        *older, newest = running
        for record in older:
            self.finish(record, "abandoned: a later scan started before it was resumed")
        if newest.resumed >= self.max_resumes:
            self.finish(newest, f"given up: the service crashed {newest.resumed + 1} times in it")
            log.error("scan %s not resumed: crashed %d times", newest.scan_id, newest.resumed + 1)
            return None
        return newest


# -- the results file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultsContent:
    """What a results file holds: the whole steps per kind, in file order."""

    order: tuple[int, ...]  # time steps in file order
    whole: dict[str, frozenset[int]]  # kind -> steps whose volume is complete (no fill values)
    missing_frames: dict[int, int]
    losses: np.ndarray
    center_offset: float
    config: dict[str, Any]
    attrs: dict[str, Any]
    shape: tuple[int, int, int]  # (rows, n, n)
    kinds: tuple[str, ...]


def read_results(path: str | os.PathLike[str]) -> ResultsContent:
    """Read a results file as a SWMR reader (works on a file whose writer was killed)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as exc:
        raise DataFileError(path, None, f"cannot read the results file: {exc}") from exc
    with f:
        try:
            group = f["reconstruction"]
            kinds = tuple(k for k in ("fbp", "denoised") if k in group)
            order = tuple(int(s) for s in group["time_step"][()])
            missing = group["missing_frames"][()] if "missing_frames" in group else None
            whole: dict[str, set[int]] = {k: set() for k in kinds}
            for kind in kinds:
                ds = group[kind]
                for position, step in enumerate(order[: ds.shape[0]]):
                    if np.isfinite(ds[position]).all():
                        whole[kind].add(step)
            center = group["center_offset"][()] if "center_offset" in group else math.nan
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            config = json.loads(attrs.pop("config", "{}"))
            return ResultsContent(
                order=order,
                whole={k: frozenset(v) for k, v in whole.items()},
                missing_frames={
                    s: int(missing[i]) if missing is not None and i < missing.size else -1
                    for i, s in enumerate(order)
                },
                losses=np.asarray(f["training/loss"][()], dtype=np.float32),
                center_offset=float(center),
                config=config,
                attrs=attrs,
                shape=tuple(int(x) for x in group[kinds[0]].shape[1:]),  # type: ignore[arg-type]
                kinds=kinds,
            )
        except (KeyError, IndexError, ValueError, OSError) as exc:
            raise DataFileError(path, None, f"not a usable results file: {exc}") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class _RecoveredWriter(LiveResultsWriter):
    """A results writer that can read back the volumes it holds (for denoising backfill)."""

    def read_step(self, kind: str, time_step: int) -> np.ndarray:
        position = self.time_steps.index(int(time_step))
        return np.asarray(self._file["reconstruction"][kind][position])


class ResumedFileSink(ResultsFileSink):
    """The results sink of a resumed scan: writes to the recovered file, skipping results for
    steps the file already holds whole (``skipped`` counts them)."""

    def __init__(self, writer: _RecoveredWriter, done: Mapping[str, frozenset[int]]) -> None:
        self.path = writer.path
        self._writer = writer
        self._done = {k: set(v) for k, v in done.items()}
        self.skipped = 0

    def put(self, result: StepResult) -> None:
        if result.time_step in self._done.get(result.kind, ()):
            self.skipped += 1
            return
        super().put(result)
        self._done.setdefault(result.kind, set()).add(result.time_step)

    def read_fbp(self, time_step: int) -> np.ndarray:
        """The FBP volume of a step the file holds (to denoise it without its frames)."""
        assert isinstance(self._writer, _RecoveredWriter)
        return self._writer.read_step("fbp", time_step)


def recover_results(
    path: str | os.PathLike[str],
    content: ResultsContent,
    *,
    resumed: int,
    denoise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ResumedFileSink:
    """Copy the whole steps of ``content`` (read from ``path``) into a fresh file, rename it over
    ``path`` and return a sink that goes on writing to it. With ``denoise``, steps whose FBP is
    whole but whose denoised volume is not get one made from that FBP."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.recovering")
    attrs = {k: v for k, v in content.attrs.items() if k not in ("software", "software_version")}
    attrs["resumed"] = resumed
    rows, n, _ = content.shape
    backfill = content.whole.get("fbp", frozenset()) - content.whole.get("denoised", frozenset())
    if "denoised" not in content.kinds:
        backfill = frozenset()
    writer = _RecoveredWriter(
        tmp, rows=rows, n=n, kinds=content.kinds, config=content.config, attrs=attrs,
        overwrite=True,
    )  # fmt: skip
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as old:
            group = old["reconstruction"]
            for position, step in enumerate(content.order):
                missing = content.missing_frames.get(step, -1)
                for kind in [k for k in content.kinds if step in content.whole[k]]:
                    writer.write_result(kind, step, group[kind][position], missing_frames=missing)
                if denoise is not None and step in backfill:
                    fbp = np.asarray(group["fbp"][position])
                    writer.write_result("denoised", step, denoise(fbp), missing_frames=missing)
        if content.losses.size:
            writer.append_loss(content.losses)
        if math.isfinite(content.center_offset):
            writer.write_center(content.center_offset)
        os.replace(tmp, path)  # the open file keeps writing under its new name
        _fsync_directory(path.parent)
        writer.path = path
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    whole = dict(content.whole)
    if denoise is not None and backfill:
        whole["denoised"] = whole.get("denoised", frozenset()) | backfill
        log.info("%s: denoised %d steps from their FBP on disk", path, len(backfill))
    return ResumedFileSink(writer, whole)


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePlan:
    """How to resume ``record``: the scan to configure and what the results file holds."""

    record: ScanRecord
    scan: ScanConfig  # the recorded scan, with ``model`` = the checkpoint trained before
    content: ResultsContent | None  # None: no usable results file (it starts afresh)
    references: tuple[np.ndarray | None, np.ndarray | None] = (None, None)  # dark, flat means

    @property
    def done(self) -> dict[str, frozenset[int]]:
        """Steps the results file holds whole, per kind."""
        return dict(self.content.whole) if self.content is not None else {}

    @property
    def skip_steps(self) -> frozenset[int]:
        """Steps not to reconstruct again should their frames come again: their FBP is on
        disk. Without a model the training steps are reconstructed again, to train on."""
        on_disk = self.done.get("fbp", frozenset())
        if self.scan.model is None:
            return frozenset(s for s in on_disk if s >= self.scan.train_steps)
        return on_disk

    @property
    def backfill(self) -> tuple[int, ...]:
        """Steps with FBP on disk but no denoised volume, when a model exists to denoise them."""
        if self.scan.model is None:
            return ()
        denoised = self.done.get("denoised", frozenset())
        return tuple(s for s in sorted(self.done.get("fbp", ())) if s not in denoised)

    def open_results(
        self, model: Denoiser | None = None, *, batch: int = 8
    ) -> ResultsFileSink | None:
        """The results sink of the resumed scan: the recovered file, or a new one when there
        was none usable (a broken one is moved aside as ``NAME.broken-TIME``). With ``model``
        (the scan's denoiser) the :attr:`backfill` steps are denoised from their FBP now."""
        output = self.scan.output
        if output is None:
            return None
        if self.content is not None:
            denoise = None
            if model is not None:
                from ..learn import denoise_volume

                def denoise(volume: np.ndarray) -> np.ndarray:
                    kept = denoise_volume(model, volume, batch=batch, keep_low=self.scan.keep_low)
                    return np.asarray(kept)

            return recover_results(
                output, self.content, resumed=self.record.resumed, denoise=denoise
            )
        path = Path(output)
        if path.exists():
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(path, aside)
            log.warning("scan %s: unreadable results file moved to %s", self.scan.scan_id, aside)
        return ResultsFileSink(
            path, rows=self.scan.rows, n=self.scan.size, config=to_mapping(self.scan),
            attrs={
                "scan_id": self.scan.scan_id,
                "method": "n2i-stream serve",
                "resumed": self.record.resumed,
            },
        )  # fmt: skip

    def describe(self) -> str:
        fbp, denoised = self.done.get("fbp", frozenset()), self.done.get("denoised", frozenset())
        model = f"model {self.scan.model}" if self.scan.model else "no trained model"
        kept = [k for k, m in zip(("dark", "flat"), self.references, strict=True) if m is not None]
        references = f"kept {' and '.join(kept)} means" if kept else "no kept darks or flats"
        return (
            f"scan {self.scan.scan_id!r}: {len(fbp)} of {self.scan.steps} steps on disk "
            f"({len(denoised)} denoised), {model}, {references}"
        )


def plan_resume(record: ScanRecord) -> ResumePlan:
    """Work out how to resume ``record`` from its results file and model checkpoint."""
    scan = ScanConfig.from_mapping(record.scan, source=f"{record.directory}/scan.json")
    model = record.model if record.model and Path(record.model).exists() else scan.model
    if record.model and model != record.model:
        log.warning("scan %s: model %s is gone; it trains again", scan.scan_id, record.model)
    scan = replace(scan, model=model)
    content = None
    if scan.output is not None and Path(scan.output).exists():
        try:
            content = read_results(scan.output)
        except DataFileError as exc:
            log.warning("scan %s: results file not usable, starting it afresh: %s",
                        scan.scan_id, exc)  # fmt: skip
        if content is not None and content.shape != scan.volume_shape:
            raise ServiceError(
                f"{scan.output}: volumes {content.shape}, scan {scan.scan_id!r} makes "
                f"{scan.volume_shape}; not resuming into a different file"
            )
    return ResumePlan(record, scan, content, _kept_references(record, scan))


def _kept_references(
    record: ScanRecord, scan: ScanConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
    path = record.directory / REFERENCES
    if not path.exists():
        return None, None
    shape = (scan.rows, scan.cols)
    try:
        with np.load(path) as kept:
            means = tuple(kept[k] if k in kept.files else None for k in ("dark", "flat"))
    except (OSError, ValueError) as exc:
        log.warning("scan %s: kept darks and flats not readable (%s): %s", scan.scan_id, path, exc)
        return None, None
    if any(m is not None and m.shape != shape for m in means):
        log.warning("scan %s: kept darks and flats are not %s: not used", scan.scan_id, shape)
        return None, None
    return means  # type: ignore[return-value]


def resume_unfinished(journal: ScanJournal) -> ResumePlan | None:
    """The plan for the journal's unfinished scan, counted as resumed; None if there is none."""
    record = journal.unfinished()
    if record is None:
        return None
    try:
        plan = plan_resume(record)
    except Exception as exc:
        journal.finish(record, f"not resumable: {exc}")
        log.error("scan %s cannot be resumed: %s", record.scan_id, exc)
        return None
    plan = replace(plan, record=journal.resumed(record))
    log.info("resuming %s", plan.describe())
    return plan


def register_trained_models(service: Any, registry: Any, *, detector: str = "") -> None:
    """Register every model ``service`` trains in ``registry``
    (:class:`~n2i_stream.learn.registry.ModelRegistry`), keyed with ``detector`` and the
    scan's ``energy_kev`` when it has one. Call before the first scan. A resumed scan's model
    is registered by :func:`register_resumed_model` (a kill may have come before this did)."""

    def listener(state: str, reason: str | None) -> None:
        run = service.run
        if state != "streaming" or run is None or run.training.state != "done":
            return
        if run.training.model is not None:
            register_model(registry, run.training.model, run.scan, detector=detector)

    service.add_state_listener(listener)


def register_resumed_model(plan: ResumePlan, registry: Any, *, detector: str = "") -> None:
    """Register the model ``plan``'s scan trained before the crash, in case the crash came
    between saving it and registering it (registering is idempotent)."""
    if plan.record.model is not None and plan.scan.model == plan.record.model:
        register_model(registry, plan.record.model, plan.scan, detector=detector)


def register_model(registry: Any, checkpoint: str, scan: ScanConfig, *, detector: str) -> None:
    """Register ``checkpoint``, trained on ``scan``; a failure is logged, never raised (the
    scan goes on without it)."""
    try:
        entry = registry.register(
            checkpoint,
            detector=detector,
            energy_kev=getattr(scan, "energy_kev", None),
            scan_id=scan.scan_id,
        )
        log.info("scan %s: model registered as %s", scan.scan_id, entry.id)
    except (OSError, N2IError) as exc:
        log.error("scan %s: the model could not be registered: %s", scan.scan_id, exc)
