"""``n2i-stream bench heldout``: a no-reference check of Noise2Inverse on a real static scan.

Real data has no ground truth, but it has measurements a reconstruction never saw. Every
``every``-th projection is held out; the rest give the rotation centre (``auto``), an FBP
reconstruction and a Noise2Inverse denoiser (static strategy: the rest's angles in J
interleaved sections). Each reconstruction is projected at the held-out angles
(:func:`~n2i_stream.core.project.forward_project`) and compared with the measured held-out
projections: RMSE and relative error ``‖Ax − p‖ / ‖p‖``, and the RMSE after a least-squares gain
``g`` (``gAx ≈ p``), which leaves out any overall scale difference between our projector and the
measurement. A reconstruction that keeps the object and loses noise predicts the unseen
projections better. Compared: FBP; FBP with a fixed 1-pixel Gaussian blur (a reference: plain
smoothing, not tuned on the held-out data); Noise2Inverse applied to the FBP (the 2021 paper's
way); Noise2Inverse averaged over the split inputs (the 2020 paper's way); and Noise2Inverse
with its coarse scales taken from the FBP (:func:`~n2i_stream.core.denoise.keep_low_frequencies`,
Gaussians of ``keep_low`` pixels): on a sparse-angle scan the network, trained on split
reconstructions full of undersampling streaks, shifts the low spatial frequencies by a little,
invisible in a slice and large along a ray, where the FBP is unbiased and nearly noise-free.

Two regions. *Sample*: each reconstruction set to zero outside the sample's support (the FBP,
smoothed, thresholded and widened by a margin), compared on the detector values whose rays
cross it. *Field of view*: zero outside the disk every angle sees, on the rays crossing it;
here a bias of 1e-4 per pixel in the air, invisible in a slice, adds up to 0.06 along a
600-pixel ray. Measured projections of real scans are rarely zero in air (flat-field drift):
the air level of each held-out projection and row (the median of its values on rays that miss
the sample) is subtracted first, as no reconstruction can predict it. The noise floor is the
RMSE a perfect reconstruction would reach with a perfect projector: the air noise scaled by
``exp(p)`` (Poisson statistics of ``-log`` transmission), a rough estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import ConfigError, DataFileError

if TYPE_CHECKING:
    from ..core.geometry import ParallelGeometry
    from ..learn import Progress, TrainConfig

__all__ = [
    "DEFAULT_INPUT",
    "METHODS",
    "HeldoutConfig",
    "HeldoutReport",
    "PredictionError",
    "add_arguments",
    "format_report",
    "heldout_check",
    "keep_low_name",
    "mse_advantage",
    "prediction_error",
    "run",
    "sample_support",
    "split_heldout",
]

HELP = "no-reference check on a real scan: FBP vs Noise2Inverse predicting held-out projections"

#: where the real scan sits in a checkout next to ../shared (looked up from the working directory)
DEFAULT_INPUT = Path("..") / "shared" / "data" / "tooth.h5"

CAVEATS = (
    "The projector is the adjoint of our backprojector (pixel-driven, linear interpolation), "
    "not the physical line integral: it blurs by about a pixel and ripples by a few per cent "
    "near 45 degrees, so neither reconstruction reaches zero error; both go through the same "
    "projector, which keeps the comparison fair.",
    "The held-out projections carry their own noise, the same for both methods: errors never "
    "fall below it, and the difference between the methods is what counts.",
    "The held-out frames took no part in centring, FBP or training.",
    "A smoother image can predict better without being more faithful: the fixed Gaussian row "
    "shows what plain smoothing does. Beating FBP shows that noise was removed without losing "
    "measured structure, not that finer detail was resolved.",
    "With little noise in the data, the measurement noise of the held-out projections dominates "
    "every error and the differences between the methods stay within a few per cent.",
)


@dataclass(frozen=True)
class HeldoutConfig:
    """How projections are held out and compared."""

    every: int = 10  # hold out every this-many-th projection
    first: int | None = None  # the first held-out projection; None: every // 2
    sections: int = 2  # J of the static Noise2Inverse split of the used projections
    center_offset: float | Literal["auto"] = "auto"  # found on the used projections
    support_sigma: float = 2.0  # Gaussian smoothing before thresholding the sample, pixels
    support_threshold: float = 0.1  # of the smoothed FBP's 99.5th percentile
    support_margin: int = 4  # pixels added around the thresholded sample
    #: Gaussians (pixels) below which Noise2Inverse variants take the FBP's frequencies
    keep_low: tuple[float, ...] = (2.0, 4.0, 8.0)

    def __post_init__(self) -> None:
        problems = []
        if self.every < 3:
            problems.append(f"every must be >= 3 (two used angles around each), got {self.every}")
        if self.first is not None and not 0 <= self.first < self.every:
            problems.append(f"first must be in 0..{self.every - 1}, got {self.first}")
        if self.sections < 2:
            problems.append(f"sections must be >= 2, got {self.sections}")
        if any(not (math.isfinite(s) and s > 0) for s in self.keep_low):
            problems.append(f"keep_low sigmas must be > 0 pixels, got {self.keep_low}")
        if not 0 < self.support_threshold < 1 or self.support_sigma < 0 or self.support_margin < 0:
            problems.append(
                "need 0 < support_threshold < 1, support_sigma >= 0, support_margin >= 0"
            )
        if problems:
            raise ConfigError("heldout: " + "; ".join(problems))


@dataclass(frozen=True)
class PredictionError:
    """How well projected reconstructions predict measured projections over a mask."""

    rmse: float
    relative: float  # ‖Ax − p‖ / ‖p‖
    gain: float  # least-squares g with gAx ≈ p
    rmse_gain: float  # RMSE of gAx − p
    values: int  # detector values compared


#: the method names of a report, in table order (then one :func:`keep_low_name` per sigma);
#: each is compared with the first
METHODS = ("FBP", "FBP + Gaussian 1 px", "Noise2Inverse", "Noise2Inverse, split average")


def keep_low_name(sigma: float) -> str:
    """Report name of Noise2Inverse with the FBP's scales coarser than ``sigma`` pixels."""
    return f"N2I, coarse from FBP σ={sigma:g}"


