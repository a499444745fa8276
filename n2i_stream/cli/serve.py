"""``n2i-stream serve``: the live service next to the detector (protocol: ``service/control.py``).

Binds the control (ROUTER) and results (PUB) sockets, opens the data socket, prints one JSON
line ``{"ready": true, "data": ..., "control": ..., "results": ...}`` with the actual endpoints
(``*`` ports resolved) and serves until ``shutdown`` arrives on the control socket, SIGTERM or
SIGINT: a running scan is then drained (everything received is reconstructed, published and
written; the file closed) before the process exits. ``--scan FILE`` configures a scan at once
(JSON, the ``scan`` of a ``configure`` request); with ``--exit-when-done`` the process ends when
that scan does. ``--dashboard HOST:PORT`` also serves the live web dashboard there (its URL is in
the ready line as ``"dashboard"``).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

HELP = "run the live service: frames in, FBP and denoised time steps out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="tcp://127.0.0.1:5555",
        metavar="ENDPOINT",
        help="data socket endpoint (%(default)s)",
    )
    parser.add_argument(
        "--data-socket", choices=("pull", "sub"), default="pull", help="PUSH detectors → pull"
    )
    parser.add_argument(
        "--data-connect",
        action="store_true",
        help="connect the data socket to the detector instead of binding it",
    )
    parser.add_argument(
        "--control", default="tcp://127.0.0.1:5560", metavar="ENDPOINT", help="(%(default)s)"
    )
    parser.add_argument(
        "--results", default="tcp://127.0.0.1:5561", metavar="ENDPOINT", help="(%(default)s)"
    )
    parser.add_argument(
        "--scan", type=Path, metavar="FILE", help="configure this scan (JSON file) at start"
    )
    parser.add_argument(
        "--exit-when-done", action="store_true", help="end when the --scan scan ends"
    )
    parser.add_argument(
        "--overload",
        choices=("block", "drop_oldest"),
        default="block",
        help="reconstruction behind: back-pressure, or drop the oldest step (%(default)s)",
    )
    parser.add_argument(
        "--queue-steps", type=int, default=4, metavar="N", help="steps queued at most (4)"
    )
    parser.add_argument(
        "--train-threads", type=int, default=1, metavar="N", help="torch threads (1)"
    )
    parser.add_argument(
        "--infer-threads", type=int, default=0, metavar="N", help="0: every core (0)"
    )
    parser.add_argument(
        "--buffer-bytes",
        type=int,
        default=2048 * 2048 * 2,
        metavar="BYTES",
        help="largest frame accepted, bytes (%(default)s)",
    )
    parser.add_argument(
        "--buffers", type=int, default=64, metavar="N", help="frames queued at most (64)"
    )
    parser.add_argument(
        "--angle-attribute",
        metavar="NAME",
        help="ADZMQ ndattr entry carrying the angle (array-1.0), if any",
    )
    parser.add_argument(
        "--dashboard",
        nargs="?",
        const="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="serve the live web dashboard (alone: 127.0.0.1:8080; port 0 picks a free one)",
    )


def run(args: argparse.Namespace) -> int:
    from ..service.runtime import quiet_openmp

    quiet_openmp()  # before any OpenMP pool starts
    import zmq

    from ..errors import ConfigError
    from ..io.zmq_sink import ZmqResultSink, ZmqSinkConfig
    from ..io.zmq_source import ZmqFrameSource, ZmqSourceConfig
    from ..service.control import ControlHandler, ControlServer
    from ..service.pipeline import PipelineOptions
    from ..service.service import N2IService

    dashboard_address = None
    if args.dashboard is not None:
        from ..io.dashboard import parse_address

        dashboard_address = parse_address(args.dashboard)
    scan = None
    if args.scan is not None:
        try:
            scan = json.loads(args.scan.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--scan {args.scan}: cannot read a JSON scan: {exc}") from exc
    options = PipelineOptions(
        overload=args.overload,
        queue_steps=args.queue_steps,
        train_threads=args.train_threads,
        infer_threads=args.infer_threads,
    )
    ctx = zmq.Context()
    shutdown = threading.Event()
    source = ZmqFrameSource(
        ZmqSourceConfig(
            endpoint=args.data,
            socket_type=args.data_socket,
            bind=not args.data_connect,
            buffers=args.buffers,
            buffer_bytes=args.buffer_bytes,
            angle_attribute=args.angle_attribute,
        ),
        context=ctx,
    )
    service = N2IService(source, options=options)
    control = None
    dashboard = None
    try:
        results = ZmqResultSink(ZmqSinkConfig(endpoint=args.results), context=ctx)
        service.add_sink(results)
        if dashboard_address is not None:
            from ..io.dashboard import DashboardConfig, DashboardServer, DashboardSink

            dashboard_sink = DashboardSink()
            service.add_sink(dashboard_sink)
            host, port = dashboard_address
            dashboard = DashboardServer(
                service.status, dashboard_sink, DashboardConfig(host=host, port=port)
            ).start()
        service.start()
        control = ControlServer(
            args.control, ControlHandler(service, on_shutdown=shutdown.set), context=ctx
        )
        control.start()
        service.add_state_listener(lambda state, reason: _announce(state, reason, service))
        # The handlers only ask for a stop; the main thread does the stopping.
        signal.signal(signal.SIGTERM, lambda *_: shutdown.set())
        signal.signal(signal.SIGINT, lambda *_: shutdown.set())
        if scan is not None:
            service.configure(scan)
            if args.exit_when_done:
                _end_with_scan(service, shutdown)
        print(
            json.dumps(
                {
                    "ready": True,
                    "data": source.endpoint,
                    "control": control.endpoint,
                    "results": results.endpoint,
                    **({"dashboard": dashboard.url} if dashboard is not None else {}),
                }
            ),
            flush=True,
        )
        shutdown.wait()
        print("n2i-stream serve: shutting down (draining the scan)", flush=True)
    finally:
        service.close()
        if control is not None:
            control.close()
        if dashboard is not None:
            dashboard.close()
        ctx.term()
    return 1 if service.state == "failed" else 0


def _announce(state: str, reason: str | None, service: object) -> None:
    run = getattr(service, "run", None)
    scan_id = run.scan.scan_id if run is not None else None
    extra = f" ({reason})" if reason else ""
    print(f"n2i-stream serve: scan {scan_id}: {state}{extra}", flush=True)


def _end_with_scan(service: object, shutdown: threading.Event) -> None:
    def wait() -> None:
        service.wait_for({"done", "failed"})  # type: ignore[attr-defined]
        shutdown.set()

    threading.Thread(target=wait, name="n2i-serve-exit", daemon=True).start()
