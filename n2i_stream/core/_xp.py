"""Array-namespace helpers: the one place the core looks up NumPy / CuPy / array-API namespaces."""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_cupy_namespace, is_numpy_namespace

__all__ = ["array_namespace", "device", "is_cupy", "is_numpy", "to_numpy"]


def is_numpy(xp: Any) -> bool:
    """True when ``xp`` is NumPy (plain or array-api-compat wrapped)."""
    return is_numpy_namespace(xp)


def is_cupy(xp: Any) -> bool:
    """True when ``xp`` is CuPy (plain or array-api-compat wrapped)."""
    return is_cupy_namespace(xp)


def to_numpy(x: Any) -> np.ndarray:
    """Host copy of any array-API array (no copy for NumPy input)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get"):  # CuPy
        return x.get()
    return np.asarray(x)
