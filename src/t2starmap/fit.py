"""Voxel-wise fit of the mono-exponential decay S(TE) = S0 * exp(-TE * R2*).

Pure torch: no file I/O, no logging, no printing. Conventions everywhere in this module:

* the echo axis is the LAST axis of ``signal``;
* echo times are in seconds, R2* in 1/s, T2* in s, S0 in the signal's units;
* voxels are processed in chunks of ``chunk_size`` so memory stays bounded, each chunk on
  the compute device, every tensor created on that device with the compute dtype.

Methods (``method=``):

``loglin``  ordinary least squares on log(S) (samples <= 0 are left out).
``wls``     weighted least squares on log(S) with weights S^2, which makes the log-linear
            fit's noise model approximately that of the signal itself.
``nlls``    the default: ``wls`` start, then batched Levenberg-Marquardt on (S0, R2*) with
            closed-form 2x2 solves, R2* kept inside its bounds, a fixed small number of steps.

R2* is fitted; T2* = 1/R2* is derived in one place (:func:`_derive`), after R2* is clamped to
``[1/T2STAR_MAX, 1/T2STAR_MIN]``. A clamped voxel is flagged ``failed``, as is any voxel whose
input is unusable (NaN/inf, fewer than two positive echoes), whose LM did not converge or whose
S0 came out non-positive. Maps never hold NaN, inf or negative values; unusable voxels are 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

#: Shortest and longest T2* reported, in seconds. Fits outside are clamped and flagged failed.
T2STAR_MIN = 1e-3
T2STAR_MAX = 1.0
#: Echo times above this many seconds are taken as a unit mistake (milliseconds given).
MAX_ECHO_TIME = 1.0

METHODS = ("nlls", "wls", "loglin")
Method = Literal["nlls", "wls", "loglin"]

DEFAULT_CHUNK = 1 << 16
_LM_MAX_ITER = 12
_LM_TOL = 1e-4


@dataclass(frozen=True)
class FitResult:
    """Maps of one fit; every tensor has the signal's shape without its echo axis.

    t2star: T2* in s.          r2star: R2* in 1/s (= 1/t2star wherever t2star > 0).
    s0: S0 in signal units.    rmse: root-mean-square residual, signal units.
    t2star_se, r2star_se, s0_se: standard errors from the Jacobian at the solution (delta
        method for T2*), scaled by ``noise_sigma`` when given, else by the residual variance
        (0 where there are only two echoes and no noise level: no residual is left).
    failed: bool, the voxel's fit is not to be trusted (see module docstring).
    fitted: bool, the voxel was inside the mask (fitted or attempted).
    """

    t2star: torch.Tensor
    r2star: torch.Tensor
    s0: torch.Tensor
    rmse: torch.Tensor
    t2star_se: torch.Tensor
    r2star_se: torch.Tensor
    s0_se: torch.Tensor
    failed: torch.Tensor
    fitted: torch.Tensor
    method: str
    device: str
    noise_sigma: float | None
    noise_model: str = "gaussian"


class EchoSpacingError(ValueError):
    """A method that needs evenly spaced echoes (ARLO) was given unevenly spaced ones."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The one place that picks the compute device: ``None``/``"auto"`` means CUDA when torch
    sees a GPU, else CPU. Asking for ``"cuda"`` without one is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return resolved


