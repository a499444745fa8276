"""Where training runs, and arrays handed to torch without a host round trip (DLPack)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["from_torch", "resolve_device", "threads", "to_torch"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when torch sees a GPU, else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU; use 'cpu'")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def to_torch(array: Any, device: torch.device) -> torch.Tensor:
    """float32 tensor on ``device``: NumPy via ``from_numpy``, CuPy (or any DLPack producer)
    via ``torch.from_dlpack`` so GPU data never passes through host memory."""
    if isinstance(array, torch.Tensor):
        tensor = array
    elif isinstance(array, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    elif hasattr(array, "__dlpack__"):
        tensor = torch.from_dlpack(array)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(array)))
    return tensor.to(device=device, dtype=torch.float32)


def from_torch(tensor: torch.Tensor, like: Any) -> Any:
    """``tensor`` as the array type of ``like``: NumPy for NumPy, CuPy (DLPack) for CuPy."""
    tensor = tensor.detach()
    if isinstance(like, torch.Tensor):
        return tensor
    if isinstance(like, np.ndarray) or not hasattr(like, "__dlpack__"):
        return tensor.cpu().numpy()
    module = type(like).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy.from_dlpack(tensor.contiguous())
    return tensor.cpu().numpy()


@contextmanager
def threads(count: int) -> Iterator[int]:
    """Use ``count`` torch CPU threads (0 = every core) inside the block; restore after."""
    before = torch.get_num_threads()
    affinity = getattr(os, "sched_getaffinity", None)
    n = count or (len(affinity(0)) if affinity else os.cpu_count() or 1)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
