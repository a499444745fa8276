"""Conventional image-domain denoisers applied to reconstructions: Gaussian blur and TV (ROF).

Both act on the trailing ``dims`` axes of a volume ``(..., z, y, x)``: ``dims=2`` filters each
slice on its own, ``dims=3`` couples neighbouring slices too. Pure array-API code, so the same
functions run on NumPy and CuPy. :func:`gradient` and :func:`divergence` (forward differences,
Neumann boundary, ``divergence = -gradientᵀ``) are shared with TV-regularised reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ._xp import array_namespace, device

__all__ = [
    "divergence",
    "gaussian_filter",
    "gradient",
    "keep_low_frequencies",
    "shrink_to_ball",
    "tv_denoise",
]


def _floating(volume: Any) -> Any:
    xp = array_namespace(volume)
    if not xp.isdtype(volume.dtype, "real floating"):
        return xp.astype(volume, xp.float32)
    return volume


def _check_dims(volume: Any, dims: int, who: str) -> None:
    if dims not in (1, 2, 3) or dims > volume.ndim:
        raise ConfigError(
            f"{who}: dims must be 1, 2 or 3 and at most the array's {volume.ndim} dimensions; "
            f"got dims={dims}"
        )


def _along(axis: int, ndim_after: int, sl: slice) -> tuple[Any, ...]:
    """Index that applies ``sl`` to ``axis`` (negative) and takes everything else."""
    return (..., sl, *([slice(None)] * ndim_after))


def _reflect_indices(length: int, radius: int) -> np.ndarray:
    """Indices ``-radius .. length+radius-1`` mirrored about the edges (``d c b a | a b c d``)."""
    i = np.mod(np.arange(-radius, length + radius), 2 * length)
    return np.where(i >= length, 2 * length - 1 - i, i)


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _convolve_axis(volume: Any, kernel: np.ndarray, axis: int) -> Any:
    """Correlate ``volume`` with a symmetric 1-D ``kernel`` along (negative) ``axis``, mirrored."""
    xp = array_namespace(volume)
    length = volume.shape[axis]
    radius = (kernel.size - 1) // 2
    index = xp.asarray(_reflect_indices(length, radius), device=device(volume))  # GPU input: on it
    padded = xp.take(volume, index, axis=axis)
    after = -axis - 1
    out = float(kernel[0]) * padded[_along(axis, after, slice(0, length))]
    for m in range(1, kernel.size):
        out = out + float(kernel[m]) * padded[_along(axis, after, slice(m, m + length))]
    return out


def gaussian_filter(
    volume: Any, sigma: float | Sequence[float], *, dims: int = 2, truncate: float = 4.0
) -> Any:
    """Separable Gaussian blur of the trailing ``dims`` axes, edges mirrored (``dcba|abcd``).

    ``sigma`` is in pixels, one value for all filtered axes or one per axis in ``(z, y, x)``
    order; 0 leaves an axis untouched. The kernel is cut at ``truncate`` standard deviations
    (the conventions of ``scipy.ndimage.gaussian_filter``, which the tests compare against).
    """
    _check_dims(volume, dims, "gaussian_filter")
    sigmas = [float(sigma)] * dims if np.ndim(sigma) == 0 else [float(s) for s in sigma]  # type: ignore[arg-type]
    if len(sigmas) != dims or any(not math.isfinite(s) or s < 0 for s in sigmas):
        raise ConfigError(
            f"gaussian_filter: expected sigma >= 0 (one value or {dims} values), got {sigma!r}"
        )
    out = _floating(volume)
    for axis, s in zip(range(-dims, 0), sigmas, strict=True):
        if s > 0:
            out = _convolve_axis(out, _gaussian_kernel(s, truncate), axis)
    return out


def keep_low_frequencies(image: Any, reference: Any, sigma: float, *, dims: int = 2) -> Any:
    """``image`` with its spatial frequencies below ``sigma`` taken from ``reference``.

    ``image + G_σ * (reference − image)`` over the trailing ``dims`` axes (Gaussian of ``sigma``
    pixels, edges mirrored). With ``reference`` an FBP and ``image`` its denoised version, the
    result keeps the denoiser's fine scales and the FBP's coarse ones: a ramp-filtered
    reconstruction is unbiased and carries little noise at low frequencies, while a network
    trained on split reconstructions can shift them (undersampling streaks in the splits,
    batch statistics), which barely shows in a slice but adds up along every ray. Returns
    ``image``'s floating dtype.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"keep_low_frequencies: sigma must be > 0 pixels, got {sigma!r}")
    if tuple(image.shape) != tuple(reference.shape):
        raise ConfigError(
            f"keep_low_frequencies: image {tuple(image.shape)} and reference "
            f"{tuple(reference.shape)} differ in shape"
        )
    image = _floating(image)
    xp = array_namespace(image)
    reference = xp.astype(xp.asarray(reference), image.dtype)
    return image + gaussian_filter(reference - image, sigma, dims=dims)


