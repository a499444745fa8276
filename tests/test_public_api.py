"""The public surface: every package's ``__all__`` resolves and the layers stay apart."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = [
    "n2i_stream",
    "n2i_stream.core",
    "n2i_stream.io",
    "n2i_stream.sim",
    "n2i_stream.wire",
    "n2i_stream.service",
    "n2i_stream.learn",
    "n2i_plans",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), "duplicates in __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


def test_core_functions_are_reexported_at_the_top():
    import n2i_stream
    import n2i_stream.core

    for name in ("fbp", "find_center", "ParallelGeometry", "psnr", "line_integrals"):
        assert getattr(n2i_stream, name) is getattr(n2i_stream.core, name)


@pytest.mark.parametrize("name", ["n2i_stream", "n2i_stream.core", "n2i_stream.wire", "n2i_plans"])
def test_importing_does_not_load_torch(name):
    # Plans and the core must stay importable without torch (DESIGN §2); check in a fresh process.
    code = f"import sys, {name}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