@dataclass(frozen=True)
class HeldoutReport:
    """Everything :func:`heldout_check` found."""

    held_out: tuple[int, ...]
    used: int
    center_offset: float
    center_method: str
    support_fraction: float  # of the field of view
    air_level: float  # mean air level subtracted from the held-out projections
    errors: dict[str, dict[str, PredictionError]]  # region -> method -> error
    noise_floor: dict[str, float]  # region -> estimated RMSE of a perfect prediction
    #: region -> method -> MSE(FBP) − MSE(method) and its standard error (> 0: method better)
    advantage: dict[str, dict[str, tuple[float, float]]]
    training: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def better(self, region: str, method: str = "Noise2Inverse") -> bool:
        """Whether ``method`` predicts with a lower RMSE than FBP in ``region``."""
        errors = self.errors[region]
        return errors[method].rmse < errors["FBP"].rmse


def split_heldout(n_angles: int, every: int, first: int | None = None) -> tuple[Any, Any]:
    """Indices ``(held_out, used)``: every ``every``-th projection from ``first`` is held out."""
    start = every // 2 if first is None else first
    index = np.arange(n_angles)
    held = index[start::every]
    if held.size == 0 or held.size == n_angles:
        raise ConfigError(f"holding out every {every}th of {n_angles} projections leaves nothing")
    return held, np.setdiff1d(index, held)


def prediction_error(predicted: Any, measured: Any, mask: Any) -> PredictionError:
    """RMSE, relative error and the gain-fitted RMSE of ``predicted`` against ``measured``."""
    a = np.asarray(predicted, dtype=np.float64)[mask]
    p = np.asarray(measured, dtype=np.float64)[mask]
    if a.size == 0:
        raise ConfigError("no detector values to compare: the mask is empty")
    residual = a - p
    gain = float(a @ p / (a @ a)) if (a @ a) > 0 else math.nan
    return PredictionError(
        rmse=float(np.sqrt(np.mean(residual**2))),
        relative=float(np.linalg.norm(residual) / np.linalg.norm(p)),
        gain=gain,
        rmse_gain=float(np.sqrt(np.mean((gain * a - p) ** 2))),
        values=int(a.size),
    )


