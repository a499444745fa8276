"""Networks, 2.5D context stacks, augmentation and tiled inference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from n2i_stream import ConfigError, DataError
from n2i_stream.learn import Denoiser, NetworkSpec, TrainConfig, build_network, count_parameters
from n2i_stream.learn.infer import denoise_volume, tile_starts
from n2i_stream.learn.networks import MSDNet
from n2i_stream.learn.patches import Normalisation, context_stack, dihedral, pad_slices


@pytest.mark.parametrize("name", ["unet", "dncnn", "msd"])
@pytest.mark.parametrize(("channels", "context", "size"), [(1, 2, (32, 32)), (3, 0, (37, 45))])
def test_output_shapes(name, channels, context, size):
    spec = NetworkSpec.for_data(name, channels=channels, context=context, depth=3, width=4)
    net = build_network(spec)
    assert spec.in_channels == channels * (2 * context + 1)
    x = torch.randn(2, spec.in_channels, *size)
    assert net(x).shape == (2, channels, *size)
    assert count_parameters(net) > 0


def test_msd_every_layer_sees_all_earlier_maps():
    depth, c_in, c_out = 23, 5, 1
    net = MSDNet(c_in, c_out, depth=depth, width=1)
    assert net.dilations[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2]
    for i, layer in enumerate(net.layers):
        assert layer.in_channels == c_in + i
        assert layer.dilation == (net.dilations[i],) * 2
    # 3x3 weights + bias per layer, then the 1x1 output layer over every map.
    expected = sum((c_in + i) * 9 + 1 for i in range(depth)) + (c_in + depth) * c_out + c_out
    assert count_parameters(net) == expected


def test_unknown_network_and_bad_sizes():
    with pytest.raises(ConfigError, match="unknown network"):
        NetworkSpec.for_data("resnet")
    with pytest.raises(ConfigError, match="depth and width"):
        build_network(NetworkSpec("unet", 1, 1, depth=0, width=4))


def test_context_stack_replicates_the_end_slices():
    z = torch.arange(6, dtype=torch.float32)
    volume = (
        z[None, :, None, None].expand(2, 6, 3, 3) + torch.tensor([0.0, 100.0])[:, None, None, None]
    )
    padded = pad_slices(volume, 2)
    first = context_stack(padded, 0, 2)[:, 0, 0].tolist()
    last = context_stack(padded, 5, 2)[:, 0, 0].tolist()
    middle = context_stack(padded, 3, 2)[:, 0, 0].tolist()
    # Channel-major: all of channel 0's slices, then channel 1's.
    assert first == [0, 0, 0, 1, 2, 100, 100, 100, 101, 102]
    assert last == [3, 4, 5, 5, 5, 103, 104, 105, 105, 105]
    assert middle == [1, 2, 3, 4, 5, 101, 102, 103, 104, 105]
    assert context_stack(pad_slices(volume, 0), 4, 0)[:, 0, 0].tolist() == [4, 104]


def test_dihedral_gives_eight_distinct_invertible_transforms():
    x = torch.arange(12.0).reshape(1, 3, 4)
    seen = {
        tuple(dihedral(x, k).flatten().tolist()) + tuple(dihedral(x, k).shape) for k in range(8)
    }
    assert len(seen) == 8
    for k in range(8):
        y = dihedral(x, k)
        back = torch.rot90(y, -(k % 4), dims=(-2, -1))
        back = torch.flip(back, dims=(-1,)) if k >= 4 else back
        assert torch.equal(back, x)


class PickSlice(nn.Module):
    """Returns one input channel: shows which slice of the 2.5D stack reached the network."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, self.channel : self.channel + 1]


def denoiser_of(network: nn.Module, context: int, mean=0.0, std=1.0) -> Denoiser:
    spec = NetworkSpec("unet", 2 * context + 1, 1, depth=1, width=1)
    return Denoiser(
        network=network,
        spec=spec,
        normalisation=Normalisation(mean, std),
        context=context,
        strategy="dynamic",
        geometry={},
        config=TrainConfig(),
    )


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_denoise_volume_context_and_normalisation(batch):
    volume = np.arange(7, dtype=np.float32)[:, None, None] * np.ones((7, 5, 6), np.float32)
    # Channel 0 of a context-2 stack is the slice two below (clamped at the volume end).
    out = denoise_volume(denoiser_of(PickSlice(0), 2, mean=3.0, std=2.0), volume, batch=batch)
    assert isinstance(out, np.ndarray)
    assert out.shape == volume.shape
    np.testing.assert_allclose(out[:, 0, 0], [0, 0, 0, 1, 2, 3, 4])
    centre = denoise_volume(denoiser_of(PickSlice(2), 2), volume, batch=batch)
    np.testing.assert_array_equal(centre, volume)


def test_tiled_inference_matches_whole_slices():
    torch.manual_seed(0)
    net = build_network(NetworkSpec("dncnn", 3, 1, depth=4, width=8)).eval()
    den = denoiser_of(net, 1)
    volume = np.random.default_rng(0).random((3, 50, 61)).astype(np.float32)
    whole = denoise_volume(den, volume)
    # DnCNN depth 4 sees 4 pixels each side; an overlap of 5 hides every seam.
    tiled = denoise_volume(den, volume, tile=24, overlap=5)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)


def test_keep_low_replaces_the_networks_coarse_scales():
    from n2i_stream.core.denoise import keep_low_frequencies

    class Offset(nn.Module):  # a network whose only error is a constant shift
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w * x[:, 1:2] + 0.5

    den = denoiser_of(Offset(), 1)
    volume = np.random.default_rng(1).random((3, 20, 20)).astype(np.float32)
    plain = denoise_volume(den, volume)
    np.testing.assert_allclose(plain, volume + 0.5, atol=1e-6)
    kept = denoise_volume(den, volume, keep_low=2.0)
    assert kept.dtype == np.float32
    np.testing.assert_allclose(kept, volume, atol=1e-5)  # the shift is coarse: gone
    np.testing.assert_allclose(kept, keep_low_frequencies(plain, volume, 2.0), atol=1e-6)
    as_torch = denoise_volume(den, torch.from_numpy(volume), keep_low=2.0)  # the DLPack path
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), kept, atol=1e-6)
    with pytest.raises(DataError, match="keep_low must be >= 0"):
        denoise_volume(den, volume, keep_low=-1.0)


def test_tile_starts_cover_the_slice():
    assert tile_starts(50, 64, 8) == [0]
    starts = tile_starts(100, 32, 4)
    assert starts[0] == 0
    assert starts[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in itertools.pairwise(starts))
    with pytest.raises(DataError, match="twice the overlap"):
        tile_starts(100, 16, 8)


def test_denoise_volume_rejects_wrong_channels():
    with pytest.raises(DataError, match="channels"):
        denoise_volume(denoiser_of(PickSlice(0), 0), np.zeros((2, 3, 4, 4), np.float32))
