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
from t2starmap.b0 import REFERENCES as B0_REFERENCES
from t2starmap.b0 import Status, ThroughSliceCorrection, correct_through_slice
from t2starmap.derivatives import (
    REQUIRED_KEYS,
    STATUS_LEVELS,
    STATUS_WARN_FRACTION,
    UNCERTAINTY_KEYS,
)
from t2starmap.errors import BadDataError, UsageError
from t2starmap.fit import T2STAR_MAX, T2STAR_MIN, EchoSpacingError, FitResult, fit_t2star
from t2starmap.fit_complex import frequency_limit
from t2starmap.fitresult import Failure
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
    status_counts: Mapping[str, int]
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
    # the complex signal serves the complex fit, the background's real channel and the field
    # gradient; none of them wants it with a given sigma, a magnitude fit and no correction
    wanted = method == "complex" or settings.noise_sigma is None or settings.b0_correction != "none"
    signal = load_complex(parts, geometry, magnitude) if parts is not None and wanted else None
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
    correction, b0_info = _through_slice(
        settings, echo_set, geometry, magnitude, signal, result, mask, noise, device, warn
    )
    uncorrected = result
    if correction is not None:
        result = correction.corrected
    n_voxels = int(mask.sum())
    failed = result.failed.cpu().numpy() & mask
    maps, counts = _maps(echo_set, result, uncorrected, correction, magnitude, mask, noise, warn)
    fit_info, algorithm = _fit_info(echo_set, uncorrected, noise, b0_info, correction, warnings)
    return SetFit(
        maps=maps,
        fit_info=fit_info,
        n_voxels=n_voxels,
        failed_fraction=float(failed.sum() / max(n_voxels, 1)),
        noise=noise,
        status_counts=counts,
        noise_model=uncorrected.noise_model,
        fit_method=uncorrected.method,
        algorithm=algorithm,
        device=result.device,
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
        magnitude=magnitude,
    )


