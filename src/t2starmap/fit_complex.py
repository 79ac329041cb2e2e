"""Voxel-wise fit of the complex decay S(TE) = S0 exp(-TE R2*) exp(i (phi0 + 2 pi f TE)).

Pure torch: no file I/O, no logging, no printing. Conventions as in :mod:`t2starmap.fit`:

* the echo axis is the LAST axis of ``signal`` (complex: complex64, or complex128 for
  reference computations);
* echo times in seconds, R2* in 1/s, T2* in s, the frequency f in Hz, phi0 in rad, S0 in the
  signal's units;
* voxels in chunks of ``chunk_size``, every tensor on the compute device (:func:`resolve_device`).

Why fit the complex signal: its noise is Gaussian in both channels at every SNR, so echoes on
the noise floor do not bias R2* the way they bias a magnitude fit, and the fit gives the field
map (f) as a by-product.

The fit, per voxel:

* start: f from the phase of sum_k x_{k+1} conj(x_k) over the pairs at the shortest echo
  spacing (a sum of products is weighted by magnitude), divided by 2 pi dTE, then refined by
  the weighted least-squares slope of every pair's phase difference (uneven spacing: each
  pair's own dTE); S0 and R2* from a log-linear fit of |x| with weights |x|^2; phi0 from the
  demodulated echoes, arg sum_k x_k exp(-i 2 pi f TE_k) exp(-TE_k R2*).
* Levenberg-Marquardt on (S0, R2*, phi0, omega = 2 pi f) with the real and imaginary parts of
  the residual. With the demodulated data d_k = exp(-i theta_k) x_k (theta_k = phi0 + omega
  TE_k) the normal matrix is exactly block-diagonal: (S0, R2*) sees Re d_k against the decay,
  (phi0, omega) sees Im d_k, weighted by the decay. Two 2x2 solves a step.

Each voxel's failure reasons are :class:`Failure` bits (``reason``); ``failed`` is any of them.
Maps never hold NaN or inf; S0, R2*, T2* and their errors are never negative; unusable voxels
are 0 everywhere.

Standard errors: sigma^2 (J^T J)^-1 at the solution, sigma = ``noise_sigma`` when given (the SD
of each real/imaginary channel), else the residual estimate sum |r|^2 / (2 E - 4) (0 with two
echoes: the fit is exact). T2* by the delta method.

The phase check (``Failure.PHASE_MODEL``): at the solution, the residual orthogonal to the
model (sum (Im d_k)^2, the part of the data the phase model must explain) is compared with the
noise: with ``noise_sigma``, against the chi-square quantile of E - 2 degrees of freedom; without
it, against the residual along the model (sum (Re d_k - a_k)^2), by the F quantile of
(E - 2, E - 2); given the noise level, a voxel must exceed both quantiles (a noise level from
the background often understates the noise inside tissue, and the ratio does not depend on
it). Each at a false-alarm rate of ``PHASE_FALSE_ALARM`` per voxel for data that follow the
model.
Phase that jumps between odd and even echoes (bipolar readouts), fat-water beating or phase
wraps that are not linear in TE show up here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from t2starmap.fitresult import (
    Failure,
    FitResult,
    check_echo_times,
    chunk_rows,
    fit_device_and_chunk,
    flat_mask,
)
from t2starmap.limits import T2STAR_MAX, T2STAR_MIN

#: Voxels per chunk on the CPU and on a GPU (more temporaries than the magnitude fit: 4 real
#: echo-by-voxel arrays for the data and the model, a few for the sums).
DEFAULT_CHUNK = 1 << 15
DEFAULT_CUDA_CHUNK = 1 << 21
#: A voxel stops once its proposed step is below this: relative to |S0| and to max(R2*, 1 1/s);
#: in rad for phi0 and for the phase change omega * TE_last over the echo train.
LM_TOL = 1e-3
LM_MAX_ITER = 50
#: False-alarm rate per voxel of the phase check, for data that follow the model.
PHASE_FALSE_ALARM = 1e-4
#: Largest R2* (1/s) an LM step may reach; the reported maps clamp at 1/T2STAR_MIN.
_R2_MAX = 10.0 / T2STAR_MIN
#: Bound on |S0| (in units of the voxel's largest sample) in a trial step.
_S0_MAX = 1e8


@dataclass(frozen=True)
class ComplexFit:
    """Maps of one complex fit; every tensor has the signal's shape without its echo axis.

    s0 (signal units), r2star (1/s), t2star (s), frequency (Hz), phase0 (rad, in [-pi, pi)) and
    their standard errors ``*_se``; rmse: sqrt(sum_k |x_k - model_k|^2 / E), signal units;
    reason: uint8 :class:`Failure` bits; failed: bool, any reason; fitted: bool, inside the
    mask. device: where it ran; noise_sigma: the noise level given (None: residual estimate).
    """

    s0: torch.Tensor
    r2star: torch.Tensor
    t2star: torch.Tensor
    frequency: torch.Tensor
    phase0: torch.Tensor
    s0_se: torch.Tensor
    r2star_se: torch.Tensor
    t2star_se: torch.Tensor
    frequency_se: torch.Tensor
    phase0_se: torch.Tensor
    rmse: torch.Tensor
    reason: torch.Tensor
    failed: torch.Tensor
    fitted: torch.Tensor
    device: str
    noise_sigma: float | None

    def as_fit_result(self) -> FitResult:
        """The maps as :func:`t2starmap.fit.fit_t2star` returns them (``method="complex"``)."""
        return FitResult(
            t2star=self.t2star,
            r2star=self.r2star,
            s0=self.s0,
            rmse=self.rmse,
            t2star_se=self.t2star_se,
            r2star_se=self.r2star_se,
            s0_se=self.s0_se,
            failed=self.failed,
            method="complex",
            device=self.device,
            noise_sigma=self.noise_sigma,
            frequency=self.frequency,
            frequency_se=self.frequency_se,
            phase0=self.phase0,
            reason=self.reason,
        )


_MAPS = (
    "s0",
    "r2star",
    "t2star",
    "frequency",
    "phase0",
    "s0_se",
    "r2star_se",
    "t2star_se",
    "frequency_se",
    "phase0_se",
    "rmse",
)


def frequency_limit(echo_times: Sequence[float] | np.ndarray) -> float:
    """The largest |f| in Hz the echo sampling resolves, 1 / (2 dTE_min)."""
    te = np.sort(check_echo_times(np.array(echo_times, dtype=np.float64)))
    return float(0.5 / np.diff(te).min())


def fit_complex(
    signal: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    mask: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    noise_sigma: float | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
) -> ComplexFit:
    """Fit S0, R2*, f and phi0 in every voxel of a complex ``signal`` (..., n_echoes).

    ``echo_times``: (n_echoes,) distinct, in seconds, any order (sorted here). ``mask``: (...)
    bool, voxels to fit (default all). ``noise_sigma``: the noise SD of each real/imaginary
    channel in signal units (sets the standard errors and the phase check). ``dtype``: the real
    compute precision (float32 default, float64 for reference computations). Raises ValueError
    for a real-valued signal, repeated echo times or mismatched shapes.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    dev, chunk_size = fit_device_and_chunk(
        chunk_size, noise_sigma, device, (DEFAULT_CHUNK, DEFAULT_CUDA_CHUNK)
    )
    te_np = check_echo_times(torch.as_tensor(echo_times).detach().cpu().clone())
    if np.unique(te_np).size != te_np.size:
        raise ValueError(f"the complex fit needs distinct echo times, got {te_np.tolist()}")
    data = torch.as_tensor(signal)
    if not data.is_complex():
        raise ValueError(
            "the complex fit needs a complex signal (magnitude and phase, or real and "
            f"imaginary parts), got {data.dtype}"
        )
    if data.ndim < 1 or data.shape[-1] != te_np.size:
        raise ValueError(
            f"signal has {data.shape[-1] if data.ndim else 0} echoes on its last axis but "
            f"{te_np.size} echo times were given"
        )
    order = [int(k) for k in np.argsort(te_np, kind="stable")]
    spatial = tuple(data.shape[:-1])
    flat = data.reshape(-1, te_np.size)
    n_vox = flat.shape[0]
    inside = flat_mask(mask, spatial)
    index = None if mask is None else torch.nonzero(inside).reshape(-1)
    n_fit = n_vox if index is None else index.numel()
    te = torch.as_tensor(te_np[order], dtype=dtype, device=dev)[:, None]
    thresholds = _phase_thresholds(te_np.size)

    out = {k: torch.zeros(n_vox, dtype=dtype, device=dev) for k in _MAPS}
    reason = torch.zeros(n_vox, dtype=torch.uint8, device=dev)
    for start in range(0, n_fit, chunk_size):
        stop = min(start + chunk_size, n_fit)
        sel, rows = chunk_rows(flat, index, start, stop, dev)
        # Echo-major (E, n), echoes ascending, real and imaginary parts as separate arrays.
        x_re = torch.stack([rows[:, k].real for k in order]).to(dtype)
        x_im = torch.stack([rows[:, k].imag for k in order]).to(dtype)
        maps, bits = _kernel(x_re, x_im, te, noise_sigma, thresholds)
        for k in _MAPS:
            out[k][sel] = maps[k]
        reason[sel] = bits
    return ComplexFit(
        **{k: v.reshape(spatial) for k, v in out.items()},
        reason=reason.reshape(spatial),
        failed=(reason > 0).reshape(spatial),
        fitted=inside.to(dev).reshape(spatial),
        device=str(dev),
        noise_sigma=noise_sigma,
    )


