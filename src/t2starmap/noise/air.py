"""sigma from the differences of consecutive echoes in the air."""

from __future__ import annotations

import functools
import math

import numpy as np

from t2starmap.noise.background import _Air
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.samples import _MAD_TO_SD, MIN_BACKGROUND, _as_float

#: Statistics of many voxels are taken on a sample where a volume holds more: the echo
#: differences on every k-th air voxel (C order) so that at most ``SAMPLE_VOXELS`` are used
#: (the MAD of 2^16 values spreads by 0.46 %, of a complex set's 2^17 real and imaginary
#: values by 0.33 %, and the median over the later echo pairs narrows it further; 2^18 took
#: 60 ms of the GE kidney set's noise step, for a cross-check), the local variance on every
#: k-th plane along the third axis so that at most ``LOCAL_WINDOWS`` windows are (its mode
#: spreads by 0.5 % at 2^20 windows, a fifth of its 2.5 % bins; ``benchmarks/bench_brain.py``).
#: Smaller volumes are used whole. The background quantiles, the chosen estimate of most sets,
#: use every voxel: whole-number images are counted per value in one pass.
SAMPLE_VOXELS = 1 << 16


def noise_from_echo_differences(
    magnitude: np.ndarray, *, signal: np.ndarray | None = None, coils: float = 1.0
) -> NoiseEstimate:
    """sigma from the differences of consecutive echoes in the air: ghosts, motion and
    aliasing repeat from echo to echo and cancel in a difference, the noise does not.

    magnitude: (..., n_echoes), echoes ascending; signal: the complex echoes when the set has
    them (real and imaginary channels are then used, Gaussian: 1.4826 MAD / sqrt(2)); else the
    magnitudes, whose difference in air of L = ``coils`` coils has a MAD of
    :func:`_difference_mad` sigma. Air: the first echo's background candidates (below its Otsu
    threshold, exact zeros left out). Pairs: those of the later half of the echo train (at
    least the last one), where the object's ghosts have decayed most; the median over them.
    On the GE kidney the first pair gives 29, the late ones 9.4-11.5, the background 55."""
    data = np.asarray(magnitude)
    if data.shape[-1] < 2:
        return NoiseEstimate(None, 0, "echo differences need at least 2 echoes")
    return _differences(data, _Air.of(data[..., 0]), signal, coils)


def _differences(
    data: np.ndarray, air: _Air, signal: np.ndarray | None, coils: float
) -> NoiseEstimate:
    """:func:`noise_from_echo_differences` in the air of the first echo ``air`` describes,
    on at most ``SAMPLE_VOXELS`` of its voxels (every k-th)."""
    n_echo = data.shape[-1]
    if air.threshold is None:
        return NoiseEstimate(None, air.values.size, "too few non-zero voxels")
    index = np.flatnonzero(air.candidates())
    if index.size < MIN_BACKGROUND:
        return NoiseEstimate(None, int(index.size), "too few background voxels")
    index = index[:: -(-index.size // SAMPLE_VOXELS)]
    flat = (data if signal is None else signal).reshape(-1, n_echo)
    sigmas = []
    for k in range(max(0, n_echo // 2 - 1), n_echo - 1):
        d = _as_float(flat[index, k + 1]) - flat[index, k]  # no integer overflow
        if signal is not None:
            parts = np.concatenate([d.real, d.imag])  # float32 from complex64: the medians
            parts = parts[np.isfinite(parts)]  # select in half the time of float64
            mad = float(np.median(np.abs(parts - np.median(parts))))
            sigmas.append(_MAD_TO_SD * mad / math.sqrt(2.0))
        else:
            d = d[np.isfinite(d)]
            sigmas.append(float(np.median(np.abs(d - np.median(d)))) / _difference_mad(coils))
    sigma = float(np.median(sigmas))
    if not sigma > 0:
        return NoiseEstimate(None, int(index.size), "the air does not change between echoes")
    return NoiseEstimate(
        sigma,
        int(index.size),
        coils=1.0 if signal is not None else coils,
        method="echo-differences",
    )


@functools.cache
def _difference_mad(coils: float) -> float:
    """MAD of M1 - M2 for two independent central chi magnitudes of L coils with sigma 1 (a
    seeded simulation of 400 000 pairs; 0.78 for L = 1, Rayleigh)."""
    rng = np.random.default_rng(0)
    shape = (2, 400_000)
    whole = math.floor(coils)
    squares = rng.chisquare(2 * whole, shape) if whole else np.zeros(shape)
    if coils > whole:  # a fractional effective coil count: Gamma of that shape
        squares = squares + 2.0 * rng.gamma(coils - whole, 1.0, shape)
    m = np.sqrt(squares)
    d = m[0] - m[1]
    return float(np.median(np.abs(d - np.median(d))))
