"""``n2i-stream demo``: the live service and a simulated detector on loopback, end to end.

A foam with a growing water bubble rotates in front of a simulated camera that streams frames
over ZMQ at ``--rate`` frames per second into the real service (the same one ``n2i-stream
serve`` runs). The service publishes each time step's FBP as soon as the step is complete,
trains Noise2Inverse in the background once the first steps (before the bubble appears) are in,
then denoises the steps that waited and every new one as it arrives. Progress is printed while
it runs, and a live web dashboard shows it (``--dashboard``, a free port on localhost by default);
the results file (``results.h5``, SWMR), the trained model and a PNG of the last time step
(FBP | denoised | ground truth) land in ``--out``. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HELP = "run the simulated beamline end to end: live service + simulated detector"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's scan, stream and training budget."""

    out: Path = Path("out")  # output folder
    seed: int = 0  # simulation seed
    width: int = 128  # detector columns = reconstruction size
    rows: int = 16  # detector rows (slices)
    per_step: int = 120  # frames per time step
    steps: int = 24  # time steps
    train_steps: int = 4  # steps before the bubble appears: the training window
    rate: float = 60.0  # frames per second (0: as fast as possible)
    train_minutes: float = 0.5  # training budget
    format: str = "n2i"  # wire format of the simulated detector
    progress_every: float = 2.0  # seconds between progress lines
    dashboard: str | None = "127.0.0.1:0"  # live web page HOST:PORT (port 0: a free one); None


@dataclass(frozen=True)
class DemoResult:
    results: Path
    png: Path
    model: Path | None
    status: dict
    psnr_fbp: float
    psnr_denoised: float | None
    messages: int  # result messages a subscriber received on the PUB socket


