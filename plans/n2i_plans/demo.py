"""``python -m n2i_plans.demo``: the whole simulated experiment, driven by the Bluesky plan.

Starts ``n2i-stream serve`` as a separate process on free loopback ports (or uses the running
service named by ``--control`` and ``--data``), creates the simulated rotation stage and camera
and the service device, runs :func:`~n2i_plans.plans.dynamic_tomo_scan` with a RunEngine
(progress bars while the rotation runs and the network trains), then prints what the run
recorded and which time steps the service published, FBP and denoised, and shuts down the
service it started.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import zmq

from n2i_stream.errors import N2IError
from n2i_stream.sim import SimConfig
from n2i_stream.wire import FORMATS, decode_recon

from .client import ControlClient

__all__ = ["main"]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m n2i_plans.demo", description=__doc__.split("\n")[0])
    p.add_argument("--control", help="control address of a running service (else one is started)")
    p.add_argument("--data", help="its data address (the camera connects there); with --control")
    p.add_argument("--results", help="its results address (to list what it publishes)")
    p.add_argument("--steps", type=int, default=8, help="time steps (8)")
    p.add_argument("--frames-per-step", type=int, default=64, help="projections per step (64)")
    p.add_argument("--train-steps", type=int, default=4, help="training window K (4)")
    p.add_argument("--width", type=int, default=64, help="detector columns (64)")
    p.add_argument("--rows", type=int, default=8, help="detector rows (8)")
    p.add_argument("--frame-rate", type=float, default=400.0, help="camera frames/s (400)")
    p.add_argument("--format", choices=FORMATS, default="array-1.0", help="wire format")
    p.add_argument("--network", choices=("unet", "msd", "dncnn"), default="unet")
    p.add_argument("--train-iterations", type=int, default=60, help="training budget (60)")
    p.add_argument("--train-minutes", type=float, default=2.0, help="training time budget (2)")
    p.add_argument("--output", help="results HDF5 file the service writes")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the scan")
    args = p.parse_args(argv)
    if (args.control is None) != (args.data is None):
        p.error("--control and --data go together (a running service and its data socket)")
    return args


def _start_service() -> tuple[subprocess.Popen, dict[str, str]]:
    """``n2i-stream serve`` on free loopback ports; its ready line's endpoints."""
    command = [sys.executable, "-m", "n2i_stream", "serve"]
    for socket in ("data", "control", "results"):
        command += [f"--{socket}", "tcp://127.0.0.1:*"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            ready = json.loads(line)
            if ready.get("ready"):
                return process, ready
    process.wait()
    raise N2IError(f"n2i-stream serve ended (exit {process.returncode}) before it was ready")


def _published(sub: zmq.Socket) -> dict[str, set[int]]:
    """Time steps per kind among the result messages waiting on ``sub``."""
    steps: dict[str, set[int]] = {"fbp": set(), "denoised": set()}
    while sub.poll(0):
        header, _ = decode_recon(sub.recv_multipart(copy=False))
        steps.setdefault(header.kind, set()).add(header.time_step)
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit status 0 when the service published every step denoised."""
    args = _arguments(argv)
    # Bluesky and ophyd-async are imported here: the module's help works without them.
    from bluesky import RunEngine
    from bluesky.utils import ProgressBarManager
    from ophyd_async.core import init_devices

    from .device import N2IStream
    from .plans import dynamic_tomo_scan
    from .sim_devices import SimRotationStage, SimTomoCamera

    process = None
    endpoints = {"control": args.control, "data": args.data, "results": args.results}
    if args.control is None:
        print("starting n2i-stream serve ...", flush=True)
        process, endpoints = _start_service()
        print(f"service ready: {json.dumps(endpoints)}", flush=True)
    context = zmq.Context()
    sub = None
    if endpoints.get("results"):
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoints["results"])
    sim = SimConfig(
        width=args.width,
        rows=args.rows,
        steps=args.steps,
        per_step=args.frames_per_step,
        dynamics_start=args.train_steps,
        supersample=2,
    )
    RE = RunEngine({})
    RE.waiting_hook = ProgressBarManager()
    documents: list[tuple[str, dict[str, Any]]] = []
    camera = n2i = None
    try:
        with init_devices():
            stage = SimRotationStage()
            camera = SimTomoCamera(
                stage,
                endpoint=endpoints["data"],
                bind=False,
                frame_rate=args.frame_rate,
                sim=sim,
                wire_format=args.format,
            )
            n2i = N2IStream(endpoints["control"])
        started = time.monotonic()
        RE(
            dynamic_tomo_scan(
                camera,
                stage,
                n2i,
                time_steps=args.steps,
                frames_per_step=args.frames_per_step,
                train_steps=args.train_steps,
                darks=10,
                flats=10,
                center_offset=0.0,
                network=args.network,
                train_iterations=args.train_iterations,
                train_minutes=args.train_minutes,
                output=args.output,
                wait_for_training=True,
                complete_timeout=args.timeout,
            ),
            lambda name, doc: documents.append((name, doc)),
        )
        elapsed = time.monotonic() - started
        start = documents[0][1]
        event = next(doc for name, doc in documents if name == "event")["data"]
        print(f"\nrun {start['uid']} ({elapsed:.1f} s), scan {start['n2i']['scan_id']}")
        angles = start["n2i"]["angles"]
        print(
            f"  angles: {angles['count']} projections, {angles['angle_step']:.4f} deg/frame, "
            f"{angles['step_span']:.4f} deg/step (interlace shift {angles['interlace_shift']:.4f})"
        )
        for key in (
            "n2i-state",
            "n2i-frames_received",
            "n2i-steps_fbp",
            "n2i-steps_denoised",
            "n2i-training-iteration",
            "n2i-training-loss",
            "n2i-latency_median",
            "camera-frames_sent",
            "stage-position",
        ):
            print(f"  {key:24s} {event[key]}")
        if sub is not None:
            published = _published(sub)
            for kind, steps in published.items():
                print(f"  published {kind:8s} steps {sorted(steps)}")
        return 0 if event["n2i-steps_denoised"] == args.steps else 1
    finally:
        if n2i is not None:
            n2i.close()
        if camera is not None:
            camera.close()
        if sub is not None:
            sub.close()
        if process is not None:
            with ControlClient(endpoints["control"], context=context) as client:
                client.request("shutdown")
            process.wait(timeout=60)
            if process.stdout is not None:
                process.stdout.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main())
