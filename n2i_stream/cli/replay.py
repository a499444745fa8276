"""``n2i-stream replay``: stream a Data Exchange scan like a detector (a recorded beamtime).

Frames go out in acquisition order: by the ``/exchange/frame_id*`` datasets when the file has
them (files written by this package), else darks and flats taken before the scan (attribute
``frame_index`` -1, or no attribute), projections, and references taken after projection k right
after it. Only whole time steps are sent (``frames_per_step`` from the file or
``--frames-per-step``). The scan configuration the service needs — angles from
``/exchange/theta``, id runs of the order sent — is written with ``--scan-config`` or sent to a
running service with ``--control`` before the first frame (see ``n2i-stream simulate
--stream`` for the shared options).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._streaming import (
    add_scan_arguments,
    add_stream_arguments,
    announce_scan,
    scan_extra,
    send_frames,
)

HELP = "stream a Data Exchange file like a detector (to n2i-stream serve)"

_DATASETS = {"projection": "data", "dark": "data_dark", "flat": "data_white"}
_IDS = {"projection": "frame_id", "dark": "frame_id_dark", "flat": "frame_id_white"}


@dataclass(frozen=True, eq=False)
class ReplayFrame:
    """One frame to send: its id, kind, pixels and (projections) angle in degrees."""

    frame: int
    kind: str
    data: np.ndarray
    angle: float | None


@dataclass(frozen=True)
class ReplayPlan:
    """The order frames are sent in, as (kind, index into the kind's dataset, frame id)."""

    path: Path
    order: tuple[tuple[str, int, int], ...]
    rows: int
    cols: int
    frames_per_step: int
    steps: int
    theta: np.ndarray = field(repr=False)

    def scan_config(self, **fields: Any) -> dict[str, Any]:
        """The service's scan configuration (plain data) for this replay; ``fields`` add keys."""
        runs: dict[str, list[list[int]]] = {"projection": [], "dark": [], "flat": []}
        for kind, _, fid in self.order:
            block = runs[kind]
            if block and block[-1][0] + block[-1][1] == fid:
                block[-1][1] += 1
            else:
                block.append([fid, 1])
        config = {
            "scan_id": self.path.stem,
            "rows": self.rows,
            "cols": self.cols,
            "frames_per_step": self.frames_per_step,
            "steps": self.steps,
            "angles": [float(a) for a in self.theta[: self.steps * self.frames_per_step]],
            "projection_ids": runs["projection"],
            "dark_ids": runs["dark"],
            "flat_ids": runs["flat"],
        }
        config.update(fields)
        return config

    def frames(self) -> Iterator[ReplayFrame]:
        """The frames in sending order, read from the file one at a time."""
        import h5py

        with h5py.File(self.path, "r") as f:
            data = {kind: f[f"/exchange/{name}"] for kind, name in _DATASETS.items()}
            for kind, index, fid in self.order:
                angle = float(self.theta[index]) if kind == "projection" else None
                yield ReplayFrame(fid, kind, np.asarray(data[kind][index]), angle)


def plan_replay(path: str | Path, *, frames_per_step: int | None = None) -> ReplayPlan:
    """Validate ``path`` (a Data Exchange file) and work out what to send in which order."""
    import h5py

    from ..errors import ConfigError, DataFileError
    from ..io.dxchange import DataExchangeFile

    path = Path(path)
    with DataExchangeFile(path) as scan:  # validates the layout, names what is wrong
        fps = frames_per_step or scan.frames_per_step
        if fps is None:
            raise ConfigError(
                f"{path}: no frames_per_step attribute on /exchange/data; pass --frames-per-step"
            )
        theta = np.asarray(scan.theta, dtype=np.float64)
        rows, cols, n_proj = scan.rows, scan.cols, scan.n_frames
    steps = n_proj // fps
    if steps < 1:
        raise DataFileError(path, "/exchange/data", f"{n_proj} frames: not one step of {fps}")
    with h5py.File(path, "r") as f:
        counts = {k: int(f[f"/exchange/{n}"].shape[0]) for k, n in _DATASETS.items()}
        counts["projection"] = steps * fps
        if all(f"/exchange/{name}" in f for name in _IDS.values()):
            entries = [
                (kind, i, int(fid))
                for kind, name in _IDS.items()
                for i, fid in enumerate(f[f"/exchange/{name}"][: counts[kind]])
            ]
            order = sorted(entries, key=lambda e: e[2])
        else:
            after = {
                kind: np.asarray(
                    f[f"/exchange/{_DATASETS[kind]}"].attrs.get("frame_index", [-1] * counts[kind])
                )
                for kind in ("dark", "flat")
            }
            order = [
                (k, i, 0) for k in ("dark", "flat") for i in range(counts[k]) if after[k][i] < 0
            ]
            for p in range(counts["projection"]):
                order.append(("projection", p, 0))
                order += [(k, i, 0) for k in ("dark", "flat") for i in range(counts[k])
                          if after[k][i] == p]  # fmt: skip
            order = [(kind, i, fid) for fid, (kind, i, _) in enumerate(order)]
    if len({fid for _, _, fid in order}) != len(order):
        raise DataFileError(path, "/exchange/frame_id", "frame ids repeat; cannot order frames")
    return ReplayPlan(path, tuple(order), rows, cols, fps, steps, theta)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="Data Exchange file to replay")
    add_stream_arguments(parser, required=True)
    parser.add_argument("--frames-per-step", type=int, metavar="N", help="(file's attribute)")
    add_scan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    plan = plan_replay(args.input, frames_per_step=args.frames_per_step)
    announce_scan(args, plan.scan_config(**scan_extra(args)))
    print(
        f"replaying {args.input}: {plan.steps} steps of {plan.frames_per_step} frames "
        f"({len(plan.order)} frames with references) as {args.format} to {args.stream}"
    )
    send_frames(args, plan.frames())
    return 0
