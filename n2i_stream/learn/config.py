"""The training configuration: one frozen, validated value (build from data with
:func:`n2i_stream.config.from_mapping`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .networks import DEFAULTS, NETWORKS, NetworkName

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train a Noise2Inverse denoiser. Training stops at whichever of ``iterations``
    and ``minutes`` comes first; at least one must be set."""

    #: network architecture: "dncnn" (best in a few CPU minutes), "unet", or "msd" (the
    #: paper's; GPU)
    network: NetworkName = "dncnn"
    #: network depth (U-Net levels, DnCNN/MS-D layers); None = the network's default
    depth: int | None = None
    #: network width (U-Net first-level / DnCNN channels, MS-D channels per layer); None = default
    width: int | None = None
    #: context slices above and below the denoised slice (0 = plain 2D)
    context: int = 2
    #: side of the square random training crops, pixels
    crop: int = 64
    #: crops per training step
    batch: int = 8
    #: Adam learning rate
    lr: float = 2e-3
    #: "cosine" decays the learning rate to zero over the budget; "constant" keeps it
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    #: stop after this many training steps (None: only the time budget counts)
    iterations: int | None = None
    #: stop after this many minutes of training (None: only the iteration count counts)
    minutes: float | None = 5.0
    #: seed of weight initialisation and crop sampling; same seed, same weights on a CPU
    seed: int = 0
    #: torch CPU threads; 0 = every core
    threads: int = 0
    #: "auto" uses CUDA when torch sees a GPU, else the CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: call the progress callback every this many training steps
    report_every: int = 25

    def __post_init__(self) -> None:
        problems = []
        if self.network not in NETWORKS:
            problems.append(f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        for name in ("depth", "width", "iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or null, got {value}")
        if self.network == "unet" and self.crop < 2 ** (self.depth or DEFAULTS["unet"][0]):
            problems.append(f"crop {self.crop} is smaller than the U-Net's down-sampling")
        if self.context < 0:
            problems.append(f"context must be >= 0, got {self.context}")
        if self.crop < 8 or self.batch < 1 or self.report_every < 1:
            problems.append(
                f"need crop >= 8, batch >= 1, report_every >= 1; got crop {self.crop}, "
                f"batch {self.batch}, report_every {self.report_every}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            problems.append(f"minutes must be positive or null, got {self.minutes}")
        if self.iterations is None and self.minutes is None:
            problems.append("set iterations, minutes or both: training needs a stopping rule")
        if self.threads < 0:
            problems.append(f"threads must be >= 0 (0 = all cores), got {self.threads}")
        if problems:
            raise ConfigError("TrainConfig: " + "; ".join(problems))
