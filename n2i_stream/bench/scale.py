"""``n2i-stream bench scale``: per-step throughput of FBP + denoising with slab workers.

One time step of ``--angles`` projections of ``--rows`` × ``--size`` pixels is reconstructed
(FBP, ``size``² slices) and denoised (a U-Net of the service's default size, untrained: the
work is the same) in three ways, each over ``--steps`` steps after one warm-up step:

``in-process``
    :func:`~n2i_stream.core.fbp.fbp` then :func:`~n2i_stream.learn.denoise_volume` in this
    process, every core for numba and torch;
``N workers``
    a :class:`~n2i_stream.service.slabs.SlabPool` of N local worker processes (the cores shared
    among them), each step split into N slabs with the network's context as halo, two steps
    in flight (:meth:`~n2i_stream.service.slabs.SlabPool.imap`).

On one machine the workers share its cores, so the figure shows the cost of splitting and
shipping slabs more than a gain; on several nodes (``--spawn none`` and workers started there)
each worker brings its own cores. Timings on a shared machine are noisy: each mode is repeated
and the best kept.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

HELP = "slab workers: FBP + denoising throughput per time step with 1 and 2 workers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=32, help="slices per step (32)")
    parser.add_argument("--size", type=int, default=256, help="detector columns = n (256)")
    parser.add_argument("--angles", type=int, default=256, help="projections per step (256)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per mode (4)")
    parser.add_argument("--workers", default="1,2", help="worker counts to time (1,2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode, best kept (2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _model(directory: Path, context: int) -> str:
    import torch

    from ..learn import Denoiser, NetworkSpec, TrainConfig, build_network, save_checkpoint
    from ..learn.patches import Normalisation

    torch.manual_seed(0)
    spec = NetworkSpec.for_data("unet", context=context)
    denoiser = Denoiser(
        network=build_network(spec).eval(),
        spec=spec,
        normalisation=Normalisation(0.0, 1.0),
        context=context,
        strategy="dynamic",
        geometry={},
        config=TrainConfig(),
    )
    return str(save_checkpoint(denoiser, directory / "bench-scale.model.pt"))


def _in_process(projections: Any, geometry: Any, n: int, model: str, steps: int) -> float:
    import numpy as np

    from ..core.fbp import fbp
    from ..learn import denoise_volume, load_checkpoint

    denoiser = load_checkpoint(model)
    denoise_volume(denoiser, np.asarray(fbp(projections, geometry, n=n)))  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        denoise_volume(denoiser, np.asarray(fbp(projections, geometry, n=n)))
    return time.perf_counter() - t0


def _pooled(
    projections: Any, geometry: Any, n: int, model: str, steps: int, workers: int, context: int
) -> float:
    from ..service.slabs import SlabPool, SlabTask

    task = SlabTask("both", projections, geometry, n=n, model=model, context=context)
    with SlabPool(workers, spawn="process") as pool:
        pool.run(task)  # warm-up: numba compiled or loaded, model loaded in every worker
        t0 = time.perf_counter()
        for _ in pool.imap((task for _ in range(steps)), depth=2):
            pass
        return time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.geometry import ParallelGeometry
    from ..errors import ConfigError

    try:
        counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(
            f"--workers: expected comma-separated integers, got {args.workers!r}"
        ) from None
    if not counts or min(counts) < 1 or min(args.rows, args.size, args.angles, args.steps) < 1:
        raise ConfigError("--workers, --rows, --size, --angles and --steps must be >= 1")
    context = 2
    rng = np.random.default_rng(0)
    geometry = ParallelGeometry.from_degrees(
        np.linspace(0.0, 180.0, args.angles, endpoint=False), rows=args.rows, cols=args.size
    )
    projections = np.cumsum(rng.normal(size=(args.angles, args.rows, args.size)), axis=2)
    projections = (projections / args.size).astype(np.float32)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(Path(tmp), context)
        labels = [(f"{w} worker" + ("s" if w > 1 else ""), w) for w in counts]
        modes: list[tuple[str, int]] = [("in-process", 0), *labels]
        for label, workers in modes:
            best = min(
                _in_process(projections, geometry, args.size, model, args.steps)
                if workers == 0
                else _pooled(projections, geometry, args.size, model, args.steps, workers, context)
                for _ in range(args.repeat)
            )
            results.append(
                {
                    "mode": label,
                    "workers": workers,
                    "seconds_per_step": best / args.steps,
                    "steps_per_s": args.steps / best,
                }
            )
    base = results[0]["steps_per_s"]
    for r in results:
        r["relative"] = r["steps_per_s"] / base
    if args.json:
        print(json.dumps({"cores": cores, "rows": args.rows, "size": args.size,
                          "angles": args.angles, "results": results}, indent=2))  # fmt: skip
        return 0
    print(
        f"FBP + denoising of one time step: {args.angles} angles, {args.rows} × {args.size}² "
        f"voxels, U-Net; {cores} cores (best of {args.repeat} × {args.steps} steps)"
    )
    print(f"{'mode':>12}  {'s/step':>8}  {'steps/s':>8}  {'vs in-process':>13}")
    for r in results:
        print(
            f"{r['mode']:>12}  {r['seconds_per_step']:8.3f}  {r['steps_per_s']:8.3f}  "
            f"{r['relative']:12.2f}×"
        )
    return 0
