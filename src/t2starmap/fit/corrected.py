"""The through-slice corrected fit: S(TE) = S0 exp(-TE R2*) |F(TE)| with |F| known per voxel
and echo (the through-slice dephasing, :mod:`t2starmap.b0.correction`), with the noise models
and kernels of :mod:`t2starmap.fit.magnitude`. Pure torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from t2starmap.fit import dispatch, starts
from t2starmap.fit.dispatch import Compute
from t2starmap.fit.limits import (
    NoiseModel,
    check_echo_times,
)
from t2starmap.fit.magnitude import (
    DEFAULT_CHUNK,
    DEFAULT_CUDA_CHUNK,
    MAX_ITER,
    Echoes,
    Maps,
    echo_major,
    echoes_on,
    gaussian_maps,
    prepare,
    rician_maps,
)
from t2starmap.fit.models import Exponential
from t2starmap.fit.result import (
    MAPS,
    FitResult,
)
from t2starmap.fit.solver import levenberg_marquardt, lt, tiny

#: Echoes where |F(TE)| falls below this are left out of the corrected fit (see
#: :data:`t2starmap.b0.correction.FACTOR_THRESHOLD` for the choice).
FACTOR_THRESHOLD = 0.3
#: Fewest echoes the corrected fit keeps; below it the voxel is fitted without the factor.
MIN_ECHOES = 2


@dataclass(frozen=True)
class CorrectedFit:
    """:func:`fit_corrected`'s result. ``result``: the maps (``method`` "through-slice");
    ``echoes_kept``: (...) int, echoes the fit used (0 outside the mask); ``too_few``: (...)
    bool, fewer than ``MIN_ECHOES`` echoes had |F| >= the threshold, so the voxel was fitted
    without the factor (its maps are the uncorrected model's)."""

    result: FitResult
    echoes_kept: torch.Tensor
    too_few: torch.Tensor
    threshold: float


def fit_corrected(
    magnitude: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray | torch.Tensor,
    factor: np.ndarray | torch.Tensor,
    *,
    mask: np.ndarray | torch.Tensor | None = None,
    noise: NoiseModel = NoiseModel(floor=False),
    start: FitResult | None = None,
    compute: Compute = Compute(),
    threshold: float = FACTOR_THRESHOLD,
) -> CorrectedFit:
    """Fit S(TE) = S0 exp(-TE R2*) |F(TE)| in every voxel, F known (``factor``).

    ``magnitude``: (..., n_echoes); ``factor``: the same shape, F (signed; |F| is used) or |F|;
    ``echo_times``: (n_echoes,) s. Echoes with |F| < ``threshold`` are left out; a voxel left
    with fewer than ``MIN_ECHOES`` is fitted with F = 1 on all echoes and flagged ``too_few``.
    ``noise``: with a ``sigma`` and ``floor`` True, the noise-aware model of
    :func:`fit_t2star`'s ``nlls`` with |F|^2 on S0^2 exp(-2 TE R2*); else Gaussian least
    squares (the default: ``floor`` False). ``compute``: as for :func:`fit_t2star`. ``start``: a fit
    of the same voxels without the factor; LM starts from it, or from the log-linear fit of
    M / |F| (weights M^2, kept echoes) where that is closer (lower cost). Standard errors and
    flags as in :func:`fit_t2star` (residual variance over the kept echoes - 2 without a
    noise level).
    """
    if not (0.0 <= threshold < 1.0):
        raise ValueError(f"the |F| threshold must be in [0, 1), got {threshold}")
    noise_aware = noise.name != "gaussian"
    if not noise_aware:
        noise = noise.gaussian()
    how = dispatch.plan(compute, (DEFAULT_CHUNK, DEFAULT_CUDA_CHUNK))
    te_np = check_echo_times(echo_times)
    order = np.argsort(te_np, kind="stable")
    # |F| is taken chunk by chunk in the workers, not over the whole volume here
    signals: list[np.ndarray | torch.Tensor] = [magnitude, factor]
    if start is not None:
        signals.append(torch.stack([start.s0.cpu(), start.r2star.cpu()], -1))
    vox = dispatch.voxels(signals, te_np.size, mask)
    kernel = partial(
        _kernel_corrected, echoes=echoes_on(te_np, order, how), noise=noise,
        order=[int(k) for k in order], noise_aware=noise_aware, threshold=threshold,
    )  # fmt: skip
    maps, reason = dispatch.run_chunks(vox, kernel, (*MAPS, "kept", "too_few"), how)
    result = FitResult(
        **{k: maps[k] for k in MAPS},
        failed=reason != 0,
        reason=reason,
        method="through-slice",
        device=str(how.device),
        noise_sigma=noise.sigma,
        noise_model=noise.name,
        noise_coils=noise.coils,
        solver_runs=1,
    )
    kept = maps["kept"].round().to(torch.int64)
    return CorrectedFit(result, kept, maps["too_few"] > 0.5, threshold)


def _kernel_corrected(
    rows: tuple[torch.Tensor, ...],
    echoes: Echoes,
    noise: NoiseModel,
    order: Sequence[int],
    noise_aware: bool,
    threshold: float,
) -> Maps:
    """One chunk: rows (magnitude (n, E), |F| (n, E)[, start (n, 2): S0, R2*])."""
    te = echoes.te
    chunk = prepare(echo_major(rows[0], order), echoes, noise.sigma or 0.0)
    yn, usable, scale = chunk
    f = echo_major(rows[1], order).abs_().nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
    keep = torch.ge(f, threshold, out=torch.empty_like(f))
    few = lt(keep.sum(0), MIN_ECHOES - 0.5)
    f = torch.lerp(f, torch.ones_like(f), few)  # too few echoes: no factor, every echo
    keep = torch.lerp(keep, torch.ones_like(keep), few)
    n_kept = keep.sum(0)
    g = f * keep
    small = max(threshold, tiny(yn))
    candidates = [starts.loglinear(yn / f.clamp_min(small), te, keep * starts.signal_weights(yn))]
    if len(rows) > 2:
        candidates.append((rows[2][:, 0] / scale, rows[2][:, 1]))
    if noise_aware:
        assert noise.sigma is not None
        sn2 = (noise.sigma / scale) ** 2
        neg_z = torch.addcmul(2.0 * noise.coils * sn2, yn, yn, value=-1.0).mul_(keep)
        model = Exponential(2.0 * te, factor=True, noise_aware=True, max_iter=MAX_ITER)
        data: tuple[torch.Tensor, ...] = (neg_z, g * g, noise.coils * sn2)
        points = [torch.stack([s0 * s0, r2]) for s0, r2 in candidates]
    else:
        model = Exponential(te, factor=True, noise_aware=False, max_iter=MAX_ITER)
        data = ((yn * keep).neg_(), g)
        points = [torch.stack([s0, r2]) for s0, r2 in candidates]
    fit = levenberg_marquardt(model, data, best_start(model, data, points))
    if noise_aware:
        maps, bits = rician_maps(fit, te, chunk, g * g, sn2, noise.coils, n_kept)
    else:
        maps, bits = gaussian_maps(fit, scale, usable, noise.sigma, n_kept)
    maps["kept"] = n_kept * usable
    maps["too_few"] = few * usable
    return maps, bits


def best_start(
    model: Exponential, data: tuple[torch.Tensor, ...], points: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per voxel, the candidate start (each (P, n)) with the lowest cost under ``model``."""
    best = points[0].clamp(model.low, model.high)
    if len(points) == 1:
        return best
    cost = model.evaluate(data, best, None)[0][model.layout.cost]
    for other in points[1:]:
        other = torch.nan_to_num(other, nan=0.0, posinf=0.0, neginf=0.0).clamp(
            model.low, model.high
        )
        trial = model.evaluate(data, other, None)[0][model.layout.cost]
        better = lt(trial, cost)
        best = torch.lerp(best, other, better)
        cost = torch.lerp(cost, trial, better)
    return best
