"""The through-slice field-gradient correction of one echo set: whether it applies (asked
for, phase that follows a frequency, slice metadata), the slices and profile it uses, and what
the sidecars say about it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from t2starmap.b0.correction import SliceGeometry, ThroughSliceCorrection, correct_through_slice
from t2starmap.b0.profiles import SliceProfile
from t2starmap.bids.layout import EchoSet
from t2starmap.bids.nifti import Geometry
from t2starmap.bids.outputs import (
    correction_sidecar,
)
from t2starmap.bids.slice_headers import profile_from_metadata
from t2starmap.bids.slice_profiles import parse_slice_profile
from t2starmap.errors import NotApplicableError
from t2starmap.fit import (
    FitResult,
    frequency_limit,
)
from t2starmap.fit.phase import INCOHERENT, FieldMap, PhaseAnalysis
from t2starmap.fit.status import Correction
from t2starmap.workflows.set_options import OptionError, Options, Warnings

log = logging.getLogger("t2starmap")


def through_slice(
    options: Options,
    echo_set: EchoSet,
    geometry: Geometry,
    magnitude: np.ndarray,
    phase: PhaseAnalysis | None,
    result: FitResult,
    mask: np.ndarray,
    warnings: Warnings,
) -> tuple[ThroughSliceCorrection | None, dict[str, Any]]:
    """The through-slice field-gradient correction when ``b0_correction`` asks for it and the
    set allows it (:mod:`t2starmap.b0.correction`), and what the sidecars say about it.
    ``auto`` without what it needs (phase that follows a model, slice metadata, 3 echoes,
    3 slices): no correction, a note or warning that says why; ``through-slice`` without it:
    an OptionError (exit 65 when the phase is at fault)."""
    asked = options.b0_correction
    first = str(echo_set.echoes[0].path)
    field, why = _field_or_why(options, echo_set, phase, result)
    if field is None:
        return None, {"B0Correction": "none", "B0CorrectionNote": why}
    try:
        correction = correct_through_slice(
            magnitude.astype(np.float32, copy=False),
            echo_set.echo_times,
            _slices(options, echo_set, geometry),
            field=field,
            uncorrected=result,
            mask=mask,
            compute=options.compute,
        )
    except NotApplicableError as err:
        if asked == "through-slice":
            raise OptionError(first, "b0_correction", asked, str(err)) from err
        warnings.add(f"{echo_set.name}: no field-gradient correction: {err}")
        return None, {"B0Correction": "none", "B0CorrectionNote": str(err)}
    fraction = float((correction.status == Correction.CORRECTED)[mask].mean())
    log.info(
        "%s: through-slice correction in %.1f%% of the mask (slices %.3g mm, spacing %.3g mm)",
        echo_set.name,
        100 * fraction,
        correction.thickness_mm,
        correction.spacing_mm,
    )
    return correction, correction_sidecar(correction, fraction)


def _field_or_why(
    options: Options, echo_set: EchoSet, phase: PhaseAnalysis | None, result: FitResult
) -> tuple[FieldMap | None, str]:
    """The field map the correction uses, or None and why there is none (not asked for, no
    phase, phase that follows no frequency); OptionError where the correction was asked for."""
    asked = options.b0_correction
    first = str(echo_set.echoes[0].path)
    if asked == "none":
        return None, "not asked for"
    if phase is None:
        why = "the set has no phase or real/imaginary parts to measure the field with"
        if asked == "through-slice":
            raise OptionError(first, "b0_correction", asked, why)
        log.info("%s: no field-gradient correction: %s", echo_set.name, why)
        return None, why
    field = _field(result, phase, echo_set)
    if field is None:
        why = f"{phase.reason}, so no field map can be made from it"
        if asked == "through-slice":
            raise OptionError(first, "b0_correction", asked, why, bad_data=True)
        return None, why
    return field, ""


def _slices(options: Options, echo_set: EchoSet, geometry: Geometry) -> SliceGeometry:
    """The set's slices as its first echo's sidecar and header give them, with the profile
    asked for (or the one the sidecar names; None: estimated)."""
    meta = echo_set.echoes[0].metadata
    return SliceGeometry(
        geometry.affine,
        mr_acquisition_type=meta.get("MRAcquisitionType"),
        thickness_mm=_number(meta.get("SliceThickness")),
        spacing_mm=_number(meta.get("SpacingBetweenSlices")),
        slice_axis=geometry.slice_axis,
        profile=_profile(options.slice_profile, meta),
    )


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


def wrap_limit(
    echo_set: EchoSet,
    fit: FitResult,
    correction: ThroughSliceCorrection | None,
    b0_info: Mapping[str, Any],
) -> dict[str, float]:
    """``FieldMapWrapLimit`` (Hz) of the field map the set publishes, if any: f is known only
    modulo 1/dTE (1/(2 dTE) for a bipolar train), so the map is wrapped."""
    if fit.frequency is not None:
        bipolar = bool(b0_info.get("BipolarReadout", False))
        return {"FieldMapWrapLimit": frequency_limit(np.asarray(echo_set.echo_times), bipolar)}
    if correction is not None and correction.field_hz is not None and correction.wrap_period_hz:
        return {"FieldMapWrapLimit": correction.wrap_period_hz / 2.0}
    return {}


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
