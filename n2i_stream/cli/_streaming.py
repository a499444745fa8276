"""Options and steps shared by the commands that stream frames like a detector.

``simulate --stream`` and ``replay`` both: take the same stream options, build a scan
configuration (plus ``--scan-extra`` keys), write it (``--scan-config``) or send it to a running
service (``--control``), then stream the frames and report the rate.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any


def add_stream_arguments(group: Any, *, required: bool) -> None:
    """The stream options on ``group`` (a parser or an argument group)."""
    group.add_argument(
        "--stream", required=required, metavar="ENDPOINT", help="send frames to this ZMQ endpoint"
    )
    group.add_argument(
        "--format", choices=("n2i", "array-1.0", "gigafrost"), default="n2i", help="(n2i)"
    )
    group.add_argument(
        "--rate", type=float, default=600.0, help="frames per second (600; 0: as fast as possible)"
    )
    group.add_argument(
        "--socket",
        choices=("push", "pub"),
        default="push",
        help="push (default: waits for the service) or pub (drops frames no subscriber takes)",
    )
    group.add_argument("--bind", action="store_true", help="bind the stream instead of connecting")


def add_scan_arguments(group: Any) -> None:
    """Where the scan configuration goes: a JSON file and/or a running service."""
    from pathlib import Path

    group.add_argument("--scan-config", type=Path, help="write the scan configuration (JSON) here")
    group.add_argument("--scan-extra", default="{}", help="JSON object of extra scan keys")
    group.add_argument("--control", metavar="ENDPOINT", help="configure this service first")


def scan_extra(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--scan-extra`` JSON object."""
    from ..errors import ConfigError

    try:
        extra = json.loads(args.scan_extra)
    except ValueError as exc:
        raise ConfigError(f"--scan-extra: expected a JSON object: {exc}") from exc
    if not isinstance(extra, dict):
        raise ConfigError(f"--scan-extra: expected a JSON object, got {args.scan_extra!r}")
    return extra


def announce_scan(args: argparse.Namespace, scan_config: dict[str, Any]) -> None:
    """Write the scan configuration (``--scan-config``) and configure ``--control`` with it."""
    if args.scan_config is not None:
        args.scan_config.write_text(json.dumps(scan_config))
        print(f"wrote the scan configuration to {args.scan_config}")
    if args.control is not None:
        from ..service.control import ControlClient

        with ControlClient(args.control) as client:
            reply = client.call("configure", scan=scan_config)
        print(f"configured scan {reply['scan_id']} on {args.control} (state {reply['state']})")


def send_frames(args: argparse.Namespace, frames: Iterable[Any]) -> None:
    """Stream ``frames`` (SimFrame-like) as ``--format`` to ``--stream`` and print the rate."""
    from ..sim.stream import StreamStats, frame_messages, stream

    stats = StreamStats()
    stream(
        frame_messages(frames, args.format, stats=stats),
        args.stream,
        socket_type=args.socket,
        bind=args.bind,
        rate=args.rate or None,
        stats=stats,
    )
    print(f"sent {stats.frames} frames in {stats.seconds:.1f} s ({stats.rate:.0f} frames/s)")
