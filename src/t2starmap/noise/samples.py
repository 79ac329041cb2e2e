"""Samples of voxel values and their order statistics, and comparisons without float64 copies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

MIN_BACKGROUND = 100


_MAD_TO_SD = 1.482602218505602  # 1 / Phi^-1(3/4)


#: Whole-number samples below this are kept as counts per value (:class:`_Sample`).
_WHOLE_LIMIT = 1 << 20


def otsu_threshold(values: np.ndarray, bins: int = 256, weights: np.ndarray | None = None) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance); ``weights``:
    how many times each value occurs (the same threshold as of the values repeated)."""
    hist, edges = np.histogram(values, bins=bins, weights=weights)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = hist.astype(np.float64)
    w0 = np.cumsum(weight)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weight * centres)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))]) if bins > 1 else float(centres[0])


class _Sample:
    """A 1-D sample of positive finite values. Whole numbers below ``_WHOLE_LIMIT`` (images
    stored as integers) are kept as their distinct values (``values``, ascending) and how
    many times each occurs (``counts``), made in one pass: every order statistic, histogram
    and threshold below is then the same as of the values themselves, without sorting or a
    logarithm per voxel. Other values are kept as they are, float64 (``counts`` None)."""

    def __init__(self, values: np.ndarray, counts: np.ndarray | None = None) -> None:
        self.values, self.counts = values, counts

    @classmethod
    def of(cls, values: np.ndarray) -> _Sample:
        if values.size and values.max() < _WHOLE_LIMIT:
            if values.dtype in _TORCH_COUNTS:  # integers: counted as they are
                counts = torch.bincount(torch.from_numpy(np.ascontiguousarray(values))).numpy()
            else:
                whole = values.astype(np.int32)
                if not np.array_equal(whole, values):
                    return cls(values.astype(np.float64))
                counts = np.bincount(whole)
            levels = np.flatnonzero(counts)
            return cls(levels.astype(np.float64), counts[levels])
        return cls(values.astype(np.float64, copy=False))

    @property
    def size(self) -> int:
        return int(self.values.size if self.counts is None else self.counts.sum())

    def max(self) -> float:
        return float(self.values[-1] if self.counts is not None else self.values.max())

    def below(self, top: float) -> _Sample:
        """The values below ``top``."""
        if self.counts is None:
            return _Sample(self.values[self.values < top])
        n = int(np.searchsorted(self.values, top, side="left"))
        return _Sample(self.values[:n], self.counts[:n])

    def fraction_above(self, top: float) -> float:
        if self.counts is None:
            return float(np.mean(self.values > top))
        return float(self.counts[self.values > top].sum() / self.size)

    def quantiles(self, probabilities: Sequence[float]) -> list[float]:
        if self.counts is None:
            return _quantiles(self.values, probabilities)
        return _whole_quantiles(self.values, self.counts, probabilities)

    def log_otsu(self) -> float:
        """expm1 of Otsu's threshold of log(1 + values)."""
        return math.expm1(otsu_threshold(np.log1p(self.values), weights=self.counts))


def _as_float(x: np.ndarray) -> np.ndarray:
    """``x`` itself when float32, float64 or complex; integers of up to 16 bits as float32
    (exact), anything else as float64."""
    if x.dtype in (np.float32, np.float64) or x.dtype.kind == "c":
        return x
    small = x.dtype.kind in "iub" and x.dtype.itemsize <= 2
    return x.astype(np.float32 if small else np.float64)


def _below(x: np.ndarray, top: float) -> np.ndarray:
    """``x < top`` as compared in float64, without a float64 copy of a float32 or integer
    ``x`` (an integer is below ``top`` when it is below its ceiling)."""
    if x.dtype.kind in "iu":
        return _integers_below(x, math.ceil(top))
    if x.dtype == np.float32:
        bound = np.float32(top)
        if float(bound) < top:
            bound = np.nextafter(bound, np.float32(np.inf))
        return x < bound
    return np.asarray(x, dtype=np.float64) < top


