"""Data-parallel training: torchrun with 2 CPU processes (gloo) follows the loss trajectory of
one process training on the same global batch with the same seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from n2i_stream import ConfigError
from n2i_stream.learn import TrainConfig, fit, load_checkpoint
from n2i_stream.learn.distributed import (
    fit_distributed,
    load_pairs,
    save_pairs,
    synthetic_pairs,
)

ITERATIONS = 12
# U-Net: no batch normalisation, so the processes' steps are exactly one process's steps
TRAIN = {"network": "unet", "depth": 2, "width": 4, "crop": 16, "batch": 4, "context": 1,
         "seed": 5, "report_every": 1}  # fmt: skip


def config(**fields) -> TrainConfig:
    return TrainConfig(**{**TRAIN, "iterations": ITERATIONS, "minutes": None, "threads": 1,
                          **fields})  # fmt: skip


def reference() -> list[tuple[int, float]]:
    """One process, the ordinary training loop."""
    model = fit(synthetic_pairs(0), config(), strategy="synthetic", geometry={})
    return model.loss_history


def test_one_rank_is_the_ordinary_training_loop(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        model = fit_distributed(synthetic_pairs(0), config(), strategy="synthetic", geometry={})
    finally:
        dist.destroy_process_group()
    ours, theirs = np.array(model.loss_history), np.array(reference())
    assert ours.shape == (ITERATIONS, 2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_training_needs_a_process_group():
    with pytest.raises(ConfigError, match="no process group"):
        fit_distributed(synthetic_pairs(0), config(), strategy="synthetic", geometry={})


def test_pairs_files_round_trip(tmp_path):
    pairs = synthetic_pairs(1)
    save_pairs(tmp_path / "p.npz", pairs, strategy="dynamic", geometry={"cols": 32})
    loaded, meta = load_pairs(tmp_path / "p.npz")
    assert meta == {"strategy": "dynamic", "geometry": {"cols": 32}}
    for (a, b), (c, d) in zip(pairs, loaded, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_torchrun_with_two_cpu_processes_follows_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    trained = tmp_path / "model.pt"
    losses = tmp_path / "losses.json"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TRAIN.items()]
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node=2", "-m", "n2i_stream.learn.distributed",
         "--synthetic=0", f"--iterations={ITERATIONS}", "--threads=1", "--backend=gloo", *args,
         f"--out={trained}", f"--losses={losses}"],
        capture_output=True, text=True, timeout=110, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    two = np.array(json.loads(losses.read_text()))
    one = np.array(reference())
    assert two.shape == one.shape == (ITERATIONS, 2)
    np.testing.assert_array_equal(two[:, 0], one[:, 0])
    # the same steps; only the order of the gradient sums differs
    np.testing.assert_allclose(two[:, 1], one[:, 1], rtol=1e-5)
    assert two[-1, 1] < two[0, 1]  # and it learns
    model = load_checkpoint(trained)
    assert model.iteration == ITERATIONS
