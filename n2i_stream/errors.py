"""The package's one exception hierarchy.

::

    N2IError
    ├── ConfigError          a configuration is invalid (unknown key, wrong type, bad value)
    ├── GeometryError        angles, shapes or centre do not describe a valid scan
    ├── DataError            input data is unusable
    │   ├── DataFileError    a file lacks a dataset, or its datasets disagree
    │   └── FrameError       a wire message is malformed (header, size, kind)
    ├── ModelError           a checkpoint does not fit the geometry, network or strategy asked for
    ├── TrainingError        training cannot go on (e.g. the loss became NaN: diverged)
    └── ServiceError         a service operation is not possible in the current state

Third-party errors (h5py, zmq, torch) are translated where they enter the package, with the
original kept as ``__cause__``. Messages say what was expected, what arrived and, where it helps,
how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DataFileError",
    "FrameError",
    "GeometryError",
    "ModelError",
    "N2IError",
    "ServiceError",
    "TrainingError",
]


class N2IError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(N2IError, ValueError):
    """A configuration is invalid: unknown key, wrong type or out-of-range value."""


class GeometryError(N2IError, ValueError):
    """Angles, shapes or rotation centre do not describe a valid scan."""


class DataError(N2IError, ValueError):
    """Input data is unusable."""


class DataFileError(DataError):
    """A file lacks a dataset, or its datasets disagree in shape or length."""

    def __init__(self, path: object, dataset: str | None, problem: str) -> None:
        self.path = str(path)
        self.dataset = dataset
        self.problem = problem
        where = f"{self.path}:{dataset}" if dataset else self.path
        super().__init__(f"{where}: {problem}")


class FrameError(DataError):
    """A wire message is malformed: bad header, wrong payload size, unknown frame kind."""


class ModelError(N2IError, ValueError):
    """A checkpoint does not fit the geometry, network or strategy it is used with."""


class TrainingError(N2IError, RuntimeError):
    """Training cannot go on, e.g. because the loss diverged to NaN or infinity."""


class ServiceError(N2IError, RuntimeError):
    """A service operation is not possible in the service's current state."""
