"""The live demo (``n2i-stream demo``) end to end, scaled down."""

from __future__ import annotations

import h5py
import numpy as np

from n2i_stream.cli.demo import DemoConfig, run_demo


def test_demo_streams_trains_denoises_and_writes_results_and_png(tmp_path):
    lines: list[str] = []
    config = DemoConfig(out=tmp_path, width=32, rows=4, per_step=24, steps=6, train_steps=3,
                        rate=0.0, train_minutes=0.01, progress_every=0.5)  # fmt: skip
    result = run_demo(config, say=lines.append)
    assert result.status["state"] == "done"
    assert result.status["steps"]["published_denoised"] == 6
    assert result.messages == 12  # every FBP and denoised step reached the PUB subscriber
    assert result.png.exists()
    assert result.png.stat().st_size > 0
    assert result.model is not None
    assert result.model.exists()
    assert np.isfinite(result.psnr_fbp)
    assert result.psnr_denoised is not None
    with h5py.File(result.results, "r") as f:
        assert sorted(f["/reconstruction/time_step"][()].tolist()) == list(range(6))
        assert np.isfinite(f["/reconstruction/denoised"][()]).all()
    assert lines[0].startswith("simulating 6 steps")
    assert any("PSNR" in line for line in lines)
    assert any(line.startswith("dashboard: http://127.0.0.1:") for line in lines)
