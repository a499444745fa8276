"""GPU backprojection (CuPy raw kernel): the same sums as :func:`.fbp.backproject_reference`.

One thread per output voxel ``(z, y, x)`` loops over the angles, so there are no atomic adds;
neighbouring threads read neighbouring detector columns of the same angle, which keeps the
loads coalesced. Angle parameters (``cos θ``, ``sin θ``, weight) are staged through shared
memory in chunks. CuPy is imported only when this runs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import GeometryError
from .geometry import ParallelGeometry

__all__ = ["backproject_cupy"]

_BLOCK_X = 32
_BLOCK_Y = 8
_CHUNK = _BLOCK_X * _BLOCK_Y  # angles staged in shared memory per pass

_SOURCE = r"""
template <typename T>
__global__ void backproject(const T* __restrict__ q, const T* __restrict__ params,
                            const int n_angles, const int rows, const int cols, const int n,
                            const T axis, T* __restrict__ out)
{
    // params: (n_angles, 3) = cos, sin, weight.  q: (n_angles, rows, cols).  out: (rows, n, n).
    __shared__ T s_par[3 * CHUNK];
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    const int r = blockIdx.z;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const T half = (T)(n - 1) * (T)0.5;
    const T x = (T)j - half;
    const T y = (T)i - half;
    const size_t plane = (size_t)rows * (size_t)cols;
    const T* qr = q + (size_t)r * (size_t)cols;
    T acc = (T)0;
    for (int a0 = 0; a0 < n_angles; a0 += CHUNK) {
        const int m = min(CHUNK, n_angles - a0);
        __syncthreads();
        for (int s = tid; s < 3 * m; s += blockDim.x * blockDim.y) {
            s_par[s] = params[3 * (size_t)a0 + s];
        }
        __syncthreads();
        if (j < n && i < n) {
            for (int a = 0; a < m; ++a) {
                const T c = x * s_par[3 * a] + y * s_par[3 * a + 1] + axis;
                // Columns -1 and cols read as zero; beyond them the line misses the detector.
                if (c > (T)-1 && c < (T)cols) {
                    const T fl = floor(c);
                    const int k = (int)fl;
                    const T f = c - fl;
                    const T* p = qr + (size_t)(a0 + a) * plane;
                    const T g0 = (k >= 0) ? p[k] : (T)0;
                    const T g1 = (k + 1 < cols) ? p[k + 1] : (T)0;
                    acc += s_par[3 * a + 2] * (g0 + f * (g1 - g0));
                }
            }
        }
    }
    if (j < n && i < n) {
        out[((size_t)r * n + i) * n + j] = acc;
    }
}
"""


@lru_cache(maxsize=1)
def _module() -> Any:
    import cupy as cp

    return cp.RawModule(
        code=_SOURCE,
        options=(f"-DCHUNK={_CHUNK}",),
        name_expressions=("backproject<float>", "backproject<double>"),
    )


def backproject_cupy(
    filtered: Any, geometry: ParallelGeometry, *, n: int | None = None, oversample: int = 1
) -> Any:
    """Backproject CuPy filtered projections ``(angles, rows, cols)`` → ``(rows, n, n)``.

    Same result as :func:`.fbp.backproject_reference` (float32 rounding aside); float64 input
    is computed in float64, anything else in float32. The result stays on the device.
    ``oversample``: samples per detector column (input ``(angles, rows, oversample·cols)``).
    """
    import cupy as cp

    shape = tuple(filtered.shape)
    geometry.check_filtered(shape, oversample)
    n = geometry.cols if n is None else int(n)
    if n < 1:
        raise GeometryError(f"reconstruction size n must be >= 1, got {n}")
    dtype = cp.float64 if filtered.dtype == cp.float64 else cp.float32
    name = "backproject<double>" if dtype == cp.float64 else "backproject<float>"
    q = cp.ascontiguousarray(cp.asarray(filtered, dtype=dtype))
    n_angles, rows, cols = shape
    cosv, sinv, axis = geometry.sample_steps(oversample)
    params = np.stack([cosv, sinv, geometry.angular_weights()], axis=1)
    params_gpu = cp.asarray(params, dtype=dtype)
    out = cp.empty((rows, n, n), dtype=dtype)
    scalar = np.float64 if dtype == cp.float64 else np.float32
    grid = ((n + _BLOCK_X - 1) // _BLOCK_X, (n + _BLOCK_Y - 1) // _BLOCK_Y, rows)
    kernel = _module().get_function(name)
    kernel(
        grid,
        (_BLOCK_X, _BLOCK_Y, 1),
        (
            q,
            params_gpu,
            np.int32(n_angles),
            np.int32(rows),
            np.int32(cols),
            np.int32(n),
            scalar(axis),
            out,
        ),
    )
    return out