def run_demo(config: DemoConfig, *, say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo; ``say`` receives the progress lines."""
    import h5py
    import numpy as np

    from ..core.metrics import psnr
    from ..errors import ServiceError
    from ..service.loopback import Loopback
    from ..service.pipeline import PipelineOptions
    from ..sim.scan import DynamicScan, SimConfig, describe
    from ..sim.stream import frame_messages, scan_config_for, stream

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    sim = SimConfig(
        width=config.width,
        rows=config.rows,
        per_step=config.per_step,
        steps=config.steps,
        dynamics_start=config.train_steps,
        seed=config.seed,
    )
    scan = DynamicScan(sim)
    say(f"simulating {describe(sim)}")
    messages = list(frame_messages(scan.frames(), config.format))  # rendered before streaming
    results = out / "results.h5"
    scan_config = scan_config_for(
        sim,
        scan_id="demo",
        theta=scan.theta,
        train_steps=config.train_steps,
        train_minutes=config.train_minutes,
        output=str(results),
        overwrite=True,
    )
    options = PipelineOptions(train_threads=1, infer_threads=1)
    page = _Dashboard(config.dashboard)
    with Loopback(options=options, control=False, sinks=page.sinks) as lb, page:
        subscriber = lb.subscribe()
        service = lb.service
        page.start(service.status)
        if page.url:
            say(f"dashboard: {page.url} (live while the scan runs)")
        service.configure(scan_config)
        say(
            f"service: data {lb.data_endpoint}, results {lb.results_endpoint}; streaming "
            f"{len(messages)} frames as {config.format} at "
            f"{f'{config.rate:g} frames/s' if config.rate else 'full speed'}"
        )
        sender = threading.Thread(
            target=stream,
            args=(messages, lb.data_endpoint),
            kwargs={"rate": config.rate or None, "context": lb.context},
            name="n2i-demo-detector",
            daemon=True,
        )
        started = time.monotonic()
        sender.start()
        while True:
            try:
                state = service.wait_for({"done", "failed"}, timeout=config.progress_every)
                break
            except ServiceError:  # not done yet: time for a progress line
                say(_progress_line(service.status(), time.monotonic() - started))
        sender.join()
        status = service.status()
        say(_progress_line(status, time.monotonic() - started))
        sent = lb.results_sink.sent  # the last messages may still be on their way
        subscriber.wait_for(lambda results: len(results) >= sent, timeout=30)
        received = len(subscriber.results)
    if state != "done":
        raise ServiceError(f"the demo scan ended in state {state}: {status['reason']}")
    last = sim.steps - 1
    truth = scan.ground_truth(last)
    with h5py.File(results, "r") as f:
        position = list(f["/reconstruction/time_step"][()]).index(last)
        fbp = f["/reconstruction/fbp"][position]
        denoised = f["/reconstruction/denoised"][position]
    z = sim.rows // 2
    has_denoised = not bool(np.isnan(denoised).any())  # NaN: never denoised (no model)
    psnr_fbp = psnr(fbp, truth)
    psnr_den = psnr(denoised, truth) if has_denoised else None
    png = out / "last_step.png"
    panels = {"fbp": fbp[z], "denoised": denoised[z], "truth": truth[z]}
    _save_png(png, panels if has_denoised else {"fbp": fbp[z], "truth": truth[z]})
    model = status["training"]["model"]
    say(
        f"time step {last}: PSNR against the ground truth: FBP {psnr_fbp:.2f} dB"
        + (f", Noise2Inverse {psnr_den:.2f} dB" if psnr_den is not None else "")
    )
    say(f"wrote {results} (FBP and denoised, every step), {png} "
        f"({' | '.join(panels) if has_denoised else 'FBP | truth'}, slice {z} of step {last})"
        + (f", {model}" if model else ""))  # fmt: skip
    return DemoResult(results, png, Path(model) if model else None, status, psnr_fbp, psnr_den,
                      received)  # fmt: skip


class _Dashboard:
    """The web dashboard next to the demo's service, or nothing when ``address`` is None."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.sinks: list = []
        self.url: str | None = None
        self._server = None
        if address is not None:
            from ..io.dashboard import DashboardSink

            self.sinks.append(DashboardSink())

    def start(self, status: Callable[[], dict]) -> None:
        if self.address is None:
            return
        from ..io.dashboard import DashboardConfig, DashboardServer, parse_address

        host, port = parse_address(self.address)
        self._server = DashboardServer(status, self.sinks[0], DashboardConfig(host=host, port=port))
        self._server.start()
        self.url = self._server.url

    def __enter__(self) -> _Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()


def _progress_line(status: dict, elapsed: float) -> str:
    steps, training, latency = status["steps"], status["training"], status["latency_s"]
    line = (
        f"[{elapsed:5.1f} s] {status['state']:<9} steps {steps['received']:>3}/{steps['total']} "
        f"received, FBP {steps['published_fbp']:>3}, denoised {steps['published_denoised']:>3}"
        f", backlog {steps['backlog']:>2}"
    )
    if training["state"] == "running":
        total = f"/{training['iterations']}" if training["iterations"] else ""
        loss = training["loss"]
        eta = training["eta_s"]
        line += f" | training: iteration {training['iteration']}{total}"
        line += f", loss {loss:.4g}" if loss is not None else ""
        line += f", ETA {eta:.0f} s" if eta is not None else ""
    else:
        line += f" | training {training['state']}"
    if latency["last"] is not None:
        line += f" | latency {latency['last']:.2f} s"
    if status["reason"]:
        line += f" ({status['reason']})"
    return line


def _save_png(path: Path, panels: dict[str, object]) -> None:
    import numpy as np
    from PIL import Image

    images = [np.asarray(p, dtype=np.float32) for p in panels.values()]
    lo, hi = np.percentile(images[-1], [1, 99.5])  # the truth sets the grey levels of all
    scaled = [np.clip((im - lo) / max(hi - lo, 1e-12), 0, 1) for im in images]
    gap = np.ones((scaled[0].shape[0], 4), np.float32)
    row = np.concatenate([x for im in scaled for x in (im, gap)][:-1], axis=1)
    Image.fromarray((row * 255).astype(np.uint8)).resize(
        (row.shape[1] * 3, row.shape[0] * 3), Image.NEAREST
    ).save(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--out", type=Path, default=d.out, help="output folder (%(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="simulation seed (%(default)s)")
    parser.add_argument("--steps", type=int, default=d.steps, help="time steps (%(default)s)")
    parser.add_argument(
        "--rate", type=float, default=d.rate, help="frames per second (%(default)s; 0: at once)"
    )
    parser.add_argument(
        "--train-minutes", type=float, default=d.train_minutes, help="(%(default)s)"
    )
    parser.add_argument("--width", type=int, default=d.width, help="columns (%(default)s)")
    parser.add_argument("--rows", type=int, default=d.rows, help="rows (%(default)s)")
    parser.add_argument(
        "--per-step", type=int, default=d.per_step, help="frames per step (%(default)s)"
    )
    parser.add_argument(
        "--format", choices=("n2i", "array-1.0", "gigafrost"), default=d.format, help="(n2i)"
    )
    parser.add_argument(
        "--dashboard",
        default=d.dashboard,
        metavar="HOST:PORT",
        help="live web dashboard address (%(default)s: a free port on localhost)",
    )
    parser.add_argument("--no-dashboard", action="store_true", help="no web dashboard")


def run(args: argparse.Namespace) -> int:
    from ..service.runtime import quiet_openmp

    quiet_openmp()  # before any OpenMP pool starts
    run_demo(
        DemoConfig(
            out=args.out,
            seed=args.seed,
            steps=args.steps,
            rate=args.rate,
            train_minutes=args.train_minutes,
            width=args.width,
            rows=args.rows,
            per_step=args.per_step,
            format=args.format,
            dashboard=None if args.no_dashboard else args.dashboard,
        )
    )
    return 0
