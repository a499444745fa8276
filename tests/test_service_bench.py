"""``n2i-stream bench latency`` through the CLI (slow: a detector process and a 128² scan)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from n2i_stream.cli import main
from n2i_stream.learn import TrainConfig, save_checkpoint, train_dynamic
from n2i_stream.sim.scan import DynamicScan, SimConfig


@pytest.mark.slow
def test_bench_latency_reports_every_step(tmp_path, capsys):
    scan = DynamicScan(
        SimConfig(width=128, rows=16, per_step=120, steps=2, dynamics_start=2, supersample=1)
    )
    model = train_dynamic(
        [scan.line_integrals(s).astype(np.float32) for s in range(2)],
        [scan.step_geometry(s) for s in range(2)],
        TrainConfig(depth=2, width=4, crop=32, batch=2, iterations=2, minutes=None, threads=1),
    )
    path = save_checkpoint(model, tmp_path / "tiny.model.pt")
    argv = ["bench", "latency", "--steps", "6", "--rate", "240", "--model", str(path), "--json"]
    assert main(argv) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["steps"] == result["denoised"] == 6
    assert result["state"] == "done"
    assert 0 < result["latency_median_s"] <= result["latency_max_s"]
    assert result["reached_rate"] > 0
