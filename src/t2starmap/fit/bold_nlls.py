"""The noise-aware fit of multi-echo BOLD's temporal second moment, on the project's solver.

Pure torch: no I/O, no logging. Each voxel's data are the temporal means of M^2 at its echoes
(given as their square roots, (V, E), echoes ascending, TE in s); their expectation is
S0^2 exp(-2 TE R2*) + 2 sigma^2 at any SNR (Rician magnitude, one channel of noise sigma).
The model is :class:`t2starmap.fit.models.Exponential` (noise-aware, IRLS), the solver
:func:`t2starmap.fit.solver.levenberg_marquardt`, the maps :func:`t2starmap.fit.result.derive`
(through the magnitude fit's map function) -- nothing new but the start:

the weighted log-linear fit of the floor-corrected moment z = mean M^2 - 2 sigma^2 (weights
z^2 where z > 0) against 2 TE. When the late echoes sit on the noise floor (a BOLD dropout
region) the usual start from the magnitudes sees a slow decay onto the floor and is far from
the solution; this one starts near it, so the fit converges in a few steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch

from t2starmap.fit import dispatch, starts
from t2starmap.fit.limits import NoiseModel, check_echo_times
from t2starmap.fit.magnitude import Echoes, prepare, rician_maps
from t2starmap.fit.models import Exponential
from t2starmap.fit.result import MAPS, FitResult
from t2starmap.fit.solver import levenberg_marquardt

#: Iteration cap: the start is close, but IRLS near the floor moves slowly.
MAX_ITER = 200
CHUNK = 1 << 16


def _kernel(
    rows: tuple[torch.Tensor, ...], te: torch.Tensor, sigma: float | None, floor: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One chunk; ``sigma`` the run's, or None: each row's, the second signal (n, 1)."""
    chunk = prepare(rows[0].T.contiguous(), Echoes(te, True), floor)  # (E, n)
    sn2 = ((rows[1][:, 0] if sigma is None else sigma) / chunk.scale) ** 2
    neg_z = torch.addcmul(2.0 * sn2, chunk.yn, chunk.yn, value=-1.0)
    z = neg_z.neg().clamp_min(0.0)
    p0, r2 = starts.loglinear(z, 2.0 * te, z * z)
    model = Exponential(2.0 * te, factor=False, noise_aware=True, max_iter=MAX_ITER)
    fit = levenberg_marquardt(model, (neg_z, sn2), torch.stack([p0, r2]))
    return rician_maps(fit, te, chunk, None, sn2, 1.0, chunk.yn.shape[0])


def fit_second_moment(
    root_mean_square: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    sigma: float | np.ndarray,
    compute: dispatch.Compute,
) -> FitResult:
    """Fit every row of ``root_mean_square`` (V, E): sqrt of the temporal mean of M^2 per
    echo, echo times ascending in s, ``sigma`` the noise of one sample, one for all rows or
    one per row (V,) (each checked as a :class:`~t2starmap.fit.limits.NoiseModel`'s). The
    maps and Failure bits as :func:`t2starmap.fit.fit_t2star` gives them (standard errors
    for one sample); ``noise_sigma`` the median sigma."""
    values = np.asarray(sigma, dtype=np.float64)
    for value in (values.min(), values.max()) if values.size else ():
        NoiseModel(float(value))  # each positive and finite, or ValueError
    noise = NoiseModel(float(np.median(values)) if values.size else None)
    per_row = np.broadcast_to(values, root_mean_square.shape[:1])
    te_np = check_echo_times(echo_times)
    how = dispatch.plan(compute, (CHUNK, CHUNK * 64))
    te = torch.as_tensor(te_np, dtype=how.dtype, device=how.device)[:, None]
    one = np.ndim(sigma) == 0
    signals = [root_mean_square]
    if not one:
        signals.append(np.array(per_row, dtype=np.float64)[:, None])
    vox = dispatch.voxels(signals, te_np.size, None)
    floor = float(sigma) if one else float(per_row.min()) if per_row.size else 1.0
    kernel = partial(_kernel, te=te, sigma=float(sigma) if one else None, floor=floor)
    maps, reason = dispatch.run_chunks(vox, kernel, MAPS, how)
    t2star, r2star, s0, rmse, t2star_se, r2star_se, s0_se, chisq = (maps[k] for k in MAPS)
    return FitResult(
        t2star,
        r2star,
        s0,
        rmse,
        t2star_se,
        r2star_se,
        s0_se,
        chisq,
        failed=reason != 0,
        reason=reason,
        method="nlls",
        device=str(how.device),
        noise_sigma=noise.sigma,
        noise_model="rician",
        solver_runs=1,
    )
