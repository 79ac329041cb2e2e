"""What every fit returns, and the one place where its maps are derived from the solution.

:func:`derive` forms T2* = 1/R2* after clamping R2* to [1/T2STAR_MAX, 1/T2STAR_MIN], restores
the signal units and sets each voxel's :class:`~t2starmap.fit.status.Failure` bits; every
model's kernel ends there. Pure torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from t2starmap.fit.limits import T2STAR_MAX, T2STAR_MIN
from t2starmap.fit.solver import gt, lt, tiny
from t2starmap.fit.stats import chi2_upper
from t2starmap.fit.status import MISFIT_P, Failure

#: The maps every fit gives, (n,) per chunk.
MAPS = ("t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se", "chisq")


@dataclass(frozen=True)
class FitResult:
    """Maps of one fit; every tensor has the signal's shape without its echo axis.

    t2star: T2* in s.          r2star: R2* in 1/s (= 1/t2star wherever t2star > 0).
    s0: S0 in signal units.    rmse: root-mean-square residual of the magnitude against the
        model's prediction (S0 exp(-TE R2*); sqrt(that^2 + 2 L sigma^2) for the noise-aware
        fit, the RMS of a Rician or noncentral-chi magnitude; |x - model| for the complex fit),
        signal units.
    t2star_se, r2star_se, s0_se: standard errors from the Fisher information at the solution
        (delta method for T2*), from ``noise_sigma`` when given, inflated by sqrt(chisq) where
        the reduced chi-square exceeds 1 (the misfit's share of the spread); else from the
        residual variance (0 where there are only two echoes and no noise level: no residual
        is left).
    chisq: the reduced chi-square of the residuals under the fit's own noise model (the
        weighted cost over 4 sigma^2 for the noise-aware fit, the residual sum of squares
        over sigma^2 for the Gaussian and complex ones) divided by its degrees of freedom
        (echoes - 2; 2 echoes - 4 for the complex fit); about 1 where the model fits, 0 where
        it cannot be assessed (no noise level, or no degree of freedom).
    failed: bool, the voxel's fit is not to be trusted; False outside the mask. Exactly
        ``reason != 0``.
    reason: uint8, the voxel's :class:`Failure` bits (0: a good fit, and outside the mask):
        BAD_INPUT (8): a NaN, inf or negative sample (for the complex fit: a non-finite one),
        or fewer than two non-zero samples at different echo times; such a voxel carries this
        bit alone and its maps are 0.
        NOT_CONVERGED (4): Levenberg-Marquardt stopped at its iteration cap with a step still
        above its tolerance (:mod:`t2starmap.fit.solver`), or the fit came out non-finite (the
        closed forms ``loglin``, ``wls``, ``arlo`` always converge).
        R2STAR_LOW (1): the fitted R2* is below 1/T2STAR_MAX (signal flat or rising with TE;
        ARLO with no decay to measure), reported clamped there.
        R2STAR_HIGH (2): the fitted R2* is above 1/T2STAR_MIN (decay faster than the first
        echo can see), reported clamped there. It needs the decay still visible at the second
        echo: ARLO's R2* cannot exceed 3/dTE (its Simpson integral of a decay gone by the
        second echo), so with an echo spacing dTE above 3 T2STAR_MIN it never raises this bit;
        where only one echo keeps a non-negligible S^2 weight, ``wls`` sees no slope and gives
        R2STAR_LOW, and LM from that start NOT_CONVERGED; a voxel whose first echo is below the
        noise is noise alone to every fit.
        S0_NONPOSITIVE (16): the fitted S0 is <= 0 (for the noise-aware fit: S0^2 <= 0, the
        whole decay under the noise floor).
        PHASE_MODEL (32), complex fit only: the phase does not follow the model
        (:mod:`t2starmap.fit.complex`).
        MISFIT (64): ``chisq`` above the upper ``MISFIT_P`` point of chi-square with its
        degrees of freedom (over those): the decay does not follow the model (needs a noise
        level and 3 echoes). The bits other than BAD_INPUT may combine.
    method: the method asked for; noise_model: "rician" (noise-aware fit, one coil),
    "noncentral-chi" (noise-aware fit of a root-sum-of-squares image, ``noise_coils`` > 1) or
    "gaussian"; noise_sigma: the noise level used (None when none was given); noise_coils:
    the effective coil count L the noise-aware fit used (1 for every other model);
    device: where it ran; solver_runs: Levenberg-Marquardt runs it took (0 for the closed
    forms, 1 otherwise).
    frequency, frequency_se (Hz), phase0, phase0_se (rad, phase0 in [-pi, pi)): the complex
        fit's field map, its standard error and the phase at TE = 0 (None for the magnitude
        methods).
    """

    t2star: torch.Tensor
    r2star: torch.Tensor
    s0: torch.Tensor
    rmse: torch.Tensor
    t2star_se: torch.Tensor
    r2star_se: torch.Tensor
    s0_se: torch.Tensor
    chisq: torch.Tensor
    failed: torch.Tensor
    reason: torch.Tensor
    method: str
    device: str
    noise_sigma: float | None
    noise_model: str = "gaussian"
    noise_coils: float = 1.0
    solver_runs: int = 0
    frequency: torch.Tensor | None = None
    frequency_se: torch.Tensor | None = None
    phase0: torch.Tensor | None = None
    phase0_se: torch.Tensor | None = None


def finite(a: torch.Tensor) -> torch.Tensor:
    """1.0 where a is finite, else 0.0 (a - a is NaN exactly at NaN and +-inf)."""
    return torch.eq(a - a, 0.0, out=torch.empty_like(a))


def reported_rate(r2: torch.Tensor) -> torch.Tensor:
    """R2* as :func:`derive` reports it: finite, clamped to [1/T2STAR_MAX, 1/T2STAR_MIN]."""
    r2 = torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0)
    return r2.clamp(1.0 / T2STAR_MAX, 1.0 / T2STAR_MIN)


def noise_variance(
    sigma: float | None, scale: torch.Tensor, ssr: torch.Tensor, dof: torch.Tensor | int
) -> torch.Tensor:
    """The noise variance in each voxel's units: sigma^2 when the noise level is known, else
    the residual estimate ssr / dof (0 where no degree of freedom is left)."""
    if sigma is not None:
        return (sigma / scale) ** 2
    if isinstance(dof, int):
        return ssr / dof if dof > 0 else torch.zeros_like(ssr)
    return ssr / dof.clamp_min(1.0) * gt(dof, 0.5)


def inverse_diagonal_sqrt(
    a11: torch.Tensor, a12: torch.Tensor, a22: torch.Tensor, var: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt of the diagonal of var * [[a11, a12], [a12, a22]]^-1, in the order (second, first)
    parameter: (se of R2*, se of the amplitude). 0 where the matrix is singular."""
    det = a11 * a22 - a12 * a12
    inv_det = gt(det, 0.0) / det.clamp_min(tiny(det))
    return (
        torch.sqrt((var * a11 * inv_det).clamp_min(0.0)),
        torch.sqrt((var * a22 * inv_det).clamp_min(0.0)),
    )


