"""Noise level from the image background, and the automatic signal mask.

Pure numpy, no I/O, no logging. The rule, in full (also in the README):

1. Work on the first (shortest-TE) magnitude echo. Only finite voxels count.
2. Background candidates: voxels below an Otsu threshold on log(1 + intensity), excluding
   exact zeros (zero-filled or masked backgrounds carry no noise information).
3. In air, magnitude is Rayleigh-distributed: E[M^2] = 2 sigma^2. Starting from the
   candidates, sigma is refined three times, each time keeping only voxels below the
   Rayleigh 99.9 % quantile (3.72 sigma) and correcting for that truncation.
4. The estimate is refused (``None``) when fewer than ``MIN_BACKGROUND`` voxels remain, or
   when they do not look Rayleigh (mean / rms outside 0.80..0.95; Rayleigh gives 0.886),
   as happens with a masked, zero-filled or heavily filtered background.
5. Signal mask: voxels whose first echo exceeds ``MASK_SNR`` * sigma (a Rayleigh background
   voxel does so with probability exp(-12.5) ~ 4e-6). Without a noise estimate: first echo
   above ``FALLBACK_FRACTION`` of its 99th percentile. Voxels with a non-finite sample in any
   echo are always included, so that the fit flags them as failed rather than hiding them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_BACKGROUND = 100
MASK_SNR = 5.0
FALLBACK_FRACTION = 0.05
_RAYLEIGH_Q = 0.999
_RAYLEIGH_MEAN_OVER_RMS = math.sqrt(math.pi / 4.0)


@dataclass(frozen=True)
class NoiseEstimate:
    """sigma: per-channel noise SD (None when it could not be estimated); n_background: voxels
    used; reason: why it could not be estimated (empty when it could)."""

    sigma: float | None
    n_background: int
    reason: str = ""


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = hist.astype(np.float64)
    w0 = np.cumsum(weight)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weight * centres)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))]) if bins > 1 else float(centres[0])


def estimate_noise(first_echo: np.ndarray) -> NoiseEstimate:
    """Noise SD from the Rayleigh statistics of background air in the first echo (see module)."""
    values = np.asarray(first_echo, dtype=np.float64).ravel()
    values = values[np.isfinite(values) & (values > 0)]
    if values.size < MIN_BACKGROUND:
        return NoiseEstimate(None, int(values.size), "too few non-zero background voxels")
    threshold = math.expm1(otsu_threshold(np.log1p(values)))
    background = values[values < threshold]
    if background.size < MIN_BACKGROUND:
        return NoiseEstimate(None, int(background.size), "too few background voxels")
    sigma = math.sqrt(np.mean(background**2) / 2.0)
    c = -math.log(1.0 - _RAYLEIGH_Q)  # truncation point of u = M^2 / (2 sigma^2)
    shrink = 1.0 - c * math.exp(-c) / (1.0 - math.exp(-c))  # E[u | u < c]
    for _ in range(3):
        background = values[values < sigma * math.sqrt(2.0 * c)]
        if background.size < MIN_BACKGROUND:
            return NoiseEstimate(None, int(background.size), "too few background voxels")
        sigma = math.sqrt(np.mean(background**2) / (2.0 * shrink))
    shape = float(np.mean(background) / math.sqrt(np.mean(background**2)))
    if not 0.80 <= shape <= 0.95:
        return NoiseEstimate(
            None,
            int(background.size),
            f"background is not Rayleigh-distributed (mean/rms {shape:.3f}, expected "
            f"{_RAYLEIGH_MEAN_OVER_RMS:.3f}): masked or filtered images?",
        )
    return NoiseEstimate(sigma, int(background.size))


def signal_mask(magnitude: np.ndarray, sigma: float | None) -> np.ndarray:
    """Voxels to fit. magnitude: (..., n_echoes) with echoes ascending in TE. Returns (...) bool."""
    first = np.asarray(magnitude[..., 0], dtype=np.float64)
    nonfinite = ~np.all(np.isfinite(magnitude), axis=-1)
    finite_first = np.where(np.isfinite(first), first, 0.0)
    if sigma is not None and sigma > 0:
        threshold = MASK_SNR * sigma
    else:
        positive = finite_first[finite_first > 0]
        threshold = FALLBACK_FRACTION * float(np.percentile(positive, 99)) if positive.size else 0.0
    return (finite_first > threshold) | nonfinite
