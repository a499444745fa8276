"""n2i-stream: live Noise2Inverse denoising of dynamic synchrotron tomography.

The top level re-exports the pure array core and the error hierarchy; the other layers are
imported from their packages: ``n2i_stream.io`` (files, sockets), ``n2i_stream.wire`` (message
formats), ``n2i_stream.sim`` (simulated beamline), ``n2i_stream.learn`` (torch),
``n2i_stream.service`` (the live service).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .core import (
    CenterEstimate,
    ParallelGeometry,
    angular_weights,
    assign_time_steps,
    backproject,
    fbp,
    find_center,
    forward_project,
    interlace_report,
    line_integrals,
    psnr,
    ssim,
)
from .errors import (
    ConfigError,
    DataError,
    DataFileError,
    FrameError,
    GeometryError,
    ModelError,
    N2IError,
    ServiceError,
    TrainingError,
)

try:
    __version__ = version("n2i-stream")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "CenterEstimate",
    "ConfigError",
    "DataError",
    "DataFileError",
    "FrameError",
    "GeometryError",
    "ModelError",
    "N2IError",
    "ParallelGeometry",
    "ServiceError",
    "TrainingError",
    "__version__",
    "angular_weights",
    "assign_time_steps",
    "backproject",
    "fbp",
    "find_center",
    "forward_project",
    "interlace_report",
    "line_integrals",
    "psnr",
    "ssim",
]
