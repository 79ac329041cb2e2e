"""Noise level (per-channel SD sigma and effective coil count L), and the automatic signal mask.

Pure numpy (and torch's incomplete gamma function), no I/O, no logging. The rule, in full:

1. Work on the first (shortest-TE) magnitude echo. Only finite voxels count; exact zeros are
   left out (zero-filled or masked corners carry no noise information: 8-10 % of a GE body
   background). Background candidates: voxels below an Otsu threshold on log(1 + intensity).
2. ``real-channel``: when the real part of the same echo is given (GE real/imaginary files, or
   magnitude * cos(phase)), sigma = 1.4826 * MAD of it over the background candidates: the
   complex background is Gaussian, and the median keeps ghosts and motion out. L = 1.
3. ``background-quantiles`` (magnitude only): in air, M of L coils combined by root-sum-of-
   squares is central chi, M^2 / (2 sigma^2) ~ Gamma(L). Its lower quartile over its median
   depends on L alone (0.644 for L = 1, 0.909 for L = 8, 0.953 for L = 32): that ratio gives L
   (at least 1: a background that is a mixture of noise levels, as under parallel imaging,
   looks like L < 1; below ``SINGLE_COIL`` it is taken as 1), the median then
   sigma = median / sqrt(2 * median of Gamma(L)). Both
   statistics ignore whatever happens in the upper half of the background (ghosts, aliasing,
   motion: real body backgrounds have a mean / rms of 0.73-0.79 against Rayleigh's 0.886,
   because of that tail). Integer-valued images (DICOM) are read as uniform within each
   integer, so a background of a few units is not biased by rounding. Refused, with a reason,
   when fewer than ``MIN_BACKGROUND`` candidates remain, or when the darkest class does not
   look like noise: L above ``MAX_COILS``, or sigma above ``_AIR_CHECK`` times the local SD
   of the bright voxels (a masked image: its darkest class is tissue). Not caught: an image
   without air at SNR <= 10, whose darkest tissue then passes for air of L ~ 15 coils with
   sigma ~ 1.7 times too large (measured on ``make_coil_phantom(air=False)``).
4. ``local-variance`` (no usable air): the mode of log(local variance) of the magnitude in
   3 x 3 windows over the first two axes (about the plane fitted in each, so that smooth
   gradients do not count), where the signal is well above the noise (Rician and noncentral
   chi magnitudes are Gaussian with SD sigma there): for Gaussian noise that mode is sigma^2
   exactly, and edges and texture only add to the upper side. L is unknown and taken
   as 1 (said in ``reason``).
5. :func:`noise_from_residuals`: sigma from the residuals of the weighted log-linear fit of
   the decay in bright voxels (a closed form: no solver run), for data without air when the
   echoes are at hand; :func:`noise_for_fit` takes it over the background's sigma when the
   tissue is clearly less noisy than the air (non-uniform noise).

Signal mask: see :func:`signal_mask`. Why these estimators (``benchmarks/NOISE_REAL.md``):
on the GE kidney, whose background real channel gives sigma 54.9, the quantiles give 55.6;
the background's histogram mode is 17.5 (a mixture of noise levels: the mode belongs to the
quietest part), the old Rayleigh rule refuses it (mean / rms 0.775), the local variance of the
object alone gives 32 (interpolated images are smoother than their noise) and the residuals of
bright voxels 40 (the tissue is quieter than the air there: see :func:`noise_for_fit`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from t2starmap.fit import Compute

MIN_BACKGROUND = 100
#: Largest effective coil count accepted from a background; a larger one means the darkest
#: class of the image is tissue, not air.
MAX_COILS = 64.0
MASK_SNR = 5.0
#: An estimated effective coil count below this is one coil (Rician): at L = 1 the estimate
#: spreads by about +-20 % (tests), and a single-channel image must be fitted as one.
SINGLE_COIL = 1.25
FALLBACK_FRACTION = 0.05
#: Quantiles of the background that give L and sigma (lower quartile, median).
_LOW_Q, _MID_Q = 0.25, 0.5
#: The 99.9 % point of the fitted background: above it a candidate counts as an outlier.
_OUTLIER_Q = 0.999
#: Refinements of the background estimate (see :func:`_background_chi`).
_REFINE = 4
#: Local variance: windows whose every voxel exceeds this many sigma (of a first pass) count.
_LOCAL_SNR = 8.0
#: Residuals: voxels whose fitted signal at the last echo exceeds this many sigma count.
_RESIDUAL_SNR = 10.0
#: Tissue residuals below this many times the background's sigma: the noise is not uniform.
_NONUNIFORM = 0.9
#: A background sigma above this many times the local SD of the bright voxels is not air.
#: Interpolated real images are smoother than their noise: GE kidney 55.6 / 29.4 = 1.9 is air;
#: a masked phantom (tests) gives 6.4, the masked bundled example 9.
_AIR_CHECK = 3.0
_MAD_TO_SD = 1.482602218505602  # 1 / Phi^-1(3/4)
#: Statistics of many voxels are taken on a sample where a volume holds more: the echo
#: differences on every k-th air voxel (C order) so that at most ``SAMPLE_VOXELS`` are used
#: (the MAD of 2^18 values spreads by 0.23 %), the local variance on every k-th plane along
#: the third axis so that at most ``LOCAL_WINDOWS`` windows are (its mode spreads by 0.5 % at
#: 2^20 windows, a fifth of its 2.5 % bins; ``benchmarks/bench_brain.py``). Smaller volumes
#: are used whole. The background quantiles, the chosen estimate of most sets, use every
#: voxel: whole-number images are counted per value in one pass.
SAMPLE_VOXELS = 1 << 18
LOCAL_WINDOWS = 1 << 20
#: Whole-number samples below this are kept as counts per value (:class:`_Sample`).
_WHOLE_LIMIT = 1 << 20


@dataclass(frozen=True)
class NoiseEstimate:
    """How noisy the image is, and how that was found out. Fields:

    sigma: noise SD of each real/imaginary channel (of each coil), in image units; None when it
        could not be estimated.
    n_background: number of voxels the estimate rests on (background candidates, windows or
        fitted voxels, by method).
    reason: why the estimate was refused, or why a fallback method was used (empty otherwise).
    coils: effective number L >= 1 of coils of a root-sum-of-squares magnitude (noncentral
        chi with L channel pairs; 1 means Rician).
    method: how sigma was obtained: "real-channel", "background-quantiles", "local-variance",
        "residuals", "given" (by hand), or "" when refused.
    zero_fraction: fraction of the finite voxels that are exactly 0 (zero-filled or masked).
    outlier_fraction: fraction of the background candidates above the 99.9 % point of the
        fitted noise distribution (ghosts, motion, aliasing); 0 when no background was used.
    """

    sigma: float | None
    n_background: int
    reason: str = ""
    coils: float = 1.0
    method: str = ""
    zero_fraction: float = 0.0
    outlier_fraction: float = 0.0
    #: Every estimate the choice was made from: method -> sigma (:func:`cross_check`).
    candidates: Mapping[str, float] = field(default_factory=dict)


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
    return x < x.dtype.type(bound)


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
        return (self.first > 0) & _below(self.first, self.threshold)


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


def noise_from_residuals(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    *,
    mask: np.ndarray | None = None,
    max_voxels: int = 50_000,
    workers: int | None = 1,
) -> NoiseEstimate:
    """Noise SD from the residuals of the weighted log-linear fit (``wls``) in bright voxels.

    magnitude: (..., n_echoes), echoes last; echo_times: (n_echoes,) in s; mask: (...) bool,
    voxels that may be used (default: above the Otsu threshold of the first echo). At least 3
    echoes. Voxels whose fitted signal at the last echo exceeds ``_RESIDUAL_SNR`` sigma count
    (the magnitude is Gaussian with SD sigma there, whatever L); sigma^2 = median(SSR) /
    median(chi^2 with E - 2 degrees of freedom), refined twice. Model misfit (several
    compartments, fat) only adds, so this is an upper bound on real data. L is taken as 1.
    In bright voxels the S^2 weights are the inverse variances of log S, so ``wls`` is the
    least-squares fit to first order and costs no solver run: its residual sigma exceeds that
    of Levenberg-Marquardt by 0.05-0.15 % on the simulator and the bundled example, by 2.3 %
    on the GE kidney set, whose misfit it amplifies. Every ``k``-th usable voxel is fitted
    so that at most ``max_voxels`` are, in ``workers`` chunk workers (see
    :func:`t2starmap.fit.fit_t2star`).
    """
    from t2starmap.fit import fit_t2star

    data = np.asarray(magnitude)  # float64 only for the voxels fitted (a volume is large)
    te = np.asarray(echo_times, dtype=np.float64)
    n_echo = te.size
    if data.ndim < 1 or data.shape[-1] != n_echo:
        raise ValueError(f"magnitude has {data.shape[-1]} echoes but {n_echo} echo times")
    if n_echo < 3:
        return NoiseEstimate(None, 0, "residuals need at least 3 echoes")
    flat = data.reshape(-1, n_echo)
    usable = _all_positive(flat)
    if mask is None:
        first = _Sample.of(flat[usable, 0])
        if first.size < MIN_BACKGROUND:
            return NoiseEstimate(None, first.size, "too few voxels for the residuals")
        threshold = first.log_otsu()
        usable &= _brighter(flat[:, 0], threshold)
    else:
        usable &= np.asarray(mask, dtype=bool).reshape(-1)
    index = np.flatnonzero(usable)
    index = index[:: max(1, -(-index.size // max_voxels))]
    if index.size < MIN_BACKGROUND:
        return NoiseEstimate(None, int(index.size), "too few voxels for the residuals")
    result = fit_t2star(
        flat[index], te, method="wls", compute=Compute(dtype=torch.float64, workers=workers)
    )
    ok = ~result.failed.numpy()
    ssr = result.rmse.numpy() ** 2 * n_echo
    last = result.s0.numpy() * np.exp(-te.max() * result.r2star.numpy())
    dof = n_echo - 2
    chi2_median = dof * (1.0 - 2.0 / (9.0 * dof)) ** 3  # Wilson-Hilferty
    sigma = math.sqrt(float(np.median(ssr[ok])) / chi2_median) if ok.any() else 0.0
    bright = ok
    for _ in range(2):
        bright = ok & (last > _RESIDUAL_SNR * sigma)
        if bright.sum() < MIN_BACKGROUND:
            return NoiseEstimate(None, int(bright.sum()), "too few bright voxels for residuals")
        sigma = math.sqrt(float(np.median(ssr[bright])) / chi2_median)
    if not sigma > 0:
        return NoiseEstimate(None, int(bright.sum()), "the fit leaves no residual")
    return NoiseEstimate(
        sigma,
        int(bright.sum()),
        "sigma from the fit residuals of bright voxels (an upper bound), coils assumed 1",
        coils=1.0,
        method="residuals",
    )


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
        return np.all(np.isfinite(flat), axis=1)
    low, high = _row_range(flat)
    return (torch.isfinite(low) & torch.isfinite(high)).numpy()


def _all_positive(flat: np.ndarray) -> np.ndarray:
    """Rows of ``flat`` (n, E) whose every sample is finite and positive, (n,) bool; from
    each row's least and largest sample (a NaN makes both NaN)."""
    if flat.dtype not in _TORCH_ROWS:
        return np.all(np.isfinite(flat), axis=1) & np.all(flat > 0, axis=1)
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
            parts = np.concatenate([d.real, d.imag]).astype(np.float64)
            parts = parts[np.isfinite(parts)]
            mad = float(np.median(np.abs(parts - np.median(parts))))
            sigmas.append(_MAD_TO_SD * mad / math.sqrt(2.0))
        else:
            d = d.astype(np.float64)
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


