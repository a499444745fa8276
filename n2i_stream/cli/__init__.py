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
    "serve": (
        "n2i_stream.cli.serve",
        "run the live service: frames in, FBP and denoised steps out",
    ),
    "replay": ("n2i_stream.cli.replay", "stream a Data Exchange file like a detector"),
    "config": ("n2i_stream.cli.config", "check or show the service settings, make CURVE keys"),
    "bench": ("n2i_stream.cli.bench", "benchmarks: fbp, quality, heldout, ingest, latency, scale"),
    "compare": (
        "n2i_stream.cli.compare",
        "side-by-side figure: FBP, Paganin+FBP, TV-MIN, Noise2Inverse",
    ),
}


def _positionals(argv: Sequence[str]) -> list[str]:
    # Only flag options (-v, --help) may precede a command name, so the first non-option
    # tokens name the command and, for grouped commands such as ``bench``, the subcommand.
    return [a for a in argv if not a.startswith("-")]


def _add_commands(
    subparsers: argparse._SubParsersAction, table: dict[str, tuple[str, str]], tokens: list[str]
) -> None:
    """Add every command of ``table``; only the selected one imports its module for arguments.

    A module exposing ``SUBCOMMANDS`` (same shape as :data:`COMMANDS`) is a group: its
    subcommands are added the same way, one level down.
    """
    selected = tokens[0] if tokens else None
    for name, (module_name, help_text) in table.items():
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name != selected:
            continue
        module = importlib.import_module(module_name)
        group = getattr(module, "SUBCOMMANDS", None)
        if group is not None:
            sub = p.add_subparsers(metavar="NAME", required=True)
            _add_commands(sub, group, tokens[1:])
        else:
            p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
            module.add_arguments(p)


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="n2i-stream",
        description="Live Noise2Inverse denoising of dynamic synchrotron tomography.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_commands(sub, COMMANDS, _positionals(argv))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser(argv).parse_args(argv)
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
