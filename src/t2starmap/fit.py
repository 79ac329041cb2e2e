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
                   numbers: ``benchmarks/NOISE_FLOOR.md``.
``nlls-gaussian``  Levenberg-Marquardt on sum (S0 exp(-TE R2*) - M)^2, ignoring the floor.
``wls``            weighted least squares on log(S) with weights S^2.
``loglin``         ordinary least squares on log(S) (samples <= 0 are left out).
``arlo``           auto-regression on linear operations (Pei et al., MRM 2015;73:843, with its
                   erratum): a closed form for evenly spaced echoes; S0 by least squares given
                   R2*. Unevenly spaced echoes raise :class:`EchoSpacingError`.

R2* is fitted; T2* = 1/R2* is derived in one place (:func:`_derive`), after R2* is clamped to
``[1/T2STAR_MAX, 1/T2STAR_MIN]``. A clamped voxel is flagged ``failed``, as is any voxel whose
input is unusable (NaN/inf, fewer than two positive echoes), whose LM did not converge or whose
S0 came out non-positive. Maps never hold NaN, inf or negative values; unusable voxels are 0.

Standard errors (sigma = ``noise_sigma`` when given, else the residual estimate): sigma^2
(J^T J)^-1 at the solution for ``nlls-gaussian`` and ``arlo`` (for ARLO this is the bound, about
15 % below its actual spread); the generalised least-squares covariance (J^T V^-1 J)^-1 of M^2
with Var(M^2) = 4 sigma^2 (A^2 + sigma^2) for the noise-aware fit; the sandwich covariance with
Var(log S) = sigma^2 / A^2 for ``loglin`` and ``wls``. T2* by the delta method,
se(T2*) = se(R2*) T2*^2.

Very large inputs on the CPU (``COMPILE_MIN_VOXELS`` voxels and more), or ``compile=True``, run
a ``torch.compile``d copy of the per-chunk kernel (one fused loop nest; the iterative fits stop
after ``_LM_FIXED_ITER`` steps there and refit their few unconverged voxels eagerly, all
together); other inputs, and any platform where compiling fails, run the same functions
eagerly. Compiling takes 20-35 s once per process with a cold torch cache (~3 s warm), so it
pays off only on very large volumes or when one process fits many.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: Shortest and longest T2* reported, in seconds. Fits outside are clamped and flagged failed.
T2STAR_MIN = 1e-3
T2STAR_MAX = 1.0
#: Echo times above this many seconds are taken as a unit mistake (milliseconds given).
MAX_ECHO_TIME = 1.0
#: Relative tolerance on the echo spacing for ``arlo``.
SPACING_RTOL = 1e-3

METHODS = ("nlls", "nlls-gaussian", "wls", "loglin", "arlo")
DEFAULT_METHOD = "nlls"

#: Voxels per chunk of the eager kernels: small enough that a chunk's echo-by-voxel
#: intermediates stay in the CPU caches (192x192x64x11 default fit, 2 threads, one run:
#: 2^14 1.32 s, 2^15 1.05-1.22 s, 2^16 1.32-1.39 s).
DEFAULT_CHUNK = 1 << 15
#: Chunk of the compiled kernel: its echo-by-voxel intermediates then stay in the CPU caches
#: (192x192x64x11 default fit, 2 threads: 0.37 s at 2^13-2^14 voxels, 0.51 s at 2^16).
COMPILED_CHUNK = 1 << 14
#: Voxels (inside the mask) from which ``compile=None`` uses the compiled kernel. Compiling
#: costs ~20-35 s with a cold torch cache and ~3 s with a warm one on a 2-core CPU, and saves
#: ~0.3 us a voxel (192x192x64x11: 1.1 s eager, 0.4 s compiled): it pays off only on volumes of
#: tens of millions of voxels, or when one process fits many volumes (pass compile=True).
COMPILE_MIN_VOXELS = 1 << 24
_LM_MAX_ITER = 10
#: Iterations of the compiled kernel; the voxels it leaves unconverged are fitted again eagerly.
_LM_FIXED_ITER = 4
_LM_TOL = 5e-4


