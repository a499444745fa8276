"""``n2i-stream bench NAME``: benchmarks users can run; each lives in ``n2i_stream.bench``.

Each benchmark module exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

HELP = "benchmarks: fbp, quality, heldout, ingest, latency, scale"

#: benchmark -> (module, one-line help); the CLI imports only the one that runs.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "fbp": ("n2i_stream.bench.fbp", "FBP speed (GUPS) and accuracy against peers"),
    "ingest": ("n2i_stream.bench.ingest", "ZMQ ingest frames/s and GB/s against bare pyzmq"),
    "latency": ("n2i_stream.bench.latency", "live service latency per step at a frame rate"),
    "scale": ("n2i_stream.bench.scale", "slab workers: FBP + denoising steps/s with 1 and 2"),
    "quality": ("n2i_stream.bench.quality", "Noise2Inverse vs FBP, TV and others: PSNR, SSIM"),
    "heldout": ("n2i_stream.bench.heldout", "real scan, no truth: held-out projections predicted"),
}
