"""Voxel-wise fits of the magnitude decay S(TE) = S0 exp(-TE R2*) [x a known factor F(TE)].

Pure torch: no file I/O, no logging, no printing. Echoes on the LAST axis of ``signal``, echo
times in seconds, R2* in 1/s, T2* in s, S0 in the signal's units.

Methods (``method=``):

``nlls``           the default. Levenberg-Marquardt from a ``wls`` start. With a noise level
                   (``noise_sigma``) it is noise-aware: it fits the second moment
                   E[M^2] = S0^2 exp(-2 TE R2*) + 2 L sigma^2 of a magnitude of L coils (Rician
                   for L = 1, noncentral chi for root-sum-of-squares images) to M^2 by
                   iteratively reweighted least squares, weights 1 / (E[M^2] - L sigma^2), the
                   inverse of Var(M^2) / (4 sigma^2). That moment is exact at every SNR, so
                   echoes on the noise floor do not pull R2* down; at high SNR the weights make
                   it the ordinary least-squares fit of M. Why this estimator, with numbers:
                   ``benchmarks/NOISE_FLOOR.md``. Without a noise level it is the Gaussian fit
                   (``noise_model == "gaussian"`` says so).
``nlls-gaussian``  Levenberg-Marquardt on sum (S0 exp(-TE R2*) - M)^2, ignoring the floor.
``wls``            weighted least squares on log(S) with weights S^2.
``loglin``         ordinary least squares on log(S) (samples <= 0 are left out).
``arlo``           auto-regression on linear operations (Pei et al. 2015): a closed form for
                   evenly spaced echoes; S0 by least squares given R2*. Unevenly spaced echoes
                   raise :class:`EchoSpacingError`.

:func:`t2starmap.fit.corrected.fit_corrected` fits S0 exp(-TE R2*) |F(TE)| with |F| known per
voxel and echo (the through-slice dephasing, :mod:`t2starmap.b0.correction`), with the same
noise models and kernels.

Goodness of fit (``FitResult.chisq``, ``Failure.MISFIT``): the Levenberg-Marquardt fits
minimise the cost they are tested on, so its chi-square follows the null distribution where
the model holds; the closed forms (``loglin``, ``wls``, ``arlo``) do not minimise it (their
residuals exceed the noise even where the model holds), so they are not tested (chisq 0).

Standard errors (sigma = ``noise_sigma`` when given, else the residual estimate): sigma^2
(J^T J)^-1 at the solution for the Gaussian fits and ``arlo`` (for ARLO this is the bound,
about 15 % below its actual spread); the generalised least-squares covariance (J^T V^-1 J)^-1
of M^2 with Var(M^2) = 4 sigma^2 (A^2 + L sigma^2) for the noise-aware fit; the sandwich
covariance with Var(log S) = sigma^2 / A^2 for ``loglin`` and ``wls``. T2* by the delta method.

Work is in units of each voxel's largest sample (``scale``), which keeps squared signals well
inside float32 whatever the input units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch

from t2starmap.errors import EchoSpacingError
from t2starmap.fit import dispatch, starts
from t2starmap.fit.dispatch import Compute
from t2starmap.fit.limits import (
    DEFAULT_METHOD,
    METHODS,
    SPACING_RTOL,
    Method,
    NoiseModel,
    check_echo_times,
)
from t2starmap.fit.lm_policy import MAGNITUDE_MAX_ITER
from t2starmap.fit.models import Exponential
from t2starmap.fit.result import (
    MAPS,
    FitResult,
    Solved,
    derive,
    finite,
    inverse_diagonal_sqrt,
    noise_variance,
    reported_rate,
)
from t2starmap.fit.solver import Solution, gt, levenberg_marquardt, tiny

#: Voxels per chunk on the CPU: big enough that per-operation overhead stays small, small
#: enough that a chunk's few echo-by-voxel temporaries stay in the CPU caches. Chosen with
#: ``python benchmarks/tune_fit.py --chunks 15 16 17`` (its table, not a copy here, is the record).
DEFAULT_CHUNK = 1 << 16
#: Chunks a CPU fit is cut into (:func:`cpu_chunk`): 2, 3 or 4 workers share 12 evenly, and a
#: chunk that iterates longer is shared out instead of holding one worker alone.
CPU_CHUNKS = 12
#: The smallest CPU chunk :func:`cpu_chunk` gives: smaller chunks hand the GIL over so often
#: that the workers slow each other (section 6 of benchmarks/RESULTS_PARTICIPANT.md).
MIN_CPU_CHUNK = 1 << 14
#: Voxels per chunk on a GPU: big enough that kernel launches do not dominate (a 192x192x64
#: volume is one chunk), small enough for the temporaries (~0.6 GB at 11 echoes, float32).
DEFAULT_CUDA_CHUNK = 1 << 22
#: Iteration cap of the magnitude fits (plain and corrected): see :mod:`t2starmap.fit.lm_policy`.
MAX_ITER = MAGNITUDE_MAX_ITER


def cpu_chunk(n_voxels: int) -> int:
    """Voxels per chunk of a CPU fit of ``n_voxels`` voxels: :data:`CPU_CHUNKS` chunks, at
    least :data:`MIN_CPU_CHUNK` and at most :data:`DEFAULT_CHUNK` voxels each. From the voxel
    count alone, never from the workers: the chunks decide which voxels share a solver's
    stop, so the maps are the same bytes at any ``--nprocs``."""
    return min(DEFAULT_CHUNK, max(MIN_CPU_CHUNK, -(-n_voxels // CPU_CHUNKS)))


def check_even_spacing(sorted_te: np.ndarray) -> float:
    """The echo spacing in s of ascending echo times; EchoSpacingError naming the spacings when
    they are not all equal (relative tolerance ``SPACING_RTOL``) or fewer than 3 echoes."""
    if sorted_te.size < 3:
        raise EchoSpacingError(
            f"arlo needs at least 3 evenly spaced echoes, got {sorted_te.size} "
            f"(TE {_ms(sorted_te)} ms)"
        )
    gaps = np.diff(sorted_te)
    mean = float(gaps.mean())
    if mean <= 0 or np.any(np.abs(gaps - mean) > SPACING_RTOL * mean):
        raise EchoSpacingError(
            f"arlo needs evenly spaced echoes, but the echo spacings are {_ms(gaps)} ms "
            f"(TE {_ms(sorted_te)} ms); use --fit-method nlls"
        )
    return mean


def _ms(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{1000 * v:.4g}" for v in values) + "]"


@dataclass(frozen=True)
class Echoes:
    """Echo times on the compute device: ``te`` (E, 1) ascending, in s; ``distinct``: no two
    equal, so "two positive samples at different echo times" is a count."""

    te: torch.Tensor
    distinct: bool


def fit_t2star(
    signal: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    method: Method = DEFAULT_METHOD,
    mask: np.ndarray | torch.Tensor | None = None,
    noise: NoiseModel = NoiseModel(),
    compute: Compute = Compute(),
    bipolar: bool = False,
) -> FitResult:
    """Fit S0 and R2* in every voxel of ``signal`` (shape (..., n_echoes), echoes LAST).

    ``echo_times``: (n_echoes,) in seconds, any order (sorted here). ``mask``: (...) bool,
    voxels to fit; default all. ``noise``: what is known of the noise
    (:class:`~t2starmap.fit.limits.NoiseModel`): with its ``sigma`` the default fit is
    noise-aware (Rician, or noncentral chi for ``coils`` > 1) and the standard errors come
    from sigma; without, Gaussian and from the residuals. ``compute``: device, precision,
    chunk size and CPU workers (:class:`~t2starmap.fit.dispatch.Compute`); the maps do not
    depend on it. ``method="complex"`` takes a complex signal
    (:func:`t2starmap.fit.complex.fit_complex`, with ``bipolar`` for a bipolar read-out);
    ``bipolar`` with a magnitude method is an error.

    Input validity is judged per voxel, here and not by the caller: a voxel with any NaN, inf
    or negative sample, or fewer than two positive ones, has ``failed`` True, ``reason``
    ``Failure.BAD_INPUT`` and its maps 0. ``reason`` holds every voxel's Failure bits
    (uint8, 0 for a good fit and outside the mask); ``failed == (reason != 0)``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown fit method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "complex":
        from t2starmap.fit.complex import fit_complex

        return fit_complex(
            signal, echo_times, mask=mask, noise=noise, compute=compute, bipolar=bipolar
        )
    if bipolar:
        raise ValueError(f"bipolar is a property of the complex fit, not of {method!r}")
    te_np = check_echo_times(echo_times)
    order = np.argsort(te_np, kind="stable")
    if method == "arlo":
        check_even_spacing(te_np[order])
    vox = dispatch.voxels([signal], te_np.size, mask)
    how = dispatch.plan(compute, (cpu_chunk(vox.n_fit), DEFAULT_CUDA_CHUNK))
    name, noise = _kernel_for(method, noise)
    echoes = echoes_on(te_np, order, how)
    kernel = partial(_KERNELS[name], echoes=echoes, noise=noise, order=[int(k) for k in order])
    maps, reason = dispatch.run_chunks(vox, kernel, MAPS, how)
    return FitResult(
        **maps,
        failed=reason != 0,
        reason=reason,
        method=method,
        device=str(how.device),
        noise_sigma=noise.sigma,
        noise_model=noise.name if name == "rician" else "gaussian",
        noise_coils=noise.coils if name == "rician" else 1.0,
        solver_runs=1 if name in ("rician", "gaussian") else 0,
    )