def noise_candidates(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    *,
    signal: np.ndarray | None = None,
    coils: float | None = None,
    workers: int | None = 1,
) -> tuple[NoiseEstimate, NoiseEstimate, NoiseEstimate]:
    """The estimates :func:`cross_check` chooses from, the first echo's background worked out
    once for the first two: (:func:`estimate_noise` of the first echo, with its real channel
    when the complex ``signal`` is given and ``coils`` when known; :func:`noise_from_echo_
    differences` with the coils that gives; :func:`noise_from_residuals`, which needs 3
    echoes). magnitude: (..., n_echoes); signal: the same shape, complex, or None."""
    _check_coils(coils)
    data = np.asarray(magnitude)
    air = _Air.of(np.ascontiguousarray(data[..., 0]))
    real = None if signal is None else signal[..., 0].real
    background = _background_estimate(air, real, coils, True)
    if data.shape[-1] < 2:
        differences = NoiseEstimate(None, 0, "echo differences need at least 2 echoes")
    else:
        differences = _differences(data, air, signal, background.coils)
    if data.shape[-1] >= 3:
        residuals = noise_from_residuals(data, echo_times, workers=workers)
    else:
        residuals = NoiseEstimate(None, 0, "residuals need at least 3 echoes")
    return background, differences, residuals


