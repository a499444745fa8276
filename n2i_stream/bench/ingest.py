"""``n2i-stream bench ingest``: frame throughput of our ingest against a bare pyzmq loop.

A sender in another process (so sender and receiver use separate cores, as in the field) pushes
uint16 frames over PUSH→PULL on tcp loopback. The receiver is, in turn:

``bare``
    ``sock.recv_multipart(copy=False)`` in a loop: the plain pyzmq receiver, doing nothing.
``source``
    :class:`~n2i_stream.io.zmq_source.ZmqFrameSource` (``payload="zero_copy"``, the default) →
    consumer: header parsing and validation, the bounded hand-off between threads; the consumer
    releases each frame.
``pool``
    the same with ``payload="pool"``: each payload copied into a preallocated buffer.
``assembly``
    as ``source``, and the consumer files each frame with
    :class:`~n2i_stream.service.assembly.Assembler`: the copy into the preallocated time-step
    buffer. This is the service's default ingest path.
``held``
    as ``assembly`` with ``hold_frames=True``: steps keep the received frames, nothing is copied.

Rates run from the first frame the consumer sees to the last. Modes are interleaved and repeated
and the best run of each kept: on a shared machine the best is the least disturbed. The
receiving process's CPU time per frame (all its threads, ZMQ's I/O thread included) is reported
too: unlike wall-clock rates it hardly depends on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

HELP = "ingest throughput: ZMQ frame source (+ assembly) vs a bare pyzmq receive loop"

MODES = ("bare", "source", "pool", "assembly", "held")
_LABELS = {
    "bare": "bare pyzmq",
    "source": "source zero-copy",
    "pool": "source pool",
    "assembly": "+ assembly (copy)",
    "held": "+ assembly (held)",
}
_TIMEOUT = 60.0  # seconds without a frame before the benchmark gives up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames per run (default: about 2.5 GB of frames, at least 200)",
    )
    parser.add_argument(
        "--sizes",
        default="2048,512",
        help="square frame sizes in pixels, comma-separated (default 2048,512)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved runs per mode (best kept)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"--sizes: expected comma-separated integers, got {args.sizes!r}"
        ) from None
    if (
        not sizes
        or min(sizes) < 2
        or args.repeat < 1
        or (args.frames is not None and args.frames < 2)
    ):
        raise ConfigError("expected --sizes >= 2, --repeat >= 1 and --frames >= 2")
    results = measure(sizes, frames=args.frames, repeat=args.repeat)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
    return 0


def measure(
    sizes: list[int], *, frames: int | None = None, repeat: int = 3
) -> list[dict[str, Any]]:
    """Best frames/s and GB/s per size and mode, with the ratio to bare."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sender = ctx.Process(target=_sender, args=(child,), daemon=True)
    sender.start()
    results = []
    try:
        for size in sizes:
            nbytes = size * size * 2
            n = frames or max(200, int(2.5e9 / nbytes))
            fps = max(1, min(50, n // 8, int(128e6 // nbytes)))  # per time step, for assembly
            n = max(fps, n - n % fps)
            best = dict.fromkeys(MODES, 0.0)
            cpu = {mode: math.inf for mode in MODES}
            for _ in range(repeat):
                for mode in MODES:
                    rate, cpu_s = _one_run(parent, mode, size, n, fps)
                    best[mode] = max(best[mode], rate)
                    cpu[mode] = min(cpu[mode], cpu_s)
            for mode in MODES:
                results.append(
                    {
                        "rows": size,
                        "cols": size,
                        "mode": mode,
                        "frames": n,
                        "frames_per_s": round(best[mode], 1),
                        "gb_per_s": round(best[mode] * nbytes / 1e9, 3),
                        "vs_bare": round(best[mode] / best["bare"], 3),
                        "cpu_us_per_frame": round(cpu[mode] * 1e6, 1),
                    }
                )
    finally:
        parent.send(("quit",))
        sender.join(timeout=30)
        if sender.is_alive():
            sender.kill()
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'frame':<11} {'receiver':<18} {'frames':>7} {'frames/s':>10} {'GB/s':>7} {'vs bare':>8}"
        f" {'CPU µs/frame':>13}"
    ]
    for r in results:
        lines.append(
            f"{r['rows']}×{r['cols']:<{10 - len(str(r['rows']))}} {_LABELS[r['mode']]:<18} "
            f"{r['frames']:>7} {r['frames_per_s']:>10.1f} {r['gb_per_s']:>7.2f} "
            f"{100 * r['vs_bare']:>7.0f}% {r['cpu_us_per_frame']:>13.0f}"
        )
    lines.append(
        "uint16 frames, PUSH→PULL over tcp loopback, sender in another process; best run kept;\n"
        "CPU µs/frame: the receiving process, all threads (ZMQ's I/O thread too), lowest run"
    )
    return "\n".join(lines)


