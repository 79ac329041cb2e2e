"""What every fit returns, and the device rule: shared by the magnitude fits
(:mod:`t2starmap.fit`) and the complex fit (:mod:`t2starmap.fit_complex`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from t2starmap import limits


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
    failed: bool, the voxel's fit is not to be trusted (see module docstring); False outside
        the mask.
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
