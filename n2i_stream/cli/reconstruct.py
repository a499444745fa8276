"""``n2i-stream reconstruct``: reconstruct (and denoise) every time step of a Data Exchange scan.

The work is :func:`n2i_stream.offline.reconstruct_file`; this module parses the options, shows
progress (training: iteration, loss and ETA; then the steps) and prints a summary.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..core.filters import FILTERS
from ..errors import ConfigError
from ..offline import METHODS, NETWORKS, STRATEGIES, N2IConfig, Range, ReconstructConfig

__all__ = ["HELP", "add_arguments", "run"]

HELP = "reconstruct (and denoise) a Data Exchange file"

#: option -> (N2IConfig field, type, metavar, help) of the Noise2Inverse options
_N2I_OPTIONS: dict[str, tuple[str, Any, str | None, str]] = {
    "--train-steps": ("train_steps", int, "K", "dynamic: train on the first K selected steps"),
    "--dynamics-start": (
        "dynamics_start", int, "D", "first time step in which the sample changes (K <= D)"
    ),
    "--strategy": ("strategy", STRATEGIES, None, "dynamic (default) or static (one static scan)"),
    "--sections": ("sections", int, "J", "static: interleaved angle sections (4)"),
    "--model": ("model", str, "FILE", "apply this trained model instead of training"),
    "--save-model": ("save_model", str, "FILE", "save the trained model here"),
    "--network": ("network", NETWORKS, None, "network to train (default: the training default)"),
    "--depth": ("depth", int, "N", "network depth (the network's default)"),
    "--width": ("width", int, "N", "network width (the network's default)"),
    "--context": ("context", int, "C", "2.5D context slices above and below"),
    "--iterations": ("iterations", int, "N", "training steps, at most"),
    "--minutes": ("minutes", float, "M", "training time, at most (5 without --iterations)"),
    "--crop": ("crop", int, "PX", "training crop side"),
    "--batch": ("batch", int, "N", "crops per training step"),
    "--lr": ("lr", float, "X", "Adam learning rate"),
    "--seed": ("seed", int, "S", "seed of initialisation and crops"),
    "--threads": ("threads", int, "N", "torch threads for training (0: every core)"),
    "--device": ("device", ("auto", "cpu", "cuda"), None, "where to train and denoise (auto)"),
    "--keep-low": (
        "keep_low", float, "PX", "take the FBP's scales coarser than a Gaussian of PX pixels "
        "(sparse-angle scans, where the network shifts them; off)"
    ),
}  # fmt: skip


# -- command line --------------------------------------------------------------------------
def _range(text: str) -> Range:
    """``a:b``, ``a:``, ``:b`` or a single index ``a`` (= ``a:a+1``)."""
    try:
        if ":" not in text:
            a = int(text)
            return (a, a + 1 if a != -1 else None)
        a_text, b_text = text.split(":")
        return (int(a_text) if a_text else None, int(b_text) if b_text else None)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a:b (integers), got {text!r}") from exc


def _center(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels or 'auto', got {text!r}"
        ) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="Data Exchange file (/exchange/data, theta, darks, flats)")
    parser.add_argument("--out", required=True, help="results file to write (HDF5)")
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="fbp, or n2i: FBP and Noise2Inverse denoising (default: n2i when a Noise2Inverse "
        "option is given, else fbp)",
    )
    parser.add_argument(
        "--frames-per-step",
        type=int,
        help="frames per time step (default: the file's attribute, else one step per 180°)",
    )
    parser.add_argument(
        "--center-offset",
        type=_center,
        default=0.0,
        metavar="C|auto",
        help="rotation axis offset from the detector centre in pixels, or 'auto' (%(default)s)",
    )
    parser.add_argument(
        "--filter", choices=FILTERS, default="ramlak", help="ramp filter window (%(default)s)"
    )
    parser.add_argument(
        "--oversample",
        type=int,
        choices=(1, 2, 3, 4),
        default=1,
        help="filtered samples per detector column: 1 interpolates linearly between columns, "
        "2 is sharper and more accurate but keeps more noise (%(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=_range,
        default=(None, None),
        metavar="A:B",
        help="time steps to reconstruct, like a Python slice (all)",
    )
    parser.add_argument(
        "--rows",
        type=_range,
        default=(None, None),
        metavar="A:B",
        help="detector rows (slices) to reconstruct (all)",
    )
    parser.add_argument("--size", type=int, help="reconstruction size n (detector columns)")
    parser.add_argument(
        "--references",
        choices=("linear", "nearest"),
        default="linear",
        help="darks/flats taken during the scan: interpolate or take the nearest (%(default)s)",
    )
    parser.add_argument(
        "--chunk-frames", type=int, default=64, help="frames read at a time (%(default)s)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (and --save-model)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    group = parser.add_argument_group(
        "Noise2Inverse (--method n2i)",
        "Train on the first K time steps (dynamic) or on one static scan's angle sections "
        "(static), or apply --model; denoise every selected step. Training options left out "
        "take the defaults of n2i_stream.learn.TrainConfig.",
    )
    for option, (field, kind, metavar, text) in _N2I_OPTIONS.items():
        if isinstance(kind, tuple):
            group.add_argument(option, dest=f"n2i_{field}", choices=kind, help=text)
        else:
            group.add_argument(option, dest=f"n2i_{field}", type=kind, metavar=metavar, help=text)


def _n2i_config(args: argparse.Namespace) -> tuple[str, N2IConfig | None]:
    """The method and its Noise2Inverse settings; n2i options make ``n2i`` the default."""
    given = {
        option: (field, getattr(args, f"n2i_{field}"))
        for option, (field, *_) in _N2I_OPTIONS.items()
        if getattr(args, f"n2i_{field}") is not None
    }
    method = args.method or ("n2i" if given else "fbp")
    if method != "n2i":
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ConfigError(f"{', '.join(given)} only {verb} to --method n2i")
        return method, None
    return method, N2IConfig(**dict(given.values()))


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def run(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from tqdm import tqdm

    from ..offline import reconstruct_file

    method, n2i = _n2i_config(args)
    config = ReconstructConfig(
        input=args.input,
        output=args.out,
        method=method,  # type: ignore[arg-type]
        frames_per_step=args.frames_per_step,
        center_offset=args.center_offset,
        filter=args.filter,
        oversample=args.oversample,
        steps=args.steps,
        rows=args.rows,
        n=args.size,
        references=args.references,
        chunk_frames=args.chunk_frames,
        overwrite=args.overwrite,
        n2i=n2i,
    )
    # disable=None turns the bars off when stderr is not a terminal (logs, CI, pipes).
    disable = True if args.quiet else None
    with ExitStack() as bars:
        shown: dict[str, Any] = {}

        def bar(name: str, **options: Any) -> Any:
            if name not in shown:
                for other in shown.values():
                    other.close()  # training ends before the steps start
                shown[name] = bars.enter_context(tqdm(disable=disable, leave=False, **options))
            return shown[name]

        def train_progress(p: Any) -> None:
            b = bar("training", desc="training", unit="it")
            b.total = p.iterations
            b.update(p.iteration - b.n)
            b.set_postfix_str(f"loss {p.loss:.4g}, ETA {_eta(p.eta_s)}", refresh=False)

        def progress(done: int, total: int) -> None:
            b = bar("steps", unit="step", total=total)
            b.update(done - b.n)

        result = reconstruct_file(config, progress=progress, train_progress=train_progress)
    if not args.quiet:
        _summary(result)
    return 0


def _summary(result: Any) -> None:
    kinds = " and ".join(
        f"/reconstruction/{k}" for k in ("fbp", "denoised")[: 1 + (result.model is not None)]
    )
    print(
        f"wrote {kinds} {(len(result.time_steps), *result.shape)} to {result.output} "
        f"in {result.seconds:.1f} s (centre offset {result.center_offset:g} px, "
        f"{result.clipped} values clipped, {result.dropped_frames} frames in no time step)"
    )
    m = result.model
    if m is None:
        return
    what = f"{m['network']} ({m['parameters']:,} parameters, context {m['context']})"
    if m["source"] == "trained":
        loss = "n/a" if m["final_loss"] is None else f"{m['final_loss']:.4g}"
        print(
            f"denoiser: {what}, {m['strategy']} strategy, {m['iterations']} iterations in "
            f"{m['training_seconds']:.1f} s, final loss {loss}"
            + (f"; saved to {m['saved_to']}" if m["saved_to"] else "")
        )
    else:
        print(f"denoiser: {what} from {m['source']}")
