"""Shared fixtures: array namespaces for the core, the real tooth scan, GPU skipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TOOTH = Path(__file__).resolve().parents[2] / "shared" / "data" / "tooth.h5"


def _cupy_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # any import or driver failure means: no usable GPU
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cupy_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", "array_api_strict"])
def xp(request: pytest.FixtureRequest):
    """The core's array namespaces under test: NumPy, and array-api-strict (proves CuPy parity)."""
    if request.param == "numpy":
        import array_api_compat.numpy as xnp

        return xnp
    return pytest.importorskip("array_api_strict")


@pytest.fixture
def tooth_path() -> Path:
    """The real APS tooth scan shipped in ../shared (skips when the checkout has no shared/)."""
    if not TOOTH.exists():
        pytest.skip(f"real data not found at {TOOTH}")
    return TOOTH


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
