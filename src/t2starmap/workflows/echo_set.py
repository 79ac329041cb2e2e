"""The maps of one echo set: read the echoes, check them, estimate the noise, mask, fit.

Returns arrays and what the record and sidecars say about them; writes nothing (the workflow
publishes) and words no error in command-line terms (:class:`OptionError` names the option;
the caller words it). Imports torch (through :mod:`t2starmap.fit`): only participant level
needs it.

Which fit: ``Options.fit_method``; ``auto`` is ``complex`` when the set has part-phase or
part-real/imag files beside its magnitude echoes (:mod:`t2starmap.bids.parts`), else the default.
Each model runs once: the fit the method asks for, then, where the through-slice correction
runs, the corrected fit started from it. The correction's field map is the complex fit's when
there is one, else the closed form from the phase differences (:mod:`t2starmap.fit.phase`):
with default options a set with phase takes 2 solver runs (``SetFit.solver_runs``).

Which noise level (the same for every fit method of a set, so the mask is too; recorded in
the sidecars as ``NoiseSigmaMethod``, every candidate in ``NoiseSigmaCandidates``):
1. ``Options.noise_sigma`` (and ``noise_coils``) when given;
2. else :func:`t2starmap.noise.cross_check` of the first echo's background (its real channel
   where complex parts exist, else its magnitude: sigma and effective coils), the echo
   differences in the same air (which cancel ghosts) and, with 3 or more echoes, the
   residuals of bright tissue (an upper bound: misfit adds to them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from t2starmap import __version__
from t2starmap.b0.correction import REFERENCES as B0_REFERENCES
from t2starmap.b0.correction import SliceGeometry, ThroughSliceCorrection, correct_through_slice
from t2starmap.b0.profiles import SliceProfile
from t2starmap.bids.layout import EchoSet
from t2starmap.bids.nifti import READ_THREADS, Geometry, read_magnitude
from t2starmap.bids.outputs import (
    ESTIMATION_ALGORITHMS,
    REQUIRED_KEYS,
    UNCERTAINTY_KEYS,
    phase_sidecar,
)
from t2starmap.bids.parts import Parts, complex_available, find_parts, load_complex
from t2starmap.bids.slice_headers import profile_from_metadata
from t2starmap.bids.slice_profiles import parse_slice_profile
from t2starmap.errors import BadDataError, NotApplicableError, UsageError
from t2starmap.fit import (
    T2STAR_MAX,
    T2STAR_MIN,
    Compute,
    EchoSpacingError,
    FitResult,
    NoiseModel,
    fit_complex,
    fit_t2star,
    frequency_limit,
)
from t2starmap.fit import status as fit_status
from t2starmap.fit.limits import DEFAULT_METHOD, METHODS, Method
from t2starmap.fit.phase import INCOHERENT, FieldMap, PhaseAnalysis, analyse_phase
from t2starmap.fit.result import MISFIT_P
from t2starmap.fit.status import Correction
from t2starmap.noise import NoiseEstimate, all_candidates, cross_check, signal_mask
from t2starmap.noise.gain import noise_gain, scaled_echoes, to_image_units

log = logging.getLogger("t2starmap")


@dataclass(frozen=True)
class Options:
    """What the caller chose for every set: the fit method (one of
    :data:`t2starmap.fit.limits.FIT_CHOICES`), a known noise level and coil count, the
    through-slice correction (``auto``, ``none``, ``through-slice``) and its slice profile
    (``auto``: the headers', else estimated; or a spec of
    :func:`t2starmap.bids.slice_profiles.parse_slice_profile`), the compute device and the CPU chunk
    workers."""

    fit_method: str = DEFAULT_METHOD
    noise_sigma: float | None = None
    noise_coils: float | None = None
    b0_correction: str = "auto"
    slice_profile: str = "auto"
    device: torch.device | str | None = None
    workers: int = 1

    @property
    def compute(self) -> Compute:
        """Where and how every fit of the set runs."""
        return Compute(device=self.device, workers=self.workers)


class OptionError(UsageError):
    """An option (``option``, an :class:`Options` field) this set cannot honour; exit 64, or
    65 (``bad_data``) when the data, not the option, are at fault. The caller words it:
    ``where``, the option, its ``value``, and ``reason``."""

    def __init__(
        self, where: str, option: str, value: Any, reason: str, bad_data: bool = False
    ) -> None:
        super().__init__(f"{where}: {option} {value}: {reason}")
        self.where, self.option, self.value, self.reason = where, option, value, reason
        self.bad_data = bad_data
        if bad_data:
            self.exit_code = BadDataError.exit_code


@dataclass(frozen=True)
class SetFit:
    """The maps of one echo set (OUTPUTS key -> array in the echoes' voxel order: float32
    maps, bool masks, the uint8 fit-status labels) and what was learnt on the way.

    ``fit_info``: the fit's fields for the map sidecars (method, algorithm, noise, device);
    ``status_counts``: mask voxels per fit-status label name; ``solver_runs``: how many times
    the solver ran over the set; ``steps``: seconds per step (read, noise, phase, fit,
    correction, maps).
    """

    maps: Mapping[str, np.ndarray]
    fit_info: Mapping[str, Any]
    n_voxels: int
    #: Mask share whose fit failed (no usable estimate), and whose decay does not follow the
    #: model (an estimate exists, its SE inflated): apart (:mod:`t2starmap.fit.status`).
    failed_fraction: float
    misfit_fraction: float
    noise: NoiseEstimate
    status_counts: Mapping[str, int]
    noise_model: str
    fit_method: str
    algorithm: str
    device: str
    seconds: float
    solver_runs: int = 0
    steps: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: The phase or real/imaginary files read (echo by echo): none when nothing needed them.
    part_files: tuple[Path, ...] = ()
    #: The stacked echoes the fit read, (*shape, n_echoes) float32 (voxels with an unusable
    #: sample NaN) or, from int16 files and the like, their integer type; so that the report
    #: need not read them again; None once dropped.
    magnitude: np.ndarray | None = None


class _Clock(dict[str, float]):
    """Seconds spent in each named step of one set (read, noise, fit, field map, correction,
    maps), in the order they ran."""

    def __init__(self) -> None:
        super().__init__()
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """The time since the last lap (or since the clock was made) goes to ``step``."""
        now = time.perf_counter()
        self[step] = self.get(step, 0.0) + now - self._last
        self._last = now


class _Warnings(list[str]):
    """The set's warnings: logged, and kept for the sidecars and the record."""

    def add(self, message: str) -> None:
        log.warning("%s", message)
        self.append(message)