def _maps(
    echo_set: EchoSet,
    result: FitResult,
    uncorrected: FitResult,
    correction: ThroughSliceCorrection | None,
    magnitude: np.ndarray,
    mask: np.ndarray,
    noise: NoiseEstimate,
    warn: Callable[[str], None],
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The arrays to publish (OUTPUTS key -> array) and the voxel count of each fit-status
    label; warns of what is left out and of failure reasons shared by many voxels."""
    failed = result.failed.cpu().numpy() & mask
    keys = [k for k in REQUIRED_KEYS if k != "status"]
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
    maps["status"] = labels = status_labels(result.reason, mask, correction)
    counts = {s.name: int((labels[mask] == s.index).sum()) for s in STATUS_LEVELS}
    for level in STATUS_LEVELS[1:]:
        share = counts[level.name] / max(int(mask.sum()), 1)
        if share >= STATUS_WARN_FRACTION and level.name != "not_gradient_corrected":
            warn(
                f"{echo_set.name}: {100 * share:.0f} % of the mask: {level.meaning}"
                + (f"; {level.advice}" if level.advice else "")
            )
    if correction is not None:
        maps["r2star_uncorrected"] = _map_array(uncorrected, "r2star", mask, failed)
        maps["gradz"] = np.where(mask, correction.gradient_hz_per_mm, 0.0).astype(np.float32)
    if uncorrected.frequency is not None:
        maps["frequency"] = _map_array(uncorrected, "frequency", mask, failed)
        maps["magnitude"] = np.nan_to_num(magnitude[..., 0]).astype(np.float32)
    return maps, counts


def _fit_info(
    echo_set: EchoSet,
    fit: FitResult,
    noise: NoiseEstimate,
    b0_info: Mapping[str, Any],
    correction: ThroughSliceCorrection | None,
    warnings: list[str],
) -> tuple[dict[str, Any], str]:
    """The fit's fields for the map sidecars, and the ``EstimationAlgorithm`` text. ``fit``:
    the fit before any field-gradient correction (its method and noise model)."""
    algorithm = ESTIMATION_ALGORITHMS.get((fit.method, fit.noise_model), fit.method)
    if correction is not None:
        algorithm += (
            "; then corrected for the through-slice field gradient: "
            + ESTIMATION_ALGORITHMS[("through-slice", "gaussian")]
        )
    info: dict[str, Any] = {
        "EstimationAlgorithm": algorithm,
        "FitMethod": fit.method,
        "NoiseModel": fit.noise_model,
        "NoiseSigma": fit.noise_sigma,
        "NoiseSigmaMethod": noise.method or "none",
        "NoiseCoils": fit.noise_coils,
        "ComputeDevice": fit.device,
        "T2starRange": [T2STAR_MIN, T2STAR_MAX],
        "SoftwareName": "t2starmap",
        "SoftwareVersion": __version__,
    }
    if noise.reason:
        info["NoiseSigmaNote"] = noise.reason
    info.update(b0_info)
    if fit.frequency is not None:
        # f is only known modulo 1/dTE: the map is wrapped into +-1/(2 dTE_min), not unwrapped
        info["FieldMapWrapLimit"] = frequency_limit(np.asarray(echo_set.echo_times))
    if warnings:
        info["Warnings"] = list(warnings)
    return info, algorithm


#: Failure bits -> fit-status label, most telling first: a voxel with several reasons (LM
#: pushing against the R2* >= 0 bound also fails to converge) gets the first that applies.
_STATUS_ORDER = (
    (Failure.BAD_INPUT, 4),
    (Failure.R2STAR_LOW, 1),
    (Failure.R2STAR_HIGH, 2),
    (Failure.S0_NONPOSITIVE, 5),
    (Failure.PHASE_MODEL, 6),
    (Failure.NOT_CONVERGED, 3),
)


def status_labels(
    reason: torch.Tensor | None, mask: np.ndarray, correction: ThroughSliceCorrection | None
) -> np.ndarray:
    """The fit-status map (uint8, :data:`t2starmap.derivatives.STATUS_LEVELS`) from the fit's
    Failure bits, with label 7 for good voxels the field-gradient correction left out."""
    bits = np.zeros(mask.shape, dtype=np.uint8) if reason is None else reason.cpu().numpy()
    labels = np.zeros(mask.shape, dtype=np.uint8)
    if correction is not None:
        labels[mask & (correction.status != Status.CORRECTED)] = 7
    for flag, label in reversed(_STATUS_ORDER):  # the first in the order is written last
        labels[(bits & int(flag)) != 0] = label
    labels[~mask] = 0
    return labels


def _through_slice(
    settings: Settings,
    echo_set: EchoSet,
    geometry: Geometry,
    magnitude: np.ndarray,
    signal: np.ndarray | None,
    result: FitResult,
    mask: np.ndarray,
    noise: NoiseEstimate,
    device: torch.device,
    warn: Callable[[str], None],
) -> tuple[ThroughSliceCorrection | None, dict[str, Any]]:
    """The through-slice field-gradient correction when ``--b0-correction`` asks for it and
    the set allows it (:mod:`t2starmap.b0`), and what the sidecars say about it. ``auto``
    without what it needs (phase, slice metadata, 3 echoes, 3 slices): no correction, a
    warning that says why; ``through-slice`` without it: a usage error (exit 64)."""
    asked = settings.b0_correction
    first = echo_set.echoes[0].path
    if asked == "none":
        return None, {"B0Correction": "none", "B0CorrectionNote": "--b0-correction none"}
    if signal is None:
        why = "the set has no phase or real/imaginary parts to measure the field with"
        if asked == "through-slice":
            raise UsageError(f"{first}: --b0-correction through-slice: {why}")
        log.info("%s: no field-gradient correction: %s", echo_set.name, why)
        return None, {"B0Correction": "none", "B0CorrectionNote": why}
    meta = echo_set.echoes[0].metadata
    if result.frequency is not None:  # the complex fit gave the field map already
        field: np.ndarray = result.frequency.cpu().numpy()
        extra: dict[str, Any] = {
            "field_failed": result.failed.cpu().numpy(),
            "wrap_period_hz": 2.0 * frequency_limit(np.asarray(echo_set.echo_times)),
        }
    else:
        field, extra = signal, {}
    try:
        correction = correct_through_slice(
            magnitude,
            field,
            echo_times=echo_set.echo_times,
            affine=geometry.affine,
            mr_acquisition_type=meta.get("MRAcquisitionType"),
            slice_thickness_mm=_number(meta.get("SliceThickness")),
            spacing_between_slices_mm=_number(meta.get("SpacingBetweenSlices")),
            slice_axis=geometry.slice_axis,
            mask=mask,
            noise_sigma=noise.sigma,
            uncorrected=result,
            device=device,
            **extra,
        )
    except ValueError as err:
        if asked == "through-slice":
            raise UsageError(f"{first}: --b0-correction through-slice: {err}") from err
        warn(f"{echo_set.name}: no field-gradient correction: {err}")
        return None, {"B0Correction": "none", "B0CorrectionNote": str(err)}
    corrected = correction.status == Status.CORRECTED
    fraction = float(corrected[mask].mean()) if mask.any() else 0.0
    log.info(
        "%s: through-slice correction in %.1f%% of the mask (slices %.3g mm, spacing %.3g mm)",
        echo_set.name,
        100 * fraction,
        correction.thickness_mm,
        correction.spacing_mm,
    )
    return correction, {
        "B0Correction": "through-slice",
        "B0CorrectionReference": list(B0_REFERENCES),
        "B0CorrectionThreshold": correction.threshold,
        "B0CorrectedFraction": fraction,
        "B0SliceThickness": correction.thickness_mm,
        "B0SliceSpacing": correction.spacing_mm,
    }


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


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
