"""``n2i-stream bench quality``: Noise2Inverse against conventional methods on a simulated
dynamic scan with ground truth.

The simulated beamline (foam cylinder with pores, a water bubble growing from ``dynamics_start``,
interlaced angles, Poisson noise) gives K quiet time steps to train on; every method is scored on
the later steps — the ones with the bubble, never seen in training — by PSNR and SSIM against
the ground truth, inside the field of view (the disk of radius n/2 every angle sees; all rows;
data range = the truth's range there), identically for all methods:

``FBP``             one time step, Ram-Lak.
``Gaussian``        3-D Gaussian blur of FBP, σ chosen on the ground truth (an upper bound).
``TV``              3-D TV (ROF) denoising of FBP, weight chosen on the ground truth (upper bound).
``Paganin+FBP``     single-material phase retrieval before FBP, α chosen on the ground truth.
``Noise2Inverse``   dynamic strategy on the quiet steps, blind: no ground truth anywhere.

Optional comparisons train more networks in the same budget: 2D (C = 0) against 2.5D, and the
three architectures; ``--static`` compares the two ways of applying a static-strategy network
(to the full reconstruction, or averaged over the split inputs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

HELP = "denoising quality: Noise2Inverse vs FBP, Gaussian, TV and Paganin on a simulated scan"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per network")
    parser.add_argument(
        "--iterations", type=int, default=None, help="training steps (default: budget only)"
    )
    parser.add_argument("--network", default="dncnn", choices=("unet", "dncnn", "msd"))
    parser.add_argument("--context", type=int, default=2, help="2.5D context slices (0 = 2D)")
    parser.add_argument("--train-steps", type=int, default=4, help="quiet steps to train on")
    scan = parser.add_argument_group("scan (defaults: the issue's benchmark scan)")
    scan.add_argument("--width", type=int, default=128, help="detector columns")
    scan.add_argument("--rows", type=int, default=16, help="detector rows")
    scan.add_argument("--steps", type=int, default=12, help="time steps")
    scan.add_argument("--per-step", type=int, default=120, help="angles per time step")
    scan.add_argument("--photons", type=float, default=1500.0, help="photons per pixel")
    parser.add_argument("--seed", type=int, default=0, help="simulation and training seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument(
        "--compare-context", action="store_true", help="also train a 2D network (context 0)"
    )
    parser.add_argument(
        "--compare-networks", action="store_true", help="also train the other architectures"
    )
    parser.add_argument(
        "--static", action="store_true", help="static strategy: full-recon vs split-average"
    )
    parser.add_argument(
        "--keep-low",
        type=float,
        action="append",
        metavar="PX",
        help="also score the main network with the FBP's scales coarser than a Gaussian of PX "
        "pixels (repeatable; what `reconstruct --keep-low` costs on this scan)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip Gaussian, TV and Paganin")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    method: str
    psnr: float
    ssim: float
    note: str = ""


@dataclass
class Scan:
    """The simulated scan, reduced to what the methods need."""

    steps: list[Any]  # line integrals per step (angles, rows, cols)
    transmission: list[Any]  # flat/dark-corrected I/I0 per step
    geometries: list[Any]
    truth: list[Any]
    fbp: list[Any]
    describe: str


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def simulate(args: argparse.Namespace) -> Scan:
    """The scan of ``args`` (default: 128 columns, 16 rows, 12 steps of 120 angles, interlace
    4, 1500 photons), the bubble appearing at step ``train_steps``."""
    import numpy as np

    from ..core.fbp import fbp
    from ..core.preprocess import line_integrals, mean_frames
    from ..sim.scan import DynamicScan, SimConfig, describe

    config = SimConfig(
        width=args.width,
        rows=args.rows,
        steps=args.steps,
        per_step=args.per_step,
        interlace=4,
        photons=args.photons,
        dynamics_start=args.train_steps,
        seed=args.seed,
    )
    scan = DynamicScan(config)
    arrays = scan.arrays()
    dark, flat = mean_frames(arrays.darks), mean_frames(arrays.flats)
    p = line_integrals(arrays.data, dark, flat).data
    per = config.per_step
    steps = [p[k * per : (k + 1) * per] for k in range(config.steps)]
    transmission = [np.exp(-s) for s in steps]
    geometries = [scan.step_geometry(k) for k in range(config.steps)]
    return Scan(
        steps=steps,
        transmission=transmission,
        geometries=geometries,
        truth=[scan.ground_truth(k) for k in range(config.steps)],
        fbp=[fbp(s, g) for s, g in zip(steps, geometries, strict=True)],
        describe=describe(config),
    )


class Scorer:
    """PSNR and SSIM over the evaluation steps, inside the field of view."""

    def __init__(self, scan: Scan, steps: Sequence[int]) -> None:
        import numpy as np

        from ..core.metrics import field_of_view

        self.scan = scan
        self.steps = list(steps)
        self.mask = field_of_view(scan.truth[0].shape[-1], xp=np)

    def __call__(self, volumes: Sequence[Any], steps: Sequence[int] | None = None) -> Row:
        from ..core.metrics import psnr, ssim

        steps = self.steps if steps is None else list(steps)
        ps, ss = [], []
        for v, k in zip(volumes, steps, strict=True):
            ps.append(psnr(v, self.scan.truth[k], mask=self.mask))
            ss.append(ssim(v, self.scan.truth[k], mask=self.mask))
        return Row("", sum(ps) / len(ps), sum(ss) / len(ss))


def _tune(
    name: str,
    values: Sequence[float],
    apply: Callable[[float, int], Any],
    score: Scorer,
    search_steps: Sequence[int],
    unit: str,
) -> Row:
    """Grid search on the ground truth of ``search_steps`` (best PSNR and best SSIM separately,
    refining once between the best value's neighbours), then score all steps at the best."""

    def at(value: float, steps: Sequence[int]) -> Row:
        return score([apply(value, k) for k in steps], steps)

    grid = {v: at(v, search_steps) for v in values}
    for metric in ("psnr", "ssim"):
        for _ in range(3):  # a best value on the edge of the grid: extend it outwards
            ordered = sorted(grid)
            best = max(ordered, key=lambda v: getattr(grid[v], metric))
            if best == ordered[0]:
                grid[best**2 / ordered[1]] = at(best**2 / ordered[1], search_steps)
            elif best == ordered[-1]:
                grid[best**2 / ordered[-2]] = at(best**2 / ordered[-2], search_steps)
            else:
                break
        ordered = sorted(grid)
        best = max(ordered, key=lambda v: getattr(grid[v], metric))
        i = ordered.index(best)
        for j in (i - 1, i + 1):
            if 0 <= j < len(ordered):
                mid = math.sqrt(best * ordered[j])
                if mid not in grid:
                    grid[mid] = at(mid, search_steps)
    best_p = max(grid, key=lambda v: grid[v].psnr)
    best_s = max(grid, key=lambda v: grid[v].ssim)
    final_p = at(best_p, score.steps)
    final_s = final_p if best_s == best_p else at(best_s, score.steps)
    note = f"{unit} {best_p:.3g} (PSNR), {best_s:.3g} (SSIM), tuned on truth"
    return Row(name, final_p.psnr, final_s.ssim, note)


def baselines(scan: Scan, score: Scorer) -> list[Row]:
    """FBP and the truth-tuned conventional methods."""
    import numpy as np

    from ..core.denoise import gaussian_filter, tv_denoise
    from ..core.fbp import fbp
    from ..core.phase import paganin_line_integrals

    rows = [replace(score([scan.fbp[k] for k in score.steps]), method="FBP", note="one step")]
    # Search on the first and last evaluation steps (smallest and largest bubble).
    search = [score.steps[0], score.steps[-1]]
    t = time.perf_counter()
    rows.append(
        _tune(
            "Gaussian + FBP",
            [0.5, 0.7, 1.0, 1.4, 2.0],
            lambda s, k: gaussian_filter(scan.fbp[k], s, dims=3),
            score,
            search,
            "σ",
        )
    )
    _log(f"  Gaussian done ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    truth_range = float(np.ptp(scan.truth[score.steps[0]][:, score.mask]))
    rows.append(
        _tune(
            "TV (3D) + FBP",
            [truth_range * f for f in (0.05, 0.09, 0.16, 0.28, 0.5)],
            lambda w, k: tv_denoise(scan.fbp[k], w, dims=3),
            score,
            search,
            "weight",
        )
    )
    _log(f"  TV done ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    rows.append(
        _tune(
            "Paganin + FBP",
            [0.03, 0.1, 0.3, 1.0, 3.0],
            lambda a, k: fbp(
                paganin_line_integrals(scan.transmission[k], alpha=a).astype(np.float32),
                scan.geometries[k],
            ),
            score,
            search,
            "α",
        )
    )
    _log(f"  Paganin done ({time.perf_counter() - t:.0f} s)")
    return rows


def train_and_score(
    scan: Scan,
    score: Scorer,
    config: Any,
    train_steps: int,
    label: str,
    keep_low: Sequence[float] = (),
) -> tuple[list[Row], dict[str, Any]]:
    """Noise2Inverse (dynamic strategy) on the quiet steps, applied to the evaluation steps;
    one more row per ``keep_low`` sigma (the FBP's coarse scales kept)."""
    from ..core.denoise import keep_low_frequencies
    from ..learn import count_parameters, denoise_volume, train_dynamic

    last = [0.0]

    def progress(p: Any) -> None:
        if p.elapsed_s - last[0] >= 30 or p.eta_s == 0:
            last[0] = p.elapsed_s
            _log(f"  {label}: {p}")

    t = time.perf_counter()
    denoiser = train_dynamic(
        scan.steps[:train_steps], scan.geometries[:train_steps], config, progress=progress
    )
    total = time.perf_counter() - t
    t = time.perf_counter()
    denoised = [denoise_volume(denoiser, scan.fbp[k]) for k in score.steps]
    infer = (time.perf_counter() - t) / len(score.steps)
    row = score(denoised)
    info = {
        "parameters": count_parameters(denoiser.network),
        "iterations": denoiser.iteration,
        "train_seconds": round(denoiser.training_seconds, 1),
        "setup_and_train_seconds": round(total, 1),
        "inference_seconds_per_step": round(infer, 2),
        "final_loss": denoiser.loss_history[-1][1] if denoiser.loss_history else None,
    }
    note = (
        f"{config.network}, C={config.context}, {info['parameters']:,} params, "
        f"{info['iterations']} it in {info['train_seconds']:.0f} s"
    )
    rows = [replace(row, method=label, note=note)]
    for sigma in keep_low:
        pairs = zip(denoised, score.steps, strict=True)
        kept = [keep_low_frequencies(d, scan.fbp[k], sigma) for d, k in pairs]
        rows.append(replace(score(kept), method=f"{label}, coarse from FBP σ={sigma:g}"))
    return rows, info


def static_comparison(scan: Scan, config: Any, train_steps: int) -> dict[str, Any]:
    """Static strategy on the quiet steps as one scan: direct vs split-average application."""
    import numpy as np

    from ..core.fbp import fbp
    from ..core.splits import static_split
    from ..learn import denoise_split_average, denoise_volume, split_pairs, train_static

    steps = list(range(train_steps))
    projections = np.concatenate([scan.steps[k] for k in steps])
    geometry = scan.geometries[0]
    for k in steps[1:]:
        geometry = geometry.concat(scan.geometries[k])
    score = Scorer(scan, [0])
    denoiser = train_static(projections, geometry, config, sections=4)
    full = fbp(projections, geometry)
    inputs = [inp for inp, _ in split_pairs(projections, geometry, static_split(len(geometry)))]
    rows = {
        "FBP (all angles)": score([full]),
        "N2I applied to the full reconstruction": score([denoise_volume(denoiser, full)]),
        "N2I averaged over the split inputs": score([denoise_split_average(denoiser, inputs)]),
    }
    return {
        "scan": f"steps 0-{train_steps - 1} as one static scan of {len(geometry)} angles, J=4",
        "iterations": denoiser.iteration,
        "rows": {k: {"psnr": v.psnr, "ssim": v.ssim} for k, v in rows.items()},
    }


def format_table(rows: Sequence[Row]) -> str:
    width = max(len(r.method) for r in rows)
    lines = [f"{'method':<{width}}  PSNR dB   SSIM   note", "-" * (width + 40)]
    lines += [f"{r.method:<{width}}  {r.psnr:7.2f}  {r.ssim:6.3f}  {r.note}" for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..learn import TrainConfig

    if not 2 <= args.train_steps < args.steps:
        raise ConfigError(
            f"--train-steps must be in 2..{args.steps - 1} (later steps are scored), "
            f"got {args.train_steps}"
        )
    config = TrainConfig(
        network=args.network,
        context=args.context,
        minutes=args.minutes,
        iterations=args.iterations,
        seed=args.seed,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    _log("simulating the scan ...")
    scan = simulate(args)
    score = Scorer(scan, range(args.train_steps, len(scan.steps)))
    results: dict[str, Any] = {
        "scan": scan.describe,
        "evaluated": f"steps {score.steps[0]}-{score.steps[-1]}, inside the field of view "
        "(disk of radius n/2, all rows), data range of the truth there",
    }
    rows: list[Row] = []
    if args.no_baselines:
        rows.append(replace(score([scan.fbp[k] for k in score.steps]), method="FBP"))
    else:
        _log("baselines (parameters tuned on the ground truth) ...")
        rows += baselines(scan, score)
    runs = [(config, "Noise2Inverse")]
    if args.compare_context:
        other = 0 if config.context else 2
        runs.append((replace(config, context=other), f"Noise2Inverse C={other}"))
    if args.compare_networks:
        runs += [
            (replace(config, network=name), f"Noise2Inverse {name}")
            for name in ("unet", "dncnn", "msd")
            if name != config.network
        ]
    networks = {}
    for i, (cfg, label) in enumerate(runs):
        _log(f"training {label} ({cfg.network}, context {cfg.context}) ...")
        keep = (args.keep_low or []) if i == 0 else []
        more, info = train_and_score(scan, score, cfg, args.train_steps, label, keep)
        rows += more
        networks[label] = info
    results["rows"] = [r.__dict__ for r in rows]
    results["networks"] = networks
    if args.static:
        _log("static strategy: direct vs split-average ...")
        results["static"] = static_comparison(scan, config, args.train_steps)
    fbp_row = rows[0]
    n2i = next(r for r in rows if r.method == "Noise2Inverse")
    tv = next((r for r in rows if r.method.startswith("TV")), None)
    results["targets"] = {
        "n2i_minus_fbp_db": n2i.psnr - fbp_row.psnr,
        "n2i_minus_tv_db": None if tv is None else n2i.psnr - tv.psnr,
        "n2i_minus_tv_ssim": None if tv is None else n2i.ssim - tv.ssim,
    }
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(results["scan"])
    print(f"scored on {results['evaluated']}")
    print(format_table(rows))
    t = results["targets"]
    print(f"Noise2Inverse - FBP: {t['n2i_minus_fbp_db']:+.2f} dB (target >= +4.5)")
    if tv is not None:
        print(
            f"Noise2Inverse - TV:  {t['n2i_minus_tv_db']:+.2f} dB (target >= +0.5), "
            f"SSIM {t['n2i_minus_tv_ssim']:+.3f} (target >= +0.03)"
        )
    for label, info in networks.items():
        print(
            f"{label}: {info['parameters']:,} parameters, {info['iterations']} iterations in "
            f"{info['train_seconds']:.0f} s of training ({info['setup_and_train_seconds']:.0f} s "
            f"with the pair reconstructions), inference {info['inference_seconds_per_step']:.2f} "
            "s per time step"
        )
    if args.static:
        s = results["static"]
        print(f"static strategy ({s['scan']}, {s['iterations']} it):")
        for name, v in s["rows"].items():
            print(f"  {name:<40} PSNR {v['psnr']:6.2f}  SSIM {v['ssim']:.3f}")
    print(f"total {results['total_seconds']:.0f} s")
    return 0