def _one_run(pipe: Any, mode: str, size: int, n: int, fps: int) -> tuple[float, float]:
    """(frames/s, receiver CPU seconds per frame) of one run."""
    import zmq

    from ..errors import ServiceError
    from ..io.zmq_source import ZmqFrameSource, ZmqSourceConfig
    from ..service.assembly import Assembler, AssemblyConfig

    ctx = zmq.Context()
    try:
        if mode == "bare":
            sock = ctx.socket(zmq.PULL)
            try:
                sock.linger = 0
                sock.rcvtimeo = int(_TIMEOUT * 1000)
                port = sock.bind_to_random_port("tcp://127.0.0.1")
                pipe.send(("run", f"tcp://127.0.0.1:{port}", n, size))

                def receive() -> None:
                    sock.recv_multipart(copy=False)

                return _time_frames(receive, n, pipe)
            except zmq.Again:
                raise ServiceError(f"bare receiver: no frame for {_TIMEOUT} s") from None
            finally:
                sock.close()
        scan = None
        if mode in ("assembly", "held"):
            scan = AssemblyConfig(
                rows=size,
                cols=size,
                frames_per_step=fps,
                steps=n // fps,
                angle_step=0.1,
                hold_frames=mode == "held",
            )
        config = ZmqSourceConfig(
            endpoint="tcp://127.0.0.1:*",
            bind=True,
            buffers=16 if mode != "held" else max(16, scan.frames_held(pipeline_steps=1)),
            buffer_bytes=size * size * 2,
            payload="pool" if mode == "pool" else "zero_copy",
        )
        with ZmqFrameSource(config, context=ctx) as source:
            # Everything is allocated before the sender starts: ZMQ's I/O thread would otherwise
            # queue frames meanwhile, and draining that backlog would flatter the rate.
            consume = _consumer(source, None if scan is None else Assembler(scan))
            pipe.send(("run", source.endpoint, n, size))
            result = _time_frames(consume, n, pipe)
            counters = source.counters()
            if counters.bad or counters.dropped_overload:
                raise ServiceError(f"ingest benchmark lost frames: {counters}")
            return result
    finally:
        ctx.term()


def _consumer(source: Any, assembler: Any) -> Callable[[], None]:
    from ..errors import ServiceError

    def consume() -> None:
        frame = source.recv(timeout=_TIMEOUT)
        if frame is None:
            raise ServiceError(f"ingest benchmark: no frame for {_TIMEOUT} s")
        if assembler is None:
            frame.release()
        else:
            for step in assembler.add(frame):  # add() owns the frame from here on
                step.release()

    return consume


def _time_frames(receive: Callable[[], None], n: int, pipe: Any) -> tuple[float, float]:
    receive()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(n - 1):
        receive()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    reply = pipe.recv()
    if reply[0] != "done":
        from ..errors import ServiceError

        raise ServiceError(f"ingest benchmark sender failed: {reply}")
    return ((n - 1) / elapsed if elapsed > 0 else math.inf), cpu / (n - 1)


def _sender(pipe: Any) -> None:
    """The sender process: on ("run", endpoint, n, size) push n native frames, reply "done"."""
    import numpy as np
    import zmq

    from ..wire import encode_frame_header

    ctx = zmq.Context()
    frames: dict[int, list[np.ndarray]] = {}
    try:
        while True:
            command = pipe.recv()
            if command[0] != "run":
                break
            _, endpoint, n, size = command
            if size not in frames:
                rng = np.random.default_rng(size)
                frames[size] = [
                    rng.integers(0, 4096, (size, size), dtype=np.uint16) for _ in range(4)
                ]
            pixels = frames[size]
            headers = [
                encode_frame_header(
                    "n2i", frame_id=i, shape=(size, size), dtype=np.uint16, kind="projection"
                )
                for i in range(n)
            ]
            sock = ctx.socket(zmq.PUSH)
            try:
                sock.connect(endpoint)
                for i in range(n):
                    sock.send(headers[i], zmq.SNDMORE)
                    sock.send(pixels[i % 4], copy=False)
            finally:
                sock.close(linger=-1)
            pipe.send(("done",))
    except Exception as exc:  # report to the parent instead of dying silently
        pipe.send(("failed", repr(exc)))
    finally:
        ctx.term()
