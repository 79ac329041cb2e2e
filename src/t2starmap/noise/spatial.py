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
    nonuniform: whether the map is to be used; support: (shape) how much of the map at each
    voxel is measured rather than spread from elsewhere, the smoothed count of the voxels
    measured over its greatest (None: measured everywhere alike)."""

    sigma: np.ndarray
    spread: float
    chance: float
    nonuniform: bool
    support: np.ndarray | None = None


def noise_map(shape: tuple[int, ...], index: np.ndarray, variance: np.ndarray) -> NoiseMap | None:
    """The smooth noise map of an image of ``shape`` from per-voxel variance estimates at the
    flattened positions ``index``; None for a 1-D image or fewer than 2 voxels. Worked out on
    blocks of about half the Gaussian's SD in-plane (the map is smooth at that scale; a full
    grid took 0.66 s of a 192 x 192 x 64 set), spread bilinearly to the voxels."""
    if len(shape) < 2 or index.size < 2:
        return None
    median = float(np.median(variance))
    if not median > 0:
        return None
    values = np.clip(variance, -_CLIP * median, _CLIP * median)
    grid = _Grid.of(shape)
    cell = grid.cell(index)
    size = int(np.prod(grid.coarse))
    sums = grid.smooth(np.bincount(cell, values, size).reshape(grid.coarse))
    counts = grid.smooth(np.bincount(cell, None, size).astype(np.float64).reshape(grid.coarse))
    squares = grid.smooth(np.bincount(cell, None, size).astype(np.float64).reshape(grid.coarse), 2)
    measured = counts > 0.05 * counts.max()
    smooth = np.where(measured, sums / np.where(measured, counts, 1.0), median)
    coarse = np.sqrt(np.clip(smooth, 0.01 * median, None))
    at = coarse.reshape(-1)[cell]
    lo, mid, hi = np.percentile(at, [5, 50, 95])
    # chance: each smoothed value averages about (sum K)^2 / sum K^2 voxel estimates of
    # spread sd (its relative SD halves in the square root)
    residual = values - smooth.reshape(-1)[cell]
    sd = float(np.sqrt(np.mean(residual * residual)))
    effective = counts.reshape(-1)[cell] ** 2 / squares.reshape(-1)[cell].clip(1e-300)
    chance = 2 * 1.645 * 0.5 * sd / math.sqrt(max(float(np.median(effective)), 1.0)) / mid**2
    spread = float((hi - lo) / mid)
    nonuniform = spread > NONUNIFORM_SPREAD and spread > NONUNIFORM_Z * chance
    support = grid.spread(counts / max(float(counts.max()), 1e-300), shape)
    return NoiseMap(grid.spread(coarse, shape), spread, chance, nonuniform, support)


@dataclass(frozen=True)
class _Grid:
    """Blocks of ``block`` x ``block`` voxels in-plane (every plane beyond apart): ``coarse``
    (blocks along the first axis, along the second, planes); ``sd`` the Gaussian's SD in
    blocks."""

    shape: tuple[int, ...]
    block: int
    coarse: tuple[int, int, int]
    sd: float

    @classmethod
    def of(cls, shape: tuple[int, ...]) -> _Grid:
        sd = SMOOTH_FRACTION * max(shape[0], shape[1])
        block = max(1, int(sd // 2))
        planes = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        coarse = (-(-shape[0] // block), -(-shape[1] // block), planes)
        return cls(tuple(shape), block, coarse, sd / block)

    def cell(self, index: np.ndarray) -> np.ndarray:
        """The block of each flattened voxel index, flattened over ``coarse``."""
        i, j, rest = np.unravel_index(index, (self.shape[0], self.shape[1], self.coarse[2]))
        return np.ravel_multi_index((i // self.block, j // self.block, rest), self.coarse)

    def smooth(self, x: np.ndarray, power: int = 1) -> np.ndarray:
        """Gaussian smoothing (the kernel to ``power``) of ``x`` (coarse) over its first two
        axes."""
        k0 = _kernel_matrix(self.coarse[0], self.sd) ** power
        k1 = _kernel_matrix(self.coarse[1], self.sd) ** power
        return np.asarray(np.einsum("ai,bj,ijk->abk", k0, k1, x, optimize=True))

    def spread(self, coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The coarse map at every voxel of ``shape``: bilinear between block centres."""
        w0 = _interpolation(shape[0], self.coarse[0], self.block)
        w1 = _interpolation(shape[1], self.coarse[1], self.block)
        return np.asarray(np.einsum("ai,bj,ijk->abk", w0, w1, coarse, optimize=True)).reshape(shape)


def _interpolation(n: int, n_coarse: int, block: int) -> np.ndarray:
    """(n, n_coarse) weights of linear interpolation from block centres to voxels."""
    centres = (np.arange(n_coarse) + 0.5) * block - 0.5
    eye = np.eye(n_coarse)
    return np.stack([np.interp(np.arange(n), centres, eye[c]) for c in range(n_coarse)], 1)


def _kernel_matrix(n: int, sd: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float64)
    return np.exp(-0.5 * ((x[:, None] - x[None, :]) / sd) ** 2)