#: A background sigma above this many times the echo differences' is ghosts, not noise. On the
#: shared sets the ratio is 4.5 for the GE kidney (ghosted: NOTES.md), 1.3 for the Siemens
#: field map, 1.6 for the clean Prisma phantom and 2.3 for the XA30 field map (no ground truth:
#: left alone); 2.5 acts only on clear ghosting.
GHOST_RATIO = 2.5


def cross_check(
    background: NoiseEstimate, differences: NoiseEstimate, residuals: NoiseEstimate
) -> NoiseEstimate:
    """The noise level to fit with, from independent estimates that fail in opposite ways.

    Ghosts, motion and signal in the air push the ``background`` estimate up
    (:func:`estimate_noise`, first echo), while the echo ``differences`` in the same air
    (:func:`noise_from_echo_differences`) cancel them; model misfit pushes the tissue's
    ``residuals`` (:func:`noise_from_residuals`) up. So: a background more than
    ``GHOST_RATIO`` times the differences is ghosted and not used; then the tissue's residual
    sigma is used (it is the tissue's own noise, an upper bound), or the differences when
    there are none (2 echoes). A clean background is used unless the residuals are clearly
    below it (non-uniform noise: :func:`noise_for_fit`). Every candidate is kept in
    ``candidates`` and the reason in ``reason``."""
    candidates = {
        e.method: float(e.sigma)
        for e in (background, differences, residuals)
        if e.sigma is not None and e.method
    }
    ghosted = (
        background.sigma is not None
        and differences.sigma is not None
        and background.sigma > GHOST_RATIO * differences.sigma
    )
    if not ghosted:
        base = background if background.sigma is not None else differences
        return replace(noise_for_fit(base, residuals), candidates=candidates)
    assert background.sigma is not None and differences.sigma is not None
    why = (
        f"the first echo's background gives sigma {background.sigma:.4g}, "
        f"{background.sigma / differences.sigma:.1f} x what the echo differences in the same "
        f"air give ({differences.sigma:.4g}): ghosts, not noise; not used"
    )
    chosen = residuals if residuals.sigma is not None else differences
    source = (
        "the tissue's fit residuals are used (an upper bound on its noise)"
        if chosen is residuals
        else "the echo differences are used"
    )
    return replace(
        chosen,
        reason=f"{why}; {source}",
        coils=background.coils,
        zero_fraction=background.zero_fraction,
        outlier_fraction=background.outlier_fraction,
        candidates=candidates,
    )


