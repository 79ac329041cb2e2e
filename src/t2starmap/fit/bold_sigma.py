"""The noise sigma of multi-echo BOLD's noise-aware fit: one for the run, or one per voxel.

Pure numpy: no I/O, no logging. Voxels on the first axis, echoes on the last.

What is measured. Each voxel's volume-to-volume differences of its last echo: differencing
removes slow drifts (scanner drift, the task), and the last echo carries the least signal, so
the least physiological noise (which scales with the signal: S0 fluctuations with S, BOLD
changes of R2* with TE S), leaving mostly the thermal noise of the coils, the one the Rician
floor is made of. Half the mean squared difference over the Rician variance factor its
mean / sd ratio implies is the voxel's sigma (:func:`voxel_noise`; the run's one sigma is the
median of those, :func:`t2starmap.fit.bold.temporal_noise`, unchanged).

When one sigma is not enough. Parallel imaging (SENSE, GRAPPA) multiplies the thermal noise
by the g-factor, which varies across the image (by 1.5x to 3x at R = 3-4, highest at the
centre of the brain and in the dropout-prone base). One sigma then under-corrects the floor
where g is high, and the noise-aware fit reads the floor as slow decay (T2* biased up
precisely in the low-SNR voxels it exists for).

The rule (:func:`choose_noise`). The spread of log sigma across the voxels (robust: 1.4826
MAD) is compared with what T volumes give by chance (3 / (4 (T - 1)) for the variance of log
sigma of a mean of T - 1 neighbouring squared differences); the excess, sqrt(spread^2 -
chance^2), is the real variation of sigma across the image. It is measured over the voxels
with signal in the last echo (mean >= 3 temporal SDs: the Rician correction is small there,
so the chance spread is that of Gaussian noise; noise-only voxels in a mask widen the spread
by chance alone). Where it reaches :data:`VARIES` (10 %), sigma is taken per voxel, each
voxel's estimate averaged (as a variance) over its 3x3x3 neighbours in the mask (27 voxels:
the chance error of one voxel's sigma, about 14 % for T = 40, falls to about 3 %, while a
g-factor map, smooth over centimetres, is kept) -- unless the variation follows the signal.
Physiological noise and motion scale with the signal and survive differencing when they are
fast (cardiac, aliased respiration, spin history): where log sigma correlates with log signal
across the voxels by :data:`FOLLOWS` or more, the variation is not thermal (tedana's 5-volume
test data: correlation 0.94, a 6-fold spread; a g-factor map: about -0.2). Otherwise, and in
``fitmode ts``, the run's one sigma is used, as before, and the fit's figures are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The real variation of sigma across the image (log units, about a fraction) above which
#: the fit takes sigma per voxel.
VARIES = 0.10
#: The spread is measured where the last echo's mean is at least this many temporal SDs
#: (the Rician correction is then small and the chance spread that of Gaussian noise; noise-
#: only voxels of a mask that holds background would widen it by chance).
SIGNAL_RATIO = 3.0
#: The fewest such voxels the spread is measured on; fewer: one sigma.
MIN_MEASURED = 100
#: The correlation of log sigma with log signal across the voxels from which the variation
#: is taken for physiology or motion (which scale with the signal), not thermal noise: one
#: sigma then.
FOLLOWS = 0.5
#: 1.4826 MAD: the standard deviation of a normal sample, robust to outliers.
MAD_SD = 1.4826
#: Half-width of the neighbourhood a voxel's sigma is averaged over (1: 3x3x3).
RADIUS = 1


def rician_table(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(mean / sd, variance / sigma^2) of a Rician magnitude for S / sigma from 0 to 40."""
    import torch

    theta = torch.linspace(0.0, 40.0, n, dtype=torch.float64)
    x = theta * theta / 4.0
    mean = np.sqrt(np.pi / 2) * ((1 + 2 * x) * torch.special.i0e(x) + 2 * x * torch.special.i1e(x))
    var = 2.0 + theta * theta - mean * mean
    return (mean / var.sqrt()).numpy(), var.numpy()


def voxel_noise(mean: np.ndarray, diff_var: np.ndarray) -> np.ndarray:
    """Each voxel's thermal sigma (V,) from its last echo's temporal ``mean`` (V,) and half
    mean squared volume-to-volume difference ``diff_var`` (V,) (see the module); NaN or 0
    where it cannot be measured (one volume, no variation)."""
    ratio_table, var_table = rician_table()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(mean) / np.sqrt(diff_var)
        factor = np.interp(np.nan_to_num(ratio, nan=0.0), ratio_table, var_table)
        sigma: np.ndarray = np.sqrt(diff_var / factor)
    return sigma