def fit_echo_set(echo_set: EchoSet, geometry: Geometry, options: Options) -> SetFit:
    """Read, check and fit one set. Raises BadDataError naming the first echo, OptionError
    for an option the set cannot honour."""
    started = time.perf_counter()
    clock, warnings = _Clock(), _Warnings()
    first = str(echo_set.echoes[0].path)
    parts = find_parts(echo_set)
    method = _method(options.fit_method, complex_available(parts), first)
    magnitude, unusable = _usable_magnitude(echo_set, geometry, warnings, _read_threads(options))
    # the complex signal serves the complex fit, the background's real channel and the field
    # map; none of them wants it with a given sigma, a magnitude fit and no correction
    wanted = method == "complex" or options.noise_sigma is None or options.b0_correction != "none"
    signal = (
        load_complex(parts, geometry, magnitude, _read_threads(options))
        if parts is not None and wanted
        else None
    )
    clock.lap("read")
    noise = _noise_level(options, echo_set, magnitude, signal, warnings)
    gain = noise_gain(noise)  # a noise map (parallel imaging): the fits see uniform noise
    scaled, scaled_signal = scaled_echoes(magnitude, gain), scaled_echoes(signal, gain)
    mask = signal_mask(scaled, noise.sigma, noise.coils, nonfinite=unusable)
    clock.lap("noise")
    if not mask.any():
        raise BadDataError(f"{first}: no voxel of set {echo_set.name} rises above the noise")
    phase = _phase(options, echo_set, scaled_signal, mask, noise, method, warnings)
    if phase is not None:
        clock.lap("phase")
    result = _fit(options, echo_set, scaled, scaled_signal, method, mask, noise, phase)
    clock.lap("fit")
    correction, b0_info = _through_slice(
        options, echo_set, geometry, scaled, phase, result, mask, warnings, clock
    )
    if phase is not None:
        b0_info = {**phase_sidecar(phase), **b0_info}
    final = result if correction is None else correction.corrected
    maps, counts = _maps(echo_set, final, result, correction, magnitude, mask, noise, warnings)
    to_image_units(maps, gain)
    fit_info, algorithm = _fit_info(echo_set, result, noise, b0_info, correction, warnings)
    shares = _shares(final.reason.cpu().numpy(), mask, fit_info)
    clock.lap("maps")
    return SetFit(
        maps=maps,
        fit_info=fit_info,
        n_voxels=int(mask.sum()),
        failed_fraction=shares[0],
        misfit_fraction=shares[1],
        noise=noise,
        status_counts=counts,
        noise_model=result.noise_model,
        fit_method=result.method,
        algorithm=algorithm,
        device=final.device,
        seconds=time.perf_counter() - started,
        solver_runs=final.solver_runs,
        steps=dict(clock),
        part_files=_read_parts(parts) if signal is not None else (),
        warnings=tuple(warnings),
        magnitude=magnitude,
    )


