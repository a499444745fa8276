"""``n2i-stream compare`` on a small simulated scan and results file built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from n2i_stream.cli import main
from n2i_stream.cli.compare import compute_panels, figure_size
from n2i_stream.core.denoise import gaussian_filter
from n2i_stream.io.dxchange_writer import DataExchangeWriter, write_truth
from n2i_stream.io.results import ResultsWriter
from n2i_stream.offline import ReconstructConfig, reconstruct_file
from n2i_stream.sim.scan import DynamicScan, SimConfig

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

SIM = SimConfig(width=32, rows=4, steps=2, per_step=30, dynamics_start=1, seed=3)
FAST = ["--tv-iter", "15", "--dpi", "40"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A scan, its truth, an FBP-only results file and one with a stand-in denoised volume."""
    d = tmp_path_factory.mktemp("compare")
    scan = DynamicScan(SIM)
    paths = {k: d / f"{k}.h5" for k in ("scan", "truth", "fbp_only", "results")}
    with DataExchangeWriter(
        paths["scan"], rows=SIM.rows, cols=SIM.width, frames_per_step=SIM.per_step
    ) as writer:
        for frame in scan.frames():
            writer.write_frame(frame)
    write_truth(
        paths["truth"],
        (scan.ground_truth(s) for s in range(SIM.steps)),
        shape=(SIM.steps, SIM.rows, SIM.n, SIM.n),
    )
    reconstruct_file(ReconstructConfig(input=str(paths["scan"]), output=str(paths["fbp_only"])))
    with h5py.File(paths["fbp_only"], "r") as f:
        fbp = f["reconstruction/fbp"][()]
        attrs = {k: f.attrs[k] for k in ("center_offset", "first_row", "filter")}
    # The denoised column only needs a plausible volume: a blurred FBP stands in for the network.
    with ResultsWriter(
        paths["results"], rows=SIM.rows, n=SIM.n, kinds=("fbp", "denoised"), attrs=attrs
    ) as writer:
        for step in range(SIM.steps):
            writer.write_step("fbp", step, fbp[step])
            writer.write_step("denoised", step, gaussian_filter(fbp[step], 1.0, dims=3))
    return paths


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_figure_with_truth_has_five_columns_and_scores(files, tmp_path, capsys):
    out = tmp_path / "fig.png"
    argv = ["compare", str(files["scan"]), str(files["results"]), "--step", "1", "--out", str(out)]
    code = main([*argv, "--truth", str(files["truth"]), "--roi", "8:24,10:20", *FAST])
    assert code == 0
    assert png_size(out) == figure_size(5, SIM.rows, SIM.n, 40)
    printed = capsys.readouterr().out
    for name in ("FBP", "Paganin+FBP", "TV-MIN", "Noise2Inverse"):
        assert f"{name}: PSNR" in printed


def test_without_denoised_volume_the_column_is_left_out(files, tmp_path, capsys):
    out = tmp_path / "fig.png"
    argv = ["compare", str(files["scan"]), str(files["fbp_only"]), "--step", "0", "--out", str(out)]
    assert main([*argv, "--slice", "0", *FAST]) == 0
    assert png_size(out) == figure_size(3, SIM.rows, SIM.n, 40)
    assert "column left out" in capsys.readouterr().out
    # --tv-iter 0 leaves TV-MIN out too: FBP and Paganin+FBP remain.
    assert main([*argv, "--tv-iter", "0", "--dpi", "40"]) == 0
    assert png_size(out) == figure_size(2, SIM.rows, SIM.n, 40)


def test_panels_use_the_results_geometry(files):
    panels, facts = compute_panels(
        files["scan"], files["results"], 1, truth_path=files["truth"], tv_iter=15
    )
    titles = [p.title for p in panels]
    assert titles == ["Ground truth", "FBP", "Paganin+FBP", "TV-MIN", "Noise2Inverse"]
    assert facts["angles"] == SIM.per_step
    with h5py.File(files["results"], "r") as f:
        np.testing.assert_array_equal(panels[1].volume, f["reconstruction/fbp"][1])
    for p in panels[1:]:
        assert p.volume.shape == (SIM.rows, SIM.n, SIM.n)
        assert np.isfinite(p.volume).all()
        assert p.psnr is not None
        assert p.ssim is not None
    fbp, paganin, tv = (panels[i].volume for i in (1, 2, 3))
    assert tv.min() >= 0  # TV-MIN ran with its non-negativity constraint

    def roughness(v):
        return float(np.abs(np.diff(v, axis=-1)).mean())

    assert roughness(paganin) < 0.5 * roughness(fbp)  # Paganin low-passes the noise


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--step", "7"], "has no step 7"),
        (["--step", "0", "--roi", "0:40,0:8"], "--roi"),
        (["--step", "0", "--slice", "9"], "--slice 9"),
        (["--step", "0", "--energy", "20"], "missing"),
        (["--step", "0", "--paganin-alpha", "2", "--delta-beta", "1"], "not both"),
    ],
)
def test_bad_requests_exit_2_with_a_message(files, tmp_path, capsys, extra, message):
    argv = ["compare", str(files["scan"]), str(files["results"]), "--out", str(tmp_path / "x.png")]
    assert main([*argv, *extra, *FAST]) == 2
    assert message in capsys.readouterr().err
