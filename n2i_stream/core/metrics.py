"""Full-reference image quality: PSNR and SSIM of a reconstruction against the ground truth.

Both accept a 2-D slice ``(n, n)`` or a volume ``(..., n, n)`` and an optional boolean ``mask``
(same shape, or the shape of one slice to use in every slice) that restricts the statistics to
a region such as the field of view. Pure array-API code; statistics in float64.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import DataError
from ._xp import array_namespace
from .denoise import gaussian_filter

__all__ = ["field_of_view", "psnr", "ssim"]

# Wang et al. (2004): Gaussian window σ = 1.5 (11 taps), K1 = 0.01, K2 = 0.03.
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_SSIM_RADIUS = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
_K1, _K2 = 0.01, 0.03


def field_of_view(n: int, *, xp: Any, radius: float | None = None) -> Any:
    """Boolean ``(n, n)`` disk of pixels whose centres lie within ``radius`` of the centre
    (default ``n/2``: the region every angle of a scan with ``n`` columns sees)."""
    coord = xp.arange(n, dtype=xp.float64) - (n - 1) / 2
    r = n / 2 if radius is None else float(radius)
    y = xp.reshape(coord, (n, 1))
    x = xp.reshape(coord, (1, n))
    return x * x + y * y <= r * r


def _prepare(x: Any, truth: Any, mask: Any, who: str) -> tuple[Any, Any, Any, Any]:
    xp = array_namespace(x, truth)
    if tuple(x.shape) != tuple(truth.shape):
        raise DataError(f"{who}: image has shape {tuple(x.shape)}, truth {tuple(truth.shape)}")
    if x.ndim < 2:
        raise DataError(f"{who}: expected a 2-D slice or a volume, got shape {tuple(x.shape)}")
    x64 = xp.astype(x, xp.float64)
    t64 = xp.astype(truth, xp.float64)
    if mask is None:
        return xp, x64, t64, None
    m = xp.asarray(mask)
    shape = tuple(m.shape)
    if m.dtype != xp.bool or shape != tuple(truth.shape)[-len(shape) :] or len(shape) < 2:
        raise DataError(
            f"{who}: mask must be boolean with the shape of the image {tuple(truth.shape)} "
            f"or of one slice {tuple(truth.shape)[-2:]}; got {m.dtype} {shape}"
        )
    m = xp.astype(xp.broadcast_to(m, tuple(truth.shape)), xp.float64)
    if float(xp.sum(m)) == 0:
        raise DataError(f"{who}: mask selects no pixels")
    return xp, x64, t64, m


def _data_range(xp: Any, t64: Any, m: Any, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    if m is None:
        return float(xp.max(t64) - xp.min(t64))
    inside = m > 0
    hi = xp.max(xp.where(inside, t64, -math.inf))
    lo = xp.min(xp.where(inside, t64, math.inf))
    return float(hi - lo)


def _mean(xp: Any, values: Any, m: Any) -> float:
    if m is None:
        return float(xp.mean(values))
    return float(xp.sum(values * m) / xp.sum(m))


def psnr(x: Any, truth: Any, *, data_range: float | None = None, mask: Any = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(range² / MSE)``.

    ``data_range`` defaults to ``max − min`` of ``truth`` (inside ``mask`` when given); the MSE
    is taken over ``mask``. Identical images give ``inf``.
    """
    xp, x64, t64, m = _prepare(x, truth, mask, "psnr")
    peak = _data_range(xp, t64, m, data_range)
    if peak <= 0:
        raise DataError(f"psnr: data range must be positive, got {peak} (is the truth constant?)")
    d = x64 - t64
    mse = _mean(xp, d * d, m)
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def ssim(x: Any, truth: Any, *, data_range: float | None = None, mask: Any = None) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 13, 2004) with their Gaussian window.

    Computed per 2-D slice (σ = 1.5, K1 = 0.01, K2 = 0.03, population statistics — the choices
    of ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False)``) and averaged over all slices; a volume is *not* treated
    with 3-D windows. As in scikit-image, the 5-pixel border where the window leaves the image
    is left out of the average; ``mask`` further restricts it. ``data_range`` as in :func:`psnr`.
    """
    xp, x64, t64, m = _prepare(x, truth, mask, "ssim")
    if min(x.shape[-2:]) < 2 * _SSIM_RADIUS + 1:
        raise DataError(
            f"ssim: slices must be at least {2 * _SSIM_RADIUS + 1} pixels wide for the Gaussian "
            f"window, got {tuple(x.shape[-2:])}"
        )
    peak = _data_range(xp, t64, m, data_range)
    if peak <= 0:
        raise DataError(f"ssim: data range must be positive, got {peak} (is the truth constant?)")
    c1 = (_K1 * peak) ** 2
    c2 = (_K2 * peak) ** 2

    def blur(a: Any) -> Any:
        return gaussian_filter(a, _SSIM_SIGMA, dims=2, truncate=_SSIM_TRUNCATE)

    mu_x, mu_t = blur(x64), blur(t64)
    var_x = blur(x64 * x64) - mu_x * mu_x
    var_t = blur(t64 * t64) - mu_t * mu_t
    cov = blur(x64 * t64) - mu_x * mu_t
    smap = ((2 * mu_x * mu_t + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_t * mu_t + c1) * (var_x + var_t + c2)
    )
    r = _SSIM_RADIUS
    ny, nx = x.shape[-2:]
    smap = smap[..., r : ny - r, r : nx - r]
    if m is not None:
        m = m[..., r : ny - r, r : nx - r]
        if float(xp.sum(m)) == 0:
            raise DataError(f"ssim: the mask selects only pixels within {r} of the border")
    return _mean(xp, smap, m)
