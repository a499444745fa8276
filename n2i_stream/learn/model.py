"""A trained denoiser: the network plus everything needed to apply, resume or check it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..core.geometry import ParallelGeometry
from .config import TrainConfig
from .networks import NetworkSpec
from .patches import Normalisation

__all__ = ["Denoiser", "geometry_summary"]


def geometry_summary(geometry: ParallelGeometry, *, n: int | None = None) -> dict[str, Any]:
    """What a denoiser remembers of the scan it was trained for: detector size, recon size,
    rotation centre and the number of angles of one reconstruction it is meant to denoise."""
    return {
        "rows": geometry.rows,
        "cols": geometry.cols,
        "n": geometry.cols if n is None else int(n),
        "center_offset": geometry.center_offset,
        "angles": len(geometry),
    }


@dataclass(eq=False)
class Denoiser:
    """A Noise2Inverse network with its normalisation, 2.5D context and provenance.

    ``geometry`` is a :func:`geometry_summary`; ``optimizer_state`` and ``iteration`` let
    training resume; ``loss_history`` holds ``(iteration, mean training loss)`` pairs.
    """

    network: nn.Module
    spec: NetworkSpec
    normalisation: Normalisation
    context: int
    strategy: str
    geometry: dict[str, Any]
    config: TrainConfig
    iteration: int = 0
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None
    training_seconds: float = 0.0
    #: n2i-stream version that trained the network (from the checkpoint when loaded)
    software_version: str = ""

    @property
    def channels(self) -> int:
        """Data channels (1 for tomography, the diffraction channels for XRD-CT)."""
        return self.spec.out_channels
