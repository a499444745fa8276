"""``n2i-stream compare``: FBP, Paganin+FBP, TV-MIN and Noise2Inverse side by side (a PNG).

The figure follows Hendriksen et al. (Sci Rep 11, 2021, Figs. 5–7): for one time step and slice,
each method in a column with the same grey levels; below each, a magnified region of interest
and a vertical (xz) cross-section through it. FBP and Noise2Inverse come from the results file;
Paganin+FBP and TV-MIN are computed here from the scan, with the geometry the results file was
made with (centre offset, rows, frames per step). With ``--truth`` a ground-truth column is added
and each title carries PSNR and SSIM over the time step's volume inside the field of view.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFileError

__all__ = ["HELP", "Panel", "add_arguments", "compute_panels", "figure_size", "run"]

HELP = "side-by-side figure: FBP, Paganin+FBP, TV-MIN, Noise2Inverse"

#: inches per panel column and per square panel row
_PANEL_INCHES = 3.0
#: TV-MIN λ per projection by default: chosen on the simulated foam (1500 photons/pixel),
#: where it maximised PSNR against the truth; λ grows with the number of angles.
DEFAULT_TV_LAM_PER_ANGLE = 0.004
DEFAULT_PAGANIN_ALPHA = 1.0


@dataclass(frozen=True)
class Panel:
    """One method's reconstruction of the chosen time step, ``(rows, n, n)``, and its scores."""

    title: str
    volume: Any
    psnr: float | None = None
    ssim: float | None = None


def figure_size(columns: int, rows: int, n: int, dpi: int) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of the PNG for ``columns`` methods and ``(rows, n, n)``."""
    width_in, height_in = _figure_inches(columns, rows, n)
    return round(width_in * dpi), round(height_in * dpi)


def _figure_inches(columns: int, rows: int, n: int) -> tuple[float, float]:
    xz = _xz_height(rows, n)
    return columns * _PANEL_INCHES, _PANEL_INCHES * (2 + xz) + 0.9


def _xz_height(rows: int, n: int) -> float:
    # The xz cut keeps the voxel aspect but never shrinks below a readable strip.
    return max(rows / n, 0.2)


# -- inputs --------------------------------------------------------------------------------
def _parse_roi(text: str) -> tuple[int, int, int, int]:
    try:
        xs, ys = text.split(",")
        x0, x1 = (int(v) for v in xs.split(":"))
        y0, y1 = (int(v) for v in ys.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected x0:x1,y0:y1 (integers), got {text!r}") from exc
    return x0, x1, y0, y1


def _check_roi(roi: tuple[int, int, int, int] | None, n: int) -> tuple[int, int, int, int]:
    if roi is None:  # the central quarter
        a, b = (3 * n) // 8, (5 * n) // 8
        return a, max(b, a + 1), a, max(b, a + 1)
    x0, x1, y0, y1 = roi
    if not (0 <= x0 < x1 <= n and 0 <= y0 < y1 <= n):
        raise ConfigError(f"--roi {x0}:{x1},{y0}:{y1} must lie inside the {n}x{n} slice")
    return roi


def _read_results(path: Path, step: int) -> tuple[Any, Any, dict[str, Any]]:
    """FBP and denoised (or None) volumes of ``step`` and the file's attributes."""
    import h5py
    import numpy as np

    try:
        f = h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as exc:
        raise DataFileError(path, None, f"cannot open the results file: {exc}") from exc
    with f:
        if "reconstruction/fbp" not in f or "reconstruction/time_step" not in f:
            raise DataFileError(
                path, "/reconstruction", "is not a results file (needs fbp and time_step)"
            )
        steps = np.asarray(f["reconstruction/time_step"][()])
        hits = np.flatnonzero(steps == step)
        if hits.size == 0:
            raise DataFileError(
                path, "/reconstruction/time_step", f"has no step {step}; it has {steps.tolist()}"
            )
        pos = int(hits[-1])
        fbp = np.asarray(f["reconstruction/fbp"][pos], dtype=np.float32)
        denoised = None
        if "reconstruction/denoised" in f:
            denoised = np.asarray(f["reconstruction/denoised"][pos], dtype=np.float32)
            if np.isnan(denoised).all():
                denoised = None  # slot not written yet
        if np.isnan(fbp).any():
            raise DataFileError(path, "/reconstruction/fbp", f"step {step} is not written yet")
        attrs = dict(f.attrs)
    return fbp, denoised, attrs