@dataclass(frozen=True)
class FitResult:
    """Maps of one fit; every tensor has the signal's shape without its echo axis.

    t2star: T2* in s.          r2star: R2* in 1/s (= 1/t2star wherever t2star > 0).
    s0: S0 in signal units.    rmse: root-mean-square residual of the magnitude against the
        model's prediction (S0 exp(-TE R2*); sqrt(that^2 + 2 sigma^2) for the noise-aware fit,
        the RMS of a Rician magnitude), signal units.
    t2star_se, r2star_se, s0_se: standard errors from the Fisher information at the solution
        (delta method for T2*), from ``noise_sigma`` when given, else from the residual
        variance (0 where there are only two echoes and no noise level: no residual is left).
    failed: bool, the voxel's fit is not to be trusted (see module docstring).
    fitted: bool, the voxel was inside the mask (fitted or attempted).
    method: the method asked for; noise_model: "rician" (noise-aware fit) or "gaussian";
    noise_sigma: the noise level used (None when none was given); device: where it ran.
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
    chunk_size: int = DEFAULT_CHUNK,
    compile: bool | None = None,
) -> FitResult:
    """Fit S0 and R2* in every voxel of ``signal`` (shape (..., n_echoes), echoes LAST).

    ``echo_times``: (n_echoes,) in seconds, any order (sorted here). ``mask``: (...) bool,
    voxels to fit; default all. ``device``: see :func:`resolve_device`. ``noise_sigma``: the
    noise standard deviation of each real/imaginary channel, in signal units; it makes the
    default fit noise-aware and sets the standard errors. ``dtype``: compute precision
    (float32 default; float64 for reference computations). ``compile``: use the compiled
    kernel (None: on the CPU from ``COMPILE_MIN_VOXELS`` voxels, falling back to eager if
    compiling fails).
    """
    if method not in METHODS:
        raise ValueError(f"unknown fit method {method!r}; choose one of {', '.join(METHODS)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if noise_sigma is not None and not (np.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise sigma must be a positive number, got {noise_sigma!r}")
    dev = resolve_device(device)
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
    kernel = _kernel_name(method, noise_sigma)
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
    te = torch.as_tensor(te_np[order], dtype=dtype, device=dev)[:, None]
    sigma = torch.tensor(-1.0 if noise_sigma is None else noise_sigma, dtype=dtype, device=dev)
    all_inside = bool(inside.all())
    # Without a mask no index list is made: it would cost 8 bytes a voxel.
    index = torch.empty(0, dtype=torch.long) if all_inside else torch.nonzero(inside).reshape(-1)
    n_fit = n_vox if all_inside else index.numel()
    sorted_already = bool(np.all(order == np.arange(te_np.size)))

    if compile is None:
        compile = dev.type == "cpu" and n_fit >= COMPILE_MIN_VOXELS
    use_compile = compile
    run = _compiled(kernel, dev) if use_compile else None
    # The compiled kernel has static shapes: pad every chunk to one size.
    step = min(chunk_size, COMPILED_CHUNK if run is not None else chunk_size, max(n_fit, 1))

    names = ("t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se")
    out = {k: torch.zeros(n_vox, dtype=dtype, device=dev) for k in names}
    failed = torch.zeros(n_vox, dtype=torch.bool, device=dev)
    perm = None if sorted_already else torch.as_tensor(order, device=flat.device)

    def echo_major(rows: torch.Tensor) -> torch.Tensor:
        """(n, E) rows of the input -> (E, n) on the device, echoes ascending."""
        if perm is not None:
            rows = rows[:, perm]
        return rows.to(device=dev, dtype=dtype).t().contiguous()

    def store(sel: slice | torch.Tensor, maps: dict[str, torch.Tensor], bad: torch.Tensor) -> None:
        n = bad.numel() if isinstance(sel, torch.Tensor) else sel.stop - sel.start
        for k in names:
            out[k][sel] = maps[k][:n]
        failed[sel] = bad[:n]

    for start in range(0, n_fit, step):
        stop = min(start + step, n_fit)
        if all_inside:
            sel: slice | torch.Tensor = slice(start, stop)
            y = echo_major(flat[start:stop])
        else:
            sel = index[start:stop].to(dev)
            y = echo_major(flat[index[start:stop].to(flat.device)])
        n = stop - start
        if run is not None and n < step:
            y = torch.cat([y, y.new_zeros(y.shape[0], step - n)], dim=1)
        store(sel, *_run_kernel(run, kernel, y, te, sigma))
        if run is not None and _COMPILED.get((kernel, dev.type)) is None:
            run = None  # compiling failed: the rest runs eagerly, without retrying
    if run is not None and kernel in ("gaussian", "rician"):
        # The compiled iterative kernels stop after _LM_FIXED_ITER steps: the few voxels they
        # leave flagged are fitted again, all together, by the eager kernel (up to
        # _LM_MAX_ITER steps, stopping once all converge).
        redo = torch.nonzero(failed).reshape(-1)
        for start in range(0, redo.numel(), chunk_size):
            sel = redo[start : start + chunk_size]
            y = echo_major(flat[sel.to(flat.device)])
            store(sel, *_KERNEL_FUNCS[kernel](y, te, sigma, early_exit=True))
    return FitResult(
        **{k: v.reshape(spatial) for k, v in out.items()},
        failed=failed.reshape(spatial),
        fitted=inside.to(dev).reshape(spatial),
        method=method,
        device=str(dev),
        noise_sigma=noise_sigma,
        noise_model="rician" if kernel == "rician" else "gaussian",
    )


def _kernel_name(method: str, noise_sigma: float | None) -> str:
    if method == "nlls":
        return "rician" if noise_sigma is not None else "gaussian"
    if method == "nlls-gaussian":
        return "gaussian"
    return method


_Kernel = Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]]
_COMPILED: dict[tuple[str, str], _Kernel | None] = {}


def _compiled(kernel: str, dev: torch.device) -> _Kernel | None:
    """The compiled per-chunk kernel for ``kernel`` on ``dev``'s type, or None where
    ``torch.compile`` is unavailable. Compiled once per process (and cached on disk by torch)."""
    key = (kernel, dev.type)
    if key not in _COMPILED:
        try:
            _COMPILED[key] = torch.compile(
                _KERNEL_FUNCS[kernel],
                dynamic=False,
                fullgraph=True,
                options={"unroll_reductions_threshold": 64},
            )
        except Exception:  # any failure means: run eagerly
            _COMPILED[key] = None
    return _COMPILED[key]


def _run_kernel(
    run: _Kernel | None, kernel: str, y: torch.Tensor, te: torch.Tensor, sigma: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One chunk through the compiled kernel when there is one, else the eager kernel."""
    if run is not None:
        try:
            return run(y, te, sigma)
        except Exception:
            # Compilation can fail at first call (no C compiler, unsupported platform):
            # remember that and run the plain kernel from now on.
            for key in [k for k, v in _COMPILED.items() if v is run]:
                _COMPILED[key] = None
    return _KERNEL_FUNCS[kernel](y, te, sigma, early_exit=True)


