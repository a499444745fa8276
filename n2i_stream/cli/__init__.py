"""The ``n2i-stream`` command line.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their command runs, so ``--help`` is
fast and heavy dependencies (torch) load only where needed. Package errors become a one-line
message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ..errors import N2IError

__all__ = ["main"]

#: subcommand -> (module, one-line help). Keep in step with README.md.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("n2i_stream.cli.demo", "run the simulated beamline end to end (the quick start)"),
    "simulate": ("n2i_stream.cli.simulate", "simulate a dynamic scan into a Data Exchange file"),
    "reconstruct": ("n2i_stream.cli.reconstruct", "reconstruct (and denoise) a Data Exchange file"),
    "bench": ("n2i_stream.cli.bench", "benchmarks: fbp, quality, ingest, latency, scale"),
}


def _build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="n2i-stream",
        description="Live Noise2Inverse denoising of dynamic synchrotron tomography.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
        # Argument definitions are light; the module's heavy imports happen inside run().
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except N2IError as exc:
        print(f"n2i-stream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"n2i-stream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
