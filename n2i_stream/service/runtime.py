"""Process-wide settings a live service wants before its thread pools start.

The service runs ingest, FBP (numba's OpenMP pool) and denoising (torch's pool) side by side on
a few cores. OpenMP threads that finish a parallel region spin for a while before sleeping;
on two cores that spinning takes the CPU another stage needs (measured with ``n2i-stream bench
latency``: a spinning policy cost 1.5 × the CPU per time step). :func:`quiet_openmp` asks them
to sleep at once. It must run before numba's or torch's OpenMP runtime starts (before the first
parallel FBP or ``import torch``); the entry points call it first. An explicit
``OMP_WAIT_POLICY`` in the environment wins.
"""

from __future__ import annotations

import os

__all__ = ["quiet_openmp"]


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the environment says otherwise."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
