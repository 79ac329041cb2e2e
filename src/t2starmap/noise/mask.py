"""The automatic signal mask."""

from __future__ import annotations

import math

import numpy as np

from t2starmap.noise.samples import _above, _all_finite, _gamma_quantile

MASK_SNR = 5.0


FALLBACK_FRACTION = 0.05


def signal_mask(
    magnitude: np.ndarray,
    sigma: float | None,
    coils: float = 1.0,
    *,
    nonfinite: np.ndarray | None = None,
) -> np.ndarray:
    """Voxels to fit. magnitude: (..., n_echoes) with echoes ascending in TE. Returns (...) bool.

    With a noise level: first echo above the point that an air voxel (central chi of L coils)
    exceeds with probability exp(-MASK_SNR^2 / 2) ~ 4e-6: ``MASK_SNR`` * sigma for Rician air
    (L = 1), about 11 sigma for L = 32. Without: first echo above ``FALLBACK_FRACTION`` of its
    99th percentile. Voxels with a non-finite sample in any echo are always included, so that
    the fit flags them as failed rather than hiding them. ``nonfinite``: (...) bool, those
    voxels, when the caller knows them already (it saves a pass over every sample)."""
    data = np.asarray(magnitude)
    if nonfinite is None:
        nonfinite = ~_all_finite(data.reshape(-1, data.shape[-1])).reshape(data.shape[:-1])
    if sigma is not None and sigma > 0:
        if coils == 1.0:
            threshold = MASK_SNR * sigma
        else:
            tail = -math.expm1(-(MASK_SNR**2) / 2.0)
            threshold = sigma * math.sqrt(2.0 * _gamma_quantile(np.array([coils]), tail)[0])
        first = data[..., 0]
        if first.dtype not in (np.float32, np.float64) and first.dtype.kind not in "iu":
            first = first.astype(np.float64)
        return np.asarray(
            _above(first, threshold) | nonfinite
        )  # a non-finite first echo: in nonfinite
    first = np.asarray(data[..., 0], dtype=np.float64)
    finite_first = np.where(np.isfinite(first), first, 0.0)
    positive = finite_first[finite_first > 0]
    threshold = FALLBACK_FRACTION * float(np.percentile(positive, 99)) if positive.size else 0.0
    return np.asarray((finite_first > threshold) | nonfinite)
