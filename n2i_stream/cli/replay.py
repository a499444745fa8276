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
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    parser.add_argument("--stream", required=True, metavar="ENDPOINT", help="send frames here")
    parser.add_argument(
        "--format", choices=("n2i", "array-1.0", "gigafrost"), default="n2i", help="(n2i)"
    )
    parser.add_argument(
        "--rate", type=float, default=600.0, help="frames per second (600; 0: at once)"
    )
    parser.add_argument(
        "--socket",
        choices=("push", "pub"),
        default="push",
        help="push (default: waits for the service) or pub (drops frames no subscriber takes)",
    )
    parser.add_argument("--bind", action="store_true", help="bind the stream instead of connecting")
    parser.add_argument("--frames-per-step", type=int, metavar="N", help="(file's attribute)")
    parser.add_argument("--scan-config", type=Path, help="write the scan configuration (JSON) here")
    parser.add_argument("--scan-extra", default="{}", help="JSON object of extra scan keys")
    parser.add_argument("--control", metavar="ENDPOINT", help="configure this service first")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..sim.stream import StreamStats, frame_messages, stream

    try:
        extra = json.loads(args.scan_extra)
    except ValueError as exc:
        raise ConfigError(f"--scan-extra: expected a JSON object: {exc}") from exc
    if not isinstance(extra, dict):
        raise ConfigError(f"--scan-extra: expected a JSON object, got {args.scan_extra!r}")
    plan = plan_replay(args.input, frames_per_step=args.frames_per_step)
    scan_config = plan.scan_config(**extra)
    if args.scan_config is not None:
        args.scan_config.write_text(json.dumps(scan_config))
        print(f"wrote the scan configuration to {args.scan_config}")
    if args.control is not None:
        from ..service.control import ControlClient

        with ControlClient(args.control) as client:
            reply = client.call("configure", scan=scan_config)
        print(f"configured scan {reply['scan_id']} on {args.control} (state {reply['state']})")
    print(
        f"replaying {args.input}: {plan.steps} steps of {plan.frames_per_step} frames "
        f"({len(plan.order)} frames with references) as {args.format} to {args.stream}"
    )
    stats = StreamStats()
    stream(
        frame_messages(plan.frames(), args.format, stats=stats),
        args.stream,
        socket_type=args.socket,
        bind=args.bind,
        rate=args.rate or None,
        stats=stats,
    )
    print(f"sent {stats.frames} frames in {stats.seconds:.1f} s ({stats.rate:.0f} frames/s)")
    return 0