def _shares(reason: np.ndarray, mask: np.ndarray, fit_info: dict[str, Any]) -> tuple[float, float]:
    """(share of the mask whose fit failed, share whose decay does not follow the model),
    also put in ``fit_info`` (the sidecars) as FitFailedFraction and MisfitFraction."""
    size = max(int(mask.sum()), 1)
    failed = float((fit_status.fit_failed(reason) & mask).sum() / size)
    misfit = float((fit_status.misfit(reason) & mask).sum() / size)
    fit_info.update({"FitFailedFraction": failed, "MisfitFraction": misfit})
    return failed, misfit


def _read_threads(options: Options) -> int:
    """Threads that read the echoes: the fit's workers (``--nprocs``), at most
    :data:`t2starmap.bids.nifti.READ_THREADS`."""
    return max(1, min(options.workers, READ_THREADS))


def _read_parts(parts: Parts | None) -> tuple[Path, ...]:
    """The files of ``parts``, echo by echo."""
    return () if parts is None else tuple(p for echo in parts.files for p in echo)


def _phase(
    options: Options,
    echo_set: EchoSet,
    signal: np.ndarray | None,
    mask: np.ndarray,
    noise: NoiseEstimate,
    method: Method,
    warnings: _Warnings,
) -> PhaseAnalysis | None:
    """The phase checks of a set with phase, when a fit or the correction will use the phase
    (:func:`t2starmap.fit.phase.analyse_phase`); a warning for phase that follows no
    frequency, a note for a bipolar read-out."""
    if signal is None or (method != "complex" and options.b0_correction == "none"):
        return None
    phase = analyse_phase(
        signal, echo_set.echo_times, mask=mask, noise_sigma=noise.sigma,
        compute=options.compute)  # fmt: skip
    if phase.verdict == INCOHERENT:
        warnings.add(f"{echo_set.name}: {phase.reason}: no field map can be made from it")
    elif phase.bipolar:
        log.info("%s: %s", echo_set.name, phase.reason)
    return phase


def _fit(
    options: Options,
    echo_set: EchoSet,
    magnitude: np.ndarray,
    signal: np.ndarray | None,
    method: Method,
    mask: np.ndarray,
    noise: NoiseEstimate,
    phase: PhaseAnalysis | None,
) -> FitResult:
    """The fit the method asks for (the bipolar complex model on a bipolar set)."""
    first = str(echo_set.echoes[0].path)
    try:
        if method == "complex" and signal is not None:
            return fit_complex(
                signal, echo_set.echo_times, mask=mask, noise=NoiseModel(noise.sigma),
                compute=options.compute, bipolar=phase is not None and phase.bipolar,
            )  # fmt: skip
        return fit_t2star(
            magnitude,
            echo_set.echo_times,
            method=method,
            mask=mask,
            noise=NoiseModel(sigma=noise.sigma, coils=noise.coils),
            compute=options.compute,
        )
    except EchoSpacingError as err:
        raise OptionError(first, "fit_method", options.fit_method, str(err)) from err


