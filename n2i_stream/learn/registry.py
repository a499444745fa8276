"""A model registry: trained denoisers kept for later scans, keyed by geometry, detector and
energy, so a new sample can start from (or be fine-tuned from) a model of a similar scan.

Layout of the registry directory::

    index.json              {"format": "n2i-stream-model-registry-1", "models": [ENTRY, ...]}
    models/<id>.pt          the checkpoints (n2i_stream.learn.checkpoint format)

An entry holds the model's :class:`ModelKey` (detector columns, reconstruction size, angles per
reconstruction, rotation centre, network, detector name, energy), where it came from (scan,
time, software version), its training summary and the SHA-256 of the checkpoint. Checkpoints are
copied in under a new name and the index is replaced atomically under a lock, so several
processes can register at once and a reader never sees a torn index. Registering is idempotent:
the same checkpoint under the same key gives back the entry it already has.
:meth:`ModelRegistry.find` matches geometry, network and detector exactly and energy within a
tolerance, newest first; fine-tune with ``fit(..., init=load_checkpoint(entry.path))`` or use
the checkpoint as the scan's ``model``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from .checkpoint import load_checkpoint
from .model import Denoiser

__all__ = ["REGISTRY_FORMAT", "ModelKey", "ModelRegistry", "RegistryEntry"]

REGISTRY_FORMAT = "n2i-stream-model-registry-1"
#: rotation centres closer than this (pixels) are the same geometry (as check_compatible)
CENTER_TOLERANCE = 0.5


@dataclass(frozen=True)
class ModelKey:
    """What a model must match to be reused: the scan geometry it denoises, the network, the
    detector (by name) and the X-ray energy (keV; None when unknown)."""

    cols: int
    n: int
    angles: int  # projections per reconstruction (per time step)
    center_offset: float
    network: str
    detector: str = ""
    energy_kev: float | None = None

    @classmethod
    def of(
        cls, denoiser: Denoiser, *, detector: str = "", energy_kev: float | None = None
    ) -> ModelKey:
        """The key of a trained denoiser (its geometry summary and network)."""
        g = denoiser.geometry
        try:
            return cls(
                cols=int(g["cols"]),
                n=int(g["n"]),
                angles=int(g["angles"]),
                center_offset=float(g["center_offset"]),
                network=denoiser.spec.name,
                detector=detector,
                energy_kev=energy_kev,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"the model has no usable geometry summary ({g}): {exc}") from exc

    def matches(self, other: ModelKey, *, energy_tolerance_kev: float) -> bool:
        """Same geometry, network and detector; energy within the tolerance (unknown energies
        match only each other)."""
        same = (self.cols, self.n, self.angles, self.network, self.detector) == (
            other.cols, other.n, other.angles, other.network, other.detector,
        )  # fmt: skip
        if not same or abs(self.center_offset - other.center_offset) > CENTER_TOLERANCE:
            return False
        if self.energy_kev is None or other.energy_kev is None:
            return self.energy_kev is None and other.energy_kev is None
        return abs(self.energy_kev - other.energy_kev) <= energy_tolerance_kev


@dataclass(frozen=True)
class RegistryEntry:
    """One registered model."""

    id: str
    key: ModelKey
    path: Path  # the checkpoint
    created: str  # UTC, ISO 8601
    scan_id: str | None
    iterations: int
    final_loss: float | None
    software_version: str
    note: str = ""
    sha256: str = ""  # of the checkpoint file ("" in entries registered before it was kept)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["path"] = self.path.name  # relative to the registry's models/ directory
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any], models: Path) -> RegistryEntry:
        return cls(**{**body, "key": ModelKey(**body["key"]), "path": models / body["path"]})


class ModelRegistry:
    """The registry in ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.models = self.directory / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self._index = self.directory / "index.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # An advisory lock: registrations from several processes are serialised.
        with (self.directory / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def entries(self) -> list[RegistryEntry]:
        """Every registered model, oldest first."""
        if not self._index.exists():
            return []
        try:
            body = json.loads(self._index.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{self._index}: not a readable model registry: {exc}") from exc
        if body.get("format") != REGISTRY_FORMAT:
            raise ModelError(f"{self._index}: expected format {REGISTRY_FORMAT!r}")
        return [RegistryEntry.from_json(e, self.models) for e in body["models"]]

    def _write(self, entries: list[RegistryEntry]) -> None:
        body = {"format": REGISTRY_FORMAT, "models": [e.to_json() for e in entries]}
        fd, tmp = tempfile.mkstemp(prefix=".index.", dir=self.directory)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._index)

    def register(
        self,
        checkpoint: str | os.PathLike[str],
        *,
        detector: str = "",
        energy_kev: float | None = None,
        scan_id: str | None = None,
        note: str = "",
    ) -> RegistryEntry:
        """Copy ``checkpoint`` into the registry under the key of the model it holds; the entry
        it already has when the same checkpoint was registered under the same key before."""
        if energy_kev is not None and not (math.isfinite(energy_kev) and energy_kev > 0):
            raise ConfigError(f"energy_kev: expected a positive number or None, got {energy_kev}")
        denoiser = load_checkpoint(checkpoint)  # ModelError for anything but a checkpoint
        key = ModelKey.of(denoiser, detector=detector, energy_kev=energy_kev)
        with open(checkpoint, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        from .. import __version__

        with self._locked():
            entries = self.entries()
            for e in entries:
                if e.sha256 == digest and e.key == key and e.path.exists():
                    return e
            model_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
            target = self.models / f"{model_id}.pt"
            partial = target.with_name(target.name + ".part")
            shutil.copyfile(checkpoint, partial)
            os.replace(partial, target)
            history = denoiser.loss_history
            entry = RegistryEntry(
                id=model_id,
                key=key,
                path=target,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                scan_id=scan_id,
                iterations=denoiser.iteration,
                final_loss=float(history[-1][1]) if history else None,
                software_version=__version__,
                note=note,
                sha256=digest,
            )
            self._write([*entries, entry])
        return entry

    def find(self, key: ModelKey, *, energy_tolerance_kev: float = 0.5) -> list[RegistryEntry]:
        """Models that fit ``key``, newest first."""
        tolerance = energy_tolerance_kev
        fits = [e for e in self.entries() if e.key.matches(key, energy_tolerance_kev=tolerance)]
        return fits[::-1]  # the index is in registration order

    def latest(self, key: ModelKey, *, energy_tolerance_kev: float = 0.5) -> RegistryEntry | None:
        """The newest model that fits ``key``, if any."""
        found = self.find(key, energy_tolerance_kev=energy_tolerance_kev)
        return found[0] if found else None

    def remove(self, model_id: str) -> None:
        """Drop a model from the index and delete its checkpoint."""
        with self._locked():
            entries = self.entries()
            kept = [e for e in entries if e.id != model_id]
            if len(kept) == len(entries):
                raise ModelError(f"no model {model_id!r} in the registry {self.directory}")
            self._write(kept)
        (self.models / f"{model_id}.pt").unlink(missing_ok=True)
