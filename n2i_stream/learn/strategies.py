"""Noise2Inverse training from projections: dynamic, static 3D and XRD-CT strategies.

Each function splits the measured frames (:mod:`n2i_stream.core.splits`), reconstructs the
input and target of every pair with FBP (each subset with its own angular weights) and trains
with :func:`n2i_stream.learn.train.fit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..core._xp import array_namespace
from ..core.geometry import ParallelGeometry
from ..core.splits import Reconstruct, Split, dynamic_split, reconstruct_pair, static_split
from ..core.splits import xrdct_split as _xrdct_split
from ..errors import ConfigError, GeometryError
from .config import TrainConfig
from .model import Denoiser, geometry_summary
from .train import ProgressCallback, fit

__all__ = ["split_pairs", "train_dynamic", "train_static", "train_xrdct"]


def split_pairs(
    projections: Any,
    geometry: ParallelGeometry,
    split: Split,
    *,
    n: int | None = None,
    reconstruct: Reconstruct | None = None,
) -> list[tuple[Any, Any]]:
    """(input, target) reconstructions of every pair of ``split``."""
    return [
        reconstruct_pair(projections, geometry, pair, n=n, reconstruct=reconstruct)
        for pair in split.pairs
    ]


def train_dynamic(
    projections_by_step: Sequence[Any],
    geometries: Sequence[ParallelGeometry],
    config: TrainConfig,
    *,
    n: int | None = None,
    reconstruct: Reconstruct | None = None,
    init: Denoiser | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> Denoiser:
    """Train on the first K time steps of a dynamic scan (before the sample changes).

    ``projections_by_step[k]`` is step k's line integrals ``(angles_k, rows, cols)`` and
    ``geometries[k]`` its geometry (interlaced angles welcome). Pair j: input = step j,
    target = the other K−1 steps. Fewer than two steps raise :class:`ConfigError`.
    """
    if len(projections_by_step) != len(geometries):
        raise ConfigError(
            f"got {len(projections_by_step)} projection stacks but {len(geometries)} geometries"
        )
    if len(geometries) < 2:
        raise ConfigError(
            f"dynamic Noise2Inverse needs at least 2 training time steps, got {len(geometries)}"
        )
    for k, (p, g) in enumerate(zip(projections_by_step, geometries, strict=True)):
        if tuple(p.shape) != (len(g), g.rows, g.cols):
            raise GeometryError(
                f"time step {k}: projections {tuple(p.shape)}, geometry expects "
                f"{(len(g), g.rows, g.cols)}"
            )
    combined = geometries[0]
    for g in geometries[1:]:
        combined = combined.concat(g)
    xp = array_namespace(projections_by_step[0])
    stack = xp.concat(list(projections_by_step), axis=0)
    split = dynamic_split([len(g) for g in geometries])
    pairs = split_pairs(stack, combined, split, n=n, reconstruct=reconstruct)
    return fit(
        pairs,
        config,
        strategy="dynamic",
        geometry=geometry_summary(geometries[0], n=n),
        init=init,
        resume=resume,
        progress=progress,
    )


def train_static(
    projections: Any,
    geometry: ParallelGeometry,
    config: TrainConfig,
    *,
    sections: int = 4,
    n: int | None = None,
    reconstruct: Reconstruct | None = None,
    init: Denoiser | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> Denoiser:
    """Train on one static scan ``(angles, rows, cols)`` split into ``sections`` interleaved
    angle sections (input = the other sections, target = one section)."""
    split = static_split(len(geometry), sections)
    pairs = split_pairs(projections, geometry, split, n=n, reconstruct=reconstruct)
    return fit(
        pairs,
        config,
        strategy="static",
        geometry=geometry_summary(geometry, n=n),
        init=init,
        resume=resume,
        progress=progress,
    )


def train_xrdct(
    sinograms: Any,
    geometry: ParallelGeometry,
    config: TrainConfig,
    *,
    sections: int = 4,
    context: int = 0,
    n: int | None = None,
    reconstruct: Reconstruct | None = None,
    init: Denoiser | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> Denoiser:
    """Train on XRD-CT sinograms ``(channels, angles, rows, cols)``; the diffraction channels
    are network channels. ``context`` defaults to 0: XRD-CT rows are usually separate,
    distant slices, so neighbouring rows are no context (the paper's choice)."""
    if sinograms.ndim != 4:
        raise GeometryError(
            f"XRD-CT sinograms must be (channels, angles, rows, cols), got {tuple(sinograms.shape)}"
        )
    split = _xrdct_split(len(geometry), sections)
    pairs = split_pairs(sinograms, geometry, split, n=n, reconstruct=reconstruct)
    return fit(
        pairs,
        replace(config, context=context),
        strategy="xrdct",
        geometry=geometry_summary(geometry, n=n),
        channels=int(sinograms.shape[0]),
        init=init,
        resume=resume,
        progress=progress,
    )
