"""Checkpoints: a denoiser's weights, configuration, normalisation, strategy, geometry summary,
optimiser state and software version in one file, loadable with ``weights_only`` (no pickle
of arbitrary objects)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..config import from_mapping, to_mapping
from ..core.geometry import ParallelGeometry
from ..errors import ModelError
from .config import TrainConfig
from .model import Denoiser, geometry_summary
from .networks import NetworkSpec, build_network
from .patches import Normalisation

__all__ = ["FORMAT", "check_compatible", "load_checkpoint", "save_checkpoint"]

FORMAT = "n2i-stream-denoiser-1"


def _version() -> str:
    from .. import __version__

    return __version__


def save_checkpoint(denoiser: Denoiser, path: str | Path) -> Path:
    """Write ``denoiser`` to ``path`` (written to a temporary name, then renamed)."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "software_version": denoiser.software_version or _version(),
        "network": to_mapping(denoiser.spec),
        "config": to_mapping(denoiser.config),
        "normalisation": {
            "mean": denoiser.normalisation.mean,
            "std": denoiser.normalisation.std,
        },
        "context": denoiser.context,
        "strategy": denoiser.strategy,
        "geometry": dict(denoiser.geometry),
        "iteration": denoiser.iteration,
        "training_seconds": denoiser.training_seconds,
        "loss_history": [[int(i), float(v)] for i, v in denoiser.loss_history],
        "weights": {k: v.detach().cpu() for k, v in denoiser.network.state_dict().items()},
        "optimizer": denoiser.optimizer_state,
    }
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Denoiser:
    """Read a checkpoint written by :func:`save_checkpoint` onto ``device``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no such model file") from exc
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise ModelError(f"{path}: not a readable n2i-stream model file ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ModelError(f"{path}: expected a {FORMAT} checkpoint, found {found!r}")
    try:
        spec = from_mapping(NetworkSpec, state["network"], source=f"{path} network")
        config = from_mapping(TrainConfig, state["config"], source=f"{path} config")
        network = build_network(spec).to(device)
        network.load_state_dict(state["weights"])
    except Exception as exc:
        raise ModelError(f"{path}: checkpoint does not describe a usable network: {exc}") from exc
    norm = state["normalisation"]
    return Denoiser(
        network=network.eval(),
        spec=spec,
        normalisation=Normalisation(float(norm["mean"]), float(norm["std"])),
        context=int(state["context"]),
        strategy=str(state["strategy"]),
        geometry=dict(state["geometry"]),
        config=config,
        iteration=int(state["iteration"]),
        loss_history=[(int(i), float(v)) for i, v in state["loss_history"]],
        optimizer_state=state["optimizer"],
        training_seconds=float(state.get("training_seconds", 0.0)),
        software_version=str(state.get("software_version", "")),
    )


def check_compatible(
    denoiser: Denoiser,
    *,
    geometry: ParallelGeometry | None = None,
    n: int | None = None,
    network: str | None = None,
    strategy: str | None = None,
    context: int | None = None,
    channels: int | None = None,
) -> None:
    """Raise :class:`ModelError` naming every difference between the model and what it is
    used for. Geometry compares detector columns, reconstruction size, angles per
    reconstruction and rotation centre (±0.5 px); rows are free (the network works per slice).
    """
    problems: list[str] = []

    def differ(what: str, model: Any, asked: Any) -> None:
        problems.append(f"{what}: model {model!r}, asked {asked!r}")

    if geometry is not None:
        asked = geometry_summary(geometry, n=n)
        for key in ("cols", "n", "angles"):
            if denoiser.geometry.get(key) != asked[key]:
                differ(key, denoiser.geometry.get(key), asked[key])
        offset = denoiser.geometry.get("center_offset", math.nan)
        if not abs(offset - asked["center_offset"]) <= 0.5:
            differ("center_offset", offset, asked["center_offset"])
    if network is not None and network != denoiser.spec.name:
        differ("network", denoiser.spec.name, network)
    if strategy is not None and strategy != denoiser.strategy:
        differ("strategy", denoiser.strategy, strategy)
    if context is not None and context != denoiser.context:
        differ("context", denoiser.context, context)
    if channels is not None and channels != denoiser.channels:
        differ("channels", denoiser.channels, channels)
    if problems:
        raise ModelError(
            "model does not fit this data (" + "; ".join(problems) + "); train a new model "
            "or pass the matching options"
        )
