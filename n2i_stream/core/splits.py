"""Noise2Inverse splits: which frames reconstruct the input and which the target of each pair.

A split is a tuple of pairs of frame-index sets into one projection stack. Noise2Inverse
(Hendriksen et al., IEEE TCI 2020; Sci Rep 11, 2021) needs two conditions, checked by
:meth:`Split.check`:

1. the input and target of a pair share no frame (independent noise);
2. every frame is a target equally often (no part of the measurement is favoured).

Strategies:

* **dynamic** — the first K time steps, stacked in time order, show the same object. Pair j has
  input = step j alone and target = the other K−1 steps (whose interlaced angles give the
  target denser sampling); round robin over j.
* **static** — one scan's angles in J interleaved sections ``j::J``; pair j has input = the
  other sections and target = section j ("X:1").
* **xrdct** — X-ray diffraction CT: per-channel sinograms split by angle exactly as *static*;
  all channels share the split and become network channels.

XRD-CT input layout (HDF5, read by the I/O layer; the arrays reach this module already loaded)::

    /xrdct/sinograms   float32 (channels, angles, rows, cols)   one sinogram stack per
                       diffraction channel: azimuthally integrated intensity, already
                       normalised and linear in the object (line integrals), rows = the
                       horizontal slices measured, cols = the sideways translation positions
    /xrdct/theta       float64 (angles,)  rotation angle of each projection, degrees
    /xrdct/channels    float64 (channels,)  the channel's scattering coordinate; attribute
                       ``units`` ("deg" for 2θ, "1/nm" for q)
    /xrdct             attribute ``center_offset`` (translation steps, default 0)

Reconstructions for a pair come from :func:`reconstruct_pair`, which runs FBP on each frame
subset with that subset's own angular weights, so a combined, interlaced angle set is weighted
as the quadrature its angles form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, GeometryError
from ._xp import array_namespace
from .fbp import fbp
from .geometry import ParallelGeometry

__all__ = [
    "Split",
    "SplitPair",
    "Strategy",
    "dynamic_split",
    "reconstruct_pair",
    "static_split",
    "xrdct_split",
]

Strategy = Literal["dynamic", "static", "xrdct"]
STRATEGIES: tuple[str, ...] = ("dynamic", "static", "xrdct")


@dataclass(frozen=True, eq=False)
class SplitPair:
    """Frame indices (sorted, into the split's projection stack) of one input and its target."""

    input: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        for name in ("input", "target"):
            idx = np.unique(np.asarray(getattr(self, name), dtype=np.int64))
            idx.setflags(write=False)
            object.__setattr__(self, name, idx)


@dataclass(frozen=True, eq=False)
class Split:
    """The training pairs of one Noise2Inverse strategy over ``n_frames`` frames."""

    strategy: Strategy
    n_frames: int
    pairs: tuple[SplitPair, ...]

    def __len__(self) -> int:
        return len(self.pairs)

    def target_counts(self) -> np.ndarray:
        """How often each frame is a target (condition 2 wants all counts equal)."""
        counts = np.zeros(self.n_frames, dtype=np.int64)
        for pair in self.pairs:
            counts[pair.target] += 1
        return counts

    def check(self) -> None:
        """Raise :class:`ConfigError` listing every violated Noise2Inverse condition."""
        problems = []
        for j, pair in enumerate(self.pairs):
            if pair.input.size == 0 or pair.target.size == 0:
                problems.append(f"pair {j} has an empty input or target")
            shared = np.intersect1d(pair.input, pair.target)
            if shared.size:
                problems.append(f"pair {j}: input and target share frames {shared[:5].tolist()}")
            for idx in (pair.input, pair.target):
                if idx.size and (idx[0] < 0 or idx[-1] >= self.n_frames):
                    problems.append(f"pair {j}: frame index outside 0..{self.n_frames - 1}")
        counts = self.target_counts()
        if counts.size and counts.min() != counts.max():
            problems.append(
                f"frames are targets unequally often (counts {counts.min()}..{counts.max()})"
            )
        if problems:
            raise ConfigError(f"{self.strategy} split breaks Noise2Inverse: " + "; ".join(problems))


def dynamic_split(frames_per_step: Sequence[int]) -> Split:
    """Dynamic strategy over K time steps stacked in order, ``frames_per_step[k]`` frames each.

    Pair j: input = step j, target = the other K−1 steps combined.
    """
    sizes = [int(s) for s in frames_per_step]
    if len(sizes) < 2:
        raise ConfigError(
            f"dynamic Noise2Inverse needs at least 2 training time steps, got {len(sizes)}"
        )
    if min(sizes) < 1:
        raise ConfigError(f"every training time step needs frames, got counts {sizes}")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    steps = [np.arange(bounds[k], bounds[k + 1]) for k in range(len(sizes))]
    pairs = tuple(
        SplitPair(input=steps[j], target=np.concatenate(steps[:j] + steps[j + 1 :]))
        for j in range(len(sizes))
    )
    split = Split("dynamic", int(bounds[-1]), pairs)
    split.check()
    return split


def _angle_sections(n_frames: int, sections: int, strategy: Strategy) -> Split:
    n_frames, sections = int(n_frames), int(sections)
    if sections < 2:
        raise ConfigError(f"{strategy} split needs at least 2 sections, got {sections}")
    if n_frames < sections:
        raise ConfigError(f"{strategy} split of {n_frames} frames into {sections} sections")
    # n_frames need not divide by J: sections then differ by one frame, yet every frame is
    # still a target exactly once, so both conditions hold.
    frames = np.arange(n_frames)
    pairs = tuple(
        SplitPair(input=frames[frames % sections != j], target=frames[j::sections])
        for j in range(sections)
    )
    split = Split(strategy, n_frames, pairs)
    split.check()
    return split


def static_split(n_frames: int, sections: int = 4) -> Split:
    """Static 3D strategy: sections ``j::J`` of one scan; input = the others, target = j."""
    return _angle_sections(n_frames, sections, "static")


def xrdct_split(n_angles: int, sections: int = 4) -> Split:
    """XRD-CT strategy: the static split of the angles, shared by every diffraction channel."""
    return _angle_sections(n_angles, sections, "xrdct")


Reconstruct = Callable[[Any, ParallelGeometry], Any]


def reconstruct_pair(
    projections: Any,
    geometry: ParallelGeometry,
    pair: SplitPair,
    *,
    reconstruct: Reconstruct | None = None,
    n: int | None = None,
) -> tuple[Any, Any]:
    """Input and target reconstructions ``(..., rows, n, n)`` of one pair.

    ``projections`` is ``(angles, rows, cols)`` or, for XRD-CT, ``(channels, angles, rows,
    cols)``; each frame subset is reconstructed with its own geometry (and so its own angular
    weights) by ``reconstruct(projections, geometry)``, default :func:`fbp` with output size n.
    """
    xp = array_namespace(projections)
    angle_axis = projections.ndim - 3
    if projections.ndim not in (3, 4) or projections.shape[angle_axis] != len(geometry):
        raise GeometryError(
            f"reconstruct_pair: expected (angles, rows, cols) or (channels, angles, rows, cols) "
            f"with {len(geometry)} angles, got shape {tuple(projections.shape)}"
        )
    if reconstruct is None:

        def reconstruct(p: Any, g: ParallelGeometry) -> Any:
            return fbp(p, g, n=n)

    def one(idx: np.ndarray) -> Any:
        sub = xp.take(projections, xp.asarray(idx), axis=angle_axis)
        g = geometry[idx]
        if angle_axis == 0:
            return reconstruct(sub, g)
        return xp.stack([reconstruct(sub[c, ...], g) for c in range(sub.shape[0])])

    return one(pair.input), one(pair.target)