@dataclass(frozen=True)
class Solved:
    """What a kernel hands to :func:`derive`, each (n,): S0, its standard error and the RMSE
    in units of ``scale``; R2* and its standard error in 1/s; ``usable`` and ``converged``
    float 0/1 flags; ``chi2``: the residuals' chi-square under the noise model (None: no
    noise level, nothing to test) with ``dof`` degrees of freedom (per voxel where echoes
    were left out)."""

    s0n: torch.Tensor
    r2: torch.Tensor
    scale: torch.Tensor
    usable: torch.Tensor
    converged: torch.Tensor
    r2_se: torch.Tensor
    s0n_se: torch.Tensor
    rmse_n: torch.Tensor
    chi2: torch.Tensor | None = None
    dof: torch.Tensor | int = 0


@functools.cache
def misfit_limit(dof: int) -> float:
    """The reduced chi-square above which a fit with ``dof`` degrees of freedom is a misfit:
    the upper ``MISFIT_P`` point of chi-square(dof), over dof."""
    return chi2_upper(dof, MISFIT_P) / dof


def reduced_chi2(fit: Solved) -> tuple[torch.Tensor, torch.Tensor]:
    """(chi-square over its degrees of freedom, 1.0 where it exceeds its upper ``MISFIT_P``
    point); zeros where it cannot be assessed (no noise level, no degree of freedom)."""
    zeros = torch.zeros_like(fit.s0n)
    if fit.chi2 is None:
        return zeros, zeros
    dof = torch.as_tensor(fit.dof, dtype=fit.s0n.dtype, device=fit.s0n.device).expand_as(zeros)
    tested = gt(dof, 0.5)
    reduced = torch.nan_to_num(fit.chi2, nan=0.0, posinf=0.0) / dof.clamp_min(1.0) * tested
    top = int(dof.max().item()) if dof.numel() else 0
    limits = torch.tensor(
        [0.0] + [misfit_limit(d) for d in range(1, max(top, 1) + 1)],
        dtype=zeros.dtype,
        device=zeros.device,
    )
    limit = limits[dof.round().long().clamp(0, max(top, 1))]
    return reduced, gt(reduced, limit) * tested


