"""Training: configuration, determinism, divergence, checkpoints and an end-to-end denoise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import n2i_stream
from n2i_stream import ConfigError, DataError, ModelError, ParallelGeometry, TrainingError, fbp
from n2i_stream.config import from_mapping
from n2i_stream.core.metrics import field_of_view, psnr
from n2i_stream.core.preprocess import line_integrals, mean_frames
from n2i_stream.learn import (
    TrainConfig,
    check_compatible,
    denoise_volume,
    fit,
    load_checkpoint,
    save_checkpoint,
    train_dynamic,
    train_static,
    train_xrdct,
)
from n2i_stream.learn.infer import denoise_split_average
from n2i_stream.sim.scan import DynamicScan, SimConfig

# One thread: tiny tensors gain nothing from more, and on a busy machine OpenMP threads wait.
TINY = {
    "network": "unet", "depth": 2, "width": 4, "crop": 16, "batch": 2, "minutes": None,
    "threads": 1,
}  # fmt: skip
GEOMETRY = {"rows": 4, "cols": 24, "n": 24, "center_offset": 0.0, "angles": 30}


def noisy_pairs(rng: np.random.Generator, count: int = 2, shape=(4, 24, 24)):
    clean = np.zeros(shape, np.float32)
    clean[:, 6:18, 6:18] = 1.0
    return [
        (
            (clean + 0.3 * rng.standard_normal(shape)).astype(np.float32),
            (clean + 0.3 * rng.standard_normal(shape)).astype(np.float32),
        )
        for _ in range(count)
    ]


def tiny_fit(pairs, iterations: int = 4, **changes):
    config = TrainConfig(**{**TINY, "iterations": iterations, **changes})
    return fit(pairs, config, strategy="static", geometry=GEOMETRY)


def reference(p, g):
    return fbp(p, g, backend="reference")


def test_config_validation():
    with pytest.raises(ConfigError, match="stopping rule"):
        TrainConfig(iterations=None, minutes=None)
    with pytest.raises(ConfigError, match="context"):
        TrainConfig(context=-1)
    with pytest.raises(ConfigError, match="unknown key 'epochs'"):
        from_mapping(TrainConfig, {"epochs": 3})
    config = from_mapping(TrainConfig, {"network": "dncnn", "minutes": 1, "iterations": 10})
    assert (config.network, config.minutes, config.iterations) == ("dncnn", 1.0, 10)


def test_same_seed_same_weights(rng):
    pairs = noisy_pairs(rng)
    a = tiny_fit(pairs, seed=3)
    b = tiny_fit(pairs, seed=3)
    c = tiny_fit(pairs, seed=4)
    for (name, wa), wb in zip(
        a.network.state_dict().items(), b.network.state_dict().values(), strict=True
    ):
        assert torch.equal(wa, wb), name
    differs = any(
        not torch.equal(wa, wc)
        for wa, wc in zip(
            a.network.state_dict().values(), c.network.state_dict().values(), strict=True
        )
    )
    assert differs
    assert a.iteration == 4
    assert a.loss_history == b.loss_history


def test_nan_loss_stops_training(rng):
    pairs = noisy_pairs(rng)
    pairs[1] = (pairs[1][0], np.full_like(pairs[1][1], np.nan))
    with pytest.raises(TrainingError, match=r"diverged at iteration \d+"):
        tiny_fit(pairs, iterations=50)


def test_constant_inputs_cannot_be_normalised():
    flat = np.ones((2, 16, 16), np.float32)
    with pytest.raises(DataError, match="normalised"):
        tiny_fit([(flat, flat)])


def test_progress_reports_loss_and_eta(rng):
    reports = []
    config = TrainConfig(**{**TINY, "iterations": 6, "report_every": 2})
    fit(noisy_pairs(rng), config, strategy="static", geometry=GEOMETRY, progress=reports.append)
    assert [r.iteration for r in reports] == [2, 4, 6]
    assert all(r.iterations == 6 and np.isfinite(r.loss) for r in reports)
    assert reports[-1].eta_s == 0.0
    assert "ETA" in str(reports[0])


def test_checkpoint_round_trip_and_compatibility(rng, tmp_path):
    denoiser = tiny_fit(noisy_pairs(rng), context=1)
    path = save_checkpoint(denoiser, tmp_path / "model.pt")
    loaded = load_checkpoint(path)
    volume = noisy_pairs(rng, 1)[0][0]
    np.testing.assert_array_equal(denoise_volume(loaded, volume), denoise_volume(denoiser, volume))
    assert loaded.normalisation == denoiser.normalisation
    assert (loaded.context, loaded.strategy, loaded.spec) == (1, "static", denoiser.spec)
    assert loaded.geometry == GEOMETRY
    assert loaded.config == denoiser.config
    assert loaded.iteration == 4
    assert loaded.software_version == denoiser.software_version == n2i_stream.__version__

    geometry = ParallelGeometry.from_degrees(np.arange(30) * 6.0, rows=4, cols=24)
    check_compatible(loaded, geometry=geometry, network="unet", strategy="static", context=1)
    other = ParallelGeometry.from_degrees(np.arange(20) * 9.0, rows=4, cols=32)
    with pytest.raises(ModelError) as info:
        check_compatible(loaded, geometry=other, network="msd", strategy="dynamic")
    message = str(info.value)
    for difference in ("cols: model 24, asked 32", "angles", "network", "strategy"):
        assert difference in message


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="expected a n2i-stream-denoiser-1"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")


def test_resume_and_fine_tune(rng, tmp_path):
    pairs = noisy_pairs(rng)
    first = tiny_fit(pairs, iterations=3)
    loaded = load_checkpoint(save_checkpoint(first, tmp_path / "m.pt"))
    config = TrainConfig(**{**TINY, "iterations": 2, "network": "dncnn", "context": 0})
    resumed = fit(pairs, config, strategy="static", geometry=GEOMETRY, init=loaded, resume=True)
    assert resumed.iteration == 5
    assert resumed.spec == first.spec  # the checkpoint's network wins over the config's
    assert resumed.context == first.context
    assert resumed.optimizer_state["state"][0]["step"].item() == 5
    # Fine-tuning on new data keeps the normalisation the weights were trained with.
    new = [(2 * a, 2 * b) for a, b in noisy_pairs(rng)]
    tuned = fit(new, config, strategy="static", geometry=GEOMETRY, init=loaded)
    assert tuned.iteration == 2
    assert tuned.normalisation == first.normalisation
    with pytest.raises(ModelError, match="1 data channels, the training data 3"):
        fit(
            [(np.stack([a] * 3), np.stack([b] * 3)) for a, b in new],
            config,
            strategy="xrdct",
            geometry=GEOMETRY,
            channels=3,
            init=loaded,
        )
    with pytest.raises(ConfigError, match="resume"):
        fit(pairs, config, strategy="static", geometry=GEOMETRY, resume=True)


def test_dynamic_needs_two_steps():
    g = ParallelGeometry.from_degrees(np.arange(10) * 18.0, rows=2, cols=16)
    p = np.zeros((10, 2, 16), np.float32)
    with pytest.raises(ConfigError, match="at least 2 training time steps"):
        train_dynamic([p], [g], TrainConfig(**{**TINY, "iterations": 1}))


def test_static_and_xrdct_strategies_train(rng):
    g = ParallelGeometry.from_degrees(np.arange(24) * 7.5, rows=3, cols=16)
    p = rng.random((24, 3, 16)).astype(np.float32)
    config = TrainConfig(**{**TINY, "iterations": 2})
    static = train_static(p, g, config, sections=3, reconstruct=reference)
    assert (static.strategy, static.geometry["angles"], static.channels) == ("static", 24, 1)
    full = reference(p, g)
    assert denoise_volume(static, full).shape == (3, 16, 16)
    inputs = [reference(p[pair], g[pair]) for pair in (np.arange(24) % 3 != j for j in range(3))]
    assert denoise_split_average(static, inputs).shape == (3, 16, 16)
    sino = rng.random((5, 24, 3, 16)).astype(np.float32)
    xrd = train_xrdct(sino, g, config, reconstruct=reference)
    assert (xrd.strategy, xrd.channels, xrd.context, xrd.spec.in_channels) == ("xrdct", 5, 0, 5)
    assert denoise_volume(xrd, np.stack([full] * 5)).shape == (5, 3, 16, 16)


def test_end_to_end_beats_fbp_on_a_tiny_scan():
    """Train on the quiet steps of a small simulated dynamic scan, denoise a later step."""
    sim = SimConfig(
        width=40, rows=4, steps=5, per_step=30, interlace=4, photons=600, dynamics_start=4,
        pore_radius=(0.05, 0.12), seed=1,
    )  # fmt: skip
    scan = DynamicScan(sim)
    arrays = scan.arrays()
    p = line_integrals(arrays.data, mean_frames(arrays.darks), mean_frames(arrays.flats)).data
    steps = [p[k * sim.per_step : (k + 1) * sim.per_step] for k in range(sim.steps)]
    geometries = [scan.step_geometry(k) for k in range(sim.steps)]
    config = TrainConfig(
        network="unet", depth=2, width=8, crop=32, batch=4, iterations=150, minutes=None,
        lr=3e-3, seed=0, threads=1,
    )  # fmt: skip
    denoiser = train_dynamic(steps[:4], geometries[:4], config, reconstruct=reference)
    later = reference(steps[4], geometries[4])
    truth = scan.ground_truth(4)
    mask = field_of_view(sim.width, xp=np)
    before = psnr(later, truth, mask=mask)
    after = psnr(denoise_volume(denoiser, later), truth, mask=mask)
    assert after > before + 2.0, (before, after)


@pytest.mark.gpu
def test_cupy_volumes_train_and_denoise_on_the_gpu(rng):
    """CuPy reconstructions reach torch by DLPack and come back as CuPy."""
    cupy = pytest.importorskip("cupy")
    pairs = [(cupy.asarray(a), cupy.asarray(b)) for a, b in noisy_pairs(rng)]
    denoiser = tiny_fit(pairs, device="cuda")
    assert next(denoiser.network.parameters()).is_cuda
    out = denoise_volume(denoiser, pairs[0][0])
    assert isinstance(out, cupy.ndarray)
    assert out.shape == pairs[0][0].shape


def test_torch_volumes_stay_torch(rng):
    denoiser = tiny_fit(noisy_pairs(rng))
    volume = torch.from_numpy(noisy_pairs(rng, 1)[0][0])
    out = denoise_volume(denoiser, volume)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), denoise_volume(denoiser, volume.numpy()), rtol=1e-6)


def test_bench_quality_runs_on_a_tiny_scan(capsys):
    from n2i_stream.cli import main

    argv = ["bench", "quality", "--width", "40", "--rows", "3", "--steps", "4", "--per-step"]
    argv += ["24", "--train-steps", "2", "--iterations", "3", "--no-baselines", "--threads", "1"]
    assert main([*argv, "--keep-low", "4"]) == 0
    out = capsys.readouterr().out
    assert "FBP" in out
    assert "Noise2Inverse" in out
    assert "Noise2Inverse, coarse from FBP σ=4" in out
    assert "3 iterations" in out
