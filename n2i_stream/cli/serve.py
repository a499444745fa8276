"""``n2i-stream serve``: the live service next to the detector (protocol: ``service/control.py``).

Binds the control (ROUTER) and results (PUB) sockets, opens the data socket, prints one JSON
line ``{"ready": true, "data": ..., "control": ..., "results": ...}`` with the actual endpoints
(``*`` ports resolved) and serves until ``shutdown`` arrives on the control socket, SIGTERM or
SIGINT: a running scan is then drained (everything received is reconstructed, published and
written; the file closed) before the process exits.

``--config FILE`` reads the service settings (TOML, see ``n2i-stream config``): sockets, pipeline,
logging, metrics, CURVE, the scan journal (a scan a crash interrupted is resumed) and the model
registry. The socket and pipeline flags below override the file; ``--set SECTION.KEY=VALUE``
overrides both. ``--scan FILE`` configures a scan at once (JSON, the ``scan`` of a ``configure``
request, with the settings' scan defaults applied); with ``--exit-when-done`` the process ends
when that scan does. ``--dashboard HOST:PORT`` also serves the live web dashboard there (its URL
is in the ready line as ``"dashboard"``). ``--documents ENDPOINT`` subscribes to a Bluesky
document proxy (``service/documents.py``): start documents carrying ``n2i`` metadata configure
a scan, and the stop document of a failed or aborted run aborts it.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

HELP = "run the live service: frames in, FBP and denoised time steps out"

#: serve flag (argparse dest) -> the setting it overrides
FLAG_SETTINGS = {
    "data": "data.endpoint",
    "data_socket": "data.socket_type",
    "buffers": "data.buffers",
    "buffer_bytes": "data.buffer_bytes",
    "angle_attribute": "data.angle_attribute",
    "control": "control.endpoint",
    "results": "results.endpoint",
    "overload": "pipeline.overload",
    "queue_steps": "pipeline.queue_steps",
    "train_threads": "devices.train_threads",
    "infer_threads": "devices.infer_threads",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import add_settings_arguments

    add_settings_arguments(parser)
    # Defaults are None so that only the flags given override the settings; the defaults
    # shown are the settings' own.
    parser.add_argument(
        "--data", metavar="ENDPOINT", help="data socket endpoint (tcp://127.0.0.1:5555)"
    )
    parser.add_argument(
        "--data-socket", choices=("pull", "sub"), help="PUSH detectors → pull (pull)"
    )
    parser.add_argument(
        "--data-connect",
        action="store_true",
        help="connect the data socket to the detector instead of binding it",
    )
    parser.add_argument("--control", metavar="ENDPOINT", help="(tcp://127.0.0.1:5560)")
    parser.add_argument("--results", metavar="ENDPOINT", help="(tcp://127.0.0.1:5561)")
    parser.add_argument(
        "--scan", type=Path, metavar="FILE", help="configure this scan (JSON file) at start"
    )
    parser.add_argument(
        "--exit-when-done", action="store_true", help="end when the --scan scan ends"
    )
    parser.add_argument(
        "--overload",
        choices=("block", "drop_oldest"),
        help="reconstruction behind: back-pressure, or drop the oldest step (block)",
    )
    parser.add_argument("--queue-steps", type=int, metavar="N", help="steps queued at most (4)")
    parser.add_argument("--train-threads", type=int, metavar="N", help="torch threads (1)")
    parser.add_argument("--infer-threads", type=int, metavar="N", help="0: every core (0)")
    parser.add_argument(
        "--buffer-bytes",
        type=int,
        metavar="BYTES",
        help=f"largest frame accepted, bytes ({2048 * 2048 * 2})",
    )
    parser.add_argument("--buffers", type=int, metavar="N", help="frames queued at most (64)")
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
    parser.add_argument(
        "--documents",
        metavar="ENDPOINT",
        help="Bluesky document proxy to subscribe to (e.g. tcp://host:5578): start documents "
        "with n2i metadata configure scans",
    )


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings (``{"section.key": value}``) the serve flags actually given override."""
    extra = {
        key: getattr(args, dest)
        for dest, key in FLAG_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }
    if getattr(args, "data_connect", False):
        extra["data.bind"] = False
    if getattr(args, "dashboard", None) is not None:
        from ..io.dashboard import parse_address

        host, port = parse_address(args.dashboard)
        extra.update({"dashboard.enabled": True, "dashboard.host": host, "dashboard.port": port})
    return extra