def derive(fit: Solved) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The one place where T2* = 1/R2* is formed, bounds applied, the signal units restored
    and failures flagged. Returns the :data:`MAPS` and the :class:`Failure` bits (n,), whole
    numbers in the compute dtype: BAD_INPUT alone where the input is not usable, else the sum
    of R2STAR_LOW / R2STAR_HIGH (the rate was clamped), NOT_CONVERGED (not converged, or S0
    or R2* not finite), S0_NONPOSITIVE (S0 <= 0) and MISFIT (:func:`reduced_chi2`) that
    apply. Standard errors are inflated by sqrt(reduced chi-square) where it exceeds 1. Maps
    are finite, >= 0, and 0 where the input is not usable."""
    s0n, r2, usable = fit.s0n, fit.r2, fit.usable
    rate = reported_rate(r2)
    # Float 0/1 flags summed with the bits' weights (bool tensors are slow on the CPU).
    bits = lt(r2, 1.0 / T2STAR_MAX)
    bits.add_(gt(r2, 1.0 / T2STAR_MIN), alpha=float(Failure.R2STAR_HIGH))
    fit_ok = finite(s0n).mul_(finite(r2)).mul_(fit.converged)
    bits.add_(fit_ok.sub_(1.0), alpha=-float(Failure.NOT_CONVERGED))
    bits.add_(torch.le(s0n, 0.0, out=torch.empty_like(s0n)), alpha=float(Failure.S0_NONPOSITIVE))
    chisq, misfit = reduced_chi2(fit)
    bits.add_(misfit, alpha=float(Failure.MISFIT))
    bad = float(Failure.BAD_INPUT)
    bits = bits.sub_(bad).mul_(usable).add_(bad)  # BAD_INPUT alone where not usable
    t2 = 1.0 / rate
    inflation = chisq.clamp_min(1.0).sqrt_()  # misfit adds to the spread the noise gives
    r2_se = fit.r2_se * inflation
    maps = {
        "t2star": t2,
        "r2star": rate,
        "s0": s0n * fit.scale,
        "rmse": fit.rmse_n * fit.scale,
        "t2star_se": r2_se * t2 * t2,
        "r2star_se": r2_se,
        "s0_se": fit.s0n_se * inflation * fit.scale,
        "chisq": chisq,
    }
    return {key: clean(value, usable) for key, value in maps.items()}, bits


def clean(value: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """``value`` finite, >= 0 and 0 where not ``usable`` (float 0/1)."""
    return torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0) * usable