def check_echo_times(echo_times: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Echo times as float64 seconds; refuse what cannot be right.

    Raises ValueError when they are not 1-D, not finite, negative, above ``MAX_ECHO_TIME``
    (milliseconds given for seconds), or when fewer than two distinct values are present.
    """
    te = torch.as_tensor(echo_times).detach().cpu().numpy().astype(np.float64)
    if te.ndim != 1:
        raise ValueError(f"echo times must be 1-D, got shape {te.shape}")
    if not np.all(np.isfinite(te)) or np.any(te < 0):
        raise ValueError(f"echo times must be finite and non-negative seconds, got {te.tolist()}")
    if np.any(te > MAX_ECHO_TIME):
        raise ValueError(
            f"echo times {te.tolist()} exceed {MAX_ECHO_TIME} s: they look like milliseconds; "
            "give them in seconds"
        )
    if np.unique(te).size < 2:
        raise ValueError(f"at least two distinct echo times are needed, got {te.tolist()}")
    return te


def fit_t2star(
    signal: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    method: str = "nlls",
    mask: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    noise_sigma: float | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int = DEFAULT_CHUNK,
) -> FitResult:
    """Fit S0 and R2* in every voxel of ``signal`` (shape (..., n_echoes), echoes LAST).

    ``echo_times``: (n_echoes,) in seconds, any order (sorted here). ``mask``: (...) bool,
    voxels to fit; default all. ``device``: see :func:`resolve_device`. ``noise_sigma``: the
    noise standard deviation, used for the standard errors when given. ``dtype``: compute
    precision (float32 default; float64 for reference computations).
    """
    if method not in METHODS:
        raise ValueError(f"unknown fit method {method!r}; choose one of {', '.join(METHODS)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    dev = resolve_device(device)
    te_np = check_echo_times(echo_times)
    data = torch.as_tensor(signal)
    if data.ndim < 1 or data.shape[-1] != te_np.size:
        raise ValueError(
            f"signal has {data.shape[-1] if data.ndim else 0} echoes on its last axis but "
            f"{te_np.size} echo times were given"
        )
    order = np.argsort(te_np, kind="stable")
    spatial = tuple(data.shape[:-1])
    flat = data.reshape(-1, te_np.size)
    n_vox = flat.shape[0]
    if mask is None:
        inside = torch.ones(n_vox, dtype=torch.bool)
    else:
        m = torch.as_tensor(mask).to(torch.bool).cpu()
        if tuple(m.shape) != spatial:
            raise ValueError(f"mask shape {tuple(m.shape)} does not match signal {spatial}")
        inside = m.reshape(-1)
    te = torch.as_tensor(te_np[order], dtype=dtype, device=dev)
    perm = torch.as_tensor(order, device=flat.device)

    names = ("t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se")
    out = {k: torch.zeros(n_vox, dtype=dtype, device=dev) for k in names}
    failed = torch.zeros(n_vox, dtype=torch.bool, device=dev)
    index = torch.nonzero(inside).reshape(-1)
    for start in range(0, index.numel(), chunk_size):
        idx = index[start : start + chunk_size]
        y = flat[idx.to(flat.device)].index_select(1, perm).to(device=dev, dtype=dtype)
        maps, bad = _fit_chunk(y, te, method, noise_sigma)
        idx_dev = idx.to(dev)
        for k in names:
            out[k][idx_dev] = maps[k]
        failed[idx_dev] = bad
    return FitResult(
        **{k: v.reshape(spatial) for k, v in out.items()},  # type: ignore[arg-type]
        failed=failed.reshape(spatial),
        fitted=inside.to(dev).reshape(spatial),
        method=method,
        device=str(dev),
        noise_sigma=noise_sigma,
    )


def _fit_chunk(
    y: torch.Tensor, te: torch.Tensor, method: str, noise_sigma: float | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fit one chunk. y: (n, E) with echoes ascending; te: (E,). Returns maps (n,) and failed."""
    finite = torch.isfinite(y).all(dim=1)
    y = torch.where(torch.isfinite(y), y, torch.zeros((), dtype=y.dtype, device=y.device))
    positive = y > 0
    usable = finite & _distinct_positive_echoes(positive, te)
    weights = positive.to(y.dtype)
    if method != "loglin":
        scale = y.amax(dim=1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
        weights = weights * (y / scale) ** 2
    s0, r2 = _loglinear(y, te, weights)
    converged = torch.ones_like(usable)
    if method == "nlls":
        s0, r2, converged = _levenberg_marquardt(y, te, s0, r2)
    return _derive(y, te, s0, r2, usable, converged, noise_sigma)


def _distinct_positive_echoes(positive: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
    """True where at least two positive samples sit at different echo times. (n,) bool."""
    big = torch.finfo(te.dtype).max
    te_pos_min = torch.where(positive, te, big).amin(dim=1)
    te_pos_max = torch.where(positive, te, -big).amax(dim=1)
    return te_pos_max > te_pos_min


def _loglinear(
    y: torch.Tensor, te: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted straight-line fit of log(y) against TE. Returns (S0, R2*), each (n,).

    Samples with weight 0 (non-positive signal) do not count. TE is centred for stability.
    """
    tiny = torch.finfo(y.dtype).tiny
    z = torch.log(y.clamp_min(tiny))
    x = te - te.mean()
    sw = w.sum(1)
    sx = (w * x).sum(1)
    sxx = (w * x * x).sum(1)
    sz = (w * z).sum(1)
    sxz = (w * x * z).sum(1)
    det = sw * sxx - sx * sx
    det_ok = det > 0
    slope = torch.where(det_ok, (sw * sxz - sx * sz) / torch.where(det_ok, det, 1.0), 0.0)
    intercept = (sz - slope * sx) / sw.clamp_min(tiny)
    # intercept is log S at the mean TE: move it back to TE = 0.
    log_s0 = (intercept - slope * te.mean()).clamp(max=80.0)
    return torch.exp(log_s0), -slope


def _clamp_rate(r2: torch.Tensor) -> torch.Tensor:
    return r2.clamp(0.0, 1.0 / T2STAR_MIN * 10.0)


def _normal_equations(
    y: torch.Tensor, te: torch.Tensor, s0: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """J^T J (a11, a12, a22) and J^T r (g1, g2) for r = S0*e - y; each (n,)."""
    r = s0[:, None] * e - y
    ee = e * e
    te_ee = te * ee
    a11 = ee.sum(1)
    a12 = -s0 * te_ee.sum(1)
    a22 = s0 * s0 * (te * te_ee).sum(1)
    er = e * r
    g1 = er.sum(1)
    g2 = -s0 * (te * er).sum(1)
    return a11, a12, a22, g1, g2, (r * r).sum(1)


def _levenberg_marquardt(
    y: torch.Tensor, te: torch.Tensor, s0: torch.Tensor, r2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched LM on (S0, R2*) for the Gaussian least-squares cost sum (S0 e^{-TE R} - y)^2.

    Marquardt's diagonal damping; a step is kept only where it lowers the cost. R2* is held in
    ``[0, 10/T2STAR_MIN]`` during the iterations (the final clamp is :func:`_derive`'s).
    Returns (S0, R2*, converged), each (n,).
    """
    r2 = _clamp_rate(torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0))
    s0 = torch.nan_to_num(s0, nan=0.0, posinf=0.0, neginf=0.0)
    lam = torch.full_like(s0, 1e-3)
    converged = torch.zeros_like(s0, dtype=torch.bool)
    e = torch.exp(-te * r2[:, None])
    a11, a12, a22, g1, g2, cost = _normal_equations(y, te, s0, e)
    for _ in range(_LM_MAX_ITER):
        d11 = a11 * (1.0 + lam)
        d22 = a22 * (1.0 + lam)
        det = d11 * d22 - a12 * a12
        det = torch.where(det > 0, det, torch.ones_like(det))
        ds0 = -(d22 * g1 - a12 * g2) / det
        dr2 = -(d11 * g2 - a12 * g1) / det
        s0_new = s0 + ds0
        r2_new = _clamp_rate(r2 + dr2)
        e_new = torch.exp(-te * r2_new[:, None])
        n11, n12, n22, h1, h2, cost_new = _normal_equations(y, te, s0_new, e_new)
        better = cost_new < cost
        step = torch.maximum((ds0.abs() / s0.abs().clamp_min(1e-12)), dr2.abs() / (r2.abs() + 1.0))
        converged = step < _LM_TOL
        s0 = torch.where(better, s0_new, s0)
        r2 = torch.where(better, r2_new, r2)
        a11 = torch.where(better, n11, a11)
        a12 = torch.where(better, n12, a12)
        a22 = torch.where(better, n22, a22)
        g1 = torch.where(better, h1, g1)
        g2 = torch.where(better, h2, g2)
        cost = torch.where(better, cost_new, cost)
        lam = torch.where(better, lam * 0.1, lam * 10.0).clamp(1e-9, 1e9)
        if bool(converged.all()):
            break
    # A voxel whose cost is already at rounding level has nothing left to improve.
    at_floor = cost <= (y * y).sum(1) * 1e-10
    return s0, r2, converged | at_floor


def _derive(
    y: torch.Tensor,
    te: torch.Tensor,
    s0: torch.Tensor,
    r2: torch.Tensor,
    usable: torch.Tensor,
    converged: torch.Tensor,
    noise_sigma: float | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The one place where T2* = 1/R2* is formed, bounds applied and failures flagged."""
    finite = torch.isfinite(s0) & torch.isfinite(r2)
    s0 = torch.nan_to_num(s0, nan=0.0, posinf=0.0, neginf=0.0)
    r2 = torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0)
    r2_lo, r2_hi = 1.0 / T2STAR_MAX, 1.0 / T2STAR_MIN
    clamped = (r2 < r2_lo) | (r2 > r2_hi)
    r2 = r2.clamp(r2_lo, r2_hi)
    failed = ~usable | ~finite | ~converged | clamped | (s0 <= 0)
    s0 = s0.clamp_min(0.0)
    t2 = 1.0 / r2

    e = torch.exp(-te * r2[:, None])
    resid = s0[:, None] * e - y
    n_echo = y.shape[1]
    ssr = (resid * resid).sum(1)
    rmse = torch.sqrt(ssr / n_echo)
    # Covariance sigma^2 (J^T J)^-1 at the solution.
    ee = e * e
    a11 = ee.sum(1)
    a12 = -s0 * (te * ee).sum(1)
    a22 = s0 * s0 * (te * te * ee).sum(1)
    det = a11 * a22 - a12 * a12
    if noise_sigma is not None:
        var = torch.full_like(ssr, float(noise_sigma) ** 2)
    elif n_echo > 2:
        var = ssr / (n_echo - 2)
    else:
        var = torch.zeros_like(ssr)
    ok = det > 0
    safe_det = torch.where(ok, det, torch.ones_like(det))
    r2_se = torch.where(ok, torch.sqrt((var * a11 / safe_det).clamp_min(0.0)), 0.0)
    s0_se = torch.where(ok, torch.sqrt((var * a22 / safe_det).clamp_min(0.0)), 0.0)
    t2_se = r2_se * t2 * t2

    maps = {
        "t2star": t2,
        "r2star": r2,
        "s0": s0,
        "rmse": rmse,
        "t2star_se": t2_se,
        "r2star_se": r2_se,
        "s0_se": s0_se,
    }
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    for key, value in maps.items():
        value = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
        maps[key] = torch.where(usable, value, zero)
    return maps, failed
