"""Data-parallel Noise2Inverse training over several processes or nodes (``torch.distributed``).

Launched by ``torchrun``: one process per GPU (NCCL) or per group of CPU cores (gloo)::

    torchrun --standalone --nproc-per-node 4 -m n2i_stream.learn.distributed \\
        --pairs pairs.npz --iterations 2000 --batch 32 --out model.pt

Every process holds the same training pairs and draws the same global batch of crops from
the same seeded sampler (cheap next to the network), then trains on its own contiguous share
of it; :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients, so ``W``
processes take the steps one process takes with the whole batch, up to floating-point
summation order (Li et al., "PyTorch Distributed", VLDB 13, 2020) — except for batch
normalisation (DnCNN) on CPUs, where each process normalises over its own share (GPUs use
SyncBatchNorm). Rank 0 decides the schedule
(time budget, learning-rate decay) and broadcasts it, so every replica stays identical; the
reported loss is the mean over all processes. Rank 0 writes the checkpoint.

The pairs file (:func:`save_pairs`) is a NumPy ``.npz`` with ``inputs`` and ``targets``
``(pairs, slices, H, W)`` float32 and a JSON ``meta`` (strategy, geometry summary), e.g.
exported from a scan's first time steps with :func:`n2i_stream.learn.split_pairs`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, DataError, TrainingError
from .config import TrainConfig
from .device import threads, to_torch
from .model import Denoiser
from .networks import NetworkSpec, build_network
from .patches import CropSampler, Normalisation
from .train import Progress, ProgressCallback, _use_channels_last

__all__ = [
    "fit_distributed",
    "init_distributed",
    "load_pairs",
    "main",
    "save_pairs",
    "synthetic_pairs",
]


def init_distributed(backend: str = "auto") -> torch.device:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...)
    and return this process's device: ``cuda:LOCAL_RANK`` with NCCL when CUDA is there
    (``auto``), else the CPU with gloo."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("not started by torchrun: RANK and WORLD_SIZE are not set")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"backend: expected 'auto', 'nccl' or 'gloo', got {backend!r}")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return device


def _as_volume(array: Any, device: torch.device, channels: int) -> torch.Tensor:
    t = to_torch(array, device)
    if t.ndim == 3 and channels == 1:
        t = t[None]
    if t.ndim != 4 or t.shape[0] != channels:
        raise DataError(f"expected volumes (slices, H, W), got shape {tuple(t.shape)}")
    return t


def fit_distributed(
    pairs: Sequence[tuple[Any, Any]],
    config: TrainConfig,
    *,
    strategy: str,
    geometry: dict[str, Any],
    device: torch.device | None = None,
    progress: ProgressCallback | None = None,
) -> Denoiser:
    """:func:`n2i_stream.learn.fit` over the initialised process group (see the module
    docstring); ``config.batch`` is the global batch and must divide by the world size.
    ``progress`` is called on rank 0 only. Returns the same denoiser on every rank."""
    if not dist.is_initialized():
        raise ConfigError("no process group: call init_distributed() (started by torchrun)")
    rank, world = dist.get_rank(), dist.get_world_size()
    if config.batch % world:
        raise ConfigError(f"batch {config.batch} does not divide over {world} processes")
    device = device or torch.device("cpu")
    share = config.batch // world
    with threads(config.threads):
        torch.manual_seed(config.seed)  # the same initial weights as fit() with this seed
        volumes = [(_as_volume(a, device, 1), _as_volume(b, device, 1)) for a, b in pairs]
        spec = NetworkSpec.for_data(
            config.network, channels=1, context=config.context, depth=config.depth,
            width=config.width,
        )  # fmt: skip
        network = build_network(spec).to(device)
        norm = Normalisation.of([v for v, _ in volumes])
        sampler = CropSampler(
            volumes, context=config.context, crop=config.crop, normalisation=norm, seed=config.seed
        )
        if device.type == "cuda":
            # Batch statistics over the global batch; on CPUs (no SyncBatchNorm there) DnCNN's
            # batch norm sees each process's share, so only it departs from one process.
            network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
        channels_last = _use_channels_last(spec.name, device)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        model = DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        model.train()
        history: list[tuple[int, float]] = []
        budget_s = None if config.minutes is None else 60.0 * config.minutes
        t0 = time.perf_counter()
        done, running, count = 0, 0.0, 0
        shared = torch.zeros(1, dtype=torch.float64, device=device)
        while True:
            # Rank 0's clock decides how far along training is: every replica then uses the
            # same learning rate and stops at the same step.
            elapsed = time.perf_counter() - t0
            by_steps = done / config.iterations if config.iterations else 0.0
            shared.fill_(min(1.0, max(by_steps, elapsed / budget_s if budget_s else 0.0)))
            dist.broadcast(shared, src=0)
            fraction = float(shared)
            if fraction >= 1.0:
                break
            if config.lr_schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * config.lr * (1.0 + math.cos(math.pi * fraction))
            x, y = sampler.batch(config.batch)  # the global batch, the same on every rank
            x = x[rank * share : (rank + 1) * share].to(device, non_blocking=True)
            y = y[rank * share : (rank + 1) * share].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # DDP averages the gradients over the ranks here
            total = loss.detach().double().reshape(1)
            dist.all_reduce(total)
            value = float(total) / world
            if not math.isfinite(value):
                raise TrainingError(
                    f"training diverged at iteration {done + 1}: loss is {value}; lower the "
                    f"learning rate (now {config.lr:g}) or check the input data"
                )
            optimizer.step()
            done += 1
            running += value
            count += 1
            if done % config.report_every == 0 or (
                config.iterations is not None and done == config.iterations
            ):
                history.append((done, running / count))
                if progress is not None and rank == 0:
                    seconds = time.perf_counter() - t0
                    eta = seconds * (1.0 - fraction) / fraction if fraction > 0 else math.inf
                    progress(Progress(done, config.iterations, running / count, seconds, eta))
                running, count = 0.0, 0
        network = model.module.to(memory_format=torch.contiguous_format).eval()
    return Denoiser(
        network=network,
        spec=spec,
        normalisation=norm,
        context=config.context,
        strategy=strategy,
        geometry=dict(geometry),
        config=config,
        iteration=done,
        loss_history=history,
        optimizer_state=optimizer.state_dict(),
        training_seconds=time.perf_counter() - t0,
    )


# -- pairs files ----------------------------------------------------------------------------------


def save_pairs(
    path: str | os.PathLike[str],
    pairs: Sequence[tuple[Any, Any]],
    *,
    strategy: str,
    geometry: dict[str, Any],
) -> Path:
    """Write training pairs (NumPy volumes ``(slices, H, W)``) for :func:`main`."""
    inputs = np.stack([np.asarray(a, dtype=np.float32) for a, _ in pairs])
    targets = np.stack([np.asarray(b, dtype=np.float32) for _, b in pairs])
    meta = json.dumps({"strategy": strategy, "geometry": geometry})
    path = Path(path)
    with path.open("wb") as f:
        np.savez(f, inputs=inputs, targets=targets, meta=np.asarray(meta))
    return path


def load_pairs(path: str | os.PathLike[str]) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Pairs and metadata from a :func:`save_pairs` file (no pickled objects are read)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs, targets = data["inputs"], data["targets"]
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a training pairs file: {exc}") from exc
    if inputs.shape != targets.shape or inputs.ndim != 4:
        raise DataError(f"{path}: inputs {inputs.shape} and targets {targets.shape} differ")
    return list(zip(inputs, targets, strict=True)), meta


def synthetic_pairs(seed: int = 0, *, pairs: int = 2, slices: int = 4, size: int = 32) -> list:
    """A tiny Noise2Inverse-like problem (disks plus independent noise in input and target),
    for tests and for trying a cluster set-up."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    clean = np.zeros((slices, size, size), dtype=np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
        r = rng.uniform(2, size / 5)
        clean += ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32)
    noisy = [
        (clean + rng.normal(0, 0.3, clean.shape), clean + rng.normal(0, 0.3, clean.shape))
        for _ in range(pairs)
    ]
    return [(a.astype(np.float32), b.astype(np.float32)) for a, b in noisy]


