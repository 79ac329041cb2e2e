"""The maps of one echo set: read the echoes, check them, estimate the noise, mask, fit.

Returns arrays and what the record and sidecars say about them; writes nothing (the workflow
publishes). Imports torch (through :mod:`t2starmap.fit`): only participant level needs it.
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
from t2starmap.derivatives import OUTPUTS
from t2starmap.errors import BadDataError, UsageError
from t2starmap.fit import T2STAR_MAX, T2STAR_MIN, EchoSpacingError, FitResult, fit_t2star
from t2starmap.layout import EchoSet
from t2starmap.limits import ESTIMATION_ALGORITHMS
from t2starmap.nifti import Geometry, load_magnitude
from t2starmap.noise import estimate_noise, signal_mask
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
    noise_sigma: float | None
    noise_model: str
    fit_method: str
    algorithm: str
    device: str
    seconds: float
    warnings: tuple[str, ...] = field(default_factory=tuple)


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
    magnitude = _usable_magnitude(echo_set, geometry, warn)
    sigma = _noise_level(settings, echo_set, magnitude, warn)
    mask = signal_mask(magnitude, sigma)
    if not mask.any():
        raise BadDataError(f"{first}: no voxel of set {echo_set.name} rises above the noise")
    try:
        result = fit_t2star(
            magnitude,
            echo_set.echo_times,
            method=settings.fit_method,
            mask=mask,
            device=device,
            noise_sigma=sigma,
        )
    except EchoSpacingError as err:
        raise UsageError(f"{first}: --fit-method {settings.fit_method}: {err}") from err
    except ValueError as err:
        raise BadDataError(f"{first}: {err}") from err
    n_voxels = int(mask.sum())
    failed = result.failed.cpu().numpy() & mask
    algorithm = ESTIMATION_ALGORITHMS.get((result.method, result.noise_model), result.method)
    fit_info: dict[str, Any] = {
        "EstimationAlgorithm": algorithm,
        "FitMethod": result.method,
        "NoiseModel": result.noise_model,
        "NoiseSigma": result.noise_sigma,
        "NoiseSigmaSource": (
            "command line"
            if settings.noise_sigma is not None
            else "background"
            if result.noise_sigma is not None
            else "none"
        ),
        "ComputeDevice": result.device,
        "T2starRange": [T2STAR_MIN, T2STAR_MAX],
        "SoftwareName": "t2starmap",
        "SoftwareVersion": __version__,
    }
    if warnings:
        fit_info["Warnings"] = list(warnings)
    return SetFit(
        maps={s.key: _map_array(result, s.key, mask, failed) for s in OUTPUTS},
        fit_info=fit_info,
        n_voxels=n_voxels,
        failed_fraction=float(failed.sum() / max(n_voxels, 1)),
        noise_sigma=result.noise_sigma,
        noise_model=result.noise_model,
        fit_method=result.method,
        algorithm=algorithm,
        device=result.device,
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
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
    if len(echo_set.echoes) == 2:
        warn(
            f"{echo_set.name}: only 2 echoes: the fit is exact, so RMSE is 0 and no "
            "goodness of fit can be given"
        )
    return magnitude


def _noise_level(
    settings: Settings, echo_set: EchoSet, magnitude: np.ndarray, warn: Callable[[str], None]
) -> float | None:
    """The noise SD the fit uses: given, estimated from the background, or None."""
    if settings.noise_sigma is not None:
        log.info(
            "%s: noise sigma %.4g given on the command line", echo_set.name, settings.noise_sigma
        )
        return settings.noise_sigma
    estimate = estimate_noise(magnitude[..., 0])
    if estimate.sigma is None:
        warn(
            f"{echo_set.name}: noise level could not be estimated from the "
            f"background ({estimate.reason}); falling back to the Gaussian fit"
        )
    else:
        log.info(
            "%s: noise sigma %.4g from %d background voxels",
            echo_set.name,
            estimate.sigma,
            estimate.n_background,
        )
    return estimate.sigma


def _map_array(result: FitResult, key: str, mask: np.ndarray, failed: np.ndarray) -> np.ndarray:
    if key == "signal":
        return mask
    if key == "failed":
        return failed
    values: torch.Tensor = getattr(result, key)
    return np.where(mask, values.cpu().numpy(), 0.0).astype(np.float32)
