"""``n2i-stream reconstruct``: reconstruct every time step of a Data Exchange scan into HDF5.

The work is :func:`n2i_stream.offline.reconstruct_file`; this module parses the options, shows
progress and prints a summary.
"""

from __future__ import annotations

import argparse

from ..core.filters import FILTERS
from ..offline import METHODS, Range, ReconstructConfig, reconstruct_file

__all__ = ["HELP", "add_arguments", "run"]

HELP = "reconstruct (and denoise) a Data Exchange file"


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
        "--method", choices=METHODS, default="fbp", help="reconstruction method (%(default)s)"
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    config = ReconstructConfig(
        input=args.input,
        output=args.out,
        method=args.method,
        frames_per_step=args.frames_per_step,
        center_offset=args.center_offset,
        filter=args.filter,
        steps=args.steps,
        rows=args.rows,
        n=args.size,
        references=args.references,
        chunk_frames=args.chunk_frames,
        overwrite=args.overwrite,
    )
    # disable=None turns the bar off when stderr is not a terminal (logs, CI, pipes).
    with tqdm(unit="step", disable=True if args.quiet else None, leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = reconstruct_file(config, progress=progress)
    if not args.quiet:
        t = len(result.time_steps)
        print(
            f"wrote /reconstruction/{config.method} {(t, *result.shape)} to {result.output} "
            f"in {result.seconds:.1f} s (centre offset {result.center_offset:g} px, "
            f"{result.clipped} values clipped, {result.dropped_frames} frames in no time step)"
        )
    return 0
