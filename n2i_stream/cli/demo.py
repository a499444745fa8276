"""``n2i-stream demo``: the simulated beamline end to end (the README's quick start).

Simulates a dynamic scan (foam with a growing water bubble), writes it as a Data Exchange file,
reconstructs every time step and saves a PNG of the last step next to its ground truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the simulated beamline end to end (the quick start)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (%(default)s)")


def _save_png(path: Path, panels: dict[str, object]) -> None:
    import numpy as np
    from PIL import Image

    images = [np.asarray(p, dtype=np.float32) for p in panels.values()]
    lo, hi = np.percentile(images[-1], [1, 99.5])
    scaled = [np.clip((im - lo) / max(hi - lo, 1e-12), 0, 1) for im in images]
    gap = np.ones((scaled[0].shape[0], 4), np.float32)
    row = np.concatenate([x for im in scaled for x in (im, gap)][:-1], axis=1)
    Image.fromarray((row * 255).astype(np.uint8)).resize(
        (row.shape[1] * 3, row.shape[0] * 3), Image.NEAREST
    ).save(path)


def run(args: argparse.Namespace) -> int:
    import h5py

    from ..core.metrics import psnr
    from ..io.dxchange_writer import DataExchangeWriter
    from ..sim.scan import DynamicScan, SimConfig, describe
    from .reconstruct import ReconstructConfig, reconstruct_file

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = SimConfig(seed=args.seed)
    scan = DynamicScan(config)
    scan_path, recon_path = out / "scan.h5", out / "recon.h5"
    print(f"simulating {describe(config)}")
    with DataExchangeWriter(
        scan_path, rows=config.rows, cols=config.width, frames_per_step=config.per_step
    ) as writer:
        for frame in scan.frames():
            writer.write_frame(frame)
    print(f"wrote {scan_path}")
    result = reconstruct_file(
        ReconstructConfig(input=str(scan_path), output=str(recon_path), overwrite=True)
    )
    print(f"reconstructed {len(result.time_steps)} time steps into {recon_path}")
    last = config.steps - 1
    truth = scan.ground_truth(last)
    with h5py.File(recon_path, "r") as f:
        volume = f["/reconstruction/fbp"][last]
    z = config.rows // 2
    print(f"time step {last}: FBP PSNR {psnr(volume, truth):.2f} dB against the ground truth")
    png = out / "last_step.png"
    _save_png(png, {"fbp": volume[z], "truth": truth[z]})
    print(f"wrote {png} (FBP | ground truth, slice {z} of time step {last})")
    return 0