def mse_advantage(first: Any, second: Any, measured: Any, mask: Any) -> tuple[float, float]:
    """``MSE(first) − MSE(second)`` against ``measured`` over ``mask``, with its standard error.

    The measurement noise adds the same expected amount to both MSEs, so the difference
    estimates how much closer ``second`` is to the noise-free projections. The standard error
    treats each projection row ``(angle, row)`` as one sample: neighbouring detector values
    are correlated, rows of different projections much less so.
    """
    diff = np.where(mask, (first - measured) ** 2 - (second - measured) ** 2, 0.0)
    counts = mask.sum(axis=-1)
    keep = counts > 0
    if not keep.any():
        raise ConfigError("no detector values to compare: the mask is empty")
    means = diff.sum(axis=-1)[keep] / counts[keep]
    weights = counts[keep] / counts[keep].sum()
    mean = float(np.sum(weights * means))
    spread = float(np.sqrt(np.sum(weights * (means - mean) ** 2) / max(1, means.size - 1)))
    return mean, spread


def sample_support(volume: Any, *, sigma: float, threshold: float, margin: int) -> Any:
    """Boolean ``(rows, n, n)`` support: smoothed ``volume`` above ``threshold`` × its 99.5th
    percentile, widened by ``margin`` pixels in each slice."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(volume, np.float64), (0, sigma, sigma))
    inside = smooth > threshold * np.percentile(smooth, 99.5)
    if margin:
        disk = np.hypot(*np.mgrid[-margin : margin + 1, -margin : margin + 1]) <= margin
        inside = ndimage.binary_dilation(inside, structure=disk[None])
    return inside


def _rays_crossing(region: Any, geometry: ParallelGeometry) -> Any:
    """``(angles, rows, cols)`` True where a ray meets ``region`` (its projection is positive)."""
    from ..core.project import forward_project

    return forward_project(region.astype(np.float32), geometry) > 0


def _air_levels(measured: Any, air: Any) -> Any:
    """Median of each projection row over its air values, ``(angles, rows, 1)``; 0 where a row
    has no air."""
    levels = np.zeros((*measured.shape[:2], 1), dtype=np.float64)
    for k, r in np.ndindex(*measured.shape[:2]):
        values = measured[k, r][air[k, r]]
        if values.size:
            levels[k, r, 0] = np.median(values)
    return levels


def heldout_check(
    projections: Any,
    theta_deg: Any,
    train_config: TrainConfig,
    config: HeldoutConfig = HeldoutConfig(),
    *,
    progress: Callable[[Progress], None] | None = None,
) -> HeldoutReport:
    """Hold out projections of a static scan ``(angles, rows, cols)`` (line integrals, angles
    in degrees), reconstruct and denoise from the rest, and compare the predictions."""
    from ..core.center import find_center
    from ..core.denoise import gaussian_filter, keep_low_frequencies
    from ..core.fbp import fbp
    from ..core.geometry import ParallelGeometry
    from ..core.metrics import field_of_view
    from ..core.project import forward_project
    from ..core.splits import static_split
    from ..learn import count_parameters, denoise_split_average, denoise_volume, train_static

    projections = np.asarray(projections, dtype=np.float32)
    angles, rows, cols = projections.shape
    held, used = split_heldout(angles, config.every, config.first)
    base = ParallelGeometry.from_degrees(np.asarray(theta_deg), rows=rows, cols=cols)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if config.center_offset == "auto":
        estimate = find_center(projections[used], base[used])
        center, how = float(estimate.offset), f"auto ({estimate.method})"
    else:
        center, how = float(config.center_offset), "given"
    seconds["center"] = time.perf_counter() - t0
    geometry = base.with_center(center)
    fit_geometry, test_geometry = geometry[used], geometry[held]

    t0 = time.perf_counter()
    recon = fbp(projections[used], fit_geometry)
    seconds["fbp"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    denoiser = train_static(
        projections[used], fit_geometry, train_config, sections=config.sections, progress=progress
    )
    seconds["training"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    volumes = {
        "FBP": recon,
        "FBP + Gaussian 1 px": gaussian_filter(recon, 1.0),
        "Noise2Inverse": denoise_volume(denoiser, recon),
    }
    seconds["denoising"] = time.perf_counter() - t0
    # The split inputs the network was trained on (the targets are not needed here).
    inputs = [
        fbp(projections[used][pair.input], fit_geometry[pair.input])
        for pair in static_split(used.size, config.sections).pairs
    ]
    volumes["Noise2Inverse, split average"] = denoise_split_average(denoiser, inputs)
    for sigma in config.keep_low:
        volumes[keep_low_name(sigma)] = keep_low_frequencies(volumes["Noise2Inverse"], recon, sigma)

    fov = np.broadcast_to(field_of_view(cols, xp=np), recon.shape)
    support = (
        sample_support(
            recon,
            sigma=config.support_sigma,
            threshold=config.support_threshold,
            margin=config.support_margin,
        )
        & fov
    )
    measured = projections[held].astype(np.float64)
    seen = _rays_crossing(fov, test_geometry)
    air = seen & ~_rays_crossing(support, test_geometry)
    levels = _air_levels(measured, air)
    measured -= levels
    noise_var = float(np.var(measured[air])) if air.any() else math.nan
    errors: dict[str, dict[str, PredictionError]] = {}
    floor: dict[str, float] = {}
    advantage: dict[str, dict[str, tuple[float, float]]] = {}
    for name, region in {"sample": support, "field of view": fov}.items():
        rays = _rays_crossing(region, test_geometry)
        predicted = {
            method: forward_project(
                np.where(region, np.asarray(volume, dtype=np.float32), np.float32(0)),
                test_geometry,
            )
            for method, volume in volumes.items()
        }
        errors[name] = {
            method: prediction_error(values, measured, rays) for method, values in predicted.items()
        }
        floor[name] = float(np.sqrt(np.mean(noise_var * np.exp(measured[rays]))))
        advantage[name] = {
            method: mse_advantage(predicted["FBP"], values, measured, rays)
            for method, values in predicted.items()
            if method != "FBP"
        }
    history = denoiser.loss_history
    training = {
        "network": denoiser.spec.name,
        "parameters": count_parameters(denoiser.network),
        "context": denoiser.context,
        "sections": config.sections,
        "iterations": denoiser.iteration,
        "seconds": denoiser.training_seconds,
        "final_loss": history[-1][1] if history else None,
    }
    return HeldoutReport(
        held_out=tuple(int(i) for i in held),
        used=int(used.size),
        center_offset=center,
        center_method=how,
        support_fraction=float(support.sum() / fov.sum()),
        air_level=float(levels.mean()),
        errors=errors,
        noise_floor=floor,
        advantage=advantage,
        training=training,
        seconds=seconds,
    )


# -- command line --------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        type=Path,
        help=f"Data Exchange file of a static scan (default: {DEFAULT_INPUT} from here)",
    )
    parser.add_argument("--step", type=int, default=0, help="time step of the file to use (0)")
    parser.add_argument("--every", type=int, default=10, help="hold out every Nth projection (10)")
    parser.add_argument(
        "--sections",
        type=int,
        default=2,
        help="static split sections J (2: each target section keeps half the angles; with 4, "
        "a sparse-angle scan's quarter sections carry undersampling streaks, which are not "
        "noise)",
    )
    parser.add_argument(
        "--keep-low",
        default="2,4,8",
        metavar="SIGMAS",
        help="Gaussians (pixels, comma-separated) below which Noise2Inverse variants take the "
        "FBP's frequencies; 'none' for no variants (2,4,8)",
    )
    parser.add_argument(
        "--center-offset",
        default="auto",
        metavar="C|auto",
        help="rotation axis offset in pixels, or auto (auto)",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes (5)")
    parser.add_argument("--iterations", type=int, help="training steps, at most (no limit)")
    parser.add_argument(
        "--network",
        choices=("unet", "dncnn", "msd"),
        help="network to train (default: the training default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10 iterations of a tiny U-Net"
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")


def _input(args: argparse.Namespace) -> Path:
    if args.input is not None:
        return args.input
    if not DEFAULT_INPUT.exists():
        raise DataFileError(
            DEFAULT_INPUT,
            None,
            f"no scan given and none at the default place (looked from {Path.cwd()}); pass "
            "--input PATH, a Data Exchange file of a static scan such as the APS tooth scan "
            "distributed with TomoPy",
        )
    return DEFAULT_INPUT


def _read(path: Path, step: int) -> tuple[Any, Any, int]:
    """Line integrals and angles (degrees) of time step ``step``, and the file's step count."""
    from ..io.dxchange import DataExchangeFile
    from ..offline import ReconstructConfig, ScanSteps

    # ScanSteps only reads: the output path is never opened.
    config = ReconstructConfig(input=str(path), output=os.devnull, steps=(step, step + 1))
    with DataExchangeFile(path) as scan:
        steps = ScanSteps(scan, config)
        projections, _ = steps.projections(step)
        return projections, scan.theta[steps.steps.slice(step)], len(steps.steps)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from ..learn import TrainConfig

    if args.quick:
        return TrainConfig(
            network="unet", depth=2, width=8, crop=32, batch=2, iterations=10, minutes=None,
            seed=args.seed, threads=args.threads, report_every=1,
        )  # fmt: skip
    knobs = {"network": args.network} if args.network else {}
    return TrainConfig(
        **knobs,
        iterations=args.iterations,
        minutes=args.minutes,
        seed=args.seed,
        threads=args.threads,
        report_every=5,
    )