@dataclass(frozen=True)
class NoiseChoice:
    """The sigma a fit uses: ``sigma`` (V,) per voxel (every voxel the same when not
    ``per_voxel``); ``median``: the run's one sigma; ``spread``, ``chance``: the robust SD of
    log sigma across the voxels and what the volumes give by chance; ``excess``: the real
    variation, sqrt(spread^2 - chance^2) (0 when below chance); ``follows``: the correlation
    of log sigma with log signal across the voxels."""

    sigma: np.ndarray
    per_voxel: bool
    median: float
    spread: float
    chance: float
    excess: float
    follows: float = 0.0


def chance_spread(n_volumes: int) -> float:
    """The SD of log sigma that T volumes' differences give one voxel by chance."""
    return float(np.sqrt(3.0 / (4.0 * max(n_volumes - 1, 1))))


def neighbour_mean(values: np.ndarray, grid: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """The mean of ``values`` (V,) over each voxel's (2 radius + 1)^3 neighbours among the
    valid ones (finite, > 0); ``grid`` the 3-D bool whose C-order True cells are the V
    voxels. Voxels with no valid neighbour keep NaN."""
    valid = np.isfinite(values) & (values > 0)
    total = np.zeros(grid.shape)
    count = np.zeros(grid.shape)
    total[grid] = np.where(valid, values, 0.0)
    count[grid] = valid
    pad = [(radius, radius)] * 3
    total, count = np.pad(total, pad), np.pad(count, pad)
    acc_t, acc_c = np.zeros(grid.shape), np.zeros(grid.shape)
    nx, ny, nz = grid.shape
    offsets = range(2 * radius + 1)
    for i in offsets:
        for j in offsets:
            for k in offsets:
                acc_t += total[i : i + nx, j : j + ny, k : k + nz]
                acc_c += count[i : i + nx, j : j + ny, k : k + nz]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray((acc_t / acc_c)[grid])


def choose_noise(
    mean: np.ndarray, diff_var: np.ndarray, inside: np.ndarray, grid: np.ndarray, n_volumes: int
) -> NoiseChoice:
    """The sigma for the voxels (V,) of ``grid`` (see :func:`neighbour_mean`) from their last
    echo's ``mean`` and ``diff_var`` (V,), measured over the voxels ``inside`` (V,) bool, by
    the rule of the module. The run's sigma NaN (and not per voxel) when none is measurable."""
    per = voxel_noise(mean, diff_var)
    per = np.where(inside, per, np.nan)
    ok = np.isfinite(per) & (per > 0)
    if not ok.any():
        return NoiseChoice(np.full(per.shape, np.nan), False, float("nan"), 0.0, 0.0, 0.0, 0.0)
    median = float(np.median(per[ok]))
    with np.errstate(divide="ignore", invalid="ignore"):
        signal = ok & (np.abs(mean) >= SIGNAL_RATIO * np.sqrt(diff_var))
    logs = np.log(per[signal])
    spread = float(MAD_SD * np.median(np.abs(logs - np.median(logs)))) if logs.size else 0.0
    chance = chance_spread(n_volumes)
    excess = float(np.sqrt(max(spread * spread - chance * chance, 0.0)))
    follows = _follows_signal(logs, np.log(np.abs(mean[signal])))
    if excess < VARIES or logs.size < MIN_MEASURED or follows >= FOLLOWS:
        one = np.full(per.shape, median)
        return NoiseChoice(one, False, median, spread, chance, excess, follows)
    local = np.sqrt(neighbour_mean(np.where(ok, per * per, np.nan), grid))
    local = np.where(np.isfinite(local) & (local > 0), local, median)
    return NoiseChoice(local, True, median, spread, chance, excess, follows)


def _follows_signal(log_sigma: np.ndarray, log_mean: np.ndarray) -> float:
    """The correlation of log sigma with log signal over the measured voxels (0 for fewer
    than 3 or no variation)."""
    if log_sigma.size < 3 or np.ptp(log_sigma) == 0 or np.ptp(log_mean) == 0:
        return 0.0
    return float(np.corrcoef(log_sigma, log_mean)[0, 1])


def describe(choice: NoiseChoice) -> dict[str, object]:
    """The sidecar's record of the sigma used (BIDS-style keys, signal units)."""
    rule = (
        f"log sigma spread {choice.spread:.3f} across voxels, {choice.chance:.3f} by chance, "
        f"real variation {choice.excess:.3f} (per voxel from {VARIES:.2f}); correlation "
        f"with the signal {choice.follows:.2f} (one sigma from {FOLLOWS:.2f}: physiology)"
    )
    how = (
        "per voxel: each voxel's temporal sigma of its last echo (volume-to-volume "
        "differences, Rician-corrected), averaged over its 3x3x3 neighbours"
        if choice.per_voxel
        else "one for the run: the median over voxels of the last echo's temporal sigma "
        "(volume-to-volume differences, Rician-corrected)"
    )
    return {
        "NoiseSigma": choice.median,
        "NoiseSigmaPerVoxel": choice.per_voxel,
        "NoiseSigmaMethod": how,
        "NoiseSigmaRule": rule,
    }
