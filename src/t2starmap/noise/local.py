"""No usable air: sigma from the mode of the local variance of bright voxels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from t2starmap.noise.samples import MIN_BACKGROUND

#: Local variance: windows whose every voxel exceeds this many sigma (of a first pass) count.
_LOCAL_SNR = 8.0
#: At most this many 3 x 3 windows: on a larger volume every k-th plane along the third axis
#: (the mode spreads by 0.5 % at 2^20 windows, a fifth of its 2.5 % bins;
#: ``benchmarks/bench_brain.py``).
LOCAL_WINDOWS = 1 << 20


def _local_variance_sigma(image: np.ndarray) -> tuple[float | None, int]:
    """sigma from the mode of log(local variance) in 3 x 3 windows over the first two axes: the
    residual variance about the plane fitted in each window (6 degrees of freedom), so that
    smooth intensity gradients do not count as noise (3-voxel windows, plain variance, for 1-D
    input). First over all windows of positive finite voxels, then over those whose every
    voxel exceeds ``_LOCAL_SNR`` sigma of that pass (edges against air, which would outnumber
    the inside of a small object, are left out). Returns (sigma or None, windows used).
    On a volume of more than ``LOCAL_WINDOWS`` windows, only every k-th plane along the
    third axis (and beyond) is used, k as small as keeps them below it."""
    plane = image.ndim >= 2
    axes = (0, 1) if plane else (0,)
    if any(image.shape[a] < 3 for a in axes):
        return None, 0
    sample = np.asarray(_window_planes(image), dtype=np.float64)
    x = np.where(np.isfinite(sample), sample, 0.0)
    flat = (1.0, 1.0, 1.0)
    total = _window_sum(x, [flat] * len(axes))
    squares = _window_sum(x * x, [flat] * len(axes))
    lowest = _window_min(x, len(axes))
    n = 3.0 ** len(axes)
    full = lowest > 0
    residual = squares - total * total / n
    dof = n - 1.0
    if plane:
        slope = (-1.0, 0.0, 1.0)  # sum of x v and of y v; sum of x^2 over the window is 6
        gx = _window_sum(x, [slope, flat])
        gy = _window_sum(x, [flat, slope])
        residual = residual - (gx * gx + gy * gy) / 6.0
        dof = n - 3.0
    variance = residual / dof
    sigma: float | None = None
    use = full & (variance > 0)
    for _ in range(2):
        if int(use.sum()) < MIN_BACKGROUND:
            return None, int(use.sum())
        sigma = math.sqrt(_log_mode(variance[use]))
        use = (variance > 0) & (lowest > _LOCAL_SNR * sigma)
    return sigma, int(use.sum())


def _window_planes(image: np.ndarray) -> np.ndarray:
    """The planes of ``image`` (first two axes) the local variance uses: all of them, or
    every k-th along the third axis and beyond (flattened) so that at most
    ``LOCAL_WINDOWS`` 3 x 3 windows remain."""
    if image.ndim < 3:
        return image
    n0, n1 = image.shape[:2]
    stack = image.reshape(n0, n1, -1)
    step = -(-(n0 - 2) * (n1 - 2) * stack.shape[2] // LOCAL_WINDOWS)
    return stack[:, :, ::step] if step > 1 else image


def _shifted(x: np.ndarray, axis: int, start: int) -> np.ndarray:
    """The view of ``x`` from ``start`` to 2 - start before its end along ``axis``."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, x.shape[axis] - 2 + start)
    return x[tuple(index)]


def _window_min(x: np.ndarray, n_axes: int) -> np.ndarray:
    """Minimum over 3-voxel windows along the first ``n_axes`` axes (the valid part)."""
    for axis in range(n_axes):
        x = np.minimum(np.minimum(_shifted(x, axis, 0), _shifted(x, axis, 1)), _shifted(x, axis, 2))
    return x


def _window_sum(x: np.ndarray, weights: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Weighted sums over 3-voxel windows along the first ``len(weights)`` axes, one weight
    triple per axis (the valid part: 2 shorter along each)."""
    for axis, (w0, w1, w2) in enumerate(weights):
        x = w0 * _shifted(x, axis, 0) + w1 * _shifted(x, axis, 1) + w2 * _shifted(x, axis, 2)
    return x


def _log_mode(values: np.ndarray) -> float:
    """The mode of log(values), as a value: the peak of a histogram of 0.05-wide bins smoothed
    by a Gaussian of SD 0.2 (the log of a 6-degree-of-freedom variance has an SD of 0.6)."""
    logs = np.log(values)
    lo, hi = np.percentile(logs, [0.5, 99.5])
    if not hi > lo:
        return float(np.exp(lo))
    edges = np.arange(lo - 0.5, hi + 0.55, 0.05)
    hist, edges = np.histogram(logs, bins=edges)
    kernel = np.exp(-0.5 * (np.arange(-12, 13) / 4.0) ** 2)
    smooth = np.convolve(hist.astype(np.float64), kernel, mode="same")
    k = int(np.argmax(smooth))
    return float(np.exp((edges[k] + edges[k + 1]) / 2.0))
