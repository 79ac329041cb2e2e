"""The maps of one echo set: read the echoes, check them, estimate the noise, mask, fit.

Returns arrays and what the record and sidecars say about them; writes nothing (the workflow
publishes). Imports torch (through :mod:`t2starmap.fit`): only participant level needs it.

Which fit: ``--fit-method`` as given; ``auto`` is ``complex`` when the set has part-phase or
part-real/imag files beside its magnitude echoes (:mod:`t2starmap.parts`), else the default.

Which noise level (each step recorded in the sidecars as ``NoiseSigmaMethod``):
1. ``--noise-sigma`` (and ``--noise-coils``) when given;
2. else :func:`t2starmap.noise.estimate_noise` on the first echo, from the background's real
   channel where complex parts exist, else from its magnitude (sigma and effective coils);
3. for the magnitude fits with 3 or more echoes, the residual noise of bright tissue replaces
   the background's when it is clearly lower (non-uniform noise, :func:`noise_for_fit`); the
   complex fit keeps the background's real-channel sigma (it has no noise floor to place).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from t2starmap import __version__
from t2starmap.derivatives import REQUIRED_KEYS, UNCERTAINTY_KEYS
from t2starmap.errors import BadDataError, UsageError
from t2starmap.fit import T2STAR_MAX, T2STAR_MIN, EchoSpacingError, FitResult, fit_t2star
from t2starmap.layout import EchoSet
from t2starmap.limits import DEFAULT_METHOD, ESTIMATION_ALGORITHMS
from t2starmap.nifti import Geometry, load_magnitude
from t2starmap.noise import (
    NoiseEstimate,
    estimate_noise,
    noise_for_fit,
    noise_from_residuals,
    signal_mask,
)
from t2starmap.parts import choose_method, find_parts, load_complex
from t2starmap.settings import Settings

log = logging.getLogger("t2starmap")


@dataclass(frozen=True)
class SetFit:
    """The maps of one echo set (OUTPUTS key -> array in the echoes' voxel order: float32
    maps, bool masks) and what was learnt on the way.

    ``fit_info``: the fit's fields for the map sidecars (method, algorithm, noise, device).
    """

    maps: Mapping[str, np.ndarray]
    fit_info: Mapping[str, Any]
    n_voxels: int
    failed_fraction: float
    noise: NoiseEstimate
    noise_model: str
    fit_method: str
    algorithm: str
    device: str
    seconds: float
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: The stacked echoes the fit read, (*shape, n_echoes) float32 (voxels with an unusable
    #: sample NaN), so the report need not read them again; None once dropped.
    magnitude: np.ndarray | None = None


def fit_echo_set(
    settings: Settings, echo_set: EchoSet, geometry: Geometry, device: torch.device
) -> SetFit:
    """Read, check and fit one set. Raises BadDataError / UsageError naming the first echo."""
    started = time.perf_counter()
    warnings: list[str] = []

    def warn(message: str) -> None:
        log.warning("%s", message)
        warnings.append(message)

    first = echo_set.echoes[0].path
    parts = find_parts(echo_set)
    method = choose_method(settings.fit_method, parts, str(first), DEFAULT_METHOD)
    magnitude = _usable_magnitude(echo_set, geometry, warn)
    signal = load_complex(parts, geometry, magnitude) if parts is not None else None
    noise = _noise_level(settings, echo_set, magnitude, signal, method, warn)
    mask = signal_mask(magnitude, noise.sigma, noise.coils)
    if not mask.any():
        raise BadDataError(f"{first}: no voxel of set {echo_set.name} rises above the noise")
    try:
        result = fit_t2star(
            signal if method == "complex" and signal is not None else magnitude,
            echo_set.echo_times,
            method=method,
            mask=mask,
            device=device,
            noise_sigma=noise.sigma,
            noise_coils=noise.coils if method != "complex" else 1.0,
            workers=settings.nprocs,
        )
    except EchoSpacingError as err:
        raise UsageError(f"{first}: --fit-method {settings.fit_method}: {err}") from err
    except ValueError as err:
        raise BadDataError(f"{first}: {err}") from err
    n_voxels = int(mask.sum())
    failed = result.failed.cpu().numpy() & mask
    keys = list(REQUIRED_KEYS)
    if len(echo_set.echoes) == 2:
        keys.remove("rmse")
        if noise.sigma is None:
            keys = [k for k in keys if k not in UNCERTAINTY_KEYS]
            warn(
                f"{echo_set.name}: only 2 echoes and no noise level: no standard error can be "
                "computed, so no desc-stderr maps are written (and no RMSE map: the fit is exact)"
            )
        else:
            warn(f"{echo_set.name}: only 2 echoes: the fit is exact, so no RMSE map is written")
    maps = {k: _map_array(result, k, mask, failed) for k in keys}
    if result.frequency is not None:
        maps["frequency"] = _map_array(result, "frequency", mask, failed)
        maps["magnitude"] = np.nan_to_num(magnitude[..., 0]).astype(np.float32)
    algorithm = ESTIMATION_ALGORITHMS.get((result.method, result.noise_model), result.method)
    fit_info: dict[str, Any] = {
        "EstimationAlgorithm": algorithm,
        "FitMethod": result.method,
        "NoiseModel": result.noise_model,
        "NoiseSigma": result.noise_sigma,
        "NoiseSigmaMethod": noise.method or "none",
        "NoiseCoils": result.noise_coils,
        "ComputeDevice": result.device,
        "T2starRange": [T2STAR_MIN, T2STAR_MAX],
        "SoftwareName": "t2starmap",
        "SoftwareVersion": __version__,
    }
    if noise.reason:
        fit_info["NoiseSigmaNote"] = noise.reason
    if warnings:
        fit_info["Warnings"] = list(warnings)
    return SetFit(
        maps=maps,
        fit_info=fit_info,
        n_voxels=n_voxels,
        failed_fraction=float(failed.sum() / max(n_voxels, 1)),
        noise=noise,
        noise_model=result.noise_model,
        fit_method=result.method,
        algorithm=algorithm,
        device=result.device,
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
        magnitude=magnitude,
    )


def _usable_magnitude(
    echo_set: EchoSet, geometry: Geometry, warn: Callable[[str], None]
) -> np.ndarray:
    """The stacked echoes, voxels with a NaN/inf/negative sample set to NaN (the fit flags
    them). Raises BadDataError when no voxel is usable."""
    magnitude = load_magnitude(echo_set, geometry)
    unusable = ~np.all(np.isfinite(magnitude), axis=-1) | np.any(magnitude < 0, axis=-1)
    if unusable.all() or not np.any(magnitude[~unusable] > 0):
        raise BadDataError(
            f"{echo_set.echoes[0].path}: no usable signal in set {echo_set.name} (all voxels "
            "are zero, negative or not finite)"
        )
    if unusable.any():
        warn(
            f"{echo_set.name}: {int(unusable.sum())} voxel(s) with NaN/inf or negative "
            "samples are flagged as failed"
        )
        magnitude[unusable] = np.nan
    return magnitude


def _noise_level(
    settings: Settings,
    echo_set: EchoSet,
    magnitude: np.ndarray,
    signal: np.ndarray | None,
    method: str,
    warn: Callable[[str], None],
) -> NoiseEstimate:
    """The noise level the fit uses (module docstring); sigma None when none can be had."""
    if settings.noise_sigma is not None:
        coils = settings.noise_coils or 1.0
        log.info(
            "%s: noise sigma %.4g (coils %g) given on the command line",
            echo_set.name,
            settings.noise_sigma,
            coils,
        )
        return NoiseEstimate(settings.noise_sigma, 0, coils=coils, method="given")
    real = None if signal is None else signal[..., 0].real
    estimate = estimate_noise(magnitude[..., 0], real=real, coils=settings.noise_coils)
    if method != "complex" and len(echo_set.echoes) >= 3:
        estimate = noise_for_fit(estimate, noise_from_residuals(magnitude, echo_set.echo_times))
    if estimate.sigma is None:
        warn(
            f"{echo_set.name}: noise level could not be estimated ({estimate.reason}); "
            "falling back to the Gaussian fit"
        )
    else:
        log.info(
            "%s: noise sigma %.4g, coils %.3g (%s, %d voxels)%s",
            echo_set.name,
            estimate.sigma,
            estimate.coils,
            estimate.method,
            estimate.n_background,
            f": {estimate.reason}" if estimate.reason else "",
        )
    return estimate


def _map_array(result: FitResult, key: str, mask: np.ndarray, failed: np.ndarray) -> np.ndarray:
    if key == "signal":
        return mask
    if key == "failed":
        return failed
    values: torch.Tensor = getattr(result, key)
    return np.where(mask, values.cpu().numpy(), 0.0).astype(np.float32)
