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

from t2starmap.noise.air import noise_from_echo_differences
from t2starmap.noise.background import MAX_COILS, SINGLE_COIL, estimate_noise
from t2starmap.noise.choose import (
    GHOST_RATIO,
    Candidates,
    all_candidates,
    cross_check,
    noise_candidates,
    noise_for_fit,
)
from t2starmap.noise.local import _local_variance_sigma
from t2starmap.noise.mask import FALLBACK_FRACTION, MASK_SNR, signal_mask
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.samples import (
    MIN_BACKGROUND,
    _above,
    _all_finite,
    _all_positive,
    _below,
    _brighter,
    _Sample,
    otsu_threshold,
)
from t2starmap.noise.tissue import noise_from_residuals

__all__ = [
    "FALLBACK_FRACTION",
    "GHOST_RATIO",
    "MASK_SNR",
    "MAX_COILS",
    "MIN_BACKGROUND",
    "SINGLE_COIL",
    "Candidates",
    "NoiseEstimate",
    "_Sample",
    "_above",
    "_all_finite",
    "_all_positive",
    "_below",
    "_brighter",
    "_local_variance_sigma",
    "all_candidates",
    "cross_check",
    "estimate_noise",
    "noise_candidates",
    "noise_for_fit",
    "noise_from_echo_differences",
    "noise_from_residuals",
    "otsu_threshold",
    "signal_mask",
]
