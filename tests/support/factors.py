"""The rectangle's dephasing factor, as the fit tests build their known factors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from t2starmap.b0.profiles import SliceProfile, dephasing_factor


def rect_factor(
    gradient_hz_per_mm: np.ndarray, thickness_mm: float, echo_times: Sequence[float] | np.ndarray
) -> np.ndarray:
    """|F(TE)| = |sinc(G dz TE)| of a rectangular slice: (..., n_echoes) float64 in [0, 1]."""
    g = np.asarray(gradient_hz_per_mm, dtype=np.float64)
    te = np.asarray(echo_times, dtype=np.float64)
    return np.abs(dephasing_factor(SliceProfile("rect"), g, float(thickness_mm), te))