class DocumentHandler:
    """Runs announced by start documents become scans of ``service`` (listener callbacks)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def on_start(self, start: Any) -> None:
        self.service.configure(start.scan)

    def on_stop(self, stop: Any) -> None:
        # A successful run's scan ends by itself once its last frames are in (they may still
        # be on the data socket when the stop document comes); a failed one ends now.
        if stop.exit_status == "success":
            return
        run = getattr(self.service, "run", None)
        if run is not None and run.scan.scan_id == stop.scan_id:
            self.service.abort(wait=False)


def document_listener(endpoint: str, service: Any, settings: Any, context: Any) -> Any:
    """A (not yet started) DocumentListener configuring ``service`` with ``settings``' scan
    defaults."""
    from ..service.documents import DocumentListener, DocumentListenerConfig
    from ..service.scan_config import ScanConfig

    return DocumentListener(
        DocumentListenerConfig(endpoint=endpoint),
        DocumentHandler(service),
        scan_factory=lambda m: ScanConfig.from_mapping(settings.scan(m), source="start document"),
        context=context,
    )


def run(args: argparse.Namespace) -> int:
    from ..service.runtime import quiet_openmp

    quiet_openmp()  # before any OpenMP pool starts
    import zmq

    from ..errors import ConfigError
    from ..io.zmq_sink import ZmqResultSink
    from ..io.zmq_source import ZmqFrameSource
    from ..service.control import ControlHandler, ControlServer
    from ..service.operations import Operations
    from ..service.service import N2IService
    from .config import settings_from_args

    settings = settings_from_args(args, flag_overrides(args))
    scan = None
    if args.scan is not None:
        try:
            scan = json.loads(args.scan.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--scan {args.scan}: cannot read a JSON scan: {exc}") from exc
        if not isinstance(scan, dict):
            raise ConfigError(f"--scan {args.scan}: expected a JSON object, got {type(scan)}")
        scan = settings.scan(scan)
    ops = Operations(settings)
    ctx = zmq.Context()
    shutdown = threading.Event()
    control = None
    dashboard = None
    documents = None
    service = None
    pool = None
    try:
        if settings.slabs.workers:
            from ..service.slabs import SlabPool

            s = settings.slabs
            pool = SlabPool(
                s.workers,
                tasks=s.tasks,
                results=s.results,
                spawn="process" if s.spawn else "none",
                device=settings.devices.device,
            ).start()
        source = ZmqFrameSource(settings.data, context=ops.context("data", ctx))
        service = N2IService(
            source, options=settings.pipeline_options(), journal=ops.journal, slab_pool=pool
        )
        results = ZmqResultSink(settings.results, context=ops.context("results", ctx))
        service.add_sink(results)
        if settings.dashboard.enabled:
            from ..io.dashboard import DashboardServer, DashboardSink

            dashboard_sink = DashboardSink()
            service.add_sink(dashboard_sink)
            dashboard = DashboardServer(service.status, dashboard_sink, settings.dashboard)
            dashboard.start()
        ops.attach(service)
        service.start()
        control = ControlServer(
            settings.control.endpoint,
            ControlHandler(service, on_shutdown=shutdown.set, scan_defaults=settings.scan),
            context=ops.context("control", ctx),
        )
        control.start()
        ops.start()
        service.add_state_listener(lambda state, reason: _announce(state, reason, service))
        # The handlers only ask for a stop; the main thread does the stopping.
        signal.signal(signal.SIGTERM, lambda *_: shutdown.set())
        signal.signal(signal.SIGINT, lambda *_: shutdown.set())
        ops.resume(service)
        if scan is not None:
            service.configure(scan)
            if args.exit_when_done:
                _end_with_scan(service, shutdown)
        if args.documents is not None:
            documents = document_listener(args.documents, service, settings, ctx)
            documents.start()
        print(
            json.dumps(
                {
                    "ready": True,
                    "data": source.endpoint,
                    "control": control.endpoint,
                    "results": results.endpoint,
                    **({"dashboard": dashboard.url} if dashboard is not None else {}),
                    **({"documents": documents.endpoint} if documents is not None else {}),
                    **({"slab_workers": pool.workers} if pool is not None else {}),
                }
            ),
            flush=True,
        )
        shutdown.wait()
        print("n2i-stream serve: shutting down (draining the scan)", flush=True)
    finally:
        if documents is not None:
            documents.close()  # no new scans while draining
        if service is not None:
            service.close()
        if pool is not None:
            pool.close()
        if control is not None:
            control.close()
        if dashboard is not None:
            dashboard.close()
        ops.close()
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