def _center(text: str) -> float | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"--center-offset: expected pixels or 'auto', got {text!r}") from exc


def _sigmas(text: str) -> tuple[float, ...]:
    if text.strip() == "none":
        return ()
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--keep-low: expected pixels like 2,4,8 or 'none', got {text!r}"
        ) from exc


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    path = _input(args)
    config = HeldoutConfig(
        every=args.every,
        sections=args.sections,
        center_offset=_center(args.center_offset),
        keep_low=_sigmas(args.keep_low),
    )
    train_config = _train_config(args)
    projections, theta, n_steps = _read(path, args.step)
    with tqdm(desc="training", unit="it", disable=None, leave=False) as bar:

        def progress(p: Progress) -> None:
            bar.total = p.iterations
            bar.update(p.iteration - bar.n)
            bar.set_postfix_str(f"loss {p.loss:.4g}", refresh=False)

        report = heldout_check(projections, theta, train_config, config, progress=progress)
    step = f"time step {args.step} of {n_steps}"
    print(format_report(report, path=path, step=step, every=args.every))
    if args.json is not None:
        args.json.write_text(json.dumps({"input": str(path), **asdict(report)}, indent=2))
    return 0


def format_report(report: HeldoutReport, *, path: Path | str, step: str, every: int) -> str:
    """The report as the text ``bench heldout`` prints."""
    t = report.training
    held = report.held_out
    lines = [
        f"held-out check on {path} ({step}): {len(held)} projections held out (every "
        f"{every}th, from {held[0]}), {report.used} used",
        f"centre offset {report.center_offset:.2f} px ({report.center_method}, on the used "
        f"projections); air level subtracted from the held-out ones: {report.air_level:+.4f} "
        "on average",
        f"Noise2Inverse: {t['network']} ({t['parameters']:,} parameters, context "
        f"{t['context']}), static strategy, {t['sections']} sections, {t['iterations']} "
        f"iterations in {t['seconds']:.0f} s of training",
        "",
        f"{'region':<15}{'method':<30}{'RMSE':>9}{'rel. error':>12}{'gain g':>9}"
        f"{'RMSE after g':>14}",
    ]
    for region, errors in report.errors.items():
        for method, e in errors.items():
            lines.append(
                f"{region:<15}{method:<30}{e.rmse:>9.5f}{e.relative:>12.3%}{e.gain:>9.4f}"
                f"{e.rmse_gain:>14.5f}"
            )
        lines.append(
            f"{region:<15}{'(noise floor, estimated)':<30}{report.noise_floor[region]:>9.5f}"
        )
    lines.append("")
    for region, errors in report.errors.items():
        f = errors["FBP"]
        for method in (m for m in errors if m.startswith(("Noise2Inverse", "N2I"))):
            d = errors[method]
            verdict = "better" if report.better(region, method) else "WORSE"
            gain, se = report.advantage[region][method]
            lines.append(
                f"{region}: {method} predicts the held-out projections {verdict} than FBP "
                f"(RMSE {d.rmse:.5f} vs {f.rmse:.5f}, {100 * (d.rmse / f.rmse - 1):+.1f} %; "
                f"after a gain, {100 * (d.rmse_gain / f.rmse_gain - 1):+.1f} %; "
                f"MSE(FBP) - MSE(it) = {gain:.3g} ± {se:.2g})"
            )
    lines.append(
        f"The sample support covers {report.support_fraction:.1%} of the field of view. "
        "Gain g: the least-squares scale of each prediction, fitted separately."
    )
    lines.append("Caveats:")
    lines.extend(f"- {c}" for c in CAVEATS)
    return "\n".join(lines)