def _volume_shape(path: Path) -> tuple[int, int, int]:
    """``(rows, n, n)`` of the results file's volumes, to check requests before any work."""
    import h5py

    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            if "reconstruction/fbp" not in f:
                raise DataFileError(path, "/reconstruction/fbp", "missing: not a results file")
            return tuple(int(v) for v in f["reconstruction/fbp"].shape[1:])  # type: ignore[return-value]
    except OSError as exc:
        raise DataFileError(path, None, f"cannot open the results file: {exc}") from exc


def _read_truth(path: Path, step: int, rows: slice, shape: tuple[int, int, int]) -> Any:
    import h5py
    import numpy as np

    name = "/truth/attenuation"
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(path, None, f"cannot open the truth file: {exc}") from exc
    with f:
        if name not in f:
            raise DataFileError(path, name, "missing; expected (steps, rows, n, n) attenuation")
        ds = f[name]
        if ds.ndim != 4 or not 0 <= step < ds.shape[0] or rows.stop > ds.shape[1]:
            raise DataFileError(
                path,
                name,
                f"has shape {ds.shape}; need step {step} and rows {rows.start}:{rows.stop}",
            )
        truth = np.asarray(ds[step, rows], dtype=np.float32)
    if truth.shape != shape:
        raise DataFileError(path, name, f"slices are {truth.shape[1:]}, the results {shape[1:]}")
    return truth


# -- computation ---------------------------------------------------------------------------
def compute_panels(
    scan_path: Path,
    results_path: Path,
    step: int,
    *,
    truth_path: Path | None = None,
    paganin: dict[str, float] | None = None,
    tv_lam: float | None = None,
    tv_iter: int = 200,
    progress: Any = None,
) -> tuple[list[Panel], dict[str, Any]]:
    """Reconstructions of ``step`` by every method (ground truth first when given).

    ``paganin`` holds ``alpha`` or the four physical parameters of
    :func:`~n2i_stream.core.phase.paganin`; ``tv_lam`` is λ of
    :func:`~n2i_stream.core.tvmin.tv_min` (default: ``DEFAULT_TV_LAM_PER_ANGLE`` × angles);
    ``tv_iter=0`` leaves TV-MIN out. ``progress(i)`` is called after each TV-MIN iteration.
    Returns the panels and facts for the caption (geometry, timings).
    """
    import numpy as np

    from ..core.fbp import fbp
    from ..core.metrics import field_of_view, psnr, ssim
    from ..core.phase import paganin_line_integrals
    from ..core.tvmin import tv_min
    from ..io.dxchange import DataExchangeFile
    from ..offline import ReconstructConfig, ScanSteps

    fbp_volume, denoised, attrs = _read_results(results_path, step)
    rows, n, _ = fbp_volume.shape
    saved = json.loads(attrs.get("config", "{}") or "{}")
    first_row = int(attrs.get("first_row", 0))
    center = float(attrs.get("center_offset", 0.0))
    window = str(attrs.get("filter", saved.get("filter", "ramlak")))
    config = ReconstructConfig(
        input=str(scan_path),
        output=str(results_path),
        frames_per_step=saved.get("frames_per_step"),
        rows=(first_row, first_row + rows),
        n=n,
        references=saved.get("references", "linear"),
        min_transmission=float(saved.get("min_transmission", 1e-4)),
    )
    facts: dict[str, Any] = {"center_offset": center, "rows": (first_row, first_row + rows)}
    with DataExchangeFile(scan_path) as scan:
        steps = ScanSteps(scan, config)
        if not 0 <= step < len(steps.steps):
            raise ConfigError(f"--step {step}: {scan_path} has {len(steps.steps)} time steps")
        projections, _ = steps.projections(step)
        geometry = steps.geometry(step, center)
    facts["angles"] = len(geometry)

    t0 = time.perf_counter()
    # Paganin acts on transmission; -log was already taken (with clipping), so undo it exactly.
    options = paganin or {"alpha": DEFAULT_PAGANIN_ALPHA}
    lines = paganin_line_integrals(np.exp(-projections), **options)
    paganin_volume = fbp(lines, geometry, n=n, window=window)
    facts["paganin_s"] = time.perf_counter() - t0

    panels = [Panel("FBP", fbp_volume), Panel("Paganin+FBP", paganin_volume)]
    lam = DEFAULT_TV_LAM_PER_ANGLE * len(geometry) if tv_lam is None else tv_lam
    facts["tv_lam"] = lam
    if tv_iter > 0:
        t0 = time.perf_counter()
        volume = tv_min(projections, geometry, lam=lam, n_iter=tv_iter, n=n, callback=progress)
        facts["tv_s"] = time.perf_counter() - t0
        panels.append(Panel("TV-MIN", volume))
    if denoised is not None:
        panels.append(Panel("Noise2Inverse", denoised))
    if truth_path is not None:
        truth = _read_truth(truth_path, step, slice(first_row, first_row + rows), (rows, n, n))
        fov = field_of_view(n, xp=np)
        panels = [
            Panel(
                p.title, p.volume, psnr(p.volume, truth, mask=fov), ssim(p.volume, truth, mask=fov)
            )
            for p in panels
        ]
        panels.insert(0, Panel("Ground truth", truth))
    return panels, facts


