"""Closed-form estimates: the fits ``loglin``, ``wls`` and ``arlo`` themselves, and where the
Levenberg-Marquardt fits start. Pure torch; echo-major (E, n), echoes ascending, TE (E, 1) s.

* :func:`loglinear`: (weighted) straight line through log S against TE;
* :func:`signal_weights`: the ``wls`` weights S^2, the inverse variance of log S for Gaussian
  noise (so ``wls`` is what LM converges to at high SNR, and LM's start);
* :func:`arlo`: auto-regression on linear operations (Pei et al., MRM 2015;73:843, with its
  erratum's formula), evenly spaced echoes;
* :func:`phase_difference_frequency`: the off-resonance from the phase of consecutive-echo
  products, and :func:`phase_at_zero` the phase at TE = 0 given it.
"""

from __future__ import annotations

import torch

from t2starmap.fit.solver import gt, tiny


def signal_weights(yn: torch.Tensor) -> torch.Tensor:
    """The ``wls`` weights, S^2 for positive samples, 0 for the others. (E, n)"""
    positive = yn.clamp_min(0.0)
    return positive.mul_(positive)


def loglinear(
    yn: torch.Tensor, te: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted straight-line fit of log(y) against TE. Returns (S0, R2*), each (n,).

    Samples with weight 0 (non-positive signal) do not count. TE is centred on its plain mean
    and the sums over echoes weighted by a function of TE alone are vector-matrix products:
    the fast form, for data whose largest weight is about 1 (the magnitude fits work in units
    of each voxel's largest sample). Weights spanning more than float32's range need
    :func:`loglinear_centred`."""
    small = tiny(yn)
    te_mean = te.mean()
    x = (te - te_mean).reshape(-1)
    sw = w.sum(0)
    sx = x @ w
    sxx = (x * x) @ w
    wz = yn.clamp_min(small).log_().mul_(w)  # w log(y)
    sz = wz.sum(0)
    sxz = x @ wz
    det = sw * sxx - sx * sx
    slope = (sw * sxz - sx * sz) * (gt(det, 0.0) / det.clamp_min(small))
    intercept = (sz - slope * sx) / sw.clamp_min(small)
    # intercept is log S at the mean TE: move it back to TE = 0.
    log_s0 = (intercept - slope * te_mean).clamp(max=80.0)
    return torch.exp(log_s0), -slope


def loglinear_centred(
    yn: torch.Tensor, te: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`loglinear` centred on each voxel's weighted mean TE (two passes): no product of
    two small sums, so a decay whose weights fall by 10^20 from one echo to the next (S^2
    weights of a decay far faster than the echo spacing) still gives its slope."""
    small = tiny(yn)
    sw = w.sum(0)
    inv_sw = gt(sw, 0.0) / sw.clamp_min(small)
    t_mean = (w * te).sum(0) * inv_sw
    dt = te - t_mean
    wdt = w * dt
    sxx = (wdt * dt).sum(0)
    log_y = yn.clamp_min(small).log()
    slope = (wdt * log_y).sum(0) * (gt(sxx, 0.0) / sxx.clamp_min(small))
    intercept = (w * log_y).sum(0) * inv_sw
    log_s0 = (intercept - slope * t_mean).clamp(max=80.0)
    return torch.exp(log_s0), -slope


def arlo(yn: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
    """R2* by ARLO (echoes evenly spaced: the caller checks), (n,); -1 where there is no decay
    to measure (the caller's bounds flag it)."""
    dt = (te[-1] - te[0]) / (te.numel() - 1)
    s = dt / 3.0 * (yn[:-2] + 4.0 * yn[1:-1] + yn[2:])
    d = yn[:-2] - yn[2:]
    ss = (s * s).sum(0)
    sd = (s * d).sum(0)
    dd = (d * d).sum(0)
    num = ss + dt / 3.0 * sd  # T2* = num / den; R2* = den / num
    den = dt / 3.0 * dd + sd
    has_num = gt(num, 0.0)
    return torch.lerp(torch.full_like(num, -1.0), den / num.clamp_min(tiny(num)), has_num)


def amplitude_given_rate(yn: torch.Tensor, te: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """S0 by least squares given R2*, (n,)."""
    e = torch.exp(-te * r2.clamp_min(0.0))
    return (yn * e).sum(0) / (e * e).sum(0).clamp_min(tiny(yn))


def echo_products(
    x_re: torch.Tensor, x_im: torch.Tensor, te: torch.Tensor, lag: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z_k = x_{k+lag} conj(x_k) as (real, imaginary), each (E - lag, n), and the echo-time
    gaps TE_{k+lag} - TE_k (E - lag, 1). Lag 2 pairs echoes of the same parity (the same
    read-out polarity in a bipolar train)."""
    z_re = x_re[lag:] * x_re[:-lag] + x_im[lag:] * x_im[:-lag]
    z_im = x_im[lag:] * x_re[:-lag] - x_re[lag:] * x_im[:-lag]
    return z_re, z_im, te[lag:] - te[:-lag]


def phase_difference_frequency(
    x_re: torch.Tensor, x_im: torch.Tensor, te: torch.Tensor, lag: int = 1
) -> torch.Tensor:
    """omega = 2 pi f (rad/s) from the echo products of ``lag`` (:func:`echo_products`): the
    phase of their sum over the pairs at the shortest gap (a sum of products is weighted by
    magnitude) over that gap, then refined by the |z|-weighted least-squares slope of every
    pair's residual phase difference (each pair's own gap). Known modulo 2 pi / gap. (n,)."""
    z_re, z_im, gaps = echo_products(x_re, x_im, te, lag)
    shortest = gaps.min()
    at_min = (gaps <= shortest * (1.0 + 1e-3)).to(x_re.dtype)
    omega = torch.atan2((at_min * z_im).sum(0), (at_min * z_re).sum(0)) / shortest
    rot = gaps * omega
    c, s = torch.cos(rot), torch.sin(rot)
    resid = torch.atan2(c * z_im - s * z_re, c * z_re + s * z_im)
    wz = torch.sqrt(z_re * z_re + z_im * z_im)
    return omega + (wz * gaps * resid).sum(0) / (wz * gaps * gaps).sum(0).clamp_min(tiny(wz))


def coherence(
    x_re: torch.Tensor, x_im: torch.Tensor, te: torch.Tensor, omega: torch.Tensor, lag: int = 1
) -> torch.Tensor:
    """How well the echo products of ``lag`` follow one frequency: |sum_k z_k exp(-i omega
    gap_k)| / sum_k |z_k| in [0, 1]; 1 for phase linear in TE, about |cos psi| for a bipolar
    train with an odd/even offset psi (lag 1), lower for phase that follows no frequency.
    (n,)."""
    z_re, z_im, gaps = echo_products(x_re, x_im, te, lag)
    rot = gaps * omega
    c, s = torch.cos(rot), torch.sin(rot)
    along = (c * z_re + s * z_im).sum(0)
    across = (c * z_im - s * z_re).sum(0)
    total = torch.sqrt(z_re * z_re + z_im * z_im).sum(0)
    return torch.sqrt(along * along + across * across) / total.clamp_min(tiny(total))


def phase_at_zero(
    x_re: torch.Tensor,
    x_im: torch.Tensor,
    te: torch.Tensor,
    r2: torch.Tensor,
    omega: torch.Tensor,
    echoes: torch.Tensor | None = None,
) -> torch.Tensor:
    """phi0: the matched filter of the demodulated echoes given R2* and omega,
    arg sum_k x_k exp(-i omega TE_k) exp(-TE_k R2*), over the ``echoes`` (E, 1) 0/1 given (all
    by default; a bipolar train's odd or even echoes), (n,)."""
    theta = te * omega
    c, s = torch.cos(theta), torch.sin(theta)
    e = torch.exp(-te * r2)
    if echoes is not None:
        e = e * echoes
    return torch.atan2((e * (c * x_im - s * x_re)).sum(0), (e * (c * x_re + s * x_im)).sum(0))