def _method(requested: str, has_parts: bool, where: str) -> Method:
    """The fit method for one set: ``complex`` needs parts; ``auto`` is ``complex`` when
    parts exist, else the default."""
    if requested == "complex" and not has_parts:
        raise OptionError(
            where,
            "fit_method",
            requested,
            "needs part-phase or part-real/part-imag files beside the part-mag echoes; "
            "there are none",
        )
    if requested == "auto":
        return "complex" if has_parts else DEFAULT_METHOD
    if requested not in METHODS:
        raise OptionError(where, "fit_method", requested, f"choose one of {', '.join(METHODS)}")
    return cast(Method, requested)


def _maps(
    echo_set: EchoSet,
    result: FitResult,
    uncorrected: FitResult,
    correction: ThroughSliceCorrection | None,
    magnitude: np.ndarray,
    mask: np.ndarray,
    noise: NoiseEstimate,
    warnings: _Warnings,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The arrays to publish (OUTPUTS key -> array) and the voxel count of each fit-status
    label; warns of what is left out and of failure reasons shared by many voxels."""
    failed = fit_status.fit_failed(result.reason.cpu().numpy()) & mask
    keys = [k for k in REQUIRED_KEYS if k != "status"]
    if len(echo_set.echoes) == 2:
        keys.remove("rmse")
        if noise.sigma is None:
            keys = [k for k in keys if k not in UNCERTAINTY_KEYS]
            warnings.add(
                f"{echo_set.name}: only 2 echoes and no noise level: no standard error can be "
                "computed, so no desc-stderr maps are written (and no RMSE map: the fit is exact)"
            )
        else:
            warnings.add(
                f"{echo_set.name}: only 2 echoes: the fit is exact, so no RMSE map is written"
            )
    maps = {k: _map_array(result, k, mask, failed) for k in keys}
    if _misfit_tested(result, len(echo_set.echoes)):
        maps["chisq"] = _map_array(result, "chisq", mask, failed)
    maps["status"] = labels = fit_status.labels(
        result.reason.cpu().numpy(), mask, None if correction is None else correction.status
    )
    counts = fit_status.counts(labels, mask)
    size = max(int(mask.sum()), 1)
    for message in fit_status.warnings({k: v / size for k, v in counts.items()}):
        warnings.add(f"{echo_set.name}: {message}")
    if correction is not None:
        maps["r2star_uncorrected"] = _map_array(uncorrected, "r2star", mask, failed)
        maps["gradz"] = np.where(mask, correction.gradient_hz_per_mm, 0.0).astype(np.float32)
    if uncorrected.frequency is not None:
        maps["frequency"] = _map_array(uncorrected, "frequency", mask, failed)
    elif correction is not None and correction.field_hz is not None:
        # the field map the correction used, made without a complex fit: published too
        maps["frequency"] = np.where(mask, correction.field_hz, 0.0).astype(np.float32)
    if "frequency" in maps:
        maps["magnitude"] = np.nan_to_num(magnitude[..., 0]).astype(np.float32)
    return maps, counts


def _misfit_tested(fit: FitResult, n_echoes: int) -> bool:
    """Whether the goodness of fit was assessed: a noise level, a solver fit (the closed forms
    do not minimise what it tests) and a degree of freedom."""
    return fit.noise_sigma is not None and fit.solver_runs > 0 and n_echoes >= 3


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
            + ESTIMATION_ALGORITHMS[("through-slice", "any")]
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
    if noise.candidates:
        info["NoiseSigmaCandidates"] = dict(noise.candidates)
    if noise.bounds:
        info["NoiseSigmaBounds"] = dict(noise.bounds)
    info["NoiseSigmaMap"] = noise.sigma_map is not None
    if _misfit_tested(fit, len(echo_set.echoes)):
        info["GoodnessOfFit"] = (
            f"reduced chi-square of the residuals under the {fit.noise_model} noise model; "
            f"misfit where above its p < {MISFIT_P:g} point (desc-chisq_statmap)"
        )
        info["StandardErrorInflation"] = "sqrt(reduced chi-square) where it exceeds 1"
    else:
        info["GoodnessOfFit"] = "not assessed: " + (
            "no noise level"
            if fit.noise_sigma is None
            else "a closed-form fit"
            if fit.solver_runs == 0
            else "only 2 echoes"
        )
    info.update(b0_info)
    if fit.frequency is not None:
        # f is only known modulo 1/dTE (1/(2 dTE) for a bipolar train): the map is wrapped
        bipolar = bool(b0_info.get("BipolarReadout", False))
        info["FieldMapWrapLimit"] = frequency_limit(np.asarray(echo_set.echo_times), bipolar)
    elif correction is not None and correction.field_hz is not None and correction.wrap_period_hz:
        info["FieldMapWrapLimit"] = correction.wrap_period_hz / 2.0  # the published field map
    if warnings:
        info["Warnings"] = list(warnings)
    return info, algorithm


def _through_slice(
    options: Options,
    echo_set: EchoSet,
    geometry: Geometry,
    magnitude: np.ndarray,
    phase: PhaseAnalysis | None,
    result: FitResult,
    mask: np.ndarray,
    warnings: _Warnings,
    clock: _Clock,
) -> tuple[ThroughSliceCorrection | None, dict[str, Any]]:
    """The through-slice field-gradient correction when ``b0_correction`` asks for it and the
    set allows it (:mod:`t2starmap.b0.correction`), and what the sidecars say about it.
    ``auto`` without
    what it needs (phase that follows a model, slice metadata, 3 echoes, 3 slices): no
    correction, a note or warning that says why; ``through-slice`` without it: an
    OptionError (exit 65 when the phase is at fault)."""
    asked = options.b0_correction
    first = str(echo_set.echoes[0].path)
    if asked == "none":
        return None, {"B0Correction": "none", "B0CorrectionNote": "not asked for"}
    if phase is None:
        why = "the set has no phase or real/imaginary parts to measure the field with"
        if asked == "through-slice":
            raise OptionError(first, "b0_correction", asked, why)
        log.info("%s: no field-gradient correction: %s", echo_set.name, why)
        return None, {"B0Correction": "none", "B0CorrectionNote": why}
    field = _field(result, phase, echo_set)
    if field is None:
        why = f"{phase.reason}, so no field map can be made from it"
        if asked == "through-slice":
            raise OptionError(first, "b0_correction", asked, why, bad_data=True)
        return None, {"B0Correction": "none", "B0CorrectionNote": why}
    meta = echo_set.echoes[0].metadata
    try:
        profile = _profile(options.slice_profile, meta)
        correction = correct_through_slice(
            magnitude.astype(np.float32, copy=False),
            echo_set.echo_times,
            SliceGeometry(
                geometry.affine,
                mr_acquisition_type=meta.get("MRAcquisitionType"),
                thickness_mm=_number(meta.get("SliceThickness")),
                spacing_mm=_number(meta.get("SpacingBetweenSlices")),
                slice_axis=geometry.slice_axis,
                profile=profile,
            ),
            field=field,
            uncorrected=result,
            mask=mask,
            compute=options.compute,
        )
        clock.lap("correction")
    except NotApplicableError as err:
        if asked == "through-slice":
            raise OptionError(first, "b0_correction", asked, str(err)) from err
        warnings.add(f"{echo_set.name}: no field-gradient correction: {err}")
        return None, {"B0Correction": "none", "B0CorrectionNote": str(err)}
    return correction, _correction_info(echo_set, correction, mask)


def _profile(spec: str, metadata: Mapping[str, Any]) -> SliceProfile | None:
    """The slice profile given (``spec``), or the one the first echo's sidecar names; None:
    to be estimated from the data. Raises NotApplicableError for an ill-formed one."""
    try:
        if spec != "auto":
            return parse_slice_profile(spec)
        return profile_from_metadata(metadata)
    except ValueError as err:
        raise NotApplicableError(str(err)) from err


def _field(result: FitResult, phase: PhaseAnalysis, echo_set: EchoSet) -> FieldMap | None:
    """The complex fit's field map when there is one (its phase checks per voxel), else the
    closed form of the phase analysis; None for phase that follows no frequency."""
    if phase.verdict == INCOHERENT:
        return None
    if result.frequency is not None:
        return FieldMap.from_fit(result, echo_set.echo_times, phase.bipolar)
    return phase.field_map()


def _correction_info(
    echo_set: EchoSet, correction: ThroughSliceCorrection, mask: np.ndarray
) -> dict[str, Any]:
    """What the sidecars say about a correction that ran."""
    fraction = float((correction.status == Correction.CORRECTED)[mask].mean())
    log.info(
        "%s: through-slice correction in %.1f%% of the mask (slices %.3g mm, spacing %.3g mm)",
        echo_set.name,
        100 * fraction,
        correction.thickness_mm,
        correction.spacing_mm,
    )
    info: dict[str, Any] = {
        "B0Correction": "through-slice",
        "B0CorrectionReference": list(B0_REFERENCES),
        "B0CorrectionThreshold": correction.threshold,
        "B0CorrectedFraction": fraction,
        "B0FieldMapMethod": correction.field_method,
        "B0SliceThickness": correction.thickness_mm,
        "B0SliceSpacing": correction.spacing_mm,
        "B0SliceProfile": correction.profile.spec(),
        "B0SliceProfileSource": correction.profile.describe(),
    }
    estimate = correction.profile_estimate
    if estimate is not None:
        info["B0SliceProfileEstimate"] = estimate.describe()
    return info


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _usable_magnitude(
    echo_set: EchoSet, geometry: Geometry, warnings: _Warnings, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The stacked echoes (float32, or the files' integer type when they are int16 and the
    like: :func:`t2starmap.bids.nifti.read_magnitude`), voxels with a NaN/inf/negative sample set
    to NaN (the fit flags them; float32 then), and those voxels (bool): the only ones with
    a non-finite sample. Raises BadDataError when no voxel is usable."""
    # checked as they are read; int16 files stay int16 (half the memory; the fits cast)
    echoes = read_magnitude(echo_set, geometry, workers, integers=True)
    magnitude, unusable = echoes.data, echoes.unusable
    if (unusable is not None and unusable.all()) or not echoes.positive:
        raise BadDataError(
            f"{echo_set.echoes[0].path}: no usable signal in set {echo_set.name} (all voxels "
            "are zero, negative or not finite)"
        )
    if unusable is not None:
        warnings.add(
            f"{echo_set.name}: {int(unusable.sum())} voxel(s) with NaN/inf or negative "
            "samples are flagged as failed"
        )
        magnitude = magnitude.astype(np.float32, copy=False)
        magnitude[unusable] = np.nan
        return magnitude, unusable
    return magnitude, np.zeros(geometry.shape, dtype=bool)


def _noise_level(
    options: Options,
    echo_set: EchoSet,
    magnitude: np.ndarray,
    signal: np.ndarray | None,
    warnings: _Warnings,
) -> NoiseEstimate:
    """The noise level every fit of the set uses, whatever the method (module docstring);
    sigma None when none can be had."""
    if options.noise_sigma is not None:
        coils = options.noise_coils or 1.0
        log.info(
            "%s: noise sigma %.4g (coils %g) given",
            echo_set.name,
            options.noise_sigma,
            coils,
        )
        return NoiseEstimate(options.noise_sigma, 0, coils=coils, method="given")
    found = all_candidates(
        magnitude,
        echo_set.echo_times,
        signal=signal,
        coils=options.noise_coils,
        workers=options.workers,
    )
    estimate = cross_check(found.background, found.differences, found.residuals, found.thermal)
    if estimate.sigma is None:
        warnings.add(
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
    values = getattr(result, key).cpu().numpy().astype(np.float32, copy=False)
    # 0 outside the mask, in place: the fit's own array, which nothing reads after this, is
    # published as it is (a copy of every map would be most of the run's memory)
    np.copyto(values, 0.0, where=~mask)
    return values
