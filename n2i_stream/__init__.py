"""n2i-stream: live Noise2Inverse denoising of dynamic synchrotron tomography."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .core.fbp import backproject, fbp
from .core.geometry import ParallelGeometry, angular_weights
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
    "backproject",
    "fbp",
]
