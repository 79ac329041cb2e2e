"""Voxel-wise fit of the complex decay S(TE) = S0 exp(-TE R2*) exp(i (phi0 + 2 pi f TE)).

Pure torch: no file I/O, no logging, no printing. Conventions as in
:mod:`t2starmap.fit.magnitude`: the echo axis is the LAST axis of ``signal`` (complex64, or
complex128 for reference computations); echo times in s, R2* in 1/s, T2* in s, the frequency f
in Hz, phi0 in rad, S0 in the signal's units.

Why fit the complex signal: its noise is Gaussian in both channels at every SNR, so echoes on
the noise floor do not bias R2* the way they bias a magnitude fit, and the fit gives the field
map (f) as a by-product.

The fit, per voxel: f starts from the phase of consecutive-echo products
(:func:`t2starmap.fit.starts.phase_difference_frequency`), S0 and R2* from a log-linear fit of
|x| with weights |x|^2, phi0 from the demodulated echoes; then the solver
(:mod:`t2starmap.fit.solver`) on the model :class:`t2starmap.fit.models.Complex`.

Standard errors: sigma^2 (J^T J)^-1 at the solution, sigma = ``noise_sigma`` when given (the SD
of each real/imaginary channel), else the residual estimate sum |r|^2 / (2 E - 4) (0 with two
echoes: the fit is exact). T2* by the delta method.

The phase check (``Failure.PHASE_MODEL``, :func:`phase_fails`): at the solution, the residual
orthogonal to the model (sum (Im d_k)^2, the part of the data the phase model must explain) is
compared with the noise: with ``noise_sigma``, against the chi-square quantile of E - 2 degrees
of freedom (E - 3 for the bipolar model); without it, against the residual along the model
(sum (Re d_k - a_k)^2), by the F quantile. Each at a false-alarm rate of ``PHASE_FALSE_ALARM``
per voxel for data that follow the model. (Requiring both with a noise level, as before, let
phase that follows no frequency pass: both residuals are then large.) A voxel whose echo
products have a coherence of at least ``TRUSTED_COHERENCE`` (:func:`starts.coherence`, lag 2
for the bipolar model) passes anyway. Phase that jumps between
odd and even echoes (bipolar read-outs, unless ``bipolar``), fat-water beating or phase that
follows no frequency show up here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from t2starmap.fit import dispatch, starts
from t2starmap.fit.dispatch import Compute
from t2starmap.fit.limits import NoiseModel, check_echo_times
from t2starmap.fit.lm_policy import R2_MAX
from t2starmap.fit.models import Complex
from t2starmap.fit.result import (
    MAPS,
    FitResult,
    Solved,
    derive,
    inverse_diagonal_sqrt,
    noise_variance,
)
from t2starmap.fit.solver import Solution, levenberg_marquardt
from t2starmap.fit.stats import chi2_upper, f_upper
from t2starmap.fit.status import Failure

#: Voxels per chunk on the CPU and on a GPU (more temporaries than the magnitude fit: 4 real
#: echo-by-voxel arrays for the data and the model, a few for the sums).
DEFAULT_CHUNK = 1 << 15
DEFAULT_CUDA_CHUNK = 1 << 21
#: False-alarm rate per voxel of the phase check, for data that follow the model.
PHASE_FALSE_ALARM = 1e-4
#: Coherence of the echo products from which a voxel's phase passes the check whatever the
#: noise test says: at high SNR the test sees deviations far too small to matter (fat, flow).
#: 0.9 is a step deviation of about 0.9 rad; the GE kidney's median is 0.98 (84 % of its bright
#: voxels have linear phase, NOTES.md), phase that follows no frequency about 0.5.
TRUSTED_COHERENCE = 0.9
#: The complex model's iteration cap: the phase parameters start further from their solution
#: than the decay's.
MAX_ITER = 50
_PHASE_MAPS = ("frequency", "phase0", "frequency_se", "phase0_se")


def frequency_limit(echo_times: Sequence[float] | np.ndarray, bipolar: bool = False) -> float:
    """The largest |f| in Hz the echo sampling resolves, 1 / (2 dTE_min); half that for a
    bipolar train, whose frequency comes from echoes of the same parity."""
    te = np.sort(check_echo_times(np.array(echo_times, dtype=np.float64)))
    return float(0.5 / np.diff(te).min()) / (2.0 if bipolar else 1.0)


def fit_complex(
    signal: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    mask: np.ndarray | torch.Tensor | None = None,
    noise: NoiseModel = NoiseModel(),
    compute: Compute = Compute(),
    bipolar: bool = False,
) -> FitResult:
    """Fit S0, R2*, f and phi0 in every voxel of a complex ``signal`` (..., n_echoes); with
    ``bipolar`` also psi, the phase offset of the even echoes of a bipolar read-out (then f is
    known modulo 1 / (2 dTE) only: ``frequency_limit(te, bipolar=True)``).

    ``echo_times``: (n_echoes,) distinct, in seconds, any order (sorted here). ``mask``: (...)
    bool, voxels to fit (default all). ``noise``: its ``sigma``, the noise SD of each
    real/imaginary channel in signal units, sets the standard errors and the phase check
    (complex data have no noise floor and no coil count: ``coils`` must be 1). ``compute``: as
    for :func:`t2starmap.fit.fit_t2star` (``dtype`` the real compute precision). Raises
    ValueError for a real-valued signal, a coil count, repeated echo times or mismatched
    shapes. The result's ``method`` is "complex".
    """
    if noise.coils != 1.0:
        raise ValueError(
            f"the complex fit takes the complex signal, which has no coil count: got {noise.coils}"
        )
    noise_sigma = noise.sigma
    how = dispatch.plan(compute, (DEFAULT_CHUNK, DEFAULT_CUDA_CHUNK))
    te_np = check_echo_times(echo_times)
    if np.unique(te_np).size != te_np.size:
        raise ValueError(f"the complex fit needs distinct echo times, got {te_np.tolist()}")
    if not torch.as_tensor(signal).is_complex():
        raise ValueError(
            "the complex fit needs a complex signal (magnitude and phase, or real and "
            f"imaginary parts), got {torch.as_tensor(signal).dtype}"
        )
    vox = dispatch.voxels([signal], te_np.size, mask)
    order = [int(k) for k in np.argsort(te_np, kind="stable")]
    te = torch.as_tensor(te_np[order], dtype=how.dtype, device=how.device)[:, None]
    kernel = partial(
        _kernel, te=te, order=order, sigma=noise_sigma, bipolar=bipolar,
        thresholds=phase_thresholds(te_np.size, 3 if bipolar else 2),
    )  # fmt: skip
    maps, reason = dispatch.run_chunks(vox, kernel, (*MAPS, *_PHASE_MAPS), how, cast=False)
    fields: dict[str, Any] = dict(maps)
    return FitResult(
        **fields,
        failed=reason != 0,
        reason=reason,
        method="complex",
        device=str(how.device),
        noise_sigma=noise_sigma,
        solver_runs=1,
    )


def phase_thresholds(n_echo: int, phase_params: int = 2) -> tuple[float, float]:
    """(chi-square threshold of sum (Im d)^2 / sigma^2 with n_echo - ``phase_params`` degrees
    of freedom, F threshold of its ratio to the residual along the model, F(d, d) with d the
    smaller of the two degrees of freedom); inf where no degree of freedom is left."""
    dof = n_echo - phase_params
    if dof < 1:
        return math.inf, math.inf
    return chi2_upper(dof, PHASE_FALSE_ALARM), f_upper(min(dof, n_echo - 2), PHASE_FALSE_ALARM)


def phase_fails(
    across: torch.Tensor,
    along: torch.Tensor,
    energy: torch.Tensor,
    thresholds: tuple[float, float],
    sigma: float | None,
    scale: torch.Tensor,
) -> torch.Tensor:
    """The phase check (bool (n,)): the residual ``across`` the model (sum (Im d)^2, what the
    phase must explain) above the chi-square quantile of the noise when sigma is known, else
    above the F quantile times the residual ``along`` it; residuals at rounding level (of the
    data's ``energy``) say nothing. With a noise level the test does not look at the residual
    along the model, so a decay that misfits (through-slice dephasing, fat) does not hide phase
    that follows no frequency."""
    chi2_max, f_max = thresholds
    rounding = (100.0 * torch.finfo(across.dtype).eps) ** 2 * energy
    if sigma is not None:
        return (across > chi2_max * (sigma / scale) ** 2) & (across > rounding)
    return (across > f_max * along) & (across > rounding)


def prepare(
    rows: torch.Tensor, order: Sequence[int], dtype: torch.dtype, sigma: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A chunk of complex rows (n, E) as echo-major (E, n) real and imaginary parts and
    magnitude in units of each voxel's largest |x| (at least sigma), echoes ascending; with
    the scale and ``usable`` (finite, at least 2 non-zero echoes; float 0/1). Unusable voxels
    are zeros: fitted from S0 = 0 they take no step and stop at once."""
    x_re = torch.stack([rows[:, k].real for k in order]).to(dtype)
    x_im = torch.stack([rows[:, k].imag for k in order]).to(dtype)
    usable = (torch.isfinite(x_re).all(0) & torch.isfinite(x_im).all(0)).to(dtype)
    x_re = torch.nan_to_num(x_re, nan=0.0, posinf=0.0, neginf=0.0)
    x_im = torch.nan_to_num(x_im, nan=0.0, posinf=0.0, neginf=0.0)
    mag = torch.hypot(x_re, x_im)
    scale = mag.amax(0).clamp_min(max(sigma or 0.0, torch.finfo(dtype).tiny))
    usable = usable * ((mag > 0).sum(0) >= 2).to(dtype)
    keep = usable / scale
    return x_re * keep, x_im * keep, mag * keep, scale, usable


def start(
    x_re: torch.Tensor, x_im: torch.Tensor, mag: torch.Tensor, te: torch.Tensor, bipolar: bool
) -> torch.Tensor:
    """Where the complex fit starts, (P, n): S0 and R2* from the log-linear fit of |x| with
    weights |x|^2; omega from the consecutive echoes' phase differences (the same-parity
    echoes' for a bipolar train); phi0 from the (odd) echoes demodulated, and psi, the even
    echoes' phase against the odd ones'."""
    s0, r2 = starts.loglinear_centred(mag, te, starts.signal_weights(mag))
    r2 = r2.clamp(0.0, R2_MAX)
    if not bipolar:
        omega = starts.phase_difference_frequency(x_re, x_im, te)
        return torch.stack([s0, r2, starts.phase_at_zero(x_re, x_im, te, r2, omega), omega])
    omega = starts.phase_difference_frequency(x_re, x_im, te, lag=2)
    even = (torch.arange(te.shape[0], device=te.device) % 2 == 1).to(te.dtype)[:, None]
    phi = starts.phase_at_zero(x_re, x_im, te, r2, omega, 1.0 - even)
    psi = starts.phase_at_zero(x_re, x_im, te, r2, omega, even) - phi
    psi = torch.remainder(psi + math.pi, 2.0 * math.pi) - math.pi
    return torch.stack([s0, r2, phi, omega, psi])


def _kernel(
    rows: tuple[torch.Tensor, ...],
    te: torch.Tensor,
    order: Sequence[int],
    sigma: float | None,
    thresholds: tuple[float, float],
    bipolar: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fit one chunk, rows (n, E) complex. Returns the maps (n,) in signal units and the
    Failure bits (n,)."""
    x_re, x_im, mag, scale, usable = prepare(rows[0], order, te.dtype, sigma)
    point = start(x_re, x_im, mag, te, bipolar)
    point[0] = point[0] * usable
    model = Complex(te, bipolar=bipolar, max_iter=MAX_ITER)
    solution = levenberg_marquardt(model, (x_re, x_im), point)
    # S0 < 0 with phi0 is the same model as -S0 with phi0 + pi.
    point = solution.point.clone()
    point[2] = torch.where(point[0] < 0, point[2] + math.pi, point[2])
    point[2] = torch.remainder(point[2] + math.pi, 2.0 * math.pi) - math.pi
    point[0] = point[0].abs()
    final = Solution(model.layout, model.evaluate((x_re, x_im), point, None)[0], solution.converged)
    energy = model.energy((x_re, x_im), None)
    coherent = starts.coherence(x_re, x_im, te, point[3], lag=2 if bipolar else 1)
    maps, bits = _maps(final, x_re.shape[0], energy, scale, usable, sigma, thresholds)
    # Phase this coherent is trusted whatever the test says (t2starmap.fit.phase).
    rescued = (coherent >= TRUSTED_COHERENCE).to(bits.dtype) * ((bits.long() & 32) > 0)
    return maps, bits - float(Failure.PHASE_MODEL) * rescued


def _maps(
    final: Solution,
    n_echo: int,
    energy: torch.Tensor,
    scale: torch.Tensor,
    usable: torch.Tensor,
    sigma: float | None,
    thresholds: tuple[float, float],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Standard errors, the phase check and the maps at the final point; ``energy``: the
    data's sum |x|^2 per voxel (in units of ``scale``)."""
    dof = 2 * n_echo - final.layout.n_params
    var = noise_variance(sigma, scale, final.cost, dof)
    r2_se, s0_se = inverse_diagonal_sqrt(
        final.normal(0, 0, 0), final.normal(0, 0, 1), final.normal(0, 1, 1), var
    )
    om_se, phi_se = inverse_diagonal_sqrt(
        final.normal(1, 0, 0), final.normal(1, 0, 1), final.normal(1, 1, 1), var
    )
    phase_bad = phase_fails(final.extra(0), final.extra(1), energy, thresholds, sigma, scale)
    point = final.point
    chi2 = None if sigma is None else final.cost / (sigma / scale) ** 2
    maps, bits = derive(
        Solved(point[0], point[1], scale, usable, final.converged, r2_se, s0_se,
               torch.sqrt(final.cost / n_echo), chi2, dof)
    )  # fmt: skip
    bits = bits + float(Failure.PHASE_MODEL) * phase_bad.to(bits.dtype) * usable
    two_pi = 2.0 * math.pi
    phase = {
        "frequency": point[3] / two_pi,
        "phase0": point[2],
        "frequency_se": om_se / two_pi,
        "phase0_se": phi_se,
    }
    for key, value in phase.items():
        maps[key] = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0) * usable
    return maps, bits