def gradient(u: Any, dims: int) -> list[Any]:
    """Forward differences along the trailing ``dims`` axes (0 at the far edge), one per axis."""
    xp = array_namespace(u)
    out = []
    for axis in range(-dims, 0):
        after = -axis - 1
        length = u.shape[axis]
        if length == 1:
            out.append(xp.zeros_like(u))
            continue
        diff = (
            u[_along(axis, after, slice(1, length))] - u[_along(axis, after, slice(0, length - 1))]
        )
        edge = xp.zeros_like(u[_along(axis, after, slice(0, 1))])
        out.append(xp.concat([diff, edge], axis=axis))
    return out


def divergence(p: Sequence[Any], dims: int) -> Any:
    """Negative adjoint of :func:`gradient`: ``⟨gradient(u), p⟩ = -⟨u, divergence(p)⟩``."""
    xp = array_namespace(p[0])
    total = None
    for axis, pa in zip(range(-dims, 0), p, strict=True):
        after = -axis - 1
        length = pa.shape[axis]
        if length == 1:
            continue
        first = pa[_along(axis, after, slice(0, 1))]
        middle = (
            pa[_along(axis, after, slice(1, length - 1))]
            - pa[_along(axis, after, slice(0, length - 2))]
        )
        last = -pa[_along(axis, after, slice(length - 2, length - 1))]
        d = xp.concat([first, middle, last], axis=axis)
        total = d if total is None else total + d
    return xp.zeros_like(p[0]) if total is None else total


def shrink_to_ball(p: list[Any], radius: float) -> list[Any]:
    """Project each pixel's vector ``(p_0, p_1, ...)`` onto the Euclidean ball of ``radius``."""
    xp = array_namespace(p[0])
    norm = p[0] * p[0]
    for pa in p[1:]:
        norm = norm + pa * pa
    scale = xp.maximum(xp.sqrt(norm) / radius, xp.ones_like(norm)) if radius > 0 else None
    if scale is None:
        return [xp.zeros_like(pa) for pa in p]
    return [pa / scale for pa in p]


def tv_denoise(volume: Any, weight: float, *, n_iter: int = 200, dims: int = 3) -> Any:
    """Isotropic TV-L2 (ROF) denoising: ``argmin_u ½‖u − f‖² + weight·Σ|∇u|``.

    Solved by the accelerated primal-dual algorithm of Chambolle & Pock (J. Math. Imaging Vis.
    40, 2011, Alg. 2 applied to ROF, §6.2.1). ``weight`` is in the units of the image (larger is
    smoother; 0 returns the input); ``dims=3`` also penalises jumps between slices. Forward
    differences with a Neumann boundary, as in Chambolle (2004) and ``skimage``'s
    ``denoise_tv_chambolle`` (same objective).
    """
    _check_dims(volume, dims, "tv_denoise")
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"tv_denoise: weight must be finite and >= 0, got {weight!r}")
    if n_iter < 0:
        raise ConfigError(f"tv_denoise: n_iter must be >= 0, got {n_iter}")
    f = _floating(volume)
    xp = array_namespace(f)
    if weight == 0:
        return xp.asarray(f, copy=True)
    if not bool(xp.all(xp.isfinite(f))):
        raise DataError("tv_denoise: the volume contains NaN or infinite values")
    tau = sigma = 1.0 / math.sqrt(4.0 * dims)  # τσ‖∇‖² ≤ 1 with ‖∇‖² ≤ 4·dims
    gamma = 1.0  # ½‖u − f‖² is 1-strongly convex
    u = f
    u_bar = f
    p = [xp.zeros_like(f) for _ in range(dims)]
    for _ in range(n_iter):
        p = shrink_to_ball(
            [pa + sigma * ga for pa, ga in zip(p, gradient(u_bar, dims), strict=True)], weight
        )
        u_old = u
        u = (u + tau * divergence(p, dims) + tau * f) / (1.0 + tau)
        theta = 1.0 / math.sqrt(1.0 + 2.0 * gamma * tau)
        tau, sigma = theta * tau, sigma / theta
        u_bar = u + theta * (u - u_old)
    return u