# -- figure --------------------------------------------------------------------------------
def _grey_levels(panels: list[Panel], z: int) -> tuple[float, float]:
    import numpy as np

    # Truth if present, else the cleanest method, sets the shared range.
    ref = panels[0] if panels[0].title == "Ground truth" else panels[-1]
    values = np.asarray(ref.volume[z], dtype=np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo + 1.0)


def render(
    panels: list[Panel],
    out: Path,
    *,
    z: int,
    roi: tuple[int, int, int, int],
    dpi: int,
    caption: str,
    levels: tuple[float, float] | None = None,
) -> tuple[int, int]:
    """Write the figure to ``out``; returns its pixel size."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
            "compare draws with matplotlib, which is not installed: pip install 'n2i-stream[plot]'"
        ) from exc
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows, n, _ = panels[0].volume.shape
    x0, x1, y0, y1 = roi
    y_cut = (y0 + y1) // 2
    lo, hi = levels or _grey_levels(panels, z)
    width_in, height_in = _figure_inches(len(panels), rows, n)
    fig = plt.figure(figsize=(width_in, height_in), dpi=dpi)
    grid = fig.add_gridspec(
        3,
        len(panels),
        height_ratios=[1, 1, _xz_height(rows, n)],
        left=0.35 / width_in,  # room for the row labels of the first column
        right=1 - 0.05 / width_in,
        bottom=0.02,
        top=1 - 0.9 / height_in,
        wspace=0.04,
        hspace=0.12,
    )
    style = {"cmap": "gray", "vmin": lo, "vmax": hi, "interpolation": "nearest"}
    for col, panel in enumerate(panels):
        axial, zoom, xz = (fig.add_subplot(grid[r, col]) for r in range(3))
        axial.imshow(panel.volume[z], **style)
        axial.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2)
        )
        axial.axhline(y_cut, color="cyan", lw=0.6, ls="--")
        title = panel.title
        if panel.psnr is not None:
            title += f"\nPSNR {panel.psnr:.2f} dB, SSIM {panel.ssim:.3f}"
        axial.set_title(title, fontsize=10)
        zoom.imshow(panel.volume[z, y0:y1, x0:x1], **style)
        for spine in zoom.spines.values():
            spine.set_edgecolor("yellow")
        xz.imshow(panel.volume[:, y_cut, :], aspect="auto", **style)
        xz.axhline(z, color="magenta", lw=0.6, ls=":")
        for ax in (axial, zoom, xz):
            ax.set_xticks([])
            ax.set_yticks([])
        if col == 0:
            zoom.set_ylabel(f"region x {x0}:{x1}, y {y0}:{y1}", fontsize=8)
            xz.set_ylabel(f"xz, y={y_cut}", fontsize=8)
    fig.suptitle(caption, fontsize=9, y=1 - 0.12 / height_in, va="top")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return figure_size(len(panels), rows, n, dpi)


# -- command line --------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scan", type=Path, help="Data Exchange scan the results were made from")
    parser.add_argument("results", type=Path, help="results file (/reconstruction/fbp, denoised)")
    parser.add_argument("--step", type=int, required=True, help="time step to show")
    parser.add_argument(
        "--slice", type=int, default=None, help="slice (row of the volume) to show (middle)"
    )
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument(
        "--roi",
        type=_parse_roi,
        metavar="X0:X1,Y0:Y1",
        help="region to magnify, pixel columns and rows of the slice (the central quarter)",
    )
    parser.add_argument("--truth", type=Path, help="ground truth (/truth/attenuation) to score")
    pg = parser.add_argument_group("Paganin phase retrieval (alpha, or all four physical values)")
    pg.add_argument(
        "--paganin-alpha",
        type=float,
        help=f"low-pass parameter α in pixels² ({DEFAULT_PAGANIN_ALPHA} if no physical values)",
    )
    pg.add_argument("--delta-beta", type=float, help="δ/β of the sample material")
    pg.add_argument("--pixel-size", type=float, help="detector pixel size, metres")
    pg.add_argument("--distance", type=float, help="sample-detector distance, metres")
    pg.add_argument("--energy", type=float, help="photon energy, keV")
    tv = parser.add_argument_group("TV-MIN")
    tv.add_argument(
        "--tv-lam",
        type=float,
        help=f"regularisation λ ({DEFAULT_TV_LAM_PER_ANGLE} x number of angles)",
    )
    tv.add_argument(
        "--tv-iter",
        type=int,
        default=200,
        help="iterations, 0 to leave TV-MIN out (%(default)s; the slowest part: "
        "about 2x2 projector passes per iteration)",
    )
    parser.add_argument(
        "--levels", type=float, nargs=2, metavar=("LO", "HI"), help="grey levels (from the data)"
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution (%(default)s)")


def _paganin_options(args: argparse.Namespace) -> dict[str, float]:
    physical = {
        "delta_beta": args.delta_beta,
        "pixel_size": args.pixel_size,
        "distance": args.distance,
        "energy": args.energy,
    }
    given = {k: v for k, v in physical.items() if v is not None}
    if given and args.paganin_alpha is not None:
        raise ConfigError("give --paganin-alpha or the physical Paganin values, not both")
    if given and len(given) < 4:
        missing = sorted(set(physical) - set(given))
        raise ConfigError(f"Paganin needs all four physical values; missing {missing}")
    if given:
        return given
    alpha = DEFAULT_PAGANIN_ALPHA if args.paganin_alpha is None else args.paganin_alpha
    return {"alpha": alpha}


def run(args: argparse.Namespace) -> int:
    if args.dpi < 10:
        raise ConfigError(f"--dpi must be at least 10, got {args.dpi}")
    if args.tv_iter < 0:
        raise ConfigError(f"--tv-iter must be >= 0 (0 leaves TV-MIN out), got {args.tv_iter}")
    rows, n, _ = _volume_shape(args.results)
    z = rows // 2 if args.slice is None else args.slice
    if not 0 <= z < rows:
        raise ConfigError(f"--slice {z}: the volume has slices 0..{rows - 1}")
    roi = _check_roi(args.roi, n)
    from tqdm import tqdm

    paganin = _paganin_options(args)
    # disable=None shows the bar only on a terminal.
    with tqdm(total=args.tv_iter, desc="TV-MIN", unit="it", disable=None, leave=False) as bar:
        panels, facts = compute_panels(
            args.scan,
            args.results,
            args.step,
            truth_path=args.truth,
            paganin=paganin,
            tv_lam=args.tv_lam,
            tv_iter=args.tv_iter,
            progress=lambda i: bar.update(i - bar.n),
        )
    caption = f"time step {args.step}, slice {z}; {facts['angles']} angles"
    if args.tv_iter:
        caption += f"; TV-MIN λ={facts['tv_lam']:.3g}, {args.tv_iter} iterations"
    if args.truth is not None:
        caption += "; scores over the step's volume inside the field of view"
    size = render(
        panels,
        args.out,
        z=z,
        roi=roi,
        dpi=args.dpi,
        caption=caption,
        levels=tuple(args.levels) if args.levels else None,
    )
    for p in panels:
        if p.psnr is not None:
            print(f"{p.title:>14}: PSNR {p.psnr:6.2f} dB  SSIM {p.ssim:.3f}")
    if not any(p.title == "Noise2Inverse" for p in panels):
        print(f"note: {args.results} has no denoised volume for step {args.step}; column left out")
    timing = f"Paganin+FBP {facts['paganin_s']:.1f} s"
    if "tv_s" in facts:
        timing += f", TV-MIN {facts['tv_s']:.1f} s"
    print(f"wrote {args.out} ({size[0]}x{size[1]} px; {timing})")
    return 0
