"""A smooth noise map, where the data show the noise is not uniform (parallel imaging).

SENSE and GRAPPA amplify the noise by the g-factor, which varies smoothly over the image (by
2x and more at R = 3). Each voxel's own estimate of its thermal variance
(:attr:`t2starmap.noise.floor.Floor.voxel_variance`, unbiased but noisy) is smoothed over the
first two axes by a Gaussian of SD ``SMOOTH_FRACTION`` of the in-plane field of view
(normalised convolution: only where voxels were measured), slice by slice. The map is used
when it varies beyond chance: its spread over the measured voxels (the 5-95 % range of
sigma) exceeds ``NONUNIFORM_SPREAD`` of its median, and ``NONUNIFORM_Z`` times what the
noise of the voxel estimates alone would give the smoothed map. Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: The Gaussian's SD as a fraction of the larger in-plane dimension.
SMOOTH_FRACTION = 0.08
#: The map is used when its 5-95 % range exceeds this fraction of its median ...
NONUNIFORM_SPREAD = 0.2
#: ... and this many times the spread that chance alone would give the smoothed map.
NONUNIFORM_Z = 4.0
#: Voxel estimates above this many times the median are clipped (misfit left after trimming).
_CLIP = 6.0


@dataclass(frozen=True)
class NoiseMap:
    """sigma: (shape) the smooth noise SD in image units (the median sigma where nothing was
    measured nearby); spread: the 5-95 % range of sigma over the measured voxels over its
    median; chance: that range's share expected from the voxel estimates' own noise;
    nonuniform: whether the map is to be used."""

    sigma: np.ndarray
    spread: float
    chance: float
    nonuniform: bool


def noise_map(shape: tuple[int, ...], index: np.ndarray, variance: np.ndarray) -> NoiseMap | None:
    """The smooth noise map of an image of ``shape`` from per-voxel variance estimates at the
    flattened positions ``index``; None for a 1-D image or fewer than 2 voxels."""
    if len(shape) < 2 or index.size < 2:
        return None
    median = float(np.median(variance))
    if not median > 0:
        return None
    values = np.clip(variance, -_CLIP * median, _CLIP * median)
    total = np.zeros(int(np.prod(shape)))
    weight = np.zeros_like(total)
    np.add.at(total, index, values)
    np.add.at(weight, index, 1.0)
    plane = _smoother(shape)
    sums, counts = plane(total.reshape(shape)), plane(weight.reshape(shape))
    measured = counts > 0.05 * counts.max()
    smooth = np.where(measured, sums / np.where(measured, counts, 1.0), median)
    sigma = np.sqrt(np.clip(smooth, 0.01 * median, None))
    at = sigma.reshape(-1)[index]
    lo, mid, hi = np.percentile(at, [5, 50, 95])
    # chance: each smoothed value averages about counts(x) voxel estimates of spread sd
    residual = values - smooth.reshape(-1)[index]
    sd = float(np.sqrt(np.mean(residual * residual)))
    effective = float(np.median(counts.reshape(-1)[index] ** 2 / plane_sq(shape, weight)[index]))
    chance = 2 * 1.645 * 0.5 * sd / math.sqrt(max(effective, 1.0)) / (mid * mid)
    spread = float((hi - lo) / mid)
    nonuniform = spread > NONUNIFORM_SPREAD and spread > NONUNIFORM_Z * chance
    return NoiseMap(sigma, spread, chance, nonuniform)


def _kernel_matrix(n: int, sd: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float64)
    return np.exp(-0.5 * ((x[:, None] - x[None, :]) / sd) ** 2)


def _smoother(shape: tuple[int, ...], power: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """x (shape) -> its Gaussian smoothing over the first two axes (kernel to ``power``)."""
    sd = SMOOTH_FRACTION * max(shape[0], shape[1])
    k0, k1 = _kernel_matrix(shape[0], sd) ** power, _kernel_matrix(shape[1], sd) ** power

    def smooth(x: np.ndarray) -> np.ndarray:
        out = np.tensordot(k0, x, axes=(1, 0))
        return np.moveaxis(np.tensordot(k1, np.moveaxis(out, 1, 0), axes=(1, 0)), 0, 1)

    return smooth


def plane_sq(shape: tuple[int, ...], weight: np.ndarray) -> np.ndarray:
    """sum_i K(x - x_i)^2 over the measured voxels i, flattened: with the sum of K, the
    effective number of voxels each smoothed value averages, (sum K)^2 / sum K^2."""
    return np.asarray(_smoother(shape, 2)(weight.reshape(shape))).reshape(-1).clip(1e-300)