def noise_for_fit(background: NoiseEstimate, residuals: NoiseEstimate) -> NoiseEstimate:
    """The noise level to fit with: ``background`` (from :func:`estimate_noise`), unless the
    tissue's own residuals (:func:`noise_from_residuals`, an upper bound on the tissue's noise)
    are below ``_NONUNIFORM`` times its sigma. Then the noise is not uniform (parallel imaging,
    intensity correction: the GE kidney background is a mixture of noise levels) and the
    tissue's sigma is the one that sets its noise floor; the background's coils are kept.
    Either input may have sigma None; the other is then returned."""
    if residuals.sigma is None or (
        background.sigma is not None and residuals.sigma >= _NONUNIFORM * background.sigma
    ):
        return background
    if background.sigma is None:
        return residuals
    return NoiseEstimate(
        residuals.sigma,
        residuals.n_background,
        f"the fit residuals of bright tissue give sigma {residuals.sigma:.4g}, below the "
        f"{background.method} sigma {background.sigma:.4g} of the background: the noise is "
        f"not uniform and the tissue's is used (coils {background.coils:.3g} kept)",
        coils=background.coils,
        method="residuals",
        zero_fraction=background.zero_fraction,
        outlier_fraction=background.outlier_fraction,
    )


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
        return _above(first, threshold) | nonfinite  # a non-finite first echo: in nonfinite
    first = np.asarray(data[..., 0], dtype=np.float64)
    finite_first = np.where(np.isfinite(first), first, 0.0)
    positive = finite_first[finite_first > 0]
    threshold = FALLBACK_FRACTION * float(np.percentile(positive, 99)) if positive.size else 0.0
    return (finite_first > threshold) | nonfinite


# --- the background: central chi from two quantiles -------------------------------------------


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


# --- no air: the local variance ----------------------------------------------------------------


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
