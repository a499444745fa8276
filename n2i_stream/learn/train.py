"""The Noise2Inverse training loop: Adam on the MSE between network(input) and target.

Any split strategy reduces to a list of (input, target) reconstruction pairs; :func:`fit`
trains on random 2.5D crops of them until the iteration count or the time budget is spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import ConfigError, DataError, ModelError, TrainingError
from .config import TrainConfig
from .device import resolve_device, threads, to_torch
from .model import Denoiser
from .networks import NetworkSpec, build_network
from .patches import CropSampler, Normalisation

__all__ = ["Progress", "ProgressCallback", "fit"]


@dataclass(frozen=True)
class Progress:
    """A progress report: training step, mean loss since the last report, time and ETA."""

    iteration: int
    iterations: int | None
    loss: float
    elapsed_s: float
    eta_s: float

    def __str__(self) -> str:
        total = f"/{self.iterations}" if self.iterations else ""
        return (
            f"iteration {self.iteration}{total}  loss {self.loss:.4g}  "
            f"elapsed {self.elapsed_s:.0f} s  ETA {self.eta_s:.0f} s"
        )


ProgressCallback = Callable[[Progress], None]


def _as_volume(array: Any, device: torch.device, channels: int) -> torch.Tensor:
    """``(slices, H, W)`` or ``(channels, slices, H, W)`` → float32 ``(C, Z, H, W)`` tensor."""
    t = to_torch(array, device)
    if t.ndim == 3 and channels == 1:
        t = t[None]
    if t.ndim != 4 or t.shape[0] != channels:
        raise DataError(
            f"expected a volume (slices, H, W) or (channels={channels}, slices, H, W), "
            f"got shape {tuple(t.shape)}"
        )
    return t


def _version() -> str:
    from .. import __version__

    return __version__


def _use_channels_last(network: str, device: torch.device) -> bool:
    """NHWC is ~1.5x faster for U-Net and DnCNN training on CPUs (oneDNN), but several times
    slower for MS-D's width-1 concatenations; CUDA picks its own layouts."""
    return device.type == "cpu" and network != "msd"


def fit(
    pairs: list[tuple[Any, Any]],
    config: TrainConfig,
    *,
    strategy: str,
    geometry: dict[str, Any],
    channels: int = 1,
    init: Denoiser | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> Denoiser:
    """Train on ``pairs`` of (input, target) reconstructions; returns the trained denoiser.

    Volumes are NumPy, CuPy or torch arrays ``(slices, H, W)`` (or ``(channels, slices, H, W)``).
    ``init`` starts from a trained denoiser (fine-tuning: its network, context and
    normalisation are kept); ``resume=True`` also restores its optimiser state and continues
    its iteration count. Raises :class:`TrainingError` when the loss stops being finite.
    """
    if resume and init is None:
        raise ConfigError("resume=True needs the model to resume from (init)")
    device = resolve_device(config.device)
    with threads(config.threads):
        torch.manual_seed(config.seed)
        volumes = [
            (_as_volume(a, device, channels), _as_volume(b, device, channels)) for a, b in pairs
        ]
        if init is None:
            spec = NetworkSpec.for_data(
                config.network,
                channels=channels,
                context=config.context,
                depth=config.depth,
                width=config.width,
            )
            network = build_network(spec).to(device)
            norm = Normalisation.of([v for v, _ in volumes])
            context, start, history, seconds = config.context, 0, [], 0.0
        else:
            if init.channels != channels:
                raise ModelError(
                    f"the model to continue from has {init.channels} data channels, "
                    f"the training data {channels}"
                )
            spec, norm, context = init.spec, init.normalisation, init.context
            network = build_network(spec).to(device)
            network.load_state_dict(init.network.state_dict())
            start = init.iteration if resume else 0
            history = list(init.loss_history) if resume else []
            seconds = init.training_seconds if resume else 0.0
            # The network's own settings win over the config's (a fine-tuned net keeps its shape).
            config = replace(
                config,
                network=spec.name,
                depth=spec.depth,
                width=spec.width,
                context=context,
            )
        # A resumed run draws new crops: its sampler is keyed by the iteration it starts at.
        sampler = CropSampler(
            volumes,
            context=context,
            crop=config.crop,
            normalisation=norm,
            seed=(config.seed, start) if start else config.seed,
        )
        if _use_channels_last(spec.name, device):
            network = network.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
        if resume and init is not None and init.optimizer_state is not None:
            optimizer.load_state_dict(init.optimizer_state)
        for group in optimizer.param_groups:
            group["lr"] = config.lr
        network.train()
        try:
            done, clock = _loop(network, optimizer, sampler, config, start, history, progress)
        except torch.OutOfMemoryError as exc:
            raise TrainingError(
                f"out of {device.type} memory with batch {config.batch} of {config.crop}² crops; "
                "lower batch or crop"
            ) from exc
        network = network.to(memory_format=torch.contiguous_format).eval()
    return Denoiser(
        network=network,
        spec=spec,
        normalisation=norm,
        context=context,
        strategy=strategy,
        geometry=dict(geometry),
        config=config,
        iteration=start + done,
        loss_history=history,
        optimizer_state=optimizer.state_dict(),
        training_seconds=seconds + clock,
        software_version=_version(),
    )


def _loop(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: CropSampler,
    config: TrainConfig,
    start: int,
    history: list[tuple[int, float]],
    progress: ProgressCallback | None,
) -> tuple[int, float]:
    """Run training steps until the budget is spent; returns (steps done, seconds)."""
    device = next(network.parameters()).device
    channels_last = _use_channels_last(config.network, device)
    budget_s = None if config.minutes is None else 60.0 * config.minutes
    t0 = time.perf_counter()
    done, running, count = 0, 0.0, 0
    total = start + config.iterations if config.iterations else None

    def fraction(elapsed: float) -> float:
        by_steps = done / config.iterations if config.iterations else 0.0
        by_time = elapsed / budget_s if budget_s else 0.0
        return min(1.0, max(by_steps, by_time))

    while True:
        elapsed = time.perf_counter() - t0
        if fraction(elapsed) >= 1.0:
            break
        if config.lr_schedule == "cosine":
            lr = 0.5 * config.lr * (1.0 + math.cos(math.pi * fraction(elapsed)))
            for group in optimizer.param_groups:
                group["lr"] = lr
        x, y = sampler.batch(config.batch)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(network(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"training diverged at iteration {start + done + 1}: loss is {value}; "
                f"lower the learning rate (now {config.lr:g}) or check the input data"
            )
        loss.backward()
        optimizer.step()
        done += 1
        running += value
        count += 1
        if done % config.report_every == 0 or fraction(time.perf_counter() - t0) >= 1.0:
            elapsed = time.perf_counter() - t0
            history.append((start + done, running / count))
            if progress is not None:
                f = fraction(elapsed)
                eta = elapsed * (1.0 - f) / f if f > 0 else math.inf
                progress(Progress(start + done, total, running / count, elapsed, eta))
            running, count = 0.0, 0
    return done, time.perf_counter() - t0
