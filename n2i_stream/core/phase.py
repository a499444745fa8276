"""Single-material phase retrieval (Paganin et al., J. Microsc. 206, 33, 2002, eq. 10).

For a homogeneous object with refractive index ``1 − δ + iβ`` imaged at propagation distance
``R`` with wavelength ``λ``, the thickness follows from the flat-field-corrected transmission
``I/I0`` of each projection as

    μT = −ln F⁻¹{ F{I/I0} / (1 + α |k|²) },   α = R δ λ / (4π β p²)   [pixels²]

with ``μ = 4πβ/λ`` and ``k`` the angular spatial frequency in radians per pixel (pixel size
``p``). Paganin retrieval is therefore a low-pass filter of the transmission with a single
parameter α, applied *before* the logarithm; :func:`paganin` returns the filtered transmission
and :func:`paganin_line_integrals` its ``−ln``, which is ``μT`` — the same attenuation line
integral a plain ``−ln(I/I0)`` gives, ready for FBP. Units: ``pixel_size`` and ``distance`` in
metres, ``energy`` in keV; ``delta_beta`` is the dimensionless ratio δ/β.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ._xp import array_namespace

__all__ = [
    "padded_shape",
    "paganin",
    "paganin_alpha",
    "paganin_filter",
    "paganin_line_integrals",
    "wavelength",
]

#: h·c in keV·m: wavelength [m] = _HC_KEV_M / energy [keV].
_HC_KEV_M = 1.239841984e-9


def wavelength(energy: float) -> float:
    """X-ray wavelength in metres for a photon energy in keV."""
    if not math.isfinite(energy) or energy <= 0:
        raise ConfigError(f"energy must be a positive number of keV, got {energy!r}")
    return _HC_KEV_M / energy


def paganin_alpha(*, delta_beta: float, pixel_size: float, distance: float, energy: float) -> float:
    """The filter parameter ``α = R δ λ / (4π β p²)`` in pixels² (see the module docstring)."""
    problems = [
        f"{name} must be positive and finite, got {value!r}"
        for name, value in (
            ("delta_beta", delta_beta),
            ("pixel_size", pixel_size),
            ("distance", distance),
        )
        if not (math.isfinite(value) and value > 0)
    ]
    if problems:
        raise ConfigError("paganin: " + "; ".join(problems))
    return distance * delta_beta * wavelength(energy) / (4 * math.pi * pixel_size**2)


def _resolve_alpha(
    alpha: float | None,
    delta_beta: float | None,
    pixel_size: float | None,
    distance: float | None,
    energy: float | None,
) -> float:
    physical = (delta_beta, pixel_size, distance, energy)
    if alpha is not None:
        if any(v is not None for v in physical):
            raise ConfigError(
                "paganin: give either alpha or (delta_beta, pixel_size, distance, energy), not both"
            )
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ConfigError(f"paganin: alpha must be finite and >= 0 pixels², got {alpha!r}")
        return float(alpha)
    if any(v is None for v in physical):
        missing = [
            name
            for name, v in zip(
                ("delta_beta", "pixel_size", "distance", "energy"), physical, strict=True
            )
            if v is None
        ]
        raise ConfigError(
            f"paganin: missing {', '.join(missing)}; give all four physical parameters or alpha"
        )
    return paganin_alpha(
        delta_beta=float(delta_beta),  # type: ignore[arg-type]
        pixel_size=float(pixel_size),  # type: ignore[arg-type]
        distance=float(distance),  # type: ignore[arg-type]
        energy=float(energy),  # type: ignore[arg-type]
    )


def paganin_filter(shape: tuple[int, int], alpha: float) -> np.ndarray:
    """Frequency response ``1 / (1 + α (k_y² + k_x²))`` on an FFT grid ``shape`` (rfft layout)."""
    ky = 2 * math.pi * np.fft.fftfreq(shape[0])
    kx = 2 * math.pi * np.fft.rfftfreq(shape[1])
    return 1.0 / (1.0 + alpha * (ky[:, None] ** 2 + kx[None, :] ** 2))


def padded_shape(rows: int, cols: int, alpha: float) -> tuple[int, int]:
    """FFT grid for Paganin filtering: each axis grows by 8·√α pixels (at least 8) on both sides,
    where the filter's kernel (decaying like ``exp(−r/√α)``) has fallen below 10⁻³, rounded up to
    a power of two."""
    margin = max(8, math.ceil(8 * math.sqrt(alpha)))
    return tuple(1 << math.ceil(math.log2(m + 2 * margin)) for m in (rows, cols))  # type: ignore[return-value]


def _pad_edges(a: Any, axis: int, total: int) -> Any:
    """Extend ``axis`` (negative) to ``total`` by repeating the edge values; the data stays first,
    the left edge wraps around to the end so the periodic FFT sees no jump."""
    xp = array_namespace(a)
    length = a.shape[axis]
    extra = total - length
    if extra == 0:
        return a
    lead = a.shape[:axis] if axis == -2 else a.shape[:-1]
    if axis == -1:
        right = xp.broadcast_to(a[..., length - 1 :], (*lead, extra - extra // 2))
        left = xp.broadcast_to(a[..., :1], (*lead, extra // 2))
    else:
        right = xp.broadcast_to(a[..., length - 1 :, :], (*lead, extra - extra // 2, a.shape[-1]))
        left = xp.broadcast_to(a[..., :1, :], (*lead, extra // 2, a.shape[-1]))
    return xp.concat([a, right, left], axis=axis)


def paganin(
    transmission: Any,
    *,
    delta_beta: float | None = None,
    pixel_size: float | None = None,
    distance: float | None = None,
    energy: float | None = None,
    alpha: float | None = None,
) -> Any:
    """Paganin-filtered transmission of projections ``(..., rows, cols)``, same shape.

    Input is flat- and dark-field-corrected transmission ``I/I0`` (not its logarithm). Give the
    four physical parameters (units in the module docstring) or ``alpha`` in pixels² directly.
    Each projection is edge-padded (:func:`padded_shape`) before the 2-D FFT, so the periodic
    filter does not mix opposite borders. All projections are filtered at once: pass large
    scans in batches of projections.
    """
    a = _resolve_alpha(alpha, delta_beta, pixel_size, distance, energy)
    xp = array_namespace(transmission)
    if transmission.ndim < 2:
        raise DataError(
            "paganin: expected projections (..., rows, cols), "
            f"got shape {tuple(transmission.shape)}"
        )
    t = transmission
    if not xp.isdtype(t.dtype, "real floating"):
        t = xp.astype(t, xp.float32)
    if a == 0:
        return xp.asarray(t, copy=True)
    rows, cols = t.shape[-2:]
    shape = padded_shape(rows, cols, a)
    padded = _pad_edges(_pad_edges(t, -1, shape[1]), -2, shape[0])
    response = xp.asarray(paganin_filter(shape, a), dtype=t.dtype)
    spectrum = xp.fft.rfftn(padded, axes=(-2, -1))
    filtered = xp.fft.irfftn(spectrum * response, s=shape, axes=(-2, -1))
    return xp.astype(filtered[..., :rows, :cols], t.dtype)


def paganin_line_integrals(
    transmission: Any,
    *,
    delta_beta: float | None = None,
    pixel_size: float | None = None,
    distance: float | None = None,
    energy: float | None = None,
    alpha: float | None = None,
    floor: float = 1e-6,
) -> Any:
    """``−ln`` of :func:`paganin`: attenuation line integrals ``μT`` ready for FBP.

    Filtered transmissions below ``floor`` (possible with noisy, dark-dominated pixels) are
    clamped to it before the logarithm, so the output stays finite.
    """
    filtered = paganin(
        transmission,
        delta_beta=delta_beta,
        pixel_size=pixel_size,
        distance=distance,
        energy=energy,
        alpha=alpha,
    )
    xp = array_namespace(filtered)
    return -xp.log(xp.clip(filtered, floor, None))
