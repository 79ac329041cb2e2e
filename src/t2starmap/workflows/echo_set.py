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
   residuals of bright tissue (an upper bound: misfit adds to them), the tissue's thermal
   noise and, with 6 or more, the noise of tissue whose signal has decayed away
   (:meth:`t2starmap.noise.Candidates.chosen`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from t2starmap.b0.correction import ThroughSliceCorrection
from t2starmap.bids.layout import EchoSet
from t2starmap.bids.nifti import READ_THREADS, Geometry, MagnitudeEchoes
from t2starmap.bids.outputs import (
    REQUIRED_KEYS,
    UNCERTAINTY_KEYS,
    fit_sidecar,
    misfit_tested,
    phase_sidecar,
)
from t2starmap.bids.parts import Parts, complex_available, find_parts, read_echo_set
from t2starmap.errors import BadDataError
from t2starmap.fit import (
    EchoSpacingError,
    FitResult,
    NoiseModel,
    fit_complex,
    fit_t2star,
)
from t2starmap.fit import status as fit_status
from t2starmap.fit.limits import DEFAULT_METHOD, METHODS, Method
from t2starmap.fit.phase import INCOHERENT, PhaseAnalysis, analyse_phase
from t2starmap.noise import NoiseEstimate, all_candidates, signal_mask
from t2starmap.noise.gain import noise_gain, scaled_echoes, to_image_units
from t2starmap.workflows.set_correction import through_slice, wrap_limit
from t2starmap.workflows.set_options import Clock, OptionError, Options, Warnings

log = logging.getLogger("t2starmap")


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


def fit_echo_set(echo_set: EchoSet, geometry: Geometry, options: Options) -> SetFit:
    """Read, check and fit one set. Raises BadDataError naming the first echo, OptionError
    for an option the set cannot honour."""
    started = time.perf_counter()
    clock, warnings = Clock(), Warnings()
    first = str(echo_set.echoes[0].path)
    parts = find_parts(echo_set)
    method = _method(options.fit_method, complex_available(parts), first)
    read = read_echo_set(
        echo_set.paths, _wanted(options, method, parts), geometry, _read_threads(options),
        integers=True)  # fmt: skip
    magnitude, unusable = _usable_magnitude(echo_set, read.echoes, geometry, warnings)
    signal = read.signal()
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
    correction, b0_info = through_slice(
        options, echo_set, geometry, scaled, phase, result, mask, warnings
    )
    if correction is not None:
        clock.lap("correction")
    if phase is not None:
        b0_info = {**phase_sidecar(phase), **b0_info}
    final = result if correction is None else correction.corrected
    maps, counts = _maps(echo_set, final, result, correction, magnitude, mask, noise, warnings)
    to_image_units(maps, gain)
    b0_info = {**b0_info, **wrap_limit(echo_set, result, correction, b0_info)}
    fit_info, algorithm = fit_sidecar(
        len(echo_set.echoes), result, noise, b0_info, correction, warnings
    )
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
    warnings: Warnings,
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
    warnings: Warnings,
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
    if misfit_tested(result, len(echo_set.echoes)):
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


def _wanted(options: Options, method: Method, parts: Parts | None) -> Parts | None:
    """The parts to read, where something wants the complex signal: the complex fit, the
    background's real channel and the field map; none of them with a given sigma, a
    magnitude fit and no correction."""
    wanted = method == "complex" or options.noise_sigma is None or options.b0_correction != "none"
    return parts if wanted else None


def _usable_magnitude(
    echo_set: EchoSet, echoes: MagnitudeEchoes, geometry: Geometry, warnings: Warnings
) -> tuple[np.ndarray, np.ndarray]:
    """The stacked echoes (float32, or the files' integer type when they are int16 and the
    like: :func:`t2starmap.bids.nifti.read_magnitude`), voxels with a NaN/inf/negative sample set
    to NaN (the fit flags them; float32 then), and those voxels (bool): the only ones with
    a non-finite sample. Raises BadDataError when no voxel is usable."""
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
    warnings: Warnings,
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
    estimate = found.chosen()
    if estimate.sigma is None:
        warnings.add(
            f"{echo_set.name}: noise level could not be estimated ({estimate.reason}); "
            "falling back to the Gaussian fit"
        )
    else:
        if estimate.caveat:
            warnings.add(f"{echo_set.name}: noise sigma {estimate.sigma:.4g}: {estimate.caveat}")
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
