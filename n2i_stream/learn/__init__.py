"""Learning code (torch): networks, Noise2Inverse training and inference.

Typical use::

    denoiser = train_dynamic(steps_projections, steps_geometries, TrainConfig(minutes=5))
    save_checkpoint(denoiser, "model.pt")
    clean = denoise_volume(denoiser, fbp(projections_of_a_later_step, geometry))
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make torch many times slower on a shared, busy machine
# (measured on 2 cores under load: 3.3-7 s per U-Net training step spinning, 0.24-0.4 s passive).
# The runtime reads this once, when torch loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .infer import denoise_split_average, denoise_volume
from .model import Denoiser, geometry_summary
from .networks import NETWORKS, NetworkSpec, build_network, count_parameters
from .strategies import split_pairs, train_dynamic, train_static, train_xrdct
from .train import Progress, fit

__all__ = [
    "NETWORKS",
    "Denoiser",
    "NetworkSpec",
    "Progress",
    "TrainConfig",
    "build_network",
    "check_compatible",
    "count_parameters",
    "denoise_split_average",
    "denoise_volume",
    "fit",
    "geometry_summary",
    "load_checkpoint",
    "save_checkpoint",
    "split_pairs",
    "train_dynamic",
    "train_static",
    "train_xrdct",
]
