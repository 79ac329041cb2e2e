"""The first echo's background: central chi from two quantiles, or the real channel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from t2starmap.noise.local import _local_variance_sigma
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.samples import (
    _MAD_TO_SD,
    _TORCH_COUNTS,
    MIN_BACKGROUND,
    _as_float,
    _below,
    _gamma_quantile,
    _Sample,
)

#: Largest effective coil count accepted from a background; a larger one means the darkest
#: class of the image is tissue, not air.
MAX_COILS = 64.0


#: An estimated effective coil count below this is one coil (Rician): at L = 1 the estimate
#: spreads by about +-20 % (tests), and a single-channel image must be fitted as one.
SINGLE_COIL = 1.25


#: Quantiles of the background that give L and sigma (lower quartile, median).
_LOW_Q, _MID_Q = 0.25, 0.5
#: The 99.9 % point of the fitted background: above it a candidate counts as an outlier.
_OUTLIER_Q = 0.999
#: Refinements of the background estimate (see :func:`_background_chi`).
_REFINE = 4


#: A background sigma above this many times the local SD of the bright voxels is not air.
#: Interpolated real images are smoother than their noise: GE kidney 55.6 / 29.4 = 1.9 is air;
#: a masked phantom (tests) gives 6.4, the masked bundled example 9.
_AIR_CHECK = 3.0


@dataclass(frozen=True)
class _Air:
    """The first echo as the background estimates see it: ``first`` (float32 or float64),
    its finite positive ``values``, the fraction of its finite voxels that are exactly 0, and
    the background candidates' ``threshold`` (below Otsu's threshold of log(1 + value);
    None with fewer than ``MIN_BACKGROUND`` values)."""

    first: np.ndarray
    values: _Sample
    zero_fraction: float
    threshold: float | None

    @classmethod
    def of(cls, first_echo: np.ndarray) -> _Air:
        image = np.asarray(first_echo)
        if image.dtype in _TORCH_COUNTS:  # integers: all finite, counted as they are
            values = _Sample.of(image[image > 0])
            zero_fraction = float(np.count_nonzero(image == 0) / image.size) if image.size else 0.0
            threshold = values.log_otsu() if values.size >= MIN_BACKGROUND else None
            return cls(image, values, zero_fraction, threshold)
        image = _as_float(image)
        finite = image[np.isfinite(image)]
        zero_fraction = float(np.mean(finite == 0)) if finite.size else 0.0
        values = _Sample.of(finite[finite > 0])
        threshold = values.log_otsu() if values.size >= MIN_BACKGROUND else None
        return cls(image, values, zero_fraction, threshold)

    def candidates(self) -> np.ndarray:
        """The background candidates: (first's shape) bool, positive and below the threshold."""
        assert self.threshold is not None
        return np.asarray((self.first > 0) & _below(self.first, self.threshold))


def estimate_noise(
    first_echo: np.ndarray,
    *,
    real: np.ndarray | None = None,
    coils: float | None = None,
    local_variance: bool = True,
) -> NoiseEstimate:
    """Noise SD and effective coil count from the first (shortest-TE) magnitude echo.

    first_echo: (...) magnitude, any spatial shape (the first two axes in-plane for the local
    variance). real: (...) the real part of the same echo (complex data: GE real files, or
    magnitude * cos(phase in rad)); when given and the background is usable, sigma comes from
    it (``real-channel``). coils: a known effective coil count L (e.g. given by hand); None:
    estimated from the background. local_variance: fall back on the local-variance mode when
    the background is unusable. See the module docstring for the rule.
    """
    _check_coils(coils)
    return _background_estimate(_Air.of(first_echo), real, coils, local_variance)


def _check_coils(coils: float | None) -> None:
    if coils is not None and not (math.isfinite(coils) and coils >= 1.0):
        raise ValueError(f"coils must be a number >= 1, got {coils!r}")


def _background_estimate(
    air: _Air, real: np.ndarray | None, coils: float | None, local_variance: bool
) -> NoiseEstimate:
    """:func:`estimate_noise` of the first echo ``air`` describes."""
    zero_fraction = air.zero_fraction
    if air.threshold is None:
        return NoiseEstimate(
            None, air.values.size, "too few non-zero voxels", zero_fraction=zero_fraction
        )
    background = air.values.below(air.threshold)
    if real is not None:
        channel = _real_channel(air, real, background)
        if channel is not None:
            return channel
    local = _local_variance_sigma(air.first)
    reason = _background_problem(background)
    if not reason:
        sigma, fitted, used = _background_chi(background, air.values, coils)
        if coils is None and fitted < SINGLE_COIL:  # one coil within the estimate's spread
            sigma, fitted, used = _background_chi(background, air.values, 1.0)
        reason = _not_air(sigma, fitted, local[0])
        if not reason:
            return NoiseEstimate(
                sigma,
                used,
                coils=fitted,
                method="background-quantiles",
                zero_fraction=zero_fraction,
                outlier_fraction=_outliers(background, sigma, fitted),
            )
    if local_variance and local[0] is not None:
        assumed = 1.0 if coils is None else float(coils)
        return NoiseEstimate(
            local[0],
            local[1],
            f"{reason}; sigma from the local variance of bright voxels, coils assumed {assumed:g}",
            coils=assumed,
            method="local-variance",
            zero_fraction=zero_fraction,
        )
    if local_variance:
        reason = f"{reason}; too few bright windows for the local variance"
    return NoiseEstimate(None, background.size, reason, zero_fraction=zero_fraction)


def _real_channel(air: _Air, real: np.ndarray, background: _Sample) -> NoiseEstimate | None:
    """sigma from the MAD of the real channel over the background candidates (``real-
    channel``); None when fewer than ``MIN_BACKGROUND`` remain or the MAD is 0."""
    assert air.threshold is not None
    image = np.asarray(air.first, dtype=np.float64)
    part = np.asarray(real, dtype=np.float64)
    if part.shape != image.shape:
        raise ValueError(f"real part shape {part.shape} does not match {image.shape}")
    where = np.isfinite(image) & np.isfinite(part) & (image > 0) & (image < air.threshold)
    if int(where.sum()) < MIN_BACKGROUND:
        return None
    sample = part[where]
    sigma = _MAD_TO_SD * float(np.median(np.abs(sample - np.median(sample))))
    if not sigma > 0:
        return None
    return NoiseEstimate(
        sigma,
        int(sample.size),
        coils=1.0,
        method="real-channel",
        zero_fraction=air.zero_fraction,
        outlier_fraction=_outliers(background, sigma, 1.0),
    )


def _not_air(sigma: float, coils: float, local_sigma: float | None) -> str:
    """Why a background fit (sigma, L) is not that of air ("" when it may be): L above
    ``MAX_COILS``, or sigma above ``_AIR_CHECK`` times the local SD of the bright voxels
    (texture and edges only add to the local variance there, so noise cannot exceed it)."""
    if coils > MAX_COILS:
        return (
            f"the darkest voxels do not look like noise (effective coils {coils:.0f} > "
            f"{MAX_COILS:.0f}): no air in the image?"
        )
    if local_sigma is not None and sigma > _AIR_CHECK * local_sigma:
        return (
            f"the darkest voxels vary more (sigma {sigma:.4g}) than {_AIR_CHECK:g} x the "
            f"local SD of the bright ones ({local_sigma:.4g}): tissue, not air (masked image?)"
        )
    return ""


def _background_problem(background: _Sample) -> str:
    if background.size < MIN_BACKGROUND:
        return f"too few background voxels ({background.size} < {MIN_BACKGROUND})"
    return ""


def _background_chi(
    background: _Sample, values: _Sample, coils: float | None
) -> tuple[float, float, int]:
    """(sigma, L, voxels used) of the air: a first estimate from ``background`` (the Otsu
    candidates, all below ``otsu``), then up to ``_REFINE`` more where the 99.9 % point of
    the last estimate lies above Otsu's threshold, each from the ``values`` (all positive
    voxels) below that point (quantile levels scaled by 0.999 for the truncation). Otsu's
    threshold can fall inside the air (a faint ghost over most of it makes the air two
    classes); the refinement then takes in the rest of it."""
    sigma, fitted = _chi_from_quantiles(background, coils, 1.0)
    used = background.size
    otsu = background.max()
    for _ in range(_REFINE):
        top = sigma * math.sqrt(2.0 * float(_gamma_quantile(np.array([fitted]), _OUTLIER_Q)[0]))
        if top <= otsu or fitted > MAX_COILS:
            break
        inside = values.below(top)
        sigma, fitted = _chi_from_quantiles(inside, coils, _OUTLIER_Q)
        used = inside.size
    return sigma, fitted, used


def _chi_from_quantiles(sample: _Sample, coils: float | None, kept: float) -> tuple[float, float]:
    """(sigma, L) of a central chi from the lower quartile and the median of ``sample``, which
    holds the fraction ``kept`` of the distribution (its lowest part); L as given when
    ``coils`` is not None. L is held in [1, 2 * MAX_COILS]."""
    low, mid = sample.quantiles((_LOW_Q / kept, _MID_Q / kept))
    if coils is None:
        grid, ratio = _chi_ratio_table()
        # ratio grows with L; below its L = 1 value the background is wider than Rayleigh.
        fitted = float(np.exp(np.interp(low / mid, ratio, np.log(grid))))
    else:
        fitted = float(coils)
    g_mid = float(_gamma_quantile(np.array([fitted]), _MID_Q)[0])
    return mid / math.sqrt(2.0 * g_mid), fitted


_TABLE: tuple[np.ndarray, np.ndarray] | None = None


def _chi_ratio_table() -> tuple[np.ndarray, np.ndarray]:
    """L on a log grid in [1, 2 * MAX_COILS] and the central chi's lower-quartile / median ratio
    sqrt(G_L^-1(1/4) / G_L^-1(1/2)) there (ascending in L)."""
    global _TABLE
    if _TABLE is None:
        grid = np.geomspace(1.0, 2.0 * MAX_COILS, 512)
        ratio = np.sqrt(_gamma_quantile(grid, _LOW_Q) / _gamma_quantile(grid, _MID_Q))
        _TABLE = (grid, ratio)
    return _TABLE


def _outliers(background: _Sample, sigma: float, coils: float) -> float:
    """Fraction of ``background`` above the 99.9 % point of chi(sigma, L)."""
    if background.size == 0:
        return 0.0
    top = sigma * math.sqrt(2.0 * float(_gamma_quantile(np.array([coils]), _OUTLIER_Q)[0]))
    return background.fraction_above(top)
