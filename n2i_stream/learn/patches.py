"""2.5D training samples: context stacks, random crops and the eight flips/rotations.

Volumes are torch tensors ``(channels, slices, H, W)``. A 2.5D sample of slice z is the slice
and ``context`` slices above and below, channel-major, ``(channels·(2·context+1), H, W)``;
slices beyond the volume ends repeat the end slice (edge replication).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

__all__ = ["CropSampler", "Normalisation", "context_stack", "dihedral", "pad_slices"]


@dataclass(frozen=True)
class Normalisation:
    """Affine map ``(x - mean) / std`` applied to inputs and targets; inverted on outputs."""

    mean: float
    std: float

    @classmethod
    def of(cls, volumes: list[torch.Tensor]) -> Normalisation:
        """Mean and standard deviation over all voxels of ``volumes`` (the training inputs)."""
        total = sum(v.numel() for v in volumes)
        mean = sum(float(v.double().sum()) for v in volumes) / total
        var = sum(float(((v.double() - mean) ** 2).sum()) for v in volumes) / total
        std = var**0.5
        if not np.isfinite(mean) or not np.isfinite(std) or std <= 0:
            raise DataError(
                f"training inputs cannot be normalised: mean {mean}, std {std} "
                "(constant or non-finite reconstructions)"
            )
        return cls(mean, std)


def pad_slices(volume: torch.Tensor, context: int) -> torch.Tensor:
    """``(C, Z, H, W)`` → ``(C, Z + 2·context, H, W)`` repeating the end slices."""
    if context == 0:
        return volume
    top = volume[:, :1].expand(-1, context, -1, -1)
    bottom = volume[:, -1:].expand(-1, context, -1, -1)
    return torch.cat([top, volume, bottom], dim=1)


def context_stack(padded: torch.Tensor, z: int, context: int) -> torch.Tensor:
    """The 2.5D stack of slice ``z`` from a :func:`pad_slices` volume: ``(C·(2c+1), H, W)``."""
    block = padded[:, z : z + 2 * context + 1]
    return block.reshape(-1, *block.shape[-2:])


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0..7) of the eight flips/rotations of the last two axes."""
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


class CropSampler:
    """Random training batches from pairs of (input, target) volumes, seeded.

    Each sample draws a pair, a slice and a ``crop``² window uniformly (numpy Generator with
    ``seed``) and one of the eight flips/rotations, applied to input and target alike.
    Inputs and targets are normalised with ``normalisation``.
    """

    def __init__(
        self,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        context: int,
        crop: int,
        normalisation: Normalisation,
        seed: int | tuple[int, ...],
    ) -> None:
        if not pairs:
            raise DataError("no training pairs")
        shape = tuple(pairs[0][0].shape)
        for inp, tgt in pairs:
            if tuple(inp.shape) != shape or tuple(tgt.shape) != shape:
                raise DataError(
                    f"training volumes differ in shape: expected {shape}, got input "
                    f"{tuple(inp.shape)} and target {tuple(tgt.shape)}"
                )
        h, w = shape[-2:]
        self.crop = min(int(crop), h, w)
        self.context = int(context)
        m, s = normalisation.mean, normalisation.std
        self.inputs = [pad_slices((inp - m) / s, self.context) for inp, _ in pairs]
        self.targets = [(tgt - m) / s for _, tgt in pairs]
        self.slices = shape[1]
        self.rng = np.random.default_rng(seed if isinstance(seed, int) else list(seed))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` samples: inputs ``(B, C·(2c+1), crop, crop)``, targets ``(B, C, crop,
        crop)``."""
        xs, ys = [], []
        crop = self.crop
        h, w = self.targets[0].shape[-2:]
        for _ in range(size):
            p = int(self.rng.integers(len(self.inputs)))
            z = int(self.rng.integers(self.slices))
            i = int(self.rng.integers(h - crop + 1))
            j = int(self.rng.integers(w - crop + 1))
            k = int(self.rng.integers(8))
            x = context_stack(self.inputs[p], z, self.context)[:, i : i + crop, j : j + crop]
            y = self.targets[p][:, z, i : i + crop, j : j + crop]
            xs.append(dihedral(x, k))
            ys.append(dihedral(y, k))
        return torch.stack(xs), torch.stack(ys)
