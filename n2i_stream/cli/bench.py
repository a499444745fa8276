"""``n2i-stream bench NAME``: benchmarks users can run; each lives in ``n2i_stream.bench``."""

from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: fbp, quality, ingest, latency, scale"

#: benchmark -> module in n2i_stream.bench exposing HELP, add_arguments(parser), run(args).
BENCHMARKS: dict[str, str] = {
    "fbp": "n2i_stream.bench.fbp",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.set_defaults(_bench_module=module_name)
        module.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._bench_module).run(args) or 0)
