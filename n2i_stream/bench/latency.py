"""``n2i-stream bench latency``: per-step latency of the live service at a given frame rate.

A simulated detector in another process (so it does not share the service's interpreter)
streams the 16 × 128² simulated scan, 120 frames per time step, at ``--rate`` frames per second
over PUSH→PULL on tcp loopback into the real service
(:class:`~n2i_stream.service.loopback.Loopback`: ingest thread, assembly, FBP worker, denoise
worker, publisher with the PUB socket and, unless ``--no-file``, the HDF5 results file). The
model is trained first by the service itself on the scan's first steps (``--train-minutes``),
or taken from ``--model``; every measured step is then denoised live. The default network
(DnCNN, 4 layers of 12 channels, one context slice above and below) is sized for two CPU
cores; ``--network``, ``--depth``, ``--width``, ``--context`` choose another. A short warm-up
scan precedes each measurement.

Reported per run: the rate reached by the sender (PUSH back-pressure slows it when the service
falls behind), the latency of each step (its last frame received → its denoised volume
published: median, p90, max), the most steps waiting at once (``backlog``) and the service
process's CPU time per step (all its threads; hardly depends on other load). A run *keeps up*
when the sender reached 95 % of the rate, every step was denoised and published, no more than
``MAX_BACKLOG`` steps ever waited, and latency did not grow over the scan (the last quarter's
median within 2 × the first quarter's + 0.25 s). ``--find-max`` searches the highest rate that
keeps up (doubling, then bisecting). On a shared machine other work slows runs at random:
``--repeat N`` measures each rate N times and keeps the best run (the least disturbed).
``--slab-workers N`` runs each step's FBP and denoising on N local slab worker processes (as
``serve`` with ``[slabs] workers = N``); CPU/step then counts the service process only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HELP = "live service latency (last frame → denoised published) at a frame rate"

_SIM = {"width": 128, "rows": 16, "per_step": 120, "supersample": 2}
_K = 4  # training steps
MAX_BACKLOG = 3  # steps waiting at once beyond which a run does not keep up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=600.0, help="frames per second (600)")
    parser.add_argument("--steps", type=int, default=30, help="time steps per run (30)")
    parser.add_argument("--find-max", action="store_true", help="search the highest rate kept")
    parser.add_argument("--repeat", type=int, default=1, help="runs per rate, best kept (1)")
    parser.add_argument("--model", type=Path, help="checkpoint to use (else train one first)")
    parser.add_argument(
        "--train-minutes", type=float, default=0.5, help="training budget without --model (0.5)"
    )
    # A live network for two CPU cores: it denoises a 16 × 128² step in about 0.1 s.
    parser.add_argument("--network", default="dncnn", choices=("unet", "dncnn", "msd"))
    parser.add_argument("--depth", type=int, default=4, help="network depth (4)")
    parser.add_argument("--width", type=int, default=12, help="network width (12)")
    parser.add_argument("--context", type=int, default=1, help="2.5D context slices (1)")
    parser.add_argument("--infer-threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--fbp-threads", type=int, default=0, help="numba threads (0: all)")
    parser.add_argument("--format", default="n2i", choices=("n2i", "array-1.0", "gigafrost"))
    parser.add_argument("--no-file", action="store_true", help="publish only, no HDF5 file")
    parser.add_argument(
        "--slab-workers", type=int, default=0, help="FBP and denoising on N worker processes (0)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from ..service.runtime import quiet_openmp

    quiet_openmp()  # before any OpenMP pool starts
    from ..errors import ConfigError

    if (
        args.rate <= 0
        or args.steps < _K + 2
        or args.train_minutes <= 0
        or args.repeat < 1
        or args.slab_workers < 0
    ):
        raise ConfigError(
            f"expected --rate > 0, --steps >= {_K + 2}, --train-minutes > 0, --repeat >= 1, "
            "--slab-workers >= 0"
        )
    with tempfile.TemporaryDirectory(prefix="n2i-bench-latency-") as tmp:
        bench = LatencyBench(args, Path(tmp))
        try:
            model = args.model or bench.train()
            if args.find_max:
                results = bench.find_max(model, start=args.rate)
            else:
                results = [bench.best(model, args.rate)]
        finally:
            bench.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
    return 0


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'target':>8} {'reached':>8} {'steps/s':>8} {'median':>8} {'p90':>8} {'max':>8} "
        f"{'backlog':>8} {'denoised':>9} {'CPU/step':>9}  keeps up"
    ]
    for r in results:
        lines.append(
            f"{r['rate']:>8.0f} {r['reached_rate']:>8.0f} {r['steps_per_s']:>8.2f} "
            f"{r['latency_median_s']:>7.3f}s {r['latency_p90_s']:>7.3f}s "
            f"{r['latency_max_s']:>7.3f}s "
            f"{r['backlog_max']:>8d} {r['denoised']:>4d}/{r['steps']:<4d} "
            f"{r['cpu_s_per_step']:>8.3f}s  {'yes' if r['keeps_up'] else 'no'}"
        )
    lines.append(
        "frames/s of 16×128 uint16 frames, 120 per step, PUSH→PULL over tcp loopback;\n"
        "latency: a step's last frame received → its denoised volume published;\n"
        "CPU/step: the service process, all threads, per time step (the sender not included)"
    )
    return "\n".join(lines)


class LatencyBench:
    """The sender process, the frames it streams, and runs of the service against it."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from ..sim.scan import SimConfig

        self.args = args
        self.tmp = tmp
        self.sim = SimConfig(**_SIM, steps=args.steps, dynamics_start=_K)
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._sender = ctx.Process(target=_sender, args=(child, self.sim, args.format), daemon=True)
        self._sender.start()
        self._runs = 0
        if self._pipe.recv() != "ready":
            raise RuntimeError("the sender process did not start")
        self.pool = None
        if args.slab_workers:
            from ..service.slabs import SlabPool

            self.pool = SlabPool(args.slab_workers, spawn="process").start()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self._pipe.send(("quit",))
        self._sender.join(30)
        if self._sender.is_alive():
            self._sender.kill()

    def _scan(self, **fields: Any) -> dict[str, Any]:
        from ..sim.stream import scan_config_for

        self._runs += 1
        a = self.args
        output = None if a.no_file else str(self.tmp / f"run{self._runs}.h5")
        fields.setdefault("output", output)
        training = {"depth": a.depth, "width": a.width, "context": a.context}
        return scan_config_for(self.sim, scan_id=f"bench-{self._runs}", train_steps=_K,
                               network=a.network, training=training, **fields)  # fmt: skip

    def _options(self) -> Any:
        from ..service.pipeline import PipelineOptions

        a = self.args
        return PipelineOptions(
            infer_threads=a.infer_threads, fbp_threads=a.fbp_threads, train_threads=2
        )

    def train(self) -> Path:
        """Train a model on the scan's first steps through the service; returns its path."""
        from ..service.loopback import Loopback

        output = self.tmp / "train.h5"
        scan = self._scan(output=str(output), train_minutes=self.args.train_minutes)
        with Loopback(options=self._options(), control=False) as lb:
            lb.service.configure(scan)
            self._pipe.send(("run", lb.data_endpoint, None, None))
            self._pipe.recv()
            state = lb.service.wait_for(
                {"done", "failed"}, timeout=120 + 60 * self.args.train_minutes
            )
            training = lb.service.status()["training"]
        path = output.with_suffix(".model.pt")
        if state != "done" or training["state"] != "done" or not path.exists():
            raise RuntimeError(f"training for the benchmark failed: {training['reason']}")
        return path

    def measure(self, model: Path, rate: float) -> dict[str, Any]:
        """One warm-up scan and one measured scan at ``rate`` frames per second."""
        from ..service.loopback import Loopback

        with Loopback(options=self._options(), control=False, slab_pool=self.pool) as lb:
            service = lb.service
            service.configure(self._scan(model=str(model), output=None))
            warmup = self.sim.n_darks + self.sim.n_flats + 3 * self.sim.per_step
            self._pipe.send(("run", lb.data_endpoint, rate, warmup))
            self._pipe.recv()
            service.stop(timeout=60)

            service.configure(self._scan(model=str(model)))
            backlog = [0]
            done = threading.Event()

            def watch() -> None:  # sample the backlog while the scan streams
                while not done.wait(0.05):
                    backlog.append(service.status()["steps"]["backlog"])

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            cpu = time.process_time()  # every thread of this process: ingest, workers, ZMQ
            self._pipe.send(("run", lb.data_endpoint, rate, None))
            sent = self._pipe.recv()
            state = service.wait_for({"done", "failed"}, timeout=120)
            cpu = time.process_time() - cpu
            done.set()
            watcher.join()
            status = service.status()
            latencies = service.run.latencies() if service.run is not None else []
        summary = _summary(rate, sent, state, status, latencies, max(backlog), self.sim.steps)
        summary["cpu_s_per_step"] = round(cpu / self.sim.steps, 4)
        return summary

    def best(self, model: Path, rate: float) -> dict[str, Any]:
        """The best of ``--repeat`` runs at ``rate``: one that keeps up, with the lowest median."""
        runs = [self.measure(model, rate) for _ in range(self.args.repeat)]
        return min(runs, key=lambda r: (not r["keeps_up"], r["latency_median_s"]))

    def find_max(self, model: Path, *, start: float) -> list[dict[str, Any]]:
        """Results of every rate tried: doubling from ``start`` until a run fails, then
        bisecting (to within 5 %) between the best rate kept and the first one lost."""
        results = []
        good, bad = 0.0, None
        rate = start
        while bad is None or bad - good > 0.05 * bad:
            r = self.best(model, rate)
            results.append(r)
            if r["keeps_up"]:
                good = rate
                rate = rate * 2 if bad is None else (rate + bad) / 2
            else:
                bad = rate
                rate = (good + bad) / 2 if good else rate / 2
            if rate < 10:
                break
        return results


