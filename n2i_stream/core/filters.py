"""Ramp filtering of projections for filtered backprojection.

The ramp is built from the band-limited spatial kernel (Kak & Slaney, *Principles of
Computerized Tomographic Imaging*, eq. 3.61: h[0] = 1/4, h[k odd] = -1/(πk)², h[k even] = 0),
which avoids the DC offset of a sampled |ω|, then multiplied by an apodisation window.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from ..errors import GeometryError
from ._xp import array_namespace, is_numpy

__all__ = ["FILTERS", "FilterName", "filter_projections", "padded_length", "ramp_filter"]

FilterName = Literal["ramlak", "shepp-logan", "cosine", "hamming", "hann", "none"]
FILTERS: tuple[str, ...] = ("ramlak", "shepp-logan", "cosine", "hamming", "hann", "none")


def padded_length(cols: int) -> int:
    """FFT length for ``cols`` detector columns: the smallest 2^a·3^b·5^c ≥ 2·cols (at least 64).

    Twice the width keeps the circular convolution from wrapping around; 5-smooth lengths are
    fast in every FFT library and stay close to 2·cols (a power of two can nearly double it).
    """
    target = max(64, 2 * int(cols))
    best = 1 << math.ceil(math.log2(target))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            length = p35
            while length < target:
                length *= 2
            best = min(best, length)
            p35 *= 3
        p5 *= 5
    return best


@lru_cache(maxsize=32)
def _ramp_numpy(n_pad: int, window: str) -> np.ndarray:
    k = np.arange(n_pad)
    k = np.minimum(k, n_pad - k)  # circular distance
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = k % 2 == 1
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    response = np.fft.rfft(h).real
    omega = 2 * math.pi * np.fft.rfftfreq(n_pad)  # radians per sample, 0..π
    if window == "ramlak":
        w = np.ones_like(omega)
    elif window == "shepp-logan":
        w = np.sinc(omega / (2 * math.pi))  # sin(ω/2)/(ω/2)
    elif window == "cosine":
        w = np.cos(omega / 2)
    elif window == "hamming":
        w = 0.54 + 0.46 * np.cos(omega)
    elif window == "hann":
        w = 0.5 + 0.5 * np.cos(omega)
    elif window == "none":
        return np.ones_like(omega)
    else:
        raise GeometryError(f"unknown filter {window!r}; expected one of {', '.join(FILTERS)}")
    out = response * w
    out.setflags(write=False)
    return out


def ramp_filter(n_pad: int, window: str = "ramlak") -> np.ndarray:
    """Real frequency response (length ``n_pad // 2 + 1``) of the windowed ramp filter."""
    return _ramp_numpy(int(n_pad), window)


def filter_projections(
    projections: Any,
    *,
    window: str = "ramlak",
    padding: Literal["edge", "zero"] = "edge",
    oversample: int = 1,
) -> Any:
    """Ramp-filter ``projections`` ``(..., cols)`` along the last axis → ``(..., oversample·cols)``.

    ``padding="edge"`` repeats the border columns into the FFT padding, which suppresses the
    bright rim of samples wider than the field of view; ``"zero"`` pads with zeros.
    ``oversample > 1`` also interpolates the filtered projections onto a grid ``oversample``
    times finer (sample ``k`` at column ``k / oversample``) by zero-padding their spectrum: the
    band-limited interpolation is exact where linear interpolation between columns blurs, so a
    backprojection that reads the fine grid (``backproject(..., oversample=...)``) is sharper
    and more accurate.
    """
    if int(oversample) != oversample or oversample < 1:
        raise GeometryError(f"oversample must be a positive integer, got {oversample!r}")
    oversample = int(oversample)
    xp = array_namespace(projections)
    cols = projections.shape[-1]
    n_pad = padded_length(cols)
    extra = n_pad - cols
    lead = projections.shape[:-1]
    if padding == "edge":
        right = xp.broadcast_to(projections[..., cols - 1 :], (*lead, extra - extra // 2))
        left = xp.broadcast_to(projections[..., :1], (*lead, extra // 2))
        # Circular layout [data, right edge, left edge]: the left edge wraps onto column 0.
        padded = xp.concat([projections, right, left], axis=-1)
    elif padding == "zero":
        padded = xp.concat(
            [projections, xp.zeros((*lead, extra), dtype=projections.dtype)], axis=-1
        )
    else:
        raise GeometryError(f"unknown padding {padding!r}; expected 'edge' or 'zero'")
    response = xp.asarray(_response(n_pad, window, oversample), dtype=projections.dtype)
    fine = n_pad * oversample
    if is_numpy(xp):
        return _filter_numpy(padded, response, fine, oversample * cols)
    spectrum = xp.fft.rfft(padded, axis=-1) * response
    filtered = xp.fft.irfft(spectrum, n=fine, axis=-1)  # zero-pads the spectrum to fine // 2 + 1
    return xp.astype(filtered[..., : oversample * cols], projections.dtype)


@lru_cache(maxsize=32)
def _response(n_pad: int, window: str, oversample: int) -> np.ndarray:
    """The ramp response, scaled for an ``oversample``-times longer inverse transform.

    The Nyquist bin of an even ``n_pad`` is halved when oversampling: it stands for the
    ``+π`` and ``-π`` components together, and the finer grid keeps only one of them.
    """
    response = ramp_filter(n_pad, window) * float(oversample)
    if oversample > 1 and n_pad % 2 == 0:
        response[-1] *= 0.5
    response.setflags(write=False)
    return response


def _filter_numpy(padded: np.ndarray, response: np.ndarray, fine: int, keep: int) -> np.ndarray:
    """The same filtering with scipy.fft on all CPU cores, in the input's precision."""
    import scipy.fft

    spectrum = scipy.fft.rfft(padded, axis=-1, workers=-1)
    spectrum *= response
    filtered = scipy.fft.irfft(spectrum, n=fine, axis=-1, workers=-1, overwrite_x=True)
    return np.ascontiguousarray(filtered[..., :keep], dtype=padded.dtype)
