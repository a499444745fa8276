"""The simulated camera: beam profile, dark offset, Poisson photon noise and read noise.

Counts of a pixel with line integral ``p``: ``Poisson(photons · profile · exp(-p)) + dark +
Normal(0, read_noise)``, rounded and clipped to uint16. ``profile`` (mean 1 over the detector) is
a smooth beam, brighter near the centre and slightly above it, times a fixed ±1 % gain per column
(scintillator stripes, removed by flat-field correction); ``dark`` is a constant offset plus a fixed
per-pixel pattern. Noiseless counts are the rounded expectations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Detector"]

_UINT16_MAX = 65535


@dataclass(frozen=True, eq=False)
class Detector:
    """Expected flat and dark images of a ``(rows, cols)`` camera, and the noise applied to them."""

    flat: np.ndarray  #: expected open-beam photon counts per pixel (rows, cols), float64
    dark: np.ndarray  #: expected dark counts per pixel (rows, cols), float64
    read_noise: float  #: standard deviation of the Gaussian read noise, counts
    noise: bool  #: False: counts are rounded expectations (for exact references)

    @classmethod
    def make(
        cls,
        *,
        rows: int,
        cols: int,
        photons: float,
        dark_level: float,
        read_noise: float,
        noise: bool,
        rng: np.random.Generator,
    ) -> Detector:
        """A detector whose flat averages ``photons`` counts per pixel, with a seeded pattern."""
        u = (np.arange(cols) - (cols - 1) / 2) / cols  # -1/2 .. 1/2 across the detector
        v = (np.arange(rows) - (rows - 1) / 2) / max(rows, 64)  # the beam is wider than tall
        beam = np.exp(-(((u - 0.04) / 0.55) ** 2))[None, :] * np.exp(-((v / 0.8) ** 2))[:, None]
        stripes = 1.0 + 0.01 * rng.standard_normal(cols)
        profile = beam * stripes[None, :]
        flat = photons * profile / profile.mean()
        dark = dark_level + 0.02 * dark_level * rng.standard_normal((rows, cols))
        return cls(flat, np.maximum(dark, 0.0), float(read_noise), bool(noise))

    def counts(self, line_integrals: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """One uint16 frame: a projection of ``line_integrals`` (rows, cols), or a flat if None."""
        expected = self.flat if line_integrals is None else self.flat * np.exp(-line_integrals)
        return self._read(expected, rng)

    def dark_frame(self, rng: np.random.Generator) -> np.ndarray:
        """One uint16 dark frame (no beam)."""
        return self._read(np.zeros_like(self.dark), rng)

    def _read(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.noise:
            signal = rng.poisson(photons) + self.dark
            signal = signal + self.read_noise * rng.standard_normal(photons.shape)
        else:
            signal = photons + self.dark
        return np.clip(np.rint(signal), 0, _UINT16_MAX).astype(np.uint16)
