"""What the derivatives are called and what their sidecars say.

The output table (:data:`OUTPUTS`) is the only place where a map's key, BIDS suffix, ``desc``
label and units are written down. Paths come from the echo set's entities via
:func:`output_path`; nothing else builds output names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2starmap import __version__
from t2starmap.bids.layout import SET_ENTITIES, EchoSet, run_name
from t2starmap.fit import status as fit_status
from t2starmap.fit.limits import T2STAR_MAX, T2STAR_MIN
from t2starmap.fit.status import MISFIT_P

if TYPE_CHECKING:
    from t2starmap.b0.correction import ThroughSliceCorrection
    from t2starmap.fit.phase import PhaseAnalysis
    from t2starmap.fit.result import FitResult
    from t2starmap.noise.result import NoiseEstimate

#: What the sidecars cite for the correction.
B0_REFERENCES = (
    "Fernandez-Seara MA, Wehrli FW. Postprocessing technique to correct for background gradients "
    "in image-based R2* measurements. Magn Reson Med 2000;44:358-366",
    "Hirsch NM, Preibisch C. T2* mapping with background gradient correction using different "
    "excitation pulse shapes. AJNR Am J Neuroradiol 2013;34:E65-E68",
)

#: (method, noise model) -> the ``EstimationAlgorithm`` text of the map sidecars.
ESTIMATION_ALGORITHMS: Mapping[tuple[str, str], str] = {
    ("nlls", "rician"): "Noise-aware least squares: the squared magnitude fitted to its Rician "
    "expectation S0^2 exp(-2 TE R2*) + 2 sigma^2 by iteratively reweighted Levenberg-Marquardt "
    "from a weighted log-linear start",
    ("nlls", "noncentral-chi"): "Noise-aware least squares for a root-sum-of-squares image of "
    "L coils: the squared magnitude fitted to its noncentral chi expectation "
    "S0^2 exp(-2 TE R2*) + 2 L sigma^2 by iteratively reweighted Levenberg-Marquardt from a "
    "weighted log-linear start",
    ("nlls", "gaussian"): "Levenberg-Marquardt least squares on (S0, R2*) from a weighted "
    "log-linear start (no noise level known, so no noise-floor correction)",
    ("nlls-gaussian", "gaussian"): "Levenberg-Marquardt least squares on (S0, R2*) from a "
    "weighted log-linear start",
    ("wls", "gaussian"): "Weighted (S^2) linear least squares on log signal",
    ("loglin", "gaussian"): "Ordinary linear least squares on log signal",
    ("arlo", "gaussian"): "Auto-regression on linear operations (ARLO, Pei et al. 2015)",
    ("through-slice", "any"): "S(TE) = S0 exp(-TE R2*) |F(TE)| fitted with the noise model "
    "above, started from the uncorrected fit, G the through-slice gradient of the field map "
    "and F(TE) the normalised Fourier transform of the slice profile (B0SliceProfile) at "
    "G dz TE, dz the slice thickness; echoes with |F| below the threshold left out",
    ("complex", "gaussian"): "Levenberg-Marquardt least squares of the complex signal "
    "S0 exp(-TE R2*) exp(i(phi0 + 2 pi f TE)) on its real and imaginary parts (Gaussian "
    "noise, no noise floor), from phase-difference and weighted log-linear starts",
}


SOURCE_LINK = "raw"  # the DatasetLinks key of the input dataset in ``bids:raw:`` URIs
ESTIMATION_REFERENCE = (
    "Mono-exponential decay S(TE) = S0 exp(-TE R2*), fitted voxel-wise; see "
    "https://github.com/t2starmap/t2starmap#the-fit"
)
#: Entities kept in derivative names (the anat parametric-map entities), in BIDS order.
OUTPUT_ENTITIES = ("subject", "session", "acquisition", "ceagent", "reconstruction", "run")
_SHORT = {
    "subject": "sub",
    "session": "ses",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "run": "run",
}


@dataclass(frozen=True)
class OutputSpec:
    """One output image: ``key`` is the field of FitResult (or "signal"/"failed" for the
    masks, "magnitude" for the first echo beside the field map); ``datatype`` its folder.
    ``optional``: written only when the fit gives it (the complex fit's field map, standard
    errors that can be computed)."""

    key: str
    suffix: str
    desc: str | None
    units: str | None
    description: str
    datatype: str = "anat"
    optional: bool = False


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("t2star", "T2starmap", None, "s", "T2* = 1/R2* from the mono-exponential fit"),
    OutputSpec("r2star", "R2starmap", None, "1/s", "R2*, the fitted decay rate"),
    OutputSpec(
        "s0",
        "S0map",
        None,
        "arbitrary",
        "S0, the fitted signal at TE = 0, in the input images' units",
    ),
    OutputSpec(
        "t2star_se",
        "T2starmap",
        "stderr",
        "s",
        "Standard error of T2* (delta method from the R2* standard error)",
    ),
    OutputSpec(
        "r2star_se",
        "R2starmap",
        "stderr",
        "1/s",
        "Standard error of R2* from the Jacobian at the solution",
    ),
    OutputSpec(
        "s0_se",
        "S0map",
        "stderr",
        "arbitrary",
        "Standard error of S0 from the Jacobian at the solution",
    ),
    OutputSpec(
        "rmse",
        "statmap",
        "rmse",
        "arbitrary",
        "Root-mean-square residual of the fit over the echoes, in the input units",
    ),
    OutputSpec(
        "chisq",
        "statmap",
        "chisq",
        None,
        "Reduced chi-square of the residuals under the fit's noise model: about 1 where the "
        "decay follows the model; above its p < 0.001 point the voxel is labelled "
        "decay_not_following_model",
        optional=True,
    ),
    OutputSpec("signal", "mask", "signal", None, "Voxels fitted (automatic signal mask)"),
    OutputSpec(
        "failed",
        "mask",
        "failed",
        None,
        "Voxels whose fit failed: it hit a bound, did not converge or had unusable input "
        "(desc-fitstatus_dseg says which); voxels whose decay does not follow the model have "
        "an estimate and are not in it (label decay_not_following_model there)",
    ),
    OutputSpec(
        "status",
        "dseg",
        "fitstatus",
        None,
        "Why each voxel's fit failed: one label per voxel, the levels in the .tsv beside it "
        "(0: not fitted, 1: good fit)",
    ),
    OutputSpec(
        "r2star_uncorrected",
        "R2starmap",
        "uncorrected",
        "1/s",
        "R2* before the through-slice field-gradient correction",
        optional=True,
    ),
    OutputSpec(
        "gradz",
        "statmap",
        "gradz",
        "Hz/mm",
        "Through-slice gradient of the off-resonance field (along increasing slice index)",
        optional=True,
    ),
    OutputSpec(
        "frequency",
        "fieldmap",
        "megre",
        "Hz",
        "Off-resonance frequency f (wrapped into +-FieldMapWrapLimit): the complex fit's "
        "S0 exp(-TE R2*) exp(i(phi0 + 2 pi f TE)), or the field map the through-slice "
        "correction was computed from (B0FieldMapMethod says how it was made)",
        datatype="fmap",
        optional=True,
    ),
    OutputSpec(
        "magnitude",
        "magnitude",
        "megre",
        None,
        "Magnitude of the first echo, the field map's companion image",
        datatype="fmap",
        optional=True,
    ),
)


#: The fit-status labels: the one table is :mod:`t2starmap.fit.status` (torch-free).
STATUS_LEVELS = fit_status.LEVELS


#: The outputs every fit writes; the others only when the fit gives them.
REQUIRED_KEYS = tuple(s.key for s in OUTPUTS if not s.optional)
#: Outputs that exist only where an uncertainty can be computed (see estimate.py).
UNCERTAINTY_KEYS = ("t2star_se", "r2star_se", "s0_se")


def set_name(entities: Mapping[str, Any]) -> str:
    """Set entities as in a derivative file name (``sub-01_ses-1_run-2``); a BOLD run's
    (``datatype: func``) with its task and direction
    (:func:`t2starmap.bids.layout.run_name`)."""
    if entities.get("datatype") == "func":
        return run_name(entities)
    return "_".join(f"{_SHORT[k]}-{entities[k]}" for k in OUTPUT_ENTITIES if k in entities)


def output_files(
    entities: Mapping[str, Any], keys: Iterable[str] = REQUIRED_KEYS
) -> dict[str, str]:
    """OUTPUTS key -> image path (relative, POSIX) of the maps ``keys`` of one set."""
    wanted = set(keys)
    return {
        s.key: output_path(Path(), entities, s, ".nii.gz").as_posix()
        for s in OUTPUTS
        if s.key in wanted
    }


def output_stem(entities: Mapping[str, Any], spec: OutputSpec) -> str:
    desc = [f"desc-{spec.desc}"] if spec.desc else []
    return "_".join([set_name(entities), *desc, spec.suffix])


def output_path(root: Path, entities: Mapping[str, Any], spec: OutputSpec, extension: str) -> Path:
    """``root/sub-L[/ses-S]/<datatype>/<entities>[_desc-D]_<suffix><extension>``: the one place
    that names an output file (the maps, their sidecars and the set's record)."""
    folder = Path(root) / f"sub-{entities['subject']}"
    if entities.get("session") is not None:
        folder = folder / f"ses-{entities['session']}"
    return folder / spec.datatype / (output_stem(entities, spec) + extension)


def dropped_entities(echo_set: EchoSet) -> list[str]:
    """Set entities that derivative names cannot carry (task, flip, inv, mt)."""
    return [k for k in SET_ENTITIES if k in echo_set.entities and k not in OUTPUT_ENTITIES]


def bids_path(bids_dir: Path, path: Path) -> str:
    """``path`` relative to the dataset root, as the dataset names it (POSIX). Links are not
    followed: in a DataLad dataset the image is a link into the annex, and its BIDS name is the
    link's."""
    return Path(os.path.relpath(Path(path).absolute(), Path(bids_dir).absolute())).as_posix()


def bids_uri(bids_dir: Path, path: Path) -> str:
    return f"bids:{SOURCE_LINK}:{bids_path(bids_dir, path)}"


#: Acquisition fields copied to map sidecars when every echo agrees on them.
ACQUISITION_FIELDS = (
    "MagneticFieldStrength",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "PulseSequenceType",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "RepetitionTime",
    "FlipAngle",
    "PixelBandwidth",
    "ReceiveCoilName",
    "SliceThickness",
    "InstitutionName",
    "ProtocolName",
    "SeriesDescription",
)


def common_acquisition(metadata: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ACQUISITION_FIELDS:
        values = [m.get(key) for m in metadata]
        if values and values[0] is not None and all(v == values[0] for v in values):
            out[key] = values[0]
    return out


#: Outputs the field-gradient correction does not change: their ``EstimationAlgorithm`` is the
#: fit's alone, or says how they were made, not how R2* was corrected afterwards.
_BEFORE_CORRECTION = ("r2star_uncorrected", "frequency")
_GRADIENT_ALGORITHM = (
    "Central differences of the field map along the slice axis over the slice spacing, "
    "unwrapped modulo 1/dTE (the complex fit's field map, or the phase of consecutive-echo "
    "products)"
)
_MAGNITUDE_ALGORITHM = "None: the first echo's magnitude as measured"


def estimation_algorithm(spec: OutputSpec, fit_info: Mapping[str, Any]) -> str:
    """The ``EstimationAlgorithm`` of one output: the fit's text (with its correction) for the
    corrected maps; the fit before correction for the uncorrected R2* and the field map, which
    comes from the complex fit; how the gradient was taken; nothing estimated for the first
    echo's magnitude."""
    full = str(fit_info["EstimationAlgorithm"])
    if spec.key == "magnitude":
        return _MAGNITUDE_ALGORITHM
    if spec.key == "gradz":
        return _GRADIENT_ALGORITHM
    if spec.key not in _BEFORE_CORRECTION:
        return full
    fit = ESTIMATION_ALGORITHMS.get(
        (str(fit_info.get("FitMethod")), str(fit_info.get("NoiseModel"))),
        full.split("; then corrected", 1)[0],
    )
    if spec.key == "frequency":
        made = str(fit_info.get("B0FieldMapMethod", "complex fit"))
        if "complex fit" not in made:
            return f"Off-resonance frequency f from the {made} (closed form, per voxel)"
        return "Off-resonance frequency f, a parameter of the complex fit: " + fit
    return fit


def misfit_tested(fit: FitResult, n_echoes: int) -> bool:
    """Whether the goodness of fit was assessed: a noise level, a solver fit (the closed forms
    do not minimise what it tests) and a degree of freedom."""
    return fit.noise_sigma is not None and fit.solver_runs > 0 and n_echoes >= 3


def fit_sidecar(
    n_echoes: int,
    fit: FitResult,
    noise: NoiseEstimate,
    b0_info: Mapping[str, Any],
    correction: ThroughSliceCorrection | None,
    warnings: list[str],
) -> tuple[dict[str, Any], str]:
    """The fit's fields for the map sidecars, and the ``EstimationAlgorithm`` text. ``fit``:
    the fit before any field-gradient correction (its method and noise model); ``b0_info``:
    the correction's and the phase's fields, with ``FieldMapWrapLimit`` where a field map
    was made."""
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
    if noise.caveat:
        info["NoiseSigmaCaveat"] = noise.caveat
    info["NoiseSigmaMap"] = noise.sigma_map is not None
    if misfit_tested(fit, n_echoes):
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
    if warnings:
        info["Warnings"] = list(warnings)
    return info, algorithm


def correction_sidecar(correction: ThroughSliceCorrection, fraction: float) -> dict[str, Any]:
    """What the sidecars say about a correction that ran in ``fraction`` of the mask."""
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


def phase_sidecar(phase: PhaseAnalysis) -> dict[str, object]:
    """What the map sidecars say about a set's phase (:func:`t2starmap.fit.phase.analyse_phase`)."""
    return {
        "PhaseVerdict": phase.verdict,
        "PhaseVerdictNote": phase.reason,
        "PhaseCoherence": round(phase.coherence, 4),
        "PhaseParityCoherence": round(phase.parity_coherence, 4),
        "PhaseTrustedFraction": round(phase.trusted_share, 4),
        "BipolarReadout": phase.bipolar,
        "BipolarOffsetMedian": round(phase.offset_rad, 4),
    }


def map_sidecar(
    spec: OutputSpec,
    echo_set: EchoSet,
    bids_dir: Path,
    fit_info: Mapping[str, Any],
    parts: Sequence[Path] = (),
) -> dict[str, Any]:
    """Sidecar of one output image. ``fit_info``: method, algorithm, device, noise fields;
    ``parts``: the phase or real/imaginary files read besides the magnitude echoes (they are
    among its ``Sources``)."""
    sidecar: dict[str, Any] = {"Description": spec.description}
    if spec.units is not None:
        sidecar["Units"] = spec.units
    if spec.suffix == "mask":
        sidecar["Type"] = "ROI"  # the schema's only fitting value for these masks
    if spec.suffix in ("mask", "dseg"):  # in the voxels of the echoes they come from
        sidecar["SpatialReference"] = bids_uri(bids_dir, echo_set.echoes[0].path)
    if spec.suffix == "dseg":  # this sidecar is the levels TSV's too: its extra column
        sidecar["description"] = {"Description": DSEG_DESCRIPTION_COLUMN}
    sidecar.update(
        {
            "SkullStripped": False,
            "Sources": [
                bids_uri(bids_dir, p) for p in [*(e.path for e in echo_set.echoes), *parts]
            ],
            "EstimationAlgorithm": estimation_algorithm(spec, fit_info),
            "EstimationReference": ESTIMATION_REFERENCE,
            "EchoTime": [e.echo_time for e in echo_set.echoes],
            **common_acquisition([e.metadata for e in echo_set.echoes]),
            **{k: v for k, v in fit_info.items() if k != "EstimationAlgorithm"},
        }
    )
    return sidecar


#: The ``description`` column of the fit-status levels (``desc-fitstatus_dseg.tsv``).
DSEG_DESCRIPTION_COLUMN = "What the label means: why the fit of a voxel is or is not to be trusted"