# --- thresholds of the phase check -------------------------------------------------------------


def _normal_quantile(p: float) -> float:
    """z with P(Z > z) = p for a standard normal Z (bisection on erfc; p in (0, 0.5))."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def chi2_upper(dof: int, p: float) -> float:
    """The upper-p quantile of chi-square with ``dof`` degrees of freedom (Wilson-Hilferty)."""
    z = _normal_quantile(p)
    u = 2.0 / (9.0 * dof)
    return dof * (1.0 - u + z * math.sqrt(u)) ** 3


def f_upper(dof: int, p: float) -> float:
    """The upper-p quantile of F(dof, dof): F = x / (1 - x) where the regularised incomplete
    beta function I_x(dof/2, dof/2) = 1 - p (bisection on x)."""
    half = 0.5 * dof
    lo, hi = 0.5, 1.0  # F >= 1 for p < 0.5
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 1.0 - _beta_regularised(mid, half, half) > p:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    return x / (1.0 - x)


def _beta_regularised(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), x in (0, 1)."""
    if x >= (a + 1.0) / (a + b + 2.0):
        return 1.0 - _beta_regularised(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - _log_beta(a, b)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _phase_thresholds(n_echo: int) -> tuple[float, float]:
    """(chi-square threshold of sum (Im d)^2 / sigma^2, F threshold of the residual ratio);
    inf where the echoes leave no degree of freedom for the check."""
    dof = n_echo - 2
    if dof < 1:
        return math.inf, math.inf
    return chi2_upper(dof, PHASE_FALSE_ALARM), f_upper(dof, PHASE_FALSE_ALARM)


# --- the per-chunk kernel ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Point:
    """LM's state at a point, each (n,): the point, the cost and the two 2x2 normal blocks
    with their gradients: magnitude (S0, R2*) a11 a12 a22 g1 g2, phase (phi0, omega) b11 b12
    b22 h1 h2."""

    s0: torch.Tensor
    r2: torch.Tensor
    phi: torch.Tensor
    omega: torch.Tensor
    cost: torch.Tensor
    blocks: torch.Tensor  # (10, n): a11 a12 a22 g1 g2 b11 b12 b22 h1 h2
    im2: torch.Tensor  # sum (Im d)^2, the residual orthogonal to the model
    re2: torch.Tensor  # sum (Re d - a)^2, the residual along it


def _evaluate(
    x_re: torch.Tensor,
    x_im: torch.Tensor,
    te: torch.Tensor,
    s0: torch.Tensor,
    r2: torch.Tensor,
    phi: torch.Tensor,
    omega: torch.Tensor,
) -> _Point:
    """Cost, normal blocks and gradients at (s0, r2, phi, omega) (each (n,)); x (E, n).

    The phase block's sums are the magnitude block's times S0^2 (a = S0 e): 7 sums over the
    echoes make all 10 entries."""
    e = torch.exp(-te * r2)
    theta = phi + te * omega
    c, s = torch.cos(theta), torch.sin(theta)
    d_im = c * x_im - s * x_re  # Im(exp(-i theta) x); the residual across the model is -d_im
    rho_re = s0 * e - (c * x_re + s * x_im)  # a - Re(exp(-i theta) x), along the model
    re2 = (rho_re * rho_re).sum(0)
    im2 = (d_im * d_im).sum(0)
    ee = e * e
    tee = te * ee
    m0, m1, m2 = ee.sum(0), tee.sum(0), (te * tee).sum(0)
    e_re, e_im = e * rho_re, e * d_im
    s0s0 = s0 * s0
    blocks = torch.stack(
        [
            m0,
            -s0 * m1,
            s0s0 * m2,
            e_re.sum(0),
            -s0 * (te * e_re).sum(0),
            s0s0 * m0,
            s0s0 * m1,
            s0s0 * m2,
            -s0 * e_im.sum(0),
            -s0 * (te * e_im).sum(0),
        ]
    )
    return _Point(s0, r2, phi, omega, re2 + im2, blocks, im2, re2)


def _solve(
    m11: torch.Tensor, m12: torch.Tensor, m22: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-(M^-1 g) for symmetric 2x2 M; 0 where M is singular."""
    det = m11 * m22 - m12 * m12
    tiny = torch.finfo(det.dtype).tiny
    inv = (det > 0).to(det.dtype) / det.clamp_min(tiny)
    return (m12 * g2 - m22 * g1) * inv, (m12 * g1 - m11 * g2) * inv


def _start(
    x_re: torch.Tensor, x_im: torch.Tensor, mag: torch.Tensor, te: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S0, R2*, phi0, omega) to start LM from; see the module docstring."""
    tiny = torch.finfo(mag.dtype).tiny
    # R2*, S0: log-linear fit of |x|, weights |x|^2 (0 for zero samples), TE centred.
    w = mag * mag
    sw = w.sum(0).clamp_min(tiny)
    t_mean = (w * te).sum(0) / sw
    dt = te - t_mean
    log_m = mag.clamp_min(tiny).log()
    sxx = (w * dt * dt).sum(0)
    slope = (w * dt * log_m).sum(0) / sxx.clamp_min(tiny)
    intercept = (w * log_m).sum(0) / sw
    r2 = (-slope).clamp(0.0, _R2_MAX)
    s0 = torch.exp((intercept + r2 * t_mean).clamp(max=30.0))
    # omega: consecutive-echo products z_k = x_{k+1} conj(x_k).
    gaps = te[1:] - te[:-1]  # (E-1, 1)
    z_re = x_re[1:] * x_re[:-1] + x_im[1:] * x_im[:-1]
    z_im = x_im[1:] * x_re[:-1] - x_re[1:] * x_im[:-1]
    shortest = gaps.min()
    at_min = (gaps <= shortest * (1.0 + 1e-3)).to(mag.dtype)
    omega = torch.atan2((at_min * z_im).sum(0), (at_min * z_re).sum(0)) / shortest
    # Refine with every pair: weighted least-squares slope of the residual phase differences.
    rot = gaps * omega
    c, s = torch.cos(rot), torch.sin(rot)
    resid = torch.atan2(c * z_im - s * z_re, c * z_re + s * z_im)
    wz = torch.sqrt(z_re * z_re + z_im * z_im)
    omega = omega + (wz * gaps * resid).sum(0) / (wz * gaps * gaps).sum(0).clamp_min(tiny)
    # phi0: the matched filter of the demodulated echoes given R2* and omega.
    theta = te * omega
    c, s = torch.cos(theta), torch.sin(theta)
    e = torch.exp(-te * r2)
    phi = torch.atan2((e * (c * x_im - s * x_re)).sum(0), (e * (c * x_re + s * x_im)).sum(0))
    return s0, r2, phi, omega


def _kernel(
    x_re: torch.Tensor,
    x_im: torch.Tensor,
    te: torch.Tensor,
    sigma: float | None,
    thresholds: tuple[float, float],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fit one chunk, x (E, n) echo-major, echoes ascending. Returns the maps (n,) in signal
    units and the :class:`Failure` bits (n,) uint8."""
    n_echo = x_re.shape[0]
    dtype = x_re.dtype
    tiny = torch.finfo(dtype).tiny
    finite = torch.isfinite(x_re).all(0) & torch.isfinite(x_im).all(0)
    x_re = torch.nan_to_num(x_re, nan=0.0, posinf=0.0, neginf=0.0)
    x_im = torch.nan_to_num(x_im, nan=0.0, posinf=0.0, neginf=0.0)
    # Work in units of the voxel's largest |x| (squares stay inside float32 whatever the units).
    mag = torch.hypot(x_re, x_im)
    scale = mag.amax(0).clamp_min(max(sigma or 0.0, tiny))
    x_re, x_im, mag = x_re / scale, x_im / scale, mag / scale
    usable = finite & ((mag > 0).sum(0) >= 2)

    s0, r2, phi, omega = _start(x_re, x_im, mag, te)
    params, converged = _levenberg_marquardt(
        x_re, x_im, te, torch.stack([s0, r2, phi, omega]), usable
    )

    # S0 < 0 with phi0 is the same model as -S0 with phi0 + pi.
    s0n = params[0].abs()
    phi = torch.where(params[0] < 0, params[2] + math.pi, params[2])
    phi = torch.remainder(phi + math.pi, 2.0 * math.pi) - math.pi
    r2, omega = params[1], params[3]
    final = _evaluate(x_re, x_im, te, s0n, r2, phi, omega)

    dof = 2 * n_echo - 4
    if sigma is not None:
        var = (sigma / scale) ** 2
    elif dof > 0:
        var = final.cost / dof
    else:
        var = torch.zeros_like(final.cost)
    b = final.blocks
    det_a = (b[0] * b[2] - b[1] * b[1]).clamp_min(tiny)
    det_b = (b[5] * b[7] - b[6] * b[6]).clamp_min(tiny)
    s0_se = torch.sqrt(var * b[2] / det_a)
    r2_se = torch.sqrt(var * b[0] / det_a)
    phi_se = torch.sqrt(var * b[7] / det_b)
    om_se = torch.sqrt(var * b[5] / det_b)

    chi2_max, f_max = thresholds
    # Residuals at rounding level (noiseless data) say nothing about the model.
    rounding = (100.0 * torch.finfo(dtype).eps) ** 2 * (x_re * x_re + x_im * x_im).sum(0)
    phase_bad = (final.im2 > f_max * final.re2) & (final.im2 > rounding)
    if sigma is not None:
        phase_bad &= final.im2 > chi2_max * (sigma / scale) ** 2
    r2_low, r2_high = 1.0 / T2STAR_MAX, 1.0 / T2STAR_MIN
    bits = (
        (r2 < r2_low).to(torch.uint8) * int(Failure.R2STAR_LOW)
        + (r2 > r2_high).to(torch.uint8) * int(Failure.R2STAR_HIGH)
        + (~converged).to(torch.uint8) * int(Failure.NOT_CONVERGED)
        + (~(s0n > 0)).to(torch.uint8) * int(Failure.S0_NONPOSITIVE)
        + phase_bad.to(torch.uint8) * int(Failure.PHASE_MODEL)
    )
    bits = torch.where(usable, bits, torch.full_like(bits, int(Failure.BAD_INPUT)))

    rate = torch.nan_to_num(r2, nan=r2_low).clamp(r2_low, r2_high)
    t2 = 1.0 / rate
    two_pi = 2.0 * math.pi
    maps = {
        "s0": s0n * scale,
        "r2star": rate,
        "t2star": t2,
        "frequency": omega / two_pi,
        "phase0": phi,
        "s0_se": s0_se * scale,
        "r2star_se": r2_se,
        "t2star_se": r2_se * t2 * t2,
        "frequency_se": om_se / two_pi,
        "phase0_se": phi_se,
        "rmse": torch.sqrt(final.cost / n_echo) * scale,
    }
    keep = usable.to(dtype)
    for key, value in maps.items():
        maps[key] = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0) * keep
    return maps, bits


def _levenberg_marquardt(
    x_re: torch.Tensor,
    x_im: torch.Tensor,
    te: torch.Tensor,
    start: torch.Tensor,
    usable: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LM from ``start`` (4, n) = (S0, R2*, phi0, omega) on the voxels where ``usable``.
    Returns the point (4, n) and the converged flags (n,) bool.

    Marquardt's diagonal damping on each 2x2 block; a step is kept only where it lowers the
    cost. A voxel whose proposed step is below ``LM_TOL`` (see there) takes it unevaluated
    and stops; the voxels still iterating are gathered after every iteration, so each
    iteration costs what its voxels cost. R2* is held in [0, _R2_MAX], |S0| <= _S0_MAX."""
    params = start.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    converged = torch.zeros_like(usable)
    active = torch.nonzero(usable).reshape(-1)
    xr, xi = x_re[:, active], x_im[:, active]
    pt = params[:, active]
    point = _evaluate(xr, xi, te, pt[0], pt[1], pt[2], pt[3])
    lam = torch.full_like(point.cost, 1e-3)
    span = te[-1, 0]
    for _ in range(LM_MAX_ITER):
        if active.numel() == 0:
            break
        b = point.blocks
        damp = 1.0 + lam
        d_s0, d_r2 = _solve(b[0] * damp, b[1], b[2] * damp, b[3], b[4])
        d_phi, d_om = _solve(b[5] * damp, b[6], b[7] * damp, b[8], b[9])
        here = torch.stack([point.s0, point.r2, point.phi, point.omega])
        delta = torch.stack([d_s0, d_r2, d_phi, d_om]).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        proposal = here + delta
        proposal[0].clamp_(-_S0_MAX, _S0_MAX)
        proposal[1].clamp_(0.0, _R2_MAX)
        # The step as clamped: a voxel pinned at R2* = 0 (rising signal) stops too.
        step = (proposal - here).abs_()
        size = torch.stack(
            [
                step[0] / here[0].abs().clamp_min(1e-12),
                step[1] / here[1].abs().clamp_min(1.0),
                step[2],
                step[3] * span,
            ]
        ).amax(0)
        small = size < LM_TOL
        if bool(small.any()):
            # These stop here, at the small step they proposed.
            done = active[small]
            params[:, done] = proposal[:, small]
            converged[done] = True
            keep = ~small
            active = active[keep]
            xr, xi, lam, proposal = xr[:, keep], xi[:, keep], lam[keep], proposal[:, keep]
            point = _select(point, keep)
            if active.numel() == 0:
                break
        trial = _evaluate(xr, xi, te, proposal[0], proposal[1], proposal[2], proposal[3])
        better = trial.cost < point.cost
        point = _blend(point, trial, better)
        lam = torch.where(better, lam * 0.1, lam * 10.0).clamp(1e-9, 1e9)
    if active.numel():
        params[:, active] = torch.stack([point.s0, point.r2, point.phi, point.omega])
        # Out of iterations: a voxel whose cost is at rounding level has nothing to improve.
        energy = (xr * xr + xi * xi).sum(0)
        converged[active] = point.cost <= 1e-10 * energy
    return params, converged


def _select(point: _Point, keep: torch.Tensor) -> _Point:
    """The voxels of ``point`` where ``keep`` (bool (n,))."""
    return _Point(
        point.s0[keep],
        point.r2[keep],
        point.phi[keep],
        point.omega[keep],
        point.cost[keep],
        point.blocks[:, keep],
        point.im2[keep],
        point.re2[keep],
    )


def _blend(old: _Point, new: _Point, take: torch.Tensor) -> _Point:
    """``new`` where ``take`` (bool, (n,)), else ``old`` (NaN in ``new`` elsewhere stays out)."""
    return _Point(
        *(
            torch.where(take, n, o)
            for o, n in (
                (old.s0, new.s0),
                (old.r2, new.r2),
                (old.phi, new.phi),
                (old.omega, new.omega),
                (old.cost, new.cost),
                (old.blocks, new.blocks),
                (old.im2, new.im2),
                (old.re2, new.re2),
            )
        )
    )
