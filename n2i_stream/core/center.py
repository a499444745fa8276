"""Automatic rotation-centre estimation for arbitrary parallel-beam angle sets.

Three estimators, each returning the ``center_offset`` of DESIGN.md §3 (the rotation axis
projects to column ``(cols - 1)/2 + offset``):

- ``"com"``: the centre of mass of every projection follows ``a + x_c cos θ + y_c sin θ``
  (a point's sinusoid, Helgason–Ludwig order-1 consistency); a least-squares fit over all
  angles gives the axis column ``a``. Any angle set; the sample must stay inside the detector.
- ``"opposing"``: ``p(θ + π, t) = p(θ, -t)``, so each projection mirrored about the axis matches
  its opposite; the sub-pixel shift that best aligns the mirrored pairs is twice the offset.
  Needs angle pairs 180° apart (360° scans, interlaced sets covering both halves).
- ``"sharpness"``: reconstruct a few slices over candidate offsets (coarse whole-pixel steps,
  then a quadratic fit over quarter-pixel steps) and keep the one with the least negative mass
  inside the field of view (default metric; total variation is the alternative). Attenuation is
  never negative; a wrong centre turns every edge into arcs and tuning-fork streaks whose
  undershoots are negative, while measurement noise adds about the same negative mass at every
  offset, so the minimum stays put on noisy data. The squared negative part is smooth in the
  offset, which suits the quadratic fit. On simulated disks (Poisson noise down to 200 photons,
  180°, 360°, interlaced and jittered angle sets) it found the offset within 0.35 px (mean
  0.06 px); total variation within 0.7 px; histogram entropy failed on real data (the APS
  tooth scan), where negativity and total variation agree to 0.05 px.

``"auto"`` starts from ``"opposing"`` when enough pairs exist, else from ``"com"``, and refines
with ``"sharpness"`` around that start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import GeometryError
from ._xp import array_namespace, to_numpy
from .fbp import backproject
from .filters import filter_projections
from .geometry import ParallelGeometry

__all__ = [
    "CenterEstimate",
    "CenterMethod",
    "center_from_mass",
    "center_from_opposing",
    "center_from_sharpness",
    "find_center",
    "negativity",
    "opposing_pairs",
    "total_variation",
]

CenterMethod = Literal["auto", "com", "opposing", "sharpness"]

#: Fewest opposing pairs that "auto" trusts on their own.
_MIN_PAIRS = 4


@dataclass(frozen=True)
class CenterEstimate:
    """A rotation-centre estimate.

    ``offset`` is the ``center_offset`` (detector pixels) to pass to :class:`ParallelGeometry`;
    ``method`` names the estimator (``"com+sharpness"`` for the refined automatic result);
    ``score`` is the estimator's own figure of merit (``details`` says what it means) and
    ``details`` holds its diagnostics (residuals, pairs used, candidates and their scores).
    """

    offset: float
    method: str
    score: float
    details: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, geometry: ParallelGeometry) -> ParallelGeometry:
        """``geometry`` with this centre offset."""
        return geometry.with_center(self.offset)


def _check(projections: Any, geometry: ParallelGeometry) -> None:
    shape = tuple(projections.shape)
    expected = (len(geometry), geometry.rows, geometry.cols)
    if shape != expected:
        raise GeometryError(
            f"projections have shape {shape}; "
            f"the geometry expects (angles, rows, cols) = {expected}"
        )


def _rows(geometry: ParallelGeometry, rows: Sequence[int] | None) -> list[int]:
    if rows is None:
        return list(range(geometry.rows))
    chosen = [int(r) for r in rows]
    bad = [r for r in chosen if not 0 <= r < geometry.rows]
    if not chosen or bad:
        raise GeometryError(f"rows must be indices in [0, {geometry.rows}), got {list(rows)!r}")
    return chosen


def _profiles(projections: Any, rows: list[int]) -> Any:
    """Line integrals summed over the chosen rows: ``(angles, cols)`` float64."""
    xp = array_namespace(projections)
    picked = xp.take(projections, xp.asarray(rows), axis=1)
    return xp.sum(picked, axis=1, dtype=xp.float64)


def center_from_mass(
    projections: Any, geometry: ParallelGeometry, *, rows: Sequence[int] | None = None
) -> CenterEstimate:
    """Offset from a sinusoid fit to the projections' centres of mass (any angle set).

    ``score``: root-mean-square residual of the fit in pixels (small when the sample stays in
    the field of view); ``details["mass_variation"]``: relative spread of the projections'
    total mass, which should be a few per cent at most for the estimate to be trusted.
    """
    _check(projections, geometry)
    xp = array_namespace(projections)
    prof = _profiles(projections, _rows(geometry, rows))
    cols = xp.asarray(np.arange(geometry.cols, dtype=np.float64), dtype=prof.dtype)
    m0 = to_numpy(xp.sum(prof, axis=1)).astype(np.float64)
    m1 = to_numpy(xp.sum(prof * cols, axis=1)).astype(np.float64)
    mean_mass = float(np.mean(m0))
    if not mean_mass > 0 or np.any(m0 <= 0):
        raise GeometryError(
            "center_from_mass: every projection needs positive total line integral "
            "(dark/flat corrected -log data of a sample inside the field of view)"
        )
    com = m1 / m0
    design = np.stack(
        [np.ones(len(geometry)), np.cos(geometry.angles), np.sin(geometry.angles)], axis=1
    )
    if np.linalg.matrix_rank(design, tol=1e-6) < 3:
        raise GeometryError(
            "center_from_mass: the angles do not determine a sinusoid "
            "(need at least three angles that are not all equal modulo 360°)"
        )
    coef, *_ = np.linalg.lstsq(design, com, rcond=None)
    residual = float(np.sqrt(np.mean((design @ coef - com) ** 2)))
    offset = float(coef[0]) - (geometry.cols - 1) / 2
    return CenterEstimate(
        offset=offset,
        method="com",
        score=residual,
        details={
            "score": "rms residual of the centre-of-mass sinusoid fit (pixels)",
            "mass_variation": float(np.std(m0) / mean_mass),
            "sample_centre_xy": (float(coef[1]), float(coef[2])),
        },
    )


def opposing_pairs(angles: np.ndarray, tolerance: float) -> np.ndarray:
    """Index pairs ``(k, l)`` with ``θ_l - θ_k = π`` (mod 2π) within ``tolerance`` radians."""
    a = np.mod(np.asarray(angles, dtype=np.float64), 2 * math.pi)
    order = np.argsort(a, kind="stable")
    s = a[order]
    target = np.mod(s + math.pi, 2 * math.pi)
    pos = np.searchsorted(s, target)
    pairs = []
    for idx, t in enumerate(target):
        best, best_err = -1, tolerance
        for cand in (pos[idx] - 1, pos[idx] % len(s)):
            err = abs(np.mod(s[cand] - t + math.pi, 2 * math.pi) - math.pi)
            if err <= best_err:
                best, best_err = int(cand), float(err)
        if best >= 0 and s[idx] < s[best]:  # each pair once, from its earlier angle
            pairs.append((int(order[idx]), int(order[best])))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _pair_tolerance(geometry: ParallelGeometry) -> float:
    """A tenth of the median angular step (folded to 180°), at least 0.01°, in radians."""
    steps = np.diff(np.sort(np.mod(geometry.angles, math.pi)))
    steps = steps[steps > 1e-9]
    step = float(np.median(steps)) if steps.size else math.pi
    return max(0.1 * step, math.radians(0.01))


def center_from_opposing(
    projections: Any,
    geometry: ParallelGeometry,
    *,
    rows: Sequence[int] | None = None,
    tolerance: float | None = None,
) -> CenterEstimate:
    """Offset that best aligns each projection with its mirrored opposite (θ and θ + 180°).

    Pairs are angles 180° apart within ``tolerance`` radians (default: a tenth of the median
    angular step, or 0.01°, whichever is larger). The shift is found by cross-correlating the
    profiles' derivatives (which ignores smooth backgrounds), then refined to sub-pixel
    precision on the band-limited correlation. ``score``: normalised correlation at the
    optimum (1 = perfect match).
    """
    _check(projections, geometry)
    xp = array_namespace(projections)
    if tolerance is None:
        tolerance = _pair_tolerance(geometry)
    pairs = opposing_pairs(geometry.angles, float(tolerance))
    if pairs.shape[0] == 0:
        raise GeometryError(
            f"center_from_opposing: no angle pairs 180° apart within "
            f"{math.degrees(float(tolerance)):.3g}°; use method 'com' or 'sharpness'"
        )
    prof = _profiles(projections, _rows(geometry, rows))
    first = xp.take(prof, xp.asarray(pairs[:, 0]), axis=0)
    second = xp.flip(xp.take(prof, xp.asarray(pairs[:, 1]), axis=0), axis=-1)
    # Derivatives: edges carry the position; constant offsets (flat-field drift) drop out.
    d1 = first[:, 1:] - first[:, :-1]
    d2 = second[:, 1:] - second[:, :-1]
    width = d1.shape[-1]
    n_fft = 1 << math.ceil(math.log2(2 * width))
    cross = xp.sum(
        xp.fft.rfft(d1, n=n_fft, axis=-1) * xp.conj(xp.fft.rfft(d2, n=n_fft, axis=-1)), axis=0
    )
    spectrum = to_numpy(cross).astype(np.complex128)
    energy = math.sqrt(float(to_numpy(xp.sum(d1 * d1))) * float(to_numpy(xp.sum(d2 * d2))))
    shift, peak = _correlation_peak(spectrum, n_fft, max_shift=width - 1)
    # flip(p_l)(c) = p_k(c + s) with s = 2·offset, so the correlation peaks at lag s.
    offset = shift / 2
    return CenterEstimate(
        offset=float(offset),
        method="opposing",
        score=float(peak / energy) if energy > 0 else 0.0,
        details={
            "score": "normalised correlation of mirrored opposite projections",
            "pairs": int(pairs.shape[0]),
            "tolerance_deg": math.degrees(float(tolerance)),
        },
    )


def _correlation_peak(spectrum: np.ndarray, n_fft: int, *, max_shift: int) -> tuple[float, float]:
    """Sub-pixel lag maximising ``r(s) = Σ_c a(c) b(c - s)`` from ``A · conj(B)`` (rfft)."""
    corr = np.fft.irfft(spectrum, n=n_fft)
    lags = np.arange(n_fft)
    lags = np.where(lags > n_fft // 2, lags - n_fft, lags)
    allowed = np.abs(lags) <= max_shift
    best = int(lags[allowed][np.argmax(corr[allowed])])
    omega = 2 * math.pi * np.fft.rfftfreq(n_fft)
    weight = np.full(omega.size, 2.0)
    weight[0] = 1.0
    if n_fft % 2 == 0:
        weight[-1] = 1.0

    def r(s: float) -> float:  # the band-limited correlation between integer lags
        return float(np.sum(weight * (spectrum * np.exp(1j * omega * s)).real) / n_fft)

    from scipy.optimize import minimize_scalar

    fine = minimize_scalar(
        lambda s: -r(s), bounds=(best - 1.0, best + 1.0), method="bounded", options={"xatol": 1e-4}
    )
    return float(fine.x), -float(fine.fun)


def _fov_mask(xp: Any, n: int, radius: float, dtype: Any) -> Any:
    coord = xp.asarray(np.arange(n, dtype=np.float64) - (n - 1) / 2, dtype=dtype)
    return (coord[None, :] ** 2 + coord[:, None] ** 2) <= radius * radius


def total_variation(image: Any, *, radius: float | None = None) -> float:
    """Mean isotropic gradient magnitude of ``(..., n, n)`` inside the centred disk ``radius``.

    Lower is sharper (total variation as in Rudin, Osher & Fatemi, Physica D 60, 1992).
    """
    xp = array_namespace(image)
    n = image.shape[-1]
    radius = (n - 1) / 2 if radius is None else float(radius)
    gx = image[..., :-1, 1:] - image[..., :-1, :-1]
    gy = image[..., 1:, :-1] - image[..., :-1, :-1]
    mag = xp.sqrt(gx * gx + gy * gy)
    inside = _fov_mask(xp, n, radius, mag.dtype)[:-1, :-1]
    return _masked_mean(xp, mag, inside)


def negativity(image: Any, *, radius: float | None = None) -> float:
    """Mean of ``min(f, 0)²`` over ``(..., n, n)`` inside the centred disk ``radius``.

    Attenuation is never negative, so negative values are reconstruction artefacts; lower is
    better.
    """
    xp = array_namespace(image)
    n = image.shape[-1]
    radius = (n - 1) / 2 if radius is None else float(radius)
    neg = xp.minimum(image, xp.zeros_like(image))
    return _masked_mean(xp, neg * neg, _fov_mask(xp, n, radius, image.dtype))


def _masked_mean(xp: Any, values: Any, inside: Any) -> float:
    count = float(to_numpy(xp.sum(xp.astype(inside, values.dtype)))) * math.prod(values.shape[:-2])
    if count == 0:
        raise GeometryError("sharpness score: no pixels inside the field-of-view disk")
    total = xp.sum(xp.where(inside, values, xp.zeros_like(values)))
    return float(to_numpy(total)) / count


SharpnessMetric = Literal["tv", "negativity"]
_METRICS = {"tv": total_variation, "negativity": negativity}


def _half_turn(angles: np.ndarray) -> np.ndarray:
    """Indices of the angles within 180° from the first (all of them for a half turn)."""
    rel = np.mod(angles - angles.min(), 2 * math.pi)
    keep = np.flatnonzero(rel < math.pi - 1e-9)
    return keep if keep.size >= 2 else np.arange(angles.size)


def center_from_sharpness(
    projections: Any,
    geometry: ParallelGeometry,
    *,
    rows: Sequence[int] | None = None,
    initial: float | None = None,
    radius: float = 4.0,
    max_radius: float | None = None,
    metric: SharpnessMetric = "negativity",
    window: str = "hann",
    n: int | None = None,
) -> CenterEstimate:
    """Offset whose reconstruction is sharpest (least ``metric``) inside the field of view.

    Searches whole-pixel steps within ``radius`` of ``initial`` (default: the geometry's
    offset), walking on while the best candidate sits at the edge (up to ``max_radius``,
    default a quarter of the detector), then fits a parabola to quarter-pixel steps around the
    best one. Only the first half turn of the angles is used: over a full turn a wrong centre
    doubles the image (a blur, which noise-driven scores reward) instead of drawing arcs.
    ``window``: the ramp filter's apodisation (Hann keeps noise from dominating the score).
    ``rows``: the slices to reconstruct (default: up to three spread over the detector).
    ``score``: the metric at the optimum; ``details`` lists every candidate.
    """
    _check(projections, geometry)
    if metric not in _METRICS:
        raise GeometryError(f"unknown sharpness metric {metric!r}; expected tv or negativity")
    xp = array_namespace(projections)
    if rows is None:
        rows = sorted({round(v) for v in np.linspace(0, geometry.rows - 1, 5)[1:-1]})
        if geometry.rows <= 2:
            rows = list(range(geometry.rows))
    chosen = _rows(geometry, rows)
    start = geometry.center_offset if initial is None else float(initial)
    max_radius = geometry.cols / 4 if max_radius is None else float(max_radius)
    dtype = xp.float64 if projections.dtype == xp.float64 else xp.float32
    keep = _half_turn(geometry.angles)
    sub = xp.take(xp.astype(projections, dtype), xp.asarray(keep), axis=0)
    sub = xp.take(sub, xp.asarray(chosen), axis=1)
    sub_geometry = ParallelGeometry(geometry.angles[keep], len(chosen), geometry.cols, start)
    filtered = filter_projections(sub, window=window)  # the filter does not depend on the centre
    # Score inside the disk that the first search window's candidates all see at every angle.
    fov_radius = max((geometry.cols - 1) / 2 - abs(start) - radius - 2, 4.0)
    if n is None:  # just the grid that holds the scored disk
        n = min(geometry.cols, 2 * math.ceil(fov_radius) + 2)
    fov_radius = min(fov_radius, (n - 1) / 2)
    score_of = _METRICS[metric]
    scores: dict[float, float] = {}

    def score(offset: float) -> float:
        key = round(offset, 6)
        if key not in scores:
            image = backproject(filtered, sub_geometry.with_center(offset), n=n)
            scores[key] = score_of(image, radius=fov_radius)
        return scores[key]

    k_lo, k_hi = -math.ceil(radius), math.ceil(radius)
    limit = math.floor(max_radius)
    while True:  # walk on while the best whole-pixel candidate is at the edge of the range
        best = min(range(k_lo, k_hi + 1), key=lambda k: score(start + k))
        if best == k_lo and k_lo > -limit:
            k_lo -= 1
        elif best == k_hi and k_hi < limit:
            k_hi += 1
        else:
            break
    centre = start + best
    fine = np.arange(-4, 5) * 0.25
    values = np.array([score(centre + float(d)) for d in fine])
    a, b, _ = np.polyfit(fine, values, 2)
    vertex = -b / (2 * a) if a > 0 else float(fine[int(np.argmin(values))])
    offset = centre + float(np.clip(vertex, -1.0, 1.0))
    return CenterEstimate(
        offset=float(offset),
        method="sharpness",
        score=score(offset),
        details={
            "score": f"{metric} of the reconstruction inside the field of view (lower is sharper)",
            "rows": chosen,
            "angles_used": int(keep.size),
            "fov_radius": float(fov_radius),
            "candidates": sorted(scores.items()),
            "hit_search_limit": best in (-limit, limit),
        },
    )


def find_center(
    projections: Any,
    geometry: ParallelGeometry,
    *,
    method: CenterMethod = "auto",
    rows: Sequence[int] | None = None,
    radius: float | None = None,
    metric: SharpnessMetric = "negativity",
) -> CenterEstimate:
    """Estimate the rotation-centre offset of ``projections`` (dark/flat-corrected ``-log`` data).

    ``method``: ``"com"``, ``"opposing"``, ``"sharpness"`` (see the module docstring) or
    ``"auto"`` = opposing (when at least a few pairs 180° apart exist) else centre of mass,
    refined by the sharpness search (``metric``) within ``radius`` pixels (default 3; 8 for
    ``"sharpness"`` alone, which starts from the geometry's offset). ``rows`` selects detector
    rows (default: all for the centre of mass and opposing pairs, a few for sharpness).
    """
    if method == "com":
        return center_from_mass(projections, geometry, rows=rows)
    if method == "opposing":
        return center_from_opposing(projections, geometry, rows=rows)
    if method == "sharpness":
        return center_from_sharpness(
            projections,
            geometry,
            rows=rows,
            radius=8.0 if radius is None else radius,
            metric=metric,
        )
    if method != "auto":
        raise GeometryError(
            f"unknown centre method {method!r}; expected auto, com, opposing or sharpness"
        )
    if opposing_pairs(geometry.angles, _pair_tolerance(geometry)).shape[0] >= _MIN_PAIRS:
        start = center_from_opposing(projections, geometry, rows=rows)
    else:
        start = center_from_mass(projections, geometry, rows=rows)
    refined = center_from_sharpness(
        projections,
        geometry,
        rows=rows,
        initial=start.offset,
        radius=3.0 if radius is None else radius,
        metric=metric,
    )
    return CenterEstimate(
        offset=refined.offset,
        method=f"{start.method}+sharpness",
        score=refined.score,
        details={**refined.details, "start": start.offset, "start_details": dict(start.details)},
    )