def _summary(
    rate: float,
    sent: dict[str, Any],
    state: str,
    status: dict[str, Any],
    latencies: list[float],
    backlog: int,
    steps: int,
) -> dict[str, Any]:
    lat = sorted(latencies)
    q = max(1, len(latencies) // 4)
    growing = bool(latencies) and (
        statistics.median(latencies[-q:]) > 2 * statistics.median(latencies[:q]) + 0.25
    )
    denoised = status["steps"]["published_denoised"]
    reached = sent["frames"] / sent["seconds"] if sent["seconds"] else 0.0
    return {
        "rate": rate,
        "reached_rate": round(reached, 1),
        "steps_per_s": round(reached / _SIM["per_step"], 3),
        "steps": steps,
        "denoised": denoised,
        "state": state,
        "latency_median_s": round(statistics.median(lat), 4) if lat else float("nan"),
        "latency_p90_s": round(lat[int(0.9 * (len(lat) - 1))], 4) if lat else float("nan"),
        "latency_max_s": round(lat[-1], 4) if lat else float("nan"),
        "backlog_max": backlog,
        "dropped_overload": status["steps"]["dropped_overload"],
        "slab_failures": status["steps"]["slab_failures"],
        "keeps_up": state == "done"
        and denoised == steps
        and reached >= 0.95 * rate
        and backlog <= MAX_BACKLOG
        and not growing,
    }


def _sender(pipe: Any, sim: Any, fmt: str) -> None:
    """The detector process: renders the scan's messages once, sends them on request."""
    from ..sim.scan import DynamicScan
    from ..sim.stream import StreamStats, frame_messages, stream

    messages = list(frame_messages(DynamicScan(sim).frames(), fmt))
    pipe.send("ready")
    while True:
        command = pipe.recv()
        if command[0] == "quit":
            return
        _, endpoint, rate, count = command
        stats = StreamStats()
        stream(messages[:count], endpoint, rate=rate, stats=stats)
        pipe.send({"frames": stats.frames, "seconds": stats.seconds})
