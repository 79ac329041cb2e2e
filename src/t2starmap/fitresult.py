"""What every fit returns, and the device rule: shared by the magnitude fits
(:mod:`t2starmap.fit`) and the complex fit (:mod:`t2starmap.fit_complex`)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from t2starmap import limits


class Failure(enum.IntFlag):
    """Why a voxel's fit is not to be trusted: the bits of ``FitResult.reason`` and
    ``ComplexFit.reason`` (what each means for each fit: :class:`FitResult`)."""

    R2STAR_LOW = 1  # R2* below 1/T2STAR_MAX (clamped there): signal not decaying
    R2STAR_HIGH = 2  # R2* above 1/T2STAR_MIN (clamped there)
    NOT_CONVERGED = 4
    BAD_INPUT = 8  # NaN/inf in a sample, or fewer than two non-zero echoes
    S0_NONPOSITIVE = 16
    PHASE_MODEL = 32  # the phase does not follow phi0 + 2 pi f TE (complex fit only)


@dataclass(frozen=True)
class FitResult:
    """Maps of one fit; every tensor has the signal's shape without its echo axis.

    t2star: T2* in s.          r2star: R2* in 1/s (= 1/t2star wherever t2star > 0).
    s0: S0 in signal units.    rmse: root-mean-square residual of the magnitude against the
        model's prediction (S0 exp(-TE R2*); sqrt(that^2 + 2 L sigma^2) for the noise-aware
        fit, the RMS of a Rician or noncentral-chi magnitude), signal units.
    t2star_se, r2star_se, s0_se: standard errors from the Fisher information at the solution
        (delta method for T2*), from ``noise_sigma`` when given, else from the residual
        variance (0 where there are only two echoes and no noise level: no residual is left).
    failed: bool, the voxel's fit is not to be trusted; False outside the mask. Exactly
        ``reason != 0``.
    reason: uint8, the voxel's :class:`Failure` bits (0: a good fit, and outside the mask).
        For the magnitude methods (:mod:`t2starmap.fit`):
        BAD_INPUT (8): a NaN, inf or negative sample, or fewer than two positive samples at
        different echo times; such a voxel carries this bit alone and its maps are 0.
        NOT_CONVERGED (4): Levenberg-Marquardt (``nlls``, ``nlls-gaussian``) stopped at its
        iteration cap with a step still above its tolerance, or the fit came out non-finite
        (the closed forms ``loglin``, ``wls``, ``arlo`` always converge).
        R2STAR_LOW (1): the fitted R2* is below 1/T2STAR_MAX (signal flat or rising with TE;
        ARLO with no decay to measure), reported clamped there.
        R2STAR_HIGH (2): the fitted R2* is above 1/T2STAR_MIN (decay faster than the first
        echo can see), reported clamped there. It needs the decay still visible at the second
        echo: ARLO's R2* cannot exceed 3/dTE (its Simpson integral of a decay gone by the
        second echo), so with an echo spacing dTE above 3 T2STAR_MIN it never raises this bit;
        where only one echo keeps a non-negligible S^2 weight, ``wls`` sees no slope and gives
        R2STAR_LOW, and LM from that start NOT_CONVERGED; a voxel whose first echo is below the
        noise is noise alone to every fit.
        S0_NONPOSITIVE (16): the fitted S0 is <= 0 (for the noise-aware fit: S0^2 <= 0, the
        whole decay under the noise floor).
        The other bits may combine; PHASE_MODEL (32) is the complex fit's alone (see
        :mod:`t2starmap.fit_complex`). None only where a result was built by hand.
    method: the method asked for; noise_model: "rician" (noise-aware fit, one coil),
    "noncentral-chi" (noise-aware fit of a root-sum-of-squares image, ``noise_coils`` > 1) or
    "gaussian"; noise_sigma: the noise level used (None when none was given); noise_coils:
    the effective coil count L the noise-aware fit used (1 for every other model);
    device: where it ran.
    frequency, frequency_se (Hz), phase0 (rad): the ``complex`` fit's field map, its standard
        error and the phase at TE = 0 (None for the magnitude methods).
    """

    t2star: torch.Tensor
    r2star: torch.Tensor
    s0: torch.Tensor
    rmse: torch.Tensor
    t2star_se: torch.Tensor
    r2star_se: torch.Tensor
    s0_se: torch.Tensor
    failed: torch.Tensor
    method: str
    device: str
    noise_sigma: float | None
    noise_model: str = "gaussian"
    noise_coils: float = 1.0
    frequency: torch.Tensor | None = None
    frequency_se: torch.Tensor | None = None
    phase0: torch.Tensor | None = None
    reason: torch.Tensor | None = None


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
    """Echo times as float64 seconds (n_echoes,): :func:`t2starmap.limits.check_echo_times`,
    which also takes tensors here. Raises ValueError."""
    if isinstance(echo_times, torch.Tensor):
        echo_times = echo_times.detach().cpu().numpy()
    return limits.check_echo_times(echo_times)


def fit_device_and_chunk(
    chunk_size: int | None,
    noise_sigma: float | None,
    device: str | torch.device | None,
    defaults: tuple[int, int],
) -> tuple[torch.device, int]:
    """The argument checks every voxel-wise fit shares: a positive ``chunk_size`` (None: the
    ``defaults`` (CPU, CUDA) of the fit, for the device) and a positive finite noise sigma.
    Returns the device and the chunk size. Raises ValueError."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if noise_sigma is not None and not (np.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise sigma must be a positive number, got {noise_sigma!r}")
    dev = resolve_device(device)
    if chunk_size is None:
        chunk_size = defaults[1] if dev.type == "cuda" else defaults[0]
    return dev, chunk_size


def flat_mask(mask: np.ndarray | torch.Tensor | None, spatial: tuple[int, ...]) -> torch.Tensor:
    """``mask`` (``spatial`` shape, None: every voxel) as a flat bool tensor on the CPU.
    Raises ValueError when its shape is not ``spatial``."""
    n_vox = int(np.prod(spatial)) if spatial else 1
    if mask is None:
        return torch.ones(n_vox, dtype=torch.bool)
    inside = torch.as_tensor(mask).to(torch.bool).cpu()
    if tuple(inside.shape) != spatial:
        raise ValueError(f"mask shape {tuple(inside.shape)} does not match signal {spatial}")
    return inside.reshape(-1)


def chunk_rows(
    flat: torch.Tensor,
    index: torch.Tensor | None,
    start: int,
    stop: int,
    dev: torch.device,
    dtype: torch.dtype | None = None,
) -> tuple[slice | torch.Tensor, torch.Tensor]:
    """Rows ``start:stop`` of the voxels to fit and where their results go: a slice of ``flat``
    (n_voxels, E) when every voxel is fitted (``index`` None), else those of ``index``. The rows
    are moved to ``dev`` (and ``dtype`` when given) in one copy, the returned index to ``dev``."""
    if index is None:
        return slice(start, stop), flat[start:stop].to(device=dev, dtype=dtype)
    sel = index[start:stop]
    return sel.to(dev), flat[sel.to(flat.device)].to(device=dev, dtype=dtype)