# -- the torchrun entry point ---------------------------------------------------------------------


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m n2i_stream.learn.distributed",
        description="Data-parallel Noise2Inverse training; start with torchrun.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", type=Path, help="training pairs (.npz from save_pairs)")
    source.add_argument("--synthetic", type=int, metavar="SEED", help="a tiny made-up problem")
    p.add_argument("--config", type=Path, help="TrainConfig as JSON (keys as in TrainConfig)")
    for name, kind in (("network", str), ("iterations", int), ("minutes", float),
                       ("batch", int), ("crop", int), ("depth", int), ("width", int),
                       ("context", int), ("lr", float), ("seed", int), ("threads", int),
                       ("report-every", int)):  # fmt: skip
        p.add_argument(f"--{name}", type=kind, help=f"TrainConfig {name.replace('-', '_')}")
    p.add_argument("--backend", default="auto", choices=("auto", "nccl", "gloo"))
    p.add_argument("--out", type=Path, help="checkpoint to write (rank 0)")
    p.add_argument("--losses", type=Path, help="loss history to write as JSON (rank 0)")
    return p.parse_args(argv)


def _config(args: argparse.Namespace) -> TrainConfig:
    from ..config import from_mapping

    data: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for key in ("network", "iterations", "minutes", "batch", "crop", "depth", "width",
                "context", "lr", "seed", "threads", "report_every"):  # fmt: skip
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    if args.iterations is not None and args.minutes is None:
        data.setdefault("minutes", None)
    config = from_mapping(TrainConfig, data, source="distributed training")
    if config.threads == 0:  # share the cores among this node's processes
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        config = replace(config, threads=max(1, (os.cpu_count() or 1) // local))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Train on the process group torchrun started; rank 0 writes ``--out`` and ``--losses``."""
    from .checkpoint import save_checkpoint

    args = _arguments(argv)
    config = _config(args)
    device = init_distributed(args.backend)
    try:
        if args.pairs is not None:
            pairs, meta = load_pairs(args.pairs)
        else:
            pairs = synthetic_pairs(args.synthetic)
            size = pairs[0][0].shape[-1]
            meta = {"strategy": "synthetic", "geometry": {"cols": size, "n": size}}
        rank = dist.get_rank()

        def report(p: Progress) -> None:
            print(f"rank 0: {p}", file=sys.stderr, flush=True)

        model = fit_distributed(
            pairs, config, strategy=meta["strategy"], geometry=meta["geometry"], device=device,
            progress=report,
        )  # fmt: skip
        if rank == 0:
            if args.out is not None:
                save_checkpoint(model, args.out)
            if args.losses is not None:
                args.losses.write_text(json.dumps(model.loss_history))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
