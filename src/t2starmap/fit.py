"""Voxel-wise fit of the mono-exponential decay S(TE) = S0 * exp(-TE * R2*).

Pure torch: no file I/O, no logging, no printing. Conventions everywhere in this module:

* the echo axis is the LAST axis of ``signal``;
* echo times are in seconds, R2* in 1/s, T2* in s, S0 in the signal's units;
* voxels are processed in chunks of ``chunk_size`` so memory stays bounded, each chunk on
  the compute device, every tensor created on that device with the compute dtype.

Methods (``method=``):

``nlls``           the default. Levenberg-Marquardt from a ``wls`` start. With a noise level
                   (``noise_sigma``) it is noise-aware ("rician"): it fits the Rician second
                   moment E[M^2] = S0^2 exp(-2 TE R2*) + 2 sigma^2 to the squared magnitude by
                   iteratively reweighted least squares, weights 1 / (E[M^2] - sigma^2), the
                   inverse of Var(M^2) / (4 sigma^2). That moment is exact at every SNR, so echoes
                   on the noise floor no longer pull R2* down; at high SNR the weights make it
                   the ordinary least-squares fit of M. It needs no Bessel functions and costs
                   what the Gaussian fit costs. Without a noise level it is the Gaussian fit
                   below (``noise_model == "gaussian"`` says so). Why this estimator, with
                   numbers: ``benchmarks/NOISE_FLOOR.md``. A root-sum-of-squares image of
                   L coils (``noise_coils``) is noncentral chi: E[M^2] = A^2 + 2 L sigma^2,
                   Var(M^2) = 4 sigma^2 (A^2 + L sigma^2); the same fit with those moments
                   (``noise_model == "noncentral-chi"``; L = 1 is the Rician case).
``nlls-gaussian``  Levenberg-Marquardt on sum (S0 exp(-TE R2*) - M)^2, ignoring the floor.
``wls``            weighted least squares on log(S) with weights S^2.
``loglin``         ordinary least squares on log(S) (samples <= 0 are left out).
``arlo``           auto-regression on linear operations (Pei et al., MRM 2015;73:843, with its
                   erratum): a closed form for evenly spaced echoes; S0 by least squares given
                   R2*. Unevenly spaced echoes raise :class:`EchoSpacingError`.

R2* is fitted; T2* = 1/R2* is derived in one place (:func:`_derive`), after R2* is clamped to
``[1/T2STAR_MAX, 1/T2STAR_MIN]``. Beside it each voxel gets its :class:`Failure` bits
(``reason``; what each means here: :class:`FitResult`): BAD_INPUT alone where the input is
unusable (a NaN, inf or negative sample, fewer than two positive echoes), else R2STAR_LOW or
R2STAR_HIGH where R2* was clamped, NOT_CONVERGED where LM did not converge or the fit is not
finite, S0_NONPOSITIVE where S0 came out <= 0. ``failed`` is ``reason != 0``. Maps never hold
NaN, inf or negative values; unusable voxels are 0.

Standard errors (sigma = ``noise_sigma`` when given, else the residual estimate): sigma^2
(J^T J)^-1 at the solution for ``nlls-gaussian`` and ``arlo`` (for ARLO this is the bound, about
15 % below its actual spread); the generalised least-squares covariance (J^T V^-1 J)^-1 of M^2
with Var(M^2) = 4 sigma^2 (A^2 + L sigma^2) for the noise-aware fit; the sandwich covariance with
Var(log S) = sigma^2 / A^2 for ``loglin`` and ``wls``. T2* by the delta method,
se(T2*) = se(R2*) T2*^2.

Speed (eager torch, no compilation step, so the first participant never waits for one): the
kernels are memory-bound loops over a chunk's echo-by-voxel arrays, so they keep the number of
passes over those arrays low. LM carries its per-voxel state in one tensor, stops each voxel
on its own, takes a step too small to matter without evaluating it, and once half the voxels
of a chunk have stopped it goes on with the rest only. Per-voxel flags are float 0/1 tensors:
torch's bool tensors are not vectorised on the CPU. Measured in ``benchmarks/bench_fit.py``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
import torch

from t2starmap.fitresult import (
    Failure,
    FitResult,
    check_echo_times,
    chunk_rows,
    fit_device_and_chunk,
    flat_mask,
    resolve_device,
)
from t2starmap.limits import (
    DEFAULT_METHOD,
    MAGNITUDE_METHODS,
    MAX_ECHO_TIME,
    METHODS,
    SPACING_RTOL,
    T2STAR_MAX,
    T2STAR_MIN,
)

__all__ = [
    "DEFAULT_METHOD",
    "MAGNITUDE_METHODS",
    "MAX_ECHO_TIME",
    "METHODS",
    "SPACING_RTOL",
    "T2STAR_MAX",
    "T2STAR_MIN",
    "EchoSpacingError",
    "Failure",
    "FitResult",
    "check_echo_times",
    "check_even_spacing",
    "fit_t2star",
    "resolve_device",
]

#: Voxels per chunk on the CPU: big enough that per-operation overhead stays small, small
#: enough that a chunk's few echo-by-voxel temporaries stay in the CPU caches. Chosen with
#: ``python benchmarks/tune_fit.py --chunks 15 16 17`` (its table, not a copy here, is the record).
DEFAULT_CHUNK = 1 << 16
#: Voxels per chunk on a GPU: big enough that kernel launches do not dominate (a 192x192x64
#: volume is one chunk), small enough for the temporaries (~0.6 GB at 11 echoes, float32).
DEFAULT_CUDA_CHUNK = 1 << 22
_LM_MAX_ITER = 10
_T = TypeVar("_T")
#: A voxel stops once its proposed step is below this, relative. Chosen with
#: ``python benchmarks/tune_fit.py --tols 5e-4 2e-3 5e-3``: speed against the change of T2* in
#: units of its standard error.
_LM_TOL = 2e-3
#: Largest R2* (1/s) an LM step may reach; the reported maps clamp at 1/T2STAR_MIN.
_R2_MAX = 10.0 / T2STAR_MIN


class EchoSpacingError(ValueError):
    """A method that needs evenly spaced echoes (ARLO) was given unevenly spaced ones."""


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


def fit_t2star(
    signal: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    method: str = DEFAULT_METHOD,
    mask: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    noise_sigma: float | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    noise_coils: float = 1.0,
    workers: int = 1,
) -> FitResult:
    """Fit S0 and R2* in every voxel of ``signal`` (shape (..., n_echoes), echoes LAST).

    ``echo_times``: (n_echoes,) in seconds, any order (sorted here). ``mask``: (...) bool,
    voxels to fit; default all. ``device``: see :func:`resolve_device`. ``noise_sigma``: the
    noise standard deviation of each real/imaginary channel, in signal units; it makes the
    default fit noise-aware and sets the standard errors. ``dtype``: compute precision
    (float32 default; float64 for reference computations). ``chunk_size``: voxels per chunk
    (default ``DEFAULT_CHUNK`` on the CPU, ``DEFAULT_CUDA_CHUNK`` on a GPU). ``noise_coils``:
    the effective number L >= 1 of coils of a root-sum-of-squares magnitude (float; 1 for
    Rician data), used by the noise-aware fit (see :func:`t2starmap.noise.estimate_noise`).
    ``workers``: chunks fitted at once on the CPU, each in its own thread with one torch
    thread (torch's intra-op thread count is set to 1 while they run, then restored); the maps
    are the same as with one worker. On a busy machine this keeps its speed where torch's own
    threads wait for each other (:func:`t2starmap.resources.fit_workers`).

    Input validity is judged per voxel, here and not by the caller: a voxel with any NaN, inf
    or negative sample, or fewer than two positive ones, has ``failed`` True, ``reason``
    ``Failure.BAD_INPUT`` and its maps 0. ``reason`` holds every voxel's :class:`Failure` bits
    (uint8, 0 for a good fit and outside the mask); ``failed == (reason != 0)``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown fit method {method!r}; choose one of {', '.join(METHODS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if not (np.isfinite(noise_coils) and noise_coils >= 1.0):
        raise ValueError(f"noise coils must be a number >= 1, got {noise_coils!r}")
    if method == "complex":
        from t2starmap.fit_complex import fit_complex  # it imports this module

        return fit_complex(
            signal,
            echo_times,
            mask=mask,
            device=device,
            noise_sigma=noise_sigma,
            dtype=dtype,
            chunk_size=chunk_size,
        ).as_fit_result()
    dev, chunk_size = fit_device_and_chunk(
        chunk_size, noise_sigma, device, (DEFAULT_CHUNK, DEFAULT_CUDA_CHUNK)
    )
    te_np = check_echo_times(echo_times)
    data = torch.as_tensor(signal)
    if data.ndim < 1 or data.shape[-1] != te_np.size:
        raise ValueError(
            f"signal has {data.shape[-1] if data.ndim else 0} echoes on its last axis but "
            f"{te_np.size} echo times were given"
        )
    order = np.argsort(te_np, kind="stable")
    if method == "arlo":
        check_even_spacing(te_np[order])
    kernel = _KERNELS[_kernel_name(method, noise_sigma)]
    noise_aware = kernel is _kernel_rician
    if noise_aware:
        kernel = partial(_kernel_rician, coils=float(noise_coils))
    spatial = tuple(data.shape[:-1])
    flat = data.reshape(-1, te_np.size)
    n_vox = flat.shape[0]
    inside = flat_mask(mask, spatial)
    echoes = _Echoes(
        te=torch.as_tensor(te_np[order], dtype=dtype, device=dev)[:, None],
        distinct=bool(np.unique(te_np).size == te_np.size),
    )
    all_inside = bool(inside.all())
    # Without a mask no index list is made: it would cost 8 bytes a voxel.
    index = torch.empty(0, dtype=torch.long) if all_inside else torch.nonzero(inside).reshape(-1)
    n_fit = n_vox if all_inside else index.numel()
    ascending = [int(k) for k in order]

    out = {k: torch.zeros(n_vox, dtype=dtype, device=dev) for k in _MAPS}
    reason = torch.zeros(n_vox, dtype=torch.uint8, device=dev)

    def fit_chunk(start: int) -> tuple[slice | torch.Tensor, _Maps]:
        stop = min(start + chunk_size, n_fit)
        sel, rows = chunk_rows(flat, None if all_inside else index, start, stop, dev, dtype)
        # Echo-major (E, n), echoes ascending: every sum over echoes is then a vectorised add
        # across voxels. Stacked from the columns (on the CPU twice as fast as a transposing
        # copy), so always a fresh array: the kernels work in it in place.
        y = torch.stack([rows[:, k] for k in ascending])
        return sel, kernel(y, echoes, noise_sigma)

    starts = range(0, n_fit, chunk_size)
    for sel, (maps, bits) in _map_chunks(fit_chunk, starts, workers if dev.type == "cpu" else 1):
        for k in _MAPS:
            out[k][sel] = maps[k]
        reason[sel] = bits.to(torch.uint8)
    reason = reason.reshape(spatial)
    return FitResult(
        **{k: v.reshape(spatial) for k, v in out.items()},
        failed=reason != 0,
        reason=reason,
        method=method,
        device=str(dev),
        noise_sigma=noise_sigma,
        noise_model=_noise_model(noise_aware, noise_coils),
        noise_coils=float(noise_coils) if noise_aware else 1.0,
    )


def _map_chunks(func: Callable[[int], _T], starts: Sequence[int], workers: int) -> Iterator[_T]:
    """``func`` of every chunk start, in order; up to ``workers`` chunks at once in threads
    (torch releases the GIL in its kernels), torch's intra-op threads set to 1 meanwhile so
    the chunk threads do not each start a team of their own."""
    workers = min(workers, len(starts))
    if workers <= 1:
        yield from map(func, starts)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t2starmap-fit") as pool:
            # At most 2 chunks per worker in flight: memory stays bounded by the chunk size.
            pending: deque[Future[_T]] = deque()
            for start in starts:
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
                pending.append(pool.submit(func, start))
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(previous)


def _noise_model(noise_aware: bool, coils: float) -> str:
    if not noise_aware:
        return "gaussian"
    return "rician" if coils == 1.0 else "noncentral-chi"


def _kernel_name(method: str, noise_sigma: float | None) -> str:
    if method == "nlls":
        return "rician" if noise_sigma is not None else "gaussian"
    if method == "nlls-gaussian":
        return "gaussian"
    return method


# --- the per-chunk kernels ---------------------------------------------------------------------
# Each takes y (E, n), echo-major with echoes ascending (NaN allowed; the kernel owns it and may
# overwrite it), the echo times, the noise level (None: unknown), and returns the maps (n,)
# and the Failure bits (n,), as whole numbers in the compute dtype (see _derive).
#
# Work is in units of each voxel's largest sample (``scale``), which keeps squared signals well
# inside float32 whatever the input units. Per-voxel flags are float tensors of 0s and 1s,
# combined by multiplication and applied with torch.lerp: on the CPU, torch's bool tensors are
# not vectorised (a torch.where on a bool mask costs about 20 multiplications), and these
# kernels are memory-bound loops over a few hundred thousand numbers.

_MAPS = ("t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se")
_Maps = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Echoes:
    """Echo times on the compute device: ``te`` (E, 1) ascending, in s; ``distinct``: no two
    equal, so "two positive samples at different echo times" is a count."""

    te: torch.Tensor
    distinct: bool


def _lt(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """1.0 where a < b, else 0.0 (NaN: 0.0), in a's dtype."""
    return torch.lt(a, b, out=torch.empty_like(a))


def _gt(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """1.0 where a > b, else 0.0 (NaN: 0.0), in a's dtype."""
    return torch.gt(a, b, out=torch.empty_like(a))


def _finite(a: torch.Tensor) -> torch.Tensor:
    """1.0 where a is finite, else 0.0 (a - a is NaN exactly at NaN and +-inf)."""
    return torch.eq(a - a, 0.0, out=torch.empty_like(a))


def _prepare(
    y: torch.Tensor, echoes: _Echoes, floor: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean the chunk: (yn = y / scale with non-finite samples set to 0, usable, scale).

    usable (n,): all samples finite and non-negative (a magnitude cannot be negative), and at
    least two positive ones at different echo times.
    scale (n,): the voxel's largest |sample|, at least ``floor`` (the noise level, when known:
    the noise then never exceeds 1 in these units)."""
    finite = _finite(y.sum(0))  # NaN or inf in any sample makes the sum non-finite
    if not bool(finite.min() > 0):
        y = y.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    high, low = y.amax(dim=0), y.amin(dim=0)
    if bool(low.min() > 0):
        # Every sample positive (the usual case): enough echoes (check_echo_times) everywhere.
        usable = finite
    else:
        usable = finite * torch.ge(low, 0.0, out=torch.empty_like(low))
        if echoes.distinct:
            usable = usable * _gt(_gt(y, 0.0).sum(0), 1.5)
        else:
            usable = usable * _distinct_positive_echoes(y > 0, echoes.te).to(y.dtype)
    scale = torch.maximum(high, low.neg_()).clamp_min_(max(floor, torch.finfo(y.dtype).tiny))
    return y.div_(scale), usable, scale


def _distinct_positive_echoes(positive: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
    """True where at least two positive samples sit at different echo times. (n,) bool."""
    big = torch.finfo(te.dtype).max
    te_pos_min = torch.where(positive, te, big).amin(dim=0)
    te_pos_max = torch.where(positive, te, -big).amax(dim=0)
    return te_pos_max > te_pos_min


def _kernel_loglin(y: torch.Tensor, echoes: _Echoes, sigma: float | None) -> _Maps:
    yn, usable, scale = _prepare(y, echoes, 0.0)
    w = _gt(yn, 0.0)
    s0n, r2 = _loglinear(yn, echoes.te, w)
    return _derive_loglinear(yn, echoes.te, s0n, r2, w, usable, scale, sigma)


def _kernel_wls(y: torch.Tensor, echoes: _Echoes, sigma: float | None) -> _Maps:
    yn, usable, scale = _prepare(y, echoes, 0.0)
    w = _signal_weights(yn)
    s0n, r2 = _loglinear(yn, echoes.te, w)
    return _derive_loglinear(yn, echoes.te, s0n, r2, w, usable, scale, sigma)


def _signal_weights(yn: torch.Tensor) -> torch.Tensor:
    """The ``wls`` weights, S^2 for positive samples, 0 for the others. (E, n)"""
    positive = yn.clamp_min(0.0)
    return positive.mul_(positive)


def _kernel_gaussian(y: torch.Tensor, echoes: _Echoes, sigma: float | None) -> _Maps:
    yn, usable, scale = _prepare(y, echoes, 0.0)
    te = echoes.te
    s0n, r2 = _loglinear(yn, te, _signal_weights(yn))
    fit = _levenberg_marquardt(yn.neg_(), te, s0n, r2, None)  # yn is not needed after this
    # Standard errors: var * (J^T J)^-1 at the solution; J^T J is what LM formed there.
    var = _noise_variance(sigma, scale, fit.cost, yn.shape[0])
    r2_se, s0_se = _inverse_diagonal_sqrt(fit.a11, fit.a12, fit.a22, var)
    rmse = torch.sqrt(fit.cost / yn.shape[0])
    return _derive(fit.p, fit.r2, scale, usable, fit.converged, r2_se, s0_se, rmse)


def _kernel_rician(
    y: torch.Tensor, echoes: _Echoes, sigma: float | None, coils: float = 1.0
) -> _Maps:
    """Noise-aware fit: IRLS of M^2 - 2 L sigma^2 against P exp(-2 TE R2*), P = S0^2, for a
    magnitude of L coils (L = 1: Rician; L > 1: noncentral chi, root-sum-of-squares)."""
    assert sigma is not None
    yn, usable, scale = _prepare(y, echoes, sigma)
    te = echoes.te
    s0n, r2 = _loglinear(yn, te, _signal_weights(yn))
    sn2 = (sigma / scale) ** 2  # (n,) noise variance in these units, <= 1 (scale >= sigma)
    neg_z = torch.addcmul(2.0 * coils * sn2, yn, yn, value=-1.0)
    fit = _levenberg_marquardt(neg_z, 2.0 * te, s0n * s0n, r2, coils * sn2)
    # Generalised least-squares covariance of (P, R2*) for Var(M^2) = 4 s^2 (A^2 + L s^2): LM's
    # weights are 1 / (A^2 + L s^2), so it is 4 s^2 times the inverse of what LM formed there.
    r2_se, p_se = _inverse_diagonal_sqrt(fit.a11, fit.a12, fit.a22, 4.0 * sn2)
    p = fit.p
    s0n = torch.sqrt(p.clamp_min(0.0))
    s0_se = p_se / (2.0 * s0n.clamp_min(1e-30))
    # The magnitude this model predicts, sqrt(A^2 + 2 L sigma^2): what the fit matched (so two
    # echoes still fit exactly) and, at any SNR, the RMS of a Rician (noncentral chi) magnitude.
    resid = torch.mul(-2.0 * te, _reported_rate(fit.r2)).exp_().mul_(p.clamp_min(0.0))
    resid = resid.add_(2.0 * coils * sn2).sqrt_().sub_(yn)
    rmse = resid.mul_(resid).mean(dim=0).sqrt_()
    # A non-positive P leaves S0 = 0, which _derive flags.
    return _derive(s0n, fit.r2, scale, usable, fit.converged, r2_se, s0_se, rmse)


def _kernel_arlo(y: torch.Tensor, echoes: _Echoes, sigma: float | None) -> _Maps:
    """ARLO (Pei et al. 2015, with the erratum's formula), echoes evenly spaced (checked)."""
    yn, usable, scale = _prepare(y, echoes, 0.0)
    te = echoes.te
    dt = (te[-1] - te[0]) / (te.numel() - 1)
    s = dt / 3.0 * (yn[:-2] + 4.0 * yn[1:-1] + yn[2:])
    d = yn[:-2] - yn[2:]
    ss = (s * s).sum(0)
    sd = (s * d).sum(0)
    dd = (d * d).sum(0)
    num = ss + dt / 3.0 * sd  # T2* = num / den; R2* = den / num
    den = dt / 3.0 * dd + sd
    # num <= 0: no decay to speak of; R2* = -1 has _derive flag it.
    has_num = _gt(num, 0.0)
    r2 = torch.lerp(torch.full_like(num, -1.0), den / num.clamp_min(_tiny(num)), has_num)
    e = torch.exp(-te * r2.clamp_min(0.0))
    ee = e * e
    s0n = (yn * e).sum(0) / ee.sum(0).clamp_min(_tiny(num))
    # Standard errors of the magnitude model at the reported rate, as for the Gaussian fit.
    e = torch.exp(-te * _reported_rate(r2))
    ee = e * e
    resid = s0n * e - yn
    ssr = (resid * resid).sum(0)
    s0c = s0n.clamp_min(0.0)
    tee = te * ee
    a12 = -s0c * tee.sum(0)
    a22 = s0c * s0c * (te * tee).sum(0)
    var = _noise_variance(sigma, scale, ssr, yn.shape[0])
    r2_se, s0_se = _inverse_diagonal_sqrt(ee.sum(0), a12, a22, var)
    rmse = torch.sqrt(ssr / yn.shape[0])
    return _derive(s0n, r2, scale, usable, torch.ones_like(s0n), r2_se, s0_se, rmse)


_KERNELS = {
    "loglin": _kernel_loglin,
    "wls": _kernel_wls,
    "gaussian": _kernel_gaussian,
    "rician": _kernel_rician,
    "arlo": _kernel_arlo,
}


def _tiny(like: torch.Tensor) -> float:
    return torch.finfo(like.dtype).tiny


def _noise_variance(
    sigma: float | None, scale: torch.Tensor, ssr: torch.Tensor, n_echo: int
) -> torch.Tensor:
    """The noise variance in each voxel's units: sigma^2 when the noise level is known, else the
    residual estimate ssr / (E - 2) (0 with two echoes: no residual is left)."""
    if sigma is not None:
        return (sigma / scale) ** 2
    if n_echo <= 2:
        return torch.zeros_like(ssr)
    return ssr / (n_echo - 2)


def _inverse_diagonal_sqrt(
    a11: torch.Tensor, a12: torch.Tensor, a22: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt of the diagonal of var * [[a11, a12], [a12, a22]]^-1, in the order (second, first)
    parameter: (se of R2*, se of the amplitude). 0 where the matrix is singular."""
    det = a11 * a22 - a12 * a12
    regular = _gt(det, 0.0)
    inv_det = regular / det.clamp_min(_tiny(det))
    return (
        torch.sqrt((var * a11 * inv_det).clamp_min(0.0)),
        torch.sqrt((var * a22 * inv_det).clamp_min(0.0)),
    )


def _loglinear(
    yn: torch.Tensor, te: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted straight-line fit of log(y) against TE. Returns (S0, R2*), each (n,).

    Samples with weight 0 (non-positive signal) do not count. TE is centred for stability."""
    tiny = _tiny(yn)
    te_mean = te.mean()
    x = (te - te_mean).reshape(-1)
    # Sums over echoes weighted by a function of TE alone are vector-matrix products.
    sw = w.sum(0)
    sx = x @ w
    sxx = (x * x) @ w
    wz = yn.clamp_min(tiny).log_().mul_(w)  # w log(y)
    sz = wz.sum(0)
    sxz = x @ wz
    det = sw * sxx - sx * sx
    slope = (sw * sxz - sx * sz) * (_gt(det, 0.0) / det.clamp_min(tiny))
    intercept = (sz - slope * sx) / sw.clamp_min(tiny)
    # intercept is log S at the mean TE: move it back to TE = 0.
    log_s0 = (intercept - slope * te_mean).clamp(max=80.0)
    return torch.exp(log_s0), -slope


def _reported_rate(r2: torch.Tensor) -> torch.Tensor:
    """R2* as :func:`_derive` will report it: finite, clamped to [1/T2STAR_MAX, 1/T2STAR_MIN]."""
    r2 = torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0)
    return r2.clamp(1.0 / T2STAR_MAX, 1.0 / T2STAR_MIN)


@dataclass(frozen=True)
class _LMFit:
    """Result of :func:`_levenberg_marquardt`, each (n,): the amplitude p and rate R2*, the
    normal matrix J^T W J = [[a11, a12], [a12, a22]] and the cost r^T W r there, and the
    converged flags (float 0/1)."""

    p: torch.Tensor
    r2: torch.Tensor
    a11: torch.Tensor
    a12: torch.Tensor
    a22: torch.Tensor
    cost: torch.Tensor
    converged: torch.Tensor


# Rows of LM's per-voxel state, a (8, n) tensor carried from accepted point to accepted point
# (one tensor, so that keeping a step, or gathering the voxels still iterating, is one op):
# the point (p, R2*), J^T W J (a11, a12, a22), J^T W r (g1, g2) and the cost r^T W r.
_P, _R2, _A11, _A12, _A22, _G1, _G2, _COST = range(8)
#: Bound on the amplitude p (in units of the largest sample, squared for the Rician fit) of a
#: trial step: it keeps every sum finite in float32. Real fits sit far below it.
_P_MAX = 1e8


def _lm_point(
    neg_z: torch.Tensor,
    neg_tau: torch.Tensor,
    point: torch.Tensor,
    noise_var: torch.Tensor | None,
    w_judge: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """LM's state at ``point`` (2, n) = (p, R2*) for the cost sum w (p exp(-tau R2*) - z)^2,
    in one pass over the echoes. Returns (state (8, n), the weights w there (E, n; None for
    the Gaussian fit), the cost under ``w_judge``: the weights of the point a trial step
    starts from (the cost itself when there are none))."""
    # In-place where a temporary is not needed again: fewer echo-by-voxel arrays in the caches.
    p, r2 = point[0], point[1]
    f = torch.mul(neg_tau, r2).exp_()
    r = torch.addcmul(neg_z, f, p)  # model - data
    w = None
    if noise_var is None:
        wf = f
    else:
        w = torch.addcmul(noise_var, f, p.clamp_min(0.0)).reciprocal_()
        wf = w * f
    state = torch.empty((8, p.numel()), dtype=p.dtype, device=p.device)
    state[:2] = point
    moment = wf * f  # w f^2, then times -tau, then times tau^2
    torch.sum(moment, 0, out=state[_A11])
    torch.mul(p, moment.mul_(neg_tau).sum(0), out=state[_A12])
    torch.mul(p * p, moment.mul_(neg_tau).sum(0), out=state[_A22])
    wf.mul_(r)  # w f r (f itself is not needed any more)
    torch.sum(wf, 0, out=state[_G1])
    torch.mul(p, wf.mul_(neg_tau).sum(0), out=state[_G2])
    rr = r.mul_(r)
    torch.sum(rr if w is None else w * rr, 0, out=state[_COST])
    judged = state[_COST] if w_judge is None else (w_judge * rr).sum(0)
    return state, w, judged


def _levenberg_marquardt(
    neg_z: torch.Tensor,
    tau: torch.Tensor,
    p: torch.Tensor,
    r2: torch.Tensor,
    noise_var: torch.Tensor | None,
) -> _LMFit:
    """Batched LM on (p, R2*) for the cost sum w (p exp(-tau R2*) - z)^2; ``neg_z`` is -z (E, n),
    tau (E, 1).

    ``noise_var`` None: w = 1 (Gaussian). Otherwise w = 1 / (p exp(-tau R2*) + noise_var),
    recomputed at every accepted step (IRLS; a trial step is judged with the weights of the
    point it starts from). Marquardt's diagonal damping; a step is kept only where it lowers
    the cost. A voxel whose proposed step is below ``_LM_TOL`` (relative to |p| and to
    max(|R2*|, 1/s)) takes it without evaluating it and stops: it is left alone from then on,
    so its result cannot depend on its neighbours, and its normal matrix and cost are those of
    the point before that last small step. Up to ``_LM_MAX_ITER``
    iterations; once half of the voxels still iterating have converged, the rest are gathered
    into smaller tensors, so the slow few do not keep the whole chunk busy.
    The point is held in ``|p| <= _P_MAX``, ``0 <= R2* <= _R2_MAX`` (the final clamp is
    :func:`_derive`'s).
    """
    neg_tau = -tau
    tiny = _tiny(p)
    low = torch.tensor([[-_P_MAX], [0.0]], dtype=p.dtype, device=p.device)
    high = torch.tensor([[_P_MAX], [_R2_MAX]], dtype=p.dtype, device=p.device)
    point = torch.nan_to_num(torch.stack([p, r2]), nan=0.0, posinf=0.0, neginf=0.0)
    state, w, _ = _lm_point(neg_z, neg_tau, point.clamp(low, high), noise_var, None)
    lam = torch.full_like(p, 1e-3)
    converged = torch.zeros_like(p)
    result = torch.empty((9, p.numel()), dtype=p.dtype, device=p.device)  # state, converged
    active: torch.Tensor | None = None  # indices (into the chunk) of the voxels iterating

    def keep() -> None:
        """Write the iterating voxels' state and flags into ``result``."""
        if active is None:
            result[:8].copy_(state)
            result[8].copy_(converged)
        else:
            result[:8].index_copy_(1, active, state)
            result[8].index_copy_(0, active, converged)

    # A step counts as small relative to |p| and to max(|R2*|, 1 1/s).
    step_floor = torch.tensor([[1e-12], [1.0]], dtype=p.dtype, device=p.device)
    for _ in range(_LM_MAX_ITER):
        a12, g1, g2 = state[_A12], state[_G1], state[_G2]
        damp = lam + 1.0
        d11 = state[_A11] * damp
        d22 = state[_A22] * damp
        inv_det = torch.addcmul(d11 * d22, a12, a12, value=-1.0).clamp_min_(tiny).reciprocal_()
        delta = torch.empty_like(state[:2])
        torch.addcmul(a12 * g2, d22, g1, value=-1.0, out=delta[0])
        torch.addcmul(a12 * g1, d11, g2, value=-1.0, out=delta[1])
        delta = delta.mul_(inv_det).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        point = (state[:2] + delta).clamp_(low, high)
        # A step this small is taken without evaluating it, and the voxel stops there.
        size = torch.maximum(state[:2].abs(), step_floor)
        free = 1.0 - converged
        done = _lt(delta.abs_().div_(size).amax(0), _LM_TOL).mul_(free)
        state[:2].lerp_(point, done)
        converged = converged + done
        left = converged.numel() - int(converged.sum())
        if left == 0:
            break
        free = free.sub_(done)
        if 2 * left <= converged.numel():
            keep()
            still = torch.nonzero(converged < 0.5).reshape(-1)
            active = still if active is None else active.index_select(0, still)
            state, point, neg_z, lam, converged, free = (
                x.index_select(-1, still) for x in (state, point, neg_z, lam, converged, free)
            )
            if w is not None and noise_var is not None:
                w, noise_var = w.index_select(1, still), noise_var.index_select(0, still)
        trial, w_trial, judged = _lm_point(neg_z, neg_tau, point, noise_var, w)
        better = _lt(judged, state[_COST]).mul_(free)
        state = state.lerp_(trial, better)
        if w is not None and w_trial is not None:
            w = w.lerp_(w_trial, better)
        lam = lam.mul_(better.mul(-9.9).add_(10.0)).clamp_(1e-9, 1e9)
    else:
        # Out of iterations: a voxel whose cost is at rounding level has nothing to improve.
        zz = neg_z * neg_z
        floor = 1e-10 * (zz if w is None else w * zz).sum(0)
        converged = torch.maximum(converged, _lt(state[_COST], floor))
    keep()
    return _LMFit(
        p=result[_P],
        r2=result[_R2],
        a11=result[_A11],
        a12=result[_A12],
        a22=result[_A22],
        cost=result[_COST],
        converged=result[8],
    )


def _derive_loglinear(
    yn: torch.Tensor,
    te: torch.Tensor,
    s0n: torch.Tensor,
    r2: torch.Tensor,
    w: torch.Tensor,
    usable: torch.Tensor,
    scale: torch.Tensor,
    sigma: float | None,
) -> _Maps:
    """Standard errors of a (weighted) straight-line fit of log S, then :func:`_derive`.

    The sandwich covariance with Var(log S_k) = sigma^2 / A_k^2 (A_k the fitted signal):
    ordinary log-linear fits give late, noisy echoes full weight, and their true spread is
    much larger than the least-squares bound of the signal model would claim."""
    tiny = _tiny(yn)
    s0c = torch.nan_to_num(s0n, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    a = s0c * torch.exp(-te * _reported_rate(r2))
    resid = a - yn
    ssr = (resid * resid).sum(0)
    var = _noise_variance(sigma, scale, ssr, yn.shape[0])
    wwv = w * w * var / (a * a).clamp_min(tiny)  # w^2 Var(log S), (E, n)
    sw = w.sum(0)
    safe_sw = sw.clamp_min(tiny)
    t_mean = (w * te).sum(0) / safe_sw
    x = te - t_mean
    sxx = (w * x * x).sum(0)
    ok = _gt(sxx, 0.0) * _gt(sw, 0.0)
    safe_sxx = sxx.clamp_min(tiny)
    wwvx = wwv * x
    var_slope = (wwvx * x).sum(0) / (safe_sxx * safe_sxx)
    var_mean = wwv.sum(0) / (safe_sw * safe_sw)
    cov = wwvx.sum(0) / (safe_sw * safe_sxx)
    var_log_s0 = var_mean + t_mean * t_mean * var_slope + 2.0 * t_mean * cov
    r2_se = ok * torch.sqrt(var_slope.clamp_min(0.0))
    s0_se = ok * s0c * torch.sqrt(var_log_s0.clamp_min(0.0))
    rmse = torch.sqrt(ssr / yn.shape[0])
    return _derive(s0n, r2, scale, usable, torch.ones_like(s0n), r2_se, s0_se, rmse)


def _derive(
    s0n: torch.Tensor,
    r2: torch.Tensor,
    scale: torch.Tensor,
    usable: torch.Tensor,
    converged: torch.Tensor,
    r2_se: torch.Tensor,
    s0n_se: torch.Tensor,
    rmse_n: torch.Tensor,
) -> _Maps:
    """The one place where T2* = 1/R2* is formed, bounds applied, the signal units restored
    and failures flagged. S0, its standard error and the RMSE come in units of ``scale``;
    ``usable`` and ``converged`` are float flags. Returns the maps and the :class:`Failure`
    bits (n,), whole numbers in the compute dtype: BAD_INPUT alone where the input is not
    usable, else the sum of R2STAR_LOW / R2STAR_HIGH (the rate was clamped), NOT_CONVERGED
    (not converged, or S0 or R2* not finite) and S0_NONPOSITIVE (S0 <= 0) that apply.
    Non-zero exactly where the rate was clamped (NaN included), S0 is not finite and > 0, the
    fit did not converge or the input is unusable."""
    rate = _reported_rate(r2)
    # Float 0/1 flags summed with the bits' weights (bool tensors are slow on the CPU).
    bits = _lt(r2, 1.0 / T2STAR_MAX)
    bits.add_(_gt(r2, 1.0 / T2STAR_MIN), alpha=float(Failure.R2STAR_HIGH))
    fit_ok = _finite(s0n).mul_(_finite(r2)).mul_(converged)
    bits.add_(fit_ok.sub_(1.0), alpha=-float(Failure.NOT_CONVERGED))
    bits.add_(torch.le(s0n, 0.0, out=torch.empty_like(s0n)), alpha=float(Failure.S0_NONPOSITIVE))
    bad = float(Failure.BAD_INPUT)
    bits = bits.sub_(bad).mul_(usable).add_(bad)  # BAD_INPUT alone where not usable
    t2 = 1.0 / rate
    maps = {
        "t2star": t2,
        "r2star": rate,
        "s0": s0n * scale,
        "rmse": rmse_n * scale,
        "t2star_se": r2_se * t2 * t2,
        "r2star_se": r2_se,
        "s0_se": s0n_se * scale,
    }
    for key, value in maps.items():
        value = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
        maps[key] = value.clamp_min(0.0) * usable
    return maps, bits
