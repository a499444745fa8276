"""Denoising networks for 2.5D Noise2Inverse: MS-D, U-Net and DnCNN.

Every network maps ``(batch, in_channels, H, W)`` to ``(batch, out_channels, H, W)`` for any
H, W (the U-Net pads internally to a multiple of its down-sampling factor). For 2.5D input the
in-channels are ``channels × (2·context + 1)`` slices; :func:`build_network` does that count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = [
    "NETWORKS",
    "DnCNN",
    "MSDNet",
    "NetworkName",
    "NetworkSpec",
    "UNet",
    "build_network",
    "count_parameters",
]

NetworkName = Literal["unet", "dncnn", "msd"]
NETWORKS: tuple[str, ...] = ("unet", "dncnn", "msd")

#: Per-network (depth, width) defaults: small enough to train on a CPU in minutes.
DEFAULTS: dict[str, tuple[int, int]] = {"unet": (3, 16), "dncnn": (8, 32), "msd": (30, 1)}


class MSDNet(nn.Module):
    """Mixed-scale dense network (Pelt & Sethian, PNAS 115, 2018).

    ``depth`` layers of ``width`` channels; layer i applies a 3×3 convolution with dilation
    ``1 + i mod 10`` to *all* earlier feature maps (input included), then ReLU; a final 1×1
    convolution sees every map. The paper's denoiser is depth 100, width 1 (GPU only).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int = 30, width: int = 1):
        super().__init__()
        self.dilations = [1 + i % 10 for i in range(depth)]
        self.layers = nn.ModuleList(
            nn.Conv2d(in_channels + i * width, width, 3, padding=d, dilation=d)
            for i, d in enumerate(self.dilations)
        )
        self.final = nn.Conv2d(in_channels + depth * width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = x
        for layer in self.layers:
            maps = torch.cat([maps, F.relu(layer(maps))], dim=1)
        return self.final(maps)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(0.1),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al., MICCAI 2015): ``depth`` 2× down-samplings, widths doubling
    from ``width``, skip connections by concatenation, bilinear up-sampling."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 3, width: int = 16):
        super().__init__()
        widths = [width * 2**k for k in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([_conv_block(in_channels, widths[0])])
        self.down.extend(_conv_block(widths[k], widths[k + 1]) for k in range(depth))
        self.up = nn.ModuleList(
            _conv_block(widths[k + 1] + widths[k], widths[k]) for k in reversed(range(depth))
        )
        self.final = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        # Replicate-pad to a multiple of 2^depth so every level halves exactly.
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.final(x)[..., :h, :w]


class DnCNN(nn.Module):
    """DnCNN (Zhang et al., IEEE TIP 26, 2017): ``depth`` 3×3 convolutions of ``width``
    channels with batch normalisation, predicting the noise that is subtracted (residual)."""

    def __init__(
        self, in_channels: int, out_channels: int, depth: int = 8, width: int = 32
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ConfigError(f"DnCNN depth must be >= 2, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(width), nn.ReLU()]
        layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual is taken from the centre slice(s) of the 2.5D stack.
        c = x.shape[1]
        stack = c // self.out_channels
        centre = x.reshape(x.shape[0], self.out_channels, stack, *x.shape[-2:])[:, :, stack // 2]
        return centre - self.body(x)


@dataclass(frozen=True)
class NetworkSpec:
    """What :func:`build_network` needs to rebuild a network (stored in checkpoints)."""

    name: NetworkName
    in_channels: int
    out_channels: int
    depth: int
    width: int

    @classmethod
    def for_data(
        cls,
        name: str,
        *,
        channels: int = 1,
        context: int = 2,
        depth: int | None = None,
        width: int | None = None,
    ) -> NetworkSpec:
        """Spec for ``channels`` data channels with ``context`` slices above and below."""
        if name not in DEFAULTS:
            raise ConfigError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")
        d, w = DEFAULTS[name]
        return cls(
            name,  # type: ignore[arg-type]
            in_channels=channels * (2 * context + 1),
            out_channels=channels,
            depth=d if depth is None else int(depth),
            width=w if width is None else int(width),
        )


def build_network(spec: NetworkSpec) -> nn.Module:
    """A freshly initialised network of ``spec`` (initialisation follows torch's RNG)."""
    if spec.depth < 1 or spec.width < 1:
        raise ConfigError(f"network depth and width must be >= 1, got {spec}")
    cls = {"unet": UNet, "dncnn": DnCNN, "msd": MSDNet}.get(spec.name)
    if cls is None:
        raise ConfigError(f"unknown network {spec.name!r}; expected one of {', '.join(NETWORKS)}")
    return cls(spec.in_channels, spec.out_channels, depth=spec.depth, width=spec.width)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