def _above(x: np.ndarray, bottom: float) -> np.ndarray:
    """``x > bottom`` as compared in float64, without a float64 copy of a float32 or
    integer ``x`` (an integer is above ``bottom`` when it is above its floor)."""
    if x.dtype.kind in "iu":
        return ~_integers_below(x, math.floor(bottom) + 1)
    if x.dtype == np.float32:
        bound = np.float32(bottom)
        if float(bound) > bottom:
            bound = np.nextafter(bound, np.float32(-np.inf))
        return x > bound
    return np.asarray(x, dtype=np.float64) > bottom


def _integers_below(x: np.ndarray, bound: int) -> np.ndarray:
    """``x < bound`` for integer ``x`` and a Python integer ``bound`` beyond its type's range."""
    info = np.iinfo(x.dtype)
    if bound > info.max:
        return np.ones(x.shape, dtype=bool)
    if bound <= info.min:
        return np.zeros(x.shape, dtype=bool)
    return np.asarray(x < x.dtype.type(bound))


def _brighter(column: np.ndarray, threshold: float) -> np.ndarray:
    """``column > threshold`` as a float32 column compares (the threshold rounded to float32,
    NaN not brighter); integers of up to 16 bits as their float32 values would."""
    if column.dtype.kind in "iu" and column.dtype.itemsize <= 2:
        return _above(column, float(np.float32(threshold)))
    column = _as_float(column)
    return np.where(np.isfinite(column), column, 0.0) > threshold


def _all_finite(flat: np.ndarray) -> np.ndarray:
    """Rows of ``flat`` (n, E) whose every sample is finite, (n,) bool (as
    :func:`_all_positive`)."""
    if flat.dtype not in _TORCH_ROWS:
        return np.asarray(np.all(np.isfinite(flat), axis=1))
    low, high = _row_range(flat)
    return (torch.isfinite(low) & torch.isfinite(high)).numpy()


def _all_positive(flat: np.ndarray) -> np.ndarray:
    """Rows of ``flat`` (n, E) whose every sample is finite and positive, (n,) bool; from
    each row's least and largest sample (a NaN makes both NaN)."""
    if flat.dtype not in _TORCH_ROWS:
        return np.asarray(np.all(np.isfinite(flat), axis=1) & np.all(flat > 0, axis=1))
    low, high = _row_range(flat)
    return (torch.gt(low, 0) & torch.lt(high, math.inf)).numpy()


#: Integer types torch counts (:class:`_Sample`) as they are.
_TORCH_COUNTS = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.int32))
#: Types whose rows :func:`_row_range` reduces with torch.
_TORCH_ROWS = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int8, np.uint8, np.int16))


def _row_range(flat: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The least and the largest sample of each row of float ``flat`` (n, E), NaN where a row
    holds one: torch's reductions, 3-8x faster than numpy's over a short last axis."""
    rows = torch.from_numpy(np.ascontiguousarray(flat))
    return torch.amin(rows, dim=1), torch.amax(rows, dim=1)


def _quantiles(values: np.ndarray, probabilities: Sequence[float]) -> list[float]:
    """Quantiles of a sample; an integer-valued sample is read as uniform within each integer
    (k stands for [k - 1/2, k + 1/2)), so that rounding does not bias small values."""
    if not np.all(values == np.round(values)):
        return [float(q) for q in np.quantile(values, probabilities)]
    levels, counts = np.unique(values, return_counts=True)
    return _whole_quantiles(levels, counts, probabilities)


def _whole_quantiles(
    levels: np.ndarray, counts: np.ndarray, probabilities: Sequence[float]
) -> list[float]:
    """:func:`_quantiles` of a whole-number sample given as its distinct values (ascending)
    and their counts."""
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    size = int(cumulative[-1])
    out = []
    for p in probabilities:
        rank = p * size
        k = int(np.clip(np.searchsorted(cumulative, rank, side="right") - 1, 0, levels.size - 1))
        out.append(float(levels[k] - 0.5 + (rank - cumulative[k]) / counts[k]))
    return out


def _gamma_quantile(shape: np.ndarray, p: float) -> np.ndarray:
    """The p-quantile of Gamma(shape, 1) for each shape (vectorised bisection), float64."""
    a = torch.as_tensor(shape, dtype=torch.float64)
    lo = torch.zeros_like(a)
    hi = a + 20.0 * torch.sqrt(a) + 20.0
    for _ in range(64):
        mid = (lo + hi) / 2.0
        below = torch.special.gammainc(a, mid) < p
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return ((lo + hi) / 2.0).numpy()
