"""The field map from the phase, without a fit: closed forms over consecutive-echo products.

Pure torch. The off-resonance f of each voxel is the |x|-weighted slope of the phase
differences of consecutive echoes (:func:`t2starmap.fit.starts.phase_difference_frequency`,
where the complex fit starts too); it is known modulo 1 / dTE_min. Each voxel's phase is then
checked against the complex model at that point, as the complex fit checks its own solution
(:mod:`t2starmap.fit.complex`, ``Failure.PHASE_MODEL``): the residual across the model must
not exceed what the noise and the residual along the model allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from t2starmap.fit import dispatch, starts
from t2starmap.fit.complex import (
    DEFAULT_CHUNK,
    DEFAULT_CUDA_CHUNK,
    frequency_limit,
    phase_thresholds,
)
from t2starmap.fit.models import R2_MAX, Complex
from t2starmap.fit.result import FitResult
from t2starmap.fit.status import Failure


@dataclass(frozen=True)
class FieldMap:
    """A field map for the field-gradient correction: ``frequency_hz`` (...) the off-resonance
    in Hz, known modulo ``wrap_period_hz`` (None: unwrapped); ``untrusted`` (...) bool, voxels
    whose field is not to be used; ``method`` how it was made."""

    frequency_hz: np.ndarray
    untrusted: np.ndarray
    wrap_period_hz: float | None
    method: str

    @classmethod
    def from_fit(cls, result: FitResult, echo_times: Sequence[float] | np.ndarray) -> FieldMap:
        """The field map of a complex fit. Voxels whose input is unusable, whose fit did not
        converge or found no signal, or whose phase does not follow the model are not
        trusted; a decay that does not follow the model (R2* clamped, misfit: through-slice
        dephasing is such a decay) says nothing against the field."""
        if result.frequency is None:
            raise ValueError(f"a {result.method} fit has no field map")
        bad = Failure.BAD_INPUT | Failure.NOT_CONVERGED | Failure.S0_NONPOSITIVE
        return cls(
            result.frequency.cpu().numpy().astype(np.float64),
            (result.reason.cpu().numpy() & int(bad | Failure.PHASE_MODEL)) != 0,
            2.0 * frequency_limit(echo_times),
            "complex fit",
        )


def field_map(
    signal: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray,
    *,
    mask: np.ndarray | None = None,
    noise_sigma: float | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
) -> FieldMap:
    """The field map of a complex ``signal`` (..., E) from its phase differences, with each
    voxel's phase check (see the module docstring); voxels outside ``mask`` are untrusted."""
    dispatch.check_noise_sigma(noise_sigma)
    how = dispatch.plan(device, torch.float32, None, workers, (DEFAULT_CHUNK, DEFAULT_CUDA_CHUNK))
    te_np = dispatch.check_echo_times(np.asarray(echo_times, dtype=np.float64))
    if np.unique(te_np).size != te_np.size:
        raise ValueError(f"a field map needs distinct echo times, got {te_np.tolist()}")
    vox = dispatch.voxels([signal], te_np.size, mask)
    order = [int(k) for k in np.argsort(te_np, kind="stable")]
    te = torch.as_tensor(te_np[order], dtype=how.dtype, device=how.device)[:, None]
    kernel = partial(
        _kernel, te=te, order=order, sigma=noise_sigma, thresholds=phase_thresholds(te_np.size)
    )
    maps, reason = dispatch.run_chunks(vox, kernel, ("frequency",), how, cast=False)
    inside = np.ones(vox.spatial, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return FieldMap(
        maps["frequency"].cpu().numpy().astype(np.float64),
        (reason.cpu().numpy() != 0) | ~inside,
        2.0 * frequency_limit(te_np),
        "phase differences",
    )


def _kernel(
    rows: tuple[torch.Tensor, ...],
    te: torch.Tensor,
    order: Sequence[int],
    sigma: float | None,
    thresholds: tuple[float, float],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One chunk: f (Hz) and the bits BAD_INPUT (non-finite or fewer than 2 non-zero echoes)
    or PHASE_MODEL (the check at the closed-form point)."""
    dtype = te.dtype
    x = rows[0]
    x_re = torch.stack([x[:, k].real for k in order]).to(dtype)
    x_im = torch.stack([x[:, k].imag for k in order]).to(dtype)
    usable = torch.isfinite(x_re).all(0) & torch.isfinite(x_im).all(0)
    x_re = torch.nan_to_num(x_re, nan=0.0, posinf=0.0, neginf=0.0)
    x_im = torch.nan_to_num(x_im, nan=0.0, posinf=0.0, neginf=0.0)
    mag = torch.hypot(x_re, x_im)
    scale = mag.amax(0).clamp_min(max(sigma or 0.0, torch.finfo(dtype).tiny))
    usable &= (mag > 0).sum(0) >= 2
    x_re, x_im, mag = x_re / scale, x_im / scale, mag / scale
    s0, r2 = starts.loglinear_centred(mag, te, starts.signal_weights(mag))
    r2 = r2.clamp(0.0, R2_MAX)
    omega = starts.phase_difference_frequency(x_re, x_im, te)
    phi = starts.phase_at_zero(x_re, x_im, te, r2, omega)
    s0 = starts.amplitude_given_rate(  # the amplitude along the demodulated echoes
        torch.cos(phi + te * omega) * x_re + torch.sin(phi + te * omega) * x_im, te, r2
    )
    model = Complex(te)
    state = model.evaluate((x_re, x_im), torch.stack([s0, r2, phi, omega]), None)[0]
    im2, re2 = state[model.layout.cost + 1], state[model.layout.cost + 2]
    chi2_max, f_max = thresholds
    rounding = (100.0 * torch.finfo(dtype).eps) ** 2 * model.energy((x_re, x_im), None)
    bad = (im2 > f_max * re2) & (im2 > rounding)
    if sigma is not None:
        bad &= im2 > chi2_max * (sigma / scale) ** 2
    bits = torch.where(usable, bad.to(dtype) * float(Failure.PHASE_MODEL), float(Failure.BAD_INPUT))
    two_pi = 2.0 * np.pi
    return {"frequency": torch.nan_to_num(omega / two_pi) * usable}, bits