def _kernel_for(method: Method, noise: NoiseModel) -> tuple[str, NoiseModel]:
    """The kernel a magnitude method runs under ``noise`` (the name in ``_KERNELS``), and the
    noise it runs with: ``nlls`` without a floor to model is the Gaussian fit."""
    if method == "nlls-gaussian" or (method == "nlls" and noise.name == "gaussian"):
        return "gaussian", noise.gaussian()
    return ("rician" if method == "nlls" else method), noise


def echoes_on(te_np: np.ndarray, order: np.ndarray, how: dispatch.Plan) -> Echoes:
    return Echoes(
        te=torch.as_tensor(te_np[order], dtype=how.dtype, device=how.device)[:, None],
        distinct=bool(np.unique(te_np).size == te_np.size),
    )


def echo_major(rows: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """(n, E) rows as (E, n), echoes ascending. Stacked from the columns (on the CPU twice as
    fast as a transposing copy), so always a fresh array the kernels may work in in place."""
    return torch.stack([rows[:, k] for k in order])


# --- the per-chunk kernels ---------------------------------------------------------------------
# Each takes the chunk's rows (n, E), returns the maps (n,) and the Failure bits (n,), as
# whole numbers in the compute dtype (see derive).

Maps = tuple[dict[str, torch.Tensor], torch.Tensor]


class Chunk(NamedTuple):
    """A chunk ready to fit: ``yn`` (E, n) in units of ``scale``, ``usable`` and ``scale`` (n,)."""

    yn: torch.Tensor
    usable: torch.Tensor
    scale: torch.Tensor


def prepare(y: torch.Tensor, echoes: Echoes, floor: float) -> Chunk:
    """Clean a chunk (E, n): (yn = y / scale with non-finite samples set to 0, usable, scale).

    usable (n,): all samples finite and non-negative (a magnitude cannot be negative), and at
    least two positive ones at different echo times.
    scale (n,): the voxel's largest |sample|, at least ``floor`` (the noise level, when known:
    the noise then never exceeds 1 in these units)."""
    ok = finite(y.sum(0))  # NaN or inf in any sample makes the sum non-finite
    if not bool(ok.min() > 0):
        y = y.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    high, low = y.amax(dim=0), y.amin(dim=0)
    if bool(low.min() > 0):
        # Every sample positive (the usual case): enough echoes (check_echo_times) everywhere.
        usable = ok
    else:
        usable = ok * torch.ge(low, 0.0, out=torch.empty_like(low))
        if echoes.distinct:
            usable = usable * gt(gt(y, 0.0).sum(0), 1.5)
        else:
            usable = usable * _distinct_positive_echoes(y > 0, echoes.te).to(y.dtype)
    scale = torch.maximum(high, low.neg_()).clamp_min_(max(floor, tiny(y)))
    return Chunk(y.div_(scale), usable, scale)


def _distinct_positive_echoes(positive: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
    """True where at least two positive samples sit at different echo times. (n,) bool."""
    big = torch.finfo(te.dtype).max
    te_pos_min = torch.where(positive, te, big).amin(dim=0)
    te_pos_max = torch.where(positive, te, -big).amax(dim=0)
    return te_pos_max > te_pos_min


def _kernel_loglinear(
    rows: tuple[torch.Tensor, ...],
    echoes: Echoes,
    noise: NoiseModel,
    order: Sequence[int],
    weights: Callable[[torch.Tensor], torch.Tensor],
) -> Maps:
    yn, usable, scale = prepare(echo_major(rows[0], order), echoes, 0.0)
    w = weights(yn)
    s0n, r2 = starts.loglinear(yn, echoes.te, w)
    return _loglinear_maps(yn, echoes.te, s0n, r2, w, usable, scale, noise.sigma)


def _positive(yn: torch.Tensor) -> torch.Tensor:
    return gt(yn, 0.0)


def _loglinear_maps(
    yn: torch.Tensor,
    te: torch.Tensor,
    s0n: torch.Tensor,
    r2: torch.Tensor,
    w: torch.Tensor,
    usable: torch.Tensor,
    scale: torch.Tensor,
    sigma: float | None,
) -> Maps:
    """Standard errors of a (weighted) straight-line fit of log S, then :func:`derive`.

    The sandwich covariance with Var(log S_k) = sigma^2 / A_k^2 (A_k the fitted signal):
    ordinary log-linear fits give late, noisy echoes full weight, and their true spread is
    much larger than the least-squares bound of the signal model would claim."""
    small = tiny(yn)
    s0c = torch.nan_to_num(s0n, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    a = s0c * torch.exp(-te * reported_rate(r2))
    resid = a - yn
    ssr = (resid * resid).sum(0)
    var = noise_variance(sigma, scale, ssr, yn.shape[0] - 2)
    wwv = w * w * var / (a * a).clamp_min(small)  # w^2 Var(log S), (E, n)
    sw = w.sum(0)
    safe_sw = sw.clamp_min(small)
    t_mean = (w * te).sum(0) / safe_sw
    x = te - t_mean
    sxx = (w * x * x).sum(0)
    ok = gt(sxx, 0.0) * gt(sw, 0.0)
    safe_sxx = sxx.clamp_min(small)
    wwvx = wwv * x
    var_slope = (wwvx * x).sum(0) / (safe_sxx * safe_sxx)
    var_mean = wwv.sum(0) / (safe_sw * safe_sw)
    cov = wwvx.sum(0) / (safe_sw * safe_sxx)
    var_log_s0 = var_mean + t_mean * t_mean * var_slope + 2.0 * t_mean * cov
    r2_se = ok * torch.sqrt(var_slope.clamp_min(0.0))
    s0_se = ok * s0c * torch.sqrt(var_log_s0.clamp_min(0.0))
    rmse = torch.sqrt(ssr / yn.shape[0])
    return derive(Solved(s0n, r2, scale, usable, torch.ones_like(s0n), r2_se, s0_se, rmse))


def _chi2(
    ssr: torch.Tensor, sigma: float | None, scale: torch.Tensor, per_channel: float = 1.0
) -> torch.Tensor | None:
    """The residuals' chi-square ssr / (``per_channel`` sigma^2) in each voxel's units; None
    without a noise level."""
    if sigma is None:
        return None
    return ssr / (per_channel * (sigma / scale) ** 2)


def _kernel_arlo(
    rows: tuple[torch.Tensor, ...], echoes: Echoes, noise: NoiseModel, order: Sequence[int]
) -> Maps:
    """ARLO, echoes evenly spaced (checked); S0 by least squares given R2*; standard errors of
    the magnitude model at the reported rate, as for the Gaussian fit."""
    yn, usable, scale = prepare(echo_major(rows[0], order), echoes, 0.0)
    te = echoes.te
    r2 = starts.arlo(yn, te)  # -1 where there is no decay: derive flags it
    s0n = starts.amplitude_given_rate(yn, te, r2)
    e = torch.exp(-te * reported_rate(r2))
    ee = e * e
    resid = s0n * e - yn
    ssr = (resid * resid).sum(0)
    s0c = s0n.clamp_min(0.0)
    tee = te * ee
    var = noise_variance(noise.sigma, scale, ssr, yn.shape[0] - 2)
    r2_se, s0_se = inverse_diagonal_sqrt(
        ee.sum(0), -s0c * tee.sum(0), s0c * s0c * (te * tee).sum(0), var
    )
    rmse = torch.sqrt(ssr / yn.shape[0])
    return derive(Solved(s0n, r2, scale, usable, torch.ones_like(s0n), r2_se, s0_se, rmse))


def _kernel_gaussian(
    rows: tuple[torch.Tensor, ...], echoes: Echoes, noise: NoiseModel, order: Sequence[int]
) -> Maps:
    yn, usable, scale = prepare(echo_major(rows[0], order), echoes, 0.0)
    te = echoes.te
    s0n, r2 = starts.loglinear(yn, te, starts.signal_weights(yn))
    model = Exponential(te, factor=False, noise_aware=False, max_iter=MAX_ITER)
    fit = levenberg_marquardt(model, (yn.neg_(),), torch.stack([s0n, r2]))  # yn not needed after
    return gaussian_maps(fit, scale, usable, noise.sigma, yn.shape[0])


def gaussian_maps(
    fit: Solution, scale: torch.Tensor, usable: torch.Tensor, sigma: float | None,
    n_echo: torch.Tensor | int,
) -> Maps:  # fmt: skip
    """Maps of a Gaussian LM fit: standard errors var (J^T J)^-1 from what LM formed at the
    solution, var sigma^2 or the residual estimate with ``n_echo`` - 2 degrees of freedom
    (``n_echo``: the echoes fitted, per voxel where some were left out)."""
    cost = fit.cost
    var = noise_variance(sigma, scale, cost, n_echo - 2)
    r2_se, s0_se = inverse_diagonal_sqrt(*_normal(fit), var)
    count = n_echo if isinstance(n_echo, int) else n_echo.clamp_min(1.0)
    rmse = torch.sqrt(cost / count)
    chi2 = _chi2(cost, sigma, scale)
    return derive(
        Solved(
            fit.point[0], fit.point[1], scale, usable, fit.converged, r2_se, s0_se, rmse, chi2,
            n_echo - 2,
        )
    )  # fmt: skip


def _normal(fit: Solution) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a11, a12, a22) of the 2 x 2 normal matrix an exponential fit formed at its solution."""
    return fit.normal(0, 0, 0), fit.normal(0, 0, 1), fit.normal(0, 1, 1)


def _kernel_rician(
    rows: tuple[torch.Tensor, ...], echoes: Echoes, noise: NoiseModel, order: Sequence[int]
) -> Maps:
    """Noise-aware fit: IRLS of M^2 - 2 L sigma^2 against P exp(-2 TE R2*), P = S0^2."""
    assert noise.sigma is not None
    chunk = prepare(echo_major(rows[0], order), echoes, noise.sigma)
    yn, _, scale = chunk
    te = echoes.te
    s0n, r2 = starts.loglinear(yn, te, starts.signal_weights(yn))
    sn2 = (noise.sigma / scale) ** 2  # (n,) noise variance in these units, <= 1
    neg_z = torch.addcmul(2.0 * noise.coils * sn2, yn, yn, value=-1.0)
    model = Exponential(2.0 * te, factor=False, noise_aware=True, max_iter=MAX_ITER)
    fit = levenberg_marquardt(model, (neg_z, noise.coils * sn2), torch.stack([s0n * s0n, r2]))
    return rician_maps(fit, te, chunk, None, sn2, noise.coils, yn.shape[0])


def rician_maps(
    fit: Solution, te: torch.Tensor, chunk: Chunk, g: torch.Tensor | None, sn2: torch.Tensor,
    coils: float, n_echo: torch.Tensor | int,
) -> Maps:  # fmt: skip
    """Maps of a noise-aware fit. Generalised least-squares covariance of (P, R2*) for
    Var(M^2) = 4 s^2 (A^2 + L s^2): LM's weights are 1 / (A^2 + L s^2), so it is 4 s^2 times
    the inverse of what LM formed there. RMSE of M against the magnitude the model predicts,
    sqrt(A^2 + 2 L sigma^2): what the fit matched (so two echoes still fit exactly) and, at
    any SNR, the RMS of a Rician (noncentral chi) magnitude. ``g``: the known factor (applied
    to A^2), None for 1; its echoes with g = 0 are left out of the RMSE."""
    yn, usable, scale = chunk
    r2_se, p_se = inverse_diagonal_sqrt(*_normal(fit), 4.0 * sn2)
    p = fit.point[0]
    s0n = torch.sqrt(p.clamp_min(0.0))
    s0_se = p_se / (2.0 * s0n.clamp_min(1e-30))
    a2 = torch.mul(-2.0 * te, reported_rate(fit.point[1])).exp_().mul_(p.clamp_min(0.0))
    if g is not None:
        a2 = a2.mul_(g)
    resid = a2.add_(2.0 * coils * sn2).sqrt_().sub_(yn)
    if g is None:
        rmse = resid.mul_(resid).mean(dim=0).sqrt_()
    else:
        kept = gt(g, 0.0)
        rmse = (resid * resid * kept).sum(0).div_(kept.sum(0).clamp_min(1.0)).sqrt_()
    # A non-positive P leaves S0 = 0, which derive flags. LM's cost is the weighted sum
    # (M^2 - E[M^2])^2 / (A^2 + L s^2): over 4 s^2 a chi-square whatever the SNR.
    chi2 = fit.cost / (4.0 * sn2)
    return derive(
        Solved(
            s0n, fit.point[1], scale, usable, fit.converged, r2_se, s0_se, rmse, chi2, n_echo - 2
        )
    )


_KERNELS: Mapping[str, Callable[..., Maps]] = {
    "loglin": partial(_kernel_loglinear, weights=_positive),
    "wls": partial(_kernel_loglinear, weights=starts.signal_weights),
    "gaussian": _kernel_gaussian,
    "rician": _kernel_rician,
    "arlo": _kernel_arlo,
}
