"""``n2i-stream reconstruct --method n2i``: training, denoising, model reuse and bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from n2i_stream import cli
from n2i_stream.config import from_mapping
from n2i_stream.core.metrics import field_of_view, psnr
from n2i_stream.errors import ConfigError
from n2i_stream.io.dxchange import DataExchangeFile
from n2i_stream.io.dxchange_writer import DataExchangeWriter
from n2i_stream.offline import (
    NETWORKS,
    N2IConfig,
    ReconstructConfig,
    ScanSteps,
    reconstruct_file,
    training_steps,
)
from n2i_stream.sim.scan import DynamicScan, SimConfig

# Five steps of 30 angles, the bubble from step 4: train on 0-3, step 4 is never seen.
SIM = SimConfig(
    width=40, rows=4, steps=5, per_step=30, interlace=4, photons=600, dynamics_start=4,
    pore_radius=(0.05, 0.12), seed=1, n_darks=4, n_flats=4,
)  # fmt: skip
# A tiny U-Net on one thread: a few seconds of training that reliably beats FBP here.
TINY = [
    "--network",
    "unet",
    "--depth",
    2,
    "--width",
    8,
    "--crop",
    32,
    "--batch",
    4,
    "--lr",
    3e-3,
    "--threads",
    1,
]
TRAIN = ["--train-steps", 4, "--dynamics-start", 4, "--iterations", 150, *TINY]


def n2i(*argv):
    return cli.main(["reconstruct", *map(str, argv)])


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "scan.h5"
    with DataExchangeWriter(
        path, rows=SIM.rows, cols=SIM.width, frames_per_step=SIM.per_step
    ) as writer:
        for frame in DynamicScan(SIM).frames():
            writer.write_frame(frame)
    return path


@pytest.fixture(scope="module")
def trained(scan_file, tmp_path_factory):
    """One training run through the CLI: (results file, model file)."""
    directory = tmp_path_factory.mktemp("trained")
    out, model = directory / "recon.h5", directory / "model.pt"
    assert n2i(scan_file, "--out", out, *TRAIN, "--save-model", model, "--quiet") == 0
    return out, model


def read(path):
    with h5py.File(path, "r") as f:
        return {
            "fbp": f["reconstruction/fbp"][()],
            "denoised": f["reconstruction/denoised"][()],
            "time_step": f["reconstruction/time_step"][()],
            "loss": f["training/loss"][()],
            "attrs": dict(f.attrs),
        }


def test_writes_fbp_denoised_loss_and_model_info(trained):
    out, model = trained
    r = read(out)
    assert r["fbp"].shape == r["denoised"].shape == (SIM.steps, SIM.rows, SIM.width, SIM.width)
    assert r["denoised"].dtype == np.float32
    assert np.isfinite(r["denoised"]).all()
    np.testing.assert_array_equal(r["time_step"], range(SIM.steps))
    assert r["loss"].shape == (150,)  # one value per iteration
    assert np.isfinite(r["loss"]).all()
    assert r["loss"][-20:].mean() < r["loss"][:20].mean()
    attrs = r["attrs"]
    assert attrs["method"] == "n2i"
    assert attrs["strategy"] == "dynamic"
    np.testing.assert_array_equal(attrs["training_steps"], [0, 1, 2, 3])
    info = json.loads(attrs["model"])
    assert info["source"] == "trained"
    assert info["saved_to"] == str(model.resolve())
    assert (info["network"], info["depth"], info["width"]) == ("unet", 2, 8)
    assert info["parameters"] > 1000
    assert info["iterations"] == 150
    assert info["geometry"]["angles"] == SIM.per_step
    training = json.loads(attrs["training_config"])
    assert training["iterations"] == 150
    assert training["minutes"] is None
    assert json.loads(attrs["config"])["n2i"]["train_steps"] == 4
    assert model.exists()


def test_denoised_beats_fbp_on_the_unseen_step(trained):
    r = read(trained[0])
    scan = DynamicScan(SIM)
    mask = field_of_view(SIM.width, xp=np)
    for step in (0, 4):  # a training step, and the bubble step training never saw
        truth = scan.ground_truth(step)
        before = psnr(r["fbp"][step], truth, mask=mask)
        after = psnr(r["denoised"][step], truth, mask=mask)
        assert after > before + 2.0, (step, before, after)


def test_model_reuse_gives_the_same_volumes(trained, scan_file, tmp_path, capsys):
    first, model = trained
    out = tmp_path / "again.h5"
    assert n2i(scan_file, "--out", out, "--model", model, "--network", "unet") == 0
    stdout = capsys.readouterr().out
    assert "wrote /reconstruction/fbp and /reconstruction/denoised (5, 4, 40, 40)" in stdout
    assert f"from {model.resolve()}" in stdout
    a, b = read(first), read(out)
    np.testing.assert_array_equal(b["fbp"], a["fbp"])
    np.testing.assert_array_equal(b["denoised"], a["denoised"])
    np.testing.assert_allclose(b["loss"], a["loss"])  # the model's own training history
    info = json.loads(b["attrs"]["model"])
    assert info["source"] == str(model.resolve())
    assert "training_steps" not in b["attrs"]


def test_keep_low_takes_the_fbps_coarse_scales(trained, scan_file, tmp_path):
    from n2i_stream.core.denoise import keep_low_frequencies

    first, model = trained
    out = tmp_path / "kept.h5"
    assert n2i(scan_file, "--out", out, "--model", model, "--keep-low", 3, "--quiet") == 0
    a, b = read(first), read(out)
    assert b["attrs"]["keep_low"] == 3.0
    assert a["attrs"]["keep_low"] == 0.0
    np.testing.assert_array_equal(b["fbp"], a["fbp"])
    expected = keep_low_frequencies(a["denoised"][4], a["fbp"][4], 3.0)
    np.testing.assert_allclose(b["denoised"][4], expected, atol=1e-6)


def test_progress_and_summary_reach_the_terminal(trained, scan_file, tmp_path, capsys):
    _, model = trained
    assert n2i(scan_file, "--out", tmp_path / "r.h5", "--model", model, "--steps", "4") == 0
    out = capsys.readouterr().out
    assert "(1, 4, 40, 40)" in out
    assert "denoiser: unet (" in out
    assert "parameters, context 2)" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--train-steps", 1], "needs at least 2 training time steps, got --train-steps 1"),
        (["--train-steps", 5], "--train-steps 5 uses every one of the 5 selected time steps"),
        (["--train-steps", 2, "--steps", "3:"], "select at least 3 time steps (--steps)"),
        (
            ["--train-steps", 4, "--dynamics-start", 3],
            "training time steps 0..3 overlap the dynamics from time step 3",
        ),
        (["--train-steps", 2, "--steps", "2:", "--dynamics-start", 3], "select earlier"),
        (["--strategy", "dynamic"], "the dynamic strategy needs --train-steps K"),
        (["--strategy", "static", "--train-steps", 2], "--train-steps is for the dynamic"),
        (["--method", "fbp", "--train-steps", 4], "--train-steps only applies to --method n2i"),
        (
            ["--model", "MODEL", "--size", 32],
            "model does not fit this data (n: model 40, asked 32)",
        ),
        (["--model", "MODEL", "--network", "dncnn"], "network: model 'unet', asked 'dncnn'"),
        (["--model", "MODEL", "--context", 1], "context: model 2, asked 1"),
        (["--model", "MODEL", "--center-offset", 2], "center_offset: model 0.0, asked 2.0"),
        (["--model", "MODEL", "--iterations", 3], "--iterations only applies to training"),
        (["--model", "missing.pt"], "missing.pt: no such model file"),
        (["--model", "MODEL", "--keep-low", 0], "--keep-low must be > 0 pixels, got 0.0"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_file(
    argv, expected, trained, scan_file, tmp_path, capsys
):
    argv = [trained[1] if a == "MODEL" else a for a in argv]
    out = tmp_path / "recon.h5"
    code = n2i(scan_file, "--out", out, *argv, "--quiet")
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("n2i-stream reconstruct: error: ")
    assert expected in lines[0]
    assert not out.exists()


def test_a_diverging_run_says_nothing_was_written(scan_file, tmp_path, capsys):
    out = tmp_path / "recon.h5"
    argv = ["--train-steps", 4, "--iterations", 20, *TINY, "--lr", 1e30]
    assert n2i(scan_file, "--out", out, *argv, "--save-model", tmp_path / "m.pt") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "training diverged at iteration" in lines[0]
    assert "lower the learning rate" in lines[0]
    assert lines[0].endswith("no results file was written")
    assert not out.exists()
    assert not (tmp_path / "m.pt").exists()


def test_a_model_with_non_finite_output_stops_and_leaves_nan(trained, scan_file, tmp_path, capsys):
    import torch

    from n2i_stream.learn import load_checkpoint, save_checkpoint

    denoiser = load_checkpoint(trained[1])
    with torch.no_grad():
        next(denoiser.network.parameters()).fill_(float("nan"))
    broken = save_checkpoint(denoiser, tmp_path / "broken.pt")
    out = tmp_path / "recon.h5"
    assert n2i(scan_file, "--out", out, "--model", broken, "--quiet") == 2
    assert "output for time step 0 is not finite" in capsys.readouterr().err
    r = read(out)
    assert np.isfinite(r["fbp"][0]).all()  # the step's FBP is kept ...
    assert np.isnan(r["denoised"][0]).all()  # ... its denoised slot stays unwritten


def test_existing_model_file_needs_overwrite(scan_file, trained, tmp_path, capsys):
    model = tmp_path / "model.pt"
    model.write_bytes(b"keep")
    out = tmp_path / "recon.h5"
    assert n2i(scan_file, "--out", out, *TRAIN, "--save-model", model, "--quiet") == 2
    assert "exists; choose another --save-model or pass --overwrite" in capsys.readouterr().err
    assert model.read_bytes() == b"keep"
    assert not out.exists()


def test_static_strategy_on_the_tooth(tooth_path, tmp_path):
    reports = []
    config = ReconstructConfig(
        input=str(tooth_path),
        output=str(tmp_path / "tooth.h5"),
        method="n2i",
        center_offset=-23.6,
        rows=(0, 1),
        n2i=N2IConfig(
            strategy="static",
            network="unet",
            iterations=3,
            depth=2,
            width=4,
            crop=32,
            batch=2,
            threads=1,
        ),
    )
    result = reconstruct_file(config, train_progress=reports.append)
    assert [p.iteration for p in reports] == [1, 2, 3]
    assert result.model is not None
    assert result.model["strategy"] == "static"
    r = read(result.output)
    assert r["denoised"].shape == (1, 1, 640, 640)
    assert np.isfinite(r["denoised"]).all()
    assert r["denoised"].std() > 0
    assert r["attrs"]["strategy"] == "static"
    assert json.loads(r["attrs"]["model"])["geometry"]["angles"] == 181


def test_training_steps_follow_the_selection(scan_file):
    def chosen(steps=(None, None), **n2i):
        config = ReconstructConfig(
            input=str(scan_file),
            output="unused.h5",
            steps=steps,
            method="n2i",
            n2i=N2IConfig(**n2i),
        )
        with DataExchangeFile(scan_file) as scan:
            return list(training_steps(ScanSteps(scan, config), config.n2i))

    assert chosen(train_steps=3) == [0, 1, 2]
    assert chosen((1, None), train_steps=2, dynamics_start=3) == [1, 2]
    assert chosen((2, None), strategy="static") == [2]
    with pytest.raises(ConfigError, match="use --train-steps <= 2"):
        chosen((1, None), train_steps=3, dynamics_start=3)


def test_config_round_trips_and_rejects_mixtures():
    config = from_mapping(
        ReconstructConfig,
        {
            "input": "a.h5",
            "output": "b.h5",
            "method": "n2i",
            "n2i": {"train_steps": 4, "network": "dncnn", "minutes": 2},
        },
    )
    assert config.n2i == N2IConfig(train_steps=4, network="dncnn", minutes=2.0)
    with pytest.raises(ConfigError, match="needs its settings"):
        ReconstructConfig(input="a.h5", output="b.h5", method="n2i")
    with pytest.raises(ConfigError, match="only apply to method 'n2i'"):
        ReconstructConfig(input="a.h5", output="b.h5", n2i=N2IConfig(train_steps=2))
    with pytest.raises(ConfigError, match="--sections is for the static strategy"):
        N2IConfig(train_steps=2, sections=3)
    with pytest.raises(ConfigError, match="--network 'resnet'"):
        N2IConfig(train_steps=2, network="resnet")  # type: ignore[arg-type]


def test_train_config_stopping_rules():
    assert N2IConfig(train_steps=2).train_config().minutes == 5.0
    only_iterations = N2IConfig(train_steps=2, iterations=10).train_config()
    assert (only_iterations.iterations, only_iterations.minutes) == (10, None)
    both = N2IConfig(train_steps=2, iterations=10, minutes=1).train_config()
    assert (both.iterations, both.minutes) == (10, 1.0)
    assert both.report_every == 1


def test_network_names_agree_with_the_learning_code():
    from n2i_stream.learn import NETWORKS as LEARN_NETWORKS

    assert tuple(NETWORKS) == tuple(LEARN_NETWORKS)