# --- the per-chunk kernels ---------------------------------------------------------------------
# Each takes y (E, n), echo-major with echoes ascending (NaN allowed), te (E, 1), sigma (0-d;
# <= 0: unknown) and returns the maps (n,) and the failed flags (n,). Echo-major, so that every
# sum over echoes is a vectorised add across voxels. No data-dependent Python control flow
# unless early_exit is set, so torch.compile can trace them whole.


def _prepare(
    y: torch.Tensor, te: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean the chunk: (y with non-finite samples set to 0, positive mask, usable, scale).

    scale (n,) is each voxel's largest sample: the fits work on y / scale, which keeps squared
    signals well inside float32 whatever the input units."""
    finite = torch.isfinite(y).all(dim=0)
    y = torch.where(torch.isfinite(y), y, torch.zeros((), dtype=y.dtype, device=y.device))
    positive = y > 0
    usable = finite & _distinct_positive_echoes(positive, te)
    scale = y.amax(dim=0).clamp_min(torch.finfo(y.dtype).tiny)
    return y, positive, usable, scale


def _kernel_loglin(
    y: torch.Tensor, te: torch.Tensor, sigma: torch.Tensor, early_exit: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    y, positive, usable, scale = _prepare(y, te)
    w = positive.to(y.dtype)
    s0n, r2 = _loglinear(y / scale, te, w)
    return _derive_loglinear(y, te, s0n * scale, r2, w, usable, sigma)


def _weighted_loglinear(
    yn: torch.Tensor, positive: torch.Tensor, te: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``wls`` fit, also the start of the iterative fits: log-linear with weights S^2
    (positive samples only). Returns (S0, R2*, weights) in ``yn``'s scale."""
    w = positive.to(yn.dtype) * yn * yn
    s0n, r2 = _loglinear(yn, te, w)
    return s0n, r2, w


def _kernel_wls(
    y: torch.Tensor, te: torch.Tensor, sigma: torch.Tensor, early_exit: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    y, positive, usable, scale = _prepare(y, te)
    s0n, r2, w = _weighted_loglinear(y / scale, positive, te)
    return _derive_loglinear(y, te, s0n * scale, r2, w, usable, sigma)


def _kernel_gaussian(
    y: torch.Tensor, te: torch.Tensor, sigma: torch.Tensor, early_exit: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    y, positive, usable, scale = _prepare(y, te)
    yn = y / scale
    s0n, r2, _ = _weighted_loglinear(yn, positive, te)
    s0n, r2, converged = _levenberg_marquardt(yn, te, s0n, r2, None, early_exit)
    return _derive_gaussian(y, te, s0n * scale, r2, usable, converged, sigma)


def _kernel_rician(
    y: torch.Tensor, te: torch.Tensor, sigma: torch.Tensor, early_exit: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Noise-aware fit: IRLS of M^2 - 2 sigma^2 against P exp(-2 TE R2*), P = S0^2."""
    y, positive, usable, scale = _prepare(y, te)
    yn = y / scale
    s0n, r2, _ = _weighted_loglinear(yn, positive, te)
    sn2 = (sigma / scale) ** 2  # (n,) noise variance in scaled units
    z = yn * yn - 2.0 * sn2
    p, r2, converged = _levenberg_marquardt(z, 2.0 * te, s0n * s0n, r2, sn2, early_exit)
    s0 = torch.sqrt(p.clamp_min(0.0)) * scale
    s0 = torch.where(p > 0, s0, -torch.ones_like(s0))  # non-positive P: flagged by _derive
    # Generalised least-squares covariance of (P, R2*) for Var(M^2) = 4 s^2 (A^2 + s^2).
    # One exponential serves it and _derive (at the clamped rate: differs only where flagged).
    e = torch.exp(-te * _reported_rate(r2))
    f = e * e
    a2 = (p * f).clamp_min(0.0)
    w = 1.0 / (4.0 * sn2 * (a2 + sn2))
    dp = f
    dr = -2.0 * te * a2
    fpp = (w * dp * dp).sum(0)
    fpr = (w * dp * dr).sum(0)
    frr = (w * dr * dr).sum(0)
    det = fpp * frr - fpr * fpr
    ok = det > 0
    safe = torch.where(ok, det, torch.ones_like(det))
    r2_var = torch.where(ok, fpp / safe, torch.zeros_like(det))
    p_var = torch.where(ok, frr / safe, torch.zeros_like(det))
    s0n = torch.sqrt(p.clamp_min(0.0))
    s0_se = torch.sqrt(p_var.clamp_min(0.0)) / (2.0 * s0n.clamp_min(1e-30)) * scale
    r2_se = torch.sqrt(r2_var.clamp_min(0.0))
    # The magnitude this model predicts, sqrt(A^2 + 2 sigma^2): what the fit matched (so two
    # echoes still fit exactly) and, at any SNR, the RMS of a Rician magnitude.
    a = s0.clamp_min(0.0) * e
    predicted = torch.sqrt(a * a + 2.0 * sigma * sigma)
    return _derive(y, te, s0, r2, usable, converged, r2_se, s0_se, e, predicted)


def _kernel_arlo(
    y: torch.Tensor, te: torch.Tensor, sigma: torch.Tensor, early_exit: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """ARLO (Pei et al. 2015, with the erratum's formula), echoes evenly spaced (checked)."""
    y, _, usable, scale = _prepare(y, te)
    yn = y / scale
    dt = (te[-1] - te[0]) / (te.numel() - 1)
    s = dt / 3.0 * (yn[:-2] + 4.0 * yn[1:-1] + yn[2:])
    d = yn[:-2] - yn[2:]
    ss = (s * s).sum(0)
    sd = (s * d).sum(0)
    dd = (d * d).sum(0)
    num = ss + dt / 3.0 * sd  # T2* = num / den; R2* = den / num
    den = dt / 3.0 * dd + sd
    ok = num > 0
    r2 = torch.where(ok, den / torch.where(ok, num, torch.ones_like(num)), torch.full_like(num, -1))
    e = torch.exp(-te * r2.clamp_min(0.0))
    s0n = (yn * e).sum(0) / (e * e).sum(0).clamp_min(torch.finfo(y.dtype).tiny)
    return _derive_gaussian(y, te, s0n * scale, r2, usable, torch.ones_like(usable), sigma)


_KERNEL_FUNCS: dict[str, _Kernel] = {
    "loglin": _kernel_loglin,
    "wls": _kernel_wls,
    "gaussian": _kernel_gaussian,
    "rician": _kernel_rician,
    "arlo": _kernel_arlo,
}


def _distinct_positive_echoes(positive: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
    """True where at least two positive samples sit at different echo times. (n,) bool."""
    big = torch.finfo(te.dtype).max
    te_pos_min = torch.where(positive, te, big).amin(dim=0)
    te_pos_max = torch.where(positive, te, -big).amax(dim=0)
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
    sw = w.sum(0)
    sx = (w * x).sum(0)
    sxx = (w * x * x).sum(0)
    sz = (w * z).sum(0)
    sxz = (w * x * z).sum(0)
    det = sw * sxx - sx * sx
    det_ok = det > 0
    slope = torch.where(det_ok, (sw * sxz - sx * sz) / torch.where(det_ok, det, 1.0), 0.0)
    intercept = (sz - slope * sx) / sw.clamp_min(tiny)
    # intercept is log S at the mean TE: move it back to TE = 0.
    log_s0 = (intercept - slope * te.mean()).clamp(max=80.0)
    return torch.exp(log_s0), -slope


def _reported_rate(r2: torch.Tensor) -> torch.Tensor:
    """R2* as :func:`_derive` will report it: finite, clamped to [1/T2STAR_MAX, 1/T2STAR_MIN]."""
    r2 = torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0)
    return r2.clamp(1.0 / T2STAR_MAX, 1.0 / T2STAR_MIN)


def _clamp_rate(r2: torch.Tensor) -> torch.Tensor:
    return r2.clamp(0.0, 1.0 / T2STAR_MIN * 10.0)


def _weights(p: torch.Tensor, f: torch.Tensor, noise_var: torch.Tensor | None) -> torch.Tensor:
    """IRLS weights 1 / (A^2 + s^2) with A^2 = p f; all ones for the Gaussian fit."""
    if noise_var is None:
        return torch.ones_like(f)
    return 1.0 / ((p * f).clamp_min(0.0) + noise_var)


def _normal_equations(
    z: torch.Tensor,
    tau: torch.Tensor,
    p: torch.Tensor,
    f: torch.Tensor,
    w: torch.Tensor,
    w_judge: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """At (p, f = exp(-tau R)), r = p*f - z: J^T W J (a11, a12, a22), J^T W r (g1, g2), r^T W r
    and, with ``w_judge``, r^T W_judge r too (the cost under another point's weights). All (n,),
    from one pass over the echoes."""
    m = p * f
    r = m - z
    tm = tau * m
    wf = w * f
    wtm = w * tm
    a11 = (wf * f).sum(0)
    a12 = -(wf * tm).sum(0)
    a22 = (wtm * tm).sum(0)
    g1 = (wf * r).sum(0)
    g2 = -(wtm * r).sum(0)
    rr = r * r
    cost = (w * rr).sum(0)
    judged = (w_judge * rr).sum(0) if w_judge is not None else cost
    return a11, a12, a22, g1, g2, cost, judged


def _levenberg_marquardt(
    z: torch.Tensor,
    tau: torch.Tensor,
    p: torch.Tensor,
    r2: torch.Tensor,
    noise_var: torch.Tensor | None,
    early_exit: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched LM on (p, R2*) for the cost sum w (p exp(-tau R2*) - z)^2; z (E, n), tau (E, 1).

    ``noise_var`` None: w = 1 (Gaussian). Otherwise w = 1 / (p exp(-tau R2*) + noise_var),
    recomputed at every accepted step (IRLS; a trial step is judged with the weights of the
    point it starts from). Marquardt's diagonal damping; a step is kept only where it lowers
    the cost; a voxel stops once its proposed step is below ``_LM_TOL`` (relative).
    R2* is held in ``[0, 10/T2STAR_MIN]`` (the final clamp is :func:`_derive`'s).
    Each iteration is one pass over the echoes: the normal equations at the trial point are
    formed before it is judged, and kept if it is accepted. ``early_exit`` (eager runs): up to
    ``_LM_MAX_ITER`` iterations, stopping once every voxel has converged; otherwise (compiled)
    exactly ``_LM_FIXED_ITER``.
    Returns (p, R2*, converged), each (n,).
    """
    r2 = _clamp_rate(torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0))
    p = torch.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)
    lam = torch.full_like(p, 1e-3)
    converged = torch.zeros_like(p, dtype=torch.bool)
    f = torch.exp(-tau * r2)
    w = _weights(p, f, noise_var)
    a11, a12, a22, g1, g2, cost, _ = _normal_equations(z, tau, p, f, w)
    for _ in range(_LM_MAX_ITER if early_exit else _LM_FIXED_ITER):
        d11 = a11 * (1.0 + lam)
        d22 = a22 * (1.0 + lam)
        det = d11 * d22 - a12 * a12
        det = torch.where(det > 0, det, torch.ones_like(det))
        dp = -(d22 * g1 - a12 * g2) / det
        dr2 = -(d11 * g2 - a12 * g1) / det
        p_new = p + dp
        r2_new = _clamp_rate(r2 + dr2)
        f_new = torch.exp(-tau * r2_new)
        w_new = _weights(p_new, f_new, noise_var)
        n11, n12, n22, h1, h2, cost_new, judged = _normal_equations(
            z, tau, p_new, f_new, w_new, w if noise_var is not None else None
        )
        step = torch.maximum(dp.abs() / p.abs().clamp_min(1e-12), dr2.abs() / (r2.abs() + 1.0))
        # A converged voxel is left alone: its result cannot depend on its neighbours.
        better = (judged < cost) & ~converged
        converged = converged | (step < _LM_TOL)
        p = torch.where(better, p_new, p)
        r2 = torch.where(better, r2_new, r2)
        if noise_var is not None:
            w = torch.where(better, w_new, w)
        a11 = torch.where(better, n11, a11)
        a12 = torch.where(better, n12, a12)
        a22 = torch.where(better, n22, a22)
        g1 = torch.where(better, h1, g1)
        g2 = torch.where(better, h2, g2)
        cost = torch.where(better, cost_new, cost)
        lam = torch.where(better, lam * 0.1, lam * 10.0).clamp(1e-9, 1e9)
        if early_exit and bool(converged.all()):
            break
    # A voxel whose cost is already at rounding level has nothing left to improve.
    at_floor = cost <= (z * z * w).sum(0) * 1e-10
    return p, r2, converged | at_floor


def _derive_gaussian(
    y: torch.Tensor,
    te: torch.Tensor,
    s0: torch.Tensor,
    r2: torch.Tensor,
    usable: torch.Tensor,
    converged: torch.Tensor,
    sigma: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Standard errors sigma^2 (J^T J)^-1 of the magnitude model, then :func:`_derive`.

    sigma: the noise level when positive, else the residual estimate (0 with two echoes)."""
    s0c = torch.nan_to_num(s0, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    e = torch.exp(-te * _reported_rate(r2))
    resid = s0c * e - y
    ssr = (resid * resid).sum(0)
    n_echo = y.shape[0]
    dof = max(n_echo - 2, 1)
    var_resid = ssr / dof if n_echo > 2 else torch.zeros_like(ssr)
    var = torch.where(sigma > 0, sigma * sigma, var_resid)
    ee = e * e
    a11 = ee.sum(0)
    a12 = -s0c * (te * ee).sum(0)
    a22 = s0c * s0c * (te * te * ee).sum(0)
    det = a11 * a22 - a12 * a12
    ok = det > 0
    safe_det = torch.where(ok, det, torch.ones_like(det))
    r2_se = torch.where(ok, torch.sqrt((var * a11 / safe_det).clamp_min(0.0)), 0.0)
    s0_se = torch.where(ok, torch.sqrt((var * a22 / safe_det).clamp_min(0.0)), 0.0)
    return _derive(y, te, s0, r2, usable, converged, r2_se, s0_se, e)


def _derive_loglinear(
    y: torch.Tensor,
    te: torch.Tensor,
    s0: torch.Tensor,
    r2: torch.Tensor,
    w: torch.Tensor,
    usable: torch.Tensor,
    sigma: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Standard errors of a (weighted) straight-line fit of log S, then :func:`_derive`.

    The sandwich covariance with Var(log S_k) = sigma^2 / A_k^2 (A_k the fitted signal):
    ordinary log-linear fits give late, noisy echoes full weight, and their true spread is
    much larger than the least-squares bound of the signal model would claim."""
    s0c = torch.nan_to_num(s0, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    e = torch.exp(-te * _reported_rate(r2))
    a = s0c * e
    resid = a - y
    n_echo = y.shape[0]
    var_resid = (resid * resid).sum(0) / max(n_echo - 2, 1)
    if n_echo <= 2:
        var_resid = torch.zeros_like(var_resid)
    var = torch.where(sigma > 0, sigma * sigma, var_resid)
    var_log = var / (a * a).clamp_min(torch.finfo(y.dtype).tiny)  # (E, n)
    sw = w.sum(0)
    safe_sw = sw.clamp_min(torch.finfo(y.dtype).tiny)
    t_mean = (w * te).sum(0) / safe_sw
    x = te - t_mean
    sxx = (w * x * x).sum(0)
    ok = (sxx > 0) & (sw > 0)
    safe_sxx = torch.where(ok, sxx, torch.ones_like(sxx))
    var_slope = (w * w * x * x * var_log).sum(0) / (safe_sxx * safe_sxx)
    var_mean = (w * w * var_log).sum(0) / (safe_sw * safe_sw)
    cov = (w * w * x * var_log).sum(0) / (safe_sw * safe_sxx)
    var_log_s0 = var_mean + t_mean * t_mean * var_slope + 2.0 * t_mean * cov
    zero = torch.zeros_like(sxx)
    r2_se = torch.where(ok, torch.sqrt(var_slope.clamp_min(0.0)), zero)
    s0_se = torch.where(ok, s0c * torch.sqrt(var_log_s0.clamp_min(0.0)), zero)
    return _derive(y, te, s0, r2, usable, torch.ones_like(usable), r2_se, s0_se, e)


def _derive(
    y: torch.Tensor,
    te: torch.Tensor,
    s0: torch.Tensor,
    r2: torch.Tensor,
    usable: torch.Tensor,
    converged: torch.Tensor,
    r2_se: torch.Tensor,
    s0_se: torch.Tensor,
    e: torch.Tensor | None = None,
    predicted: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The one place where T2* = 1/R2* is formed, bounds applied and failures flagged.

    ``e``: exp(-TE * R2*) at the reported (clamped) rate when the caller has it already.
    ``predicted``: the magnitude the fitted model predicts (E, n), for the RMSE; default
    S0 exp(-TE R2*)."""
    finite = torch.isfinite(s0) & torch.isfinite(r2)
    s0 = torch.nan_to_num(s0, nan=0.0, posinf=0.0, neginf=0.0)
    r2 = torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0)
    r2_lo, r2_hi = 1.0 / T2STAR_MAX, 1.0 / T2STAR_MIN
    clamped = (r2 < r2_lo) | (r2 > r2_hi)
    r2 = r2.clamp(r2_lo, r2_hi)
    failed = ~usable | ~finite | ~converged | clamped | (s0 <= 0)
    s0 = s0.clamp_min(0.0)
    t2 = 1.0 / r2
    if predicted is None:
        predicted = s0 * (torch.exp(-te * r2) if e is None else e)
    resid = predicted - y
    rmse = torch.sqrt((resid * resid).mean(0))
    maps = {
        "t2star": t2,
        "r2star": r2,
        "s0": s0,
        "rmse": rmse,
        "t2star_se": r2_se * t2 * t2,
        "r2star_se": r2_se,
        "s0_se": s0_se,
    }
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    for key, value in maps.items():
        value = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
        maps[key] = torch.where(usable, value, zero)
    return maps, failed
