"""What the derivatives are called and what their sidecars say.

The output table (:data:`OUTPUTS`) is the only place where a map's key, BIDS suffix, ``desc``
label and units are written down. Paths come from the echo set's entities via
:func:`output_path`; nothing else builds output names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2starmap import __version__
from t2starmap.layout import SET_ENTITIES, EchoSet

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/t2starmap/t2starmap"
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
#: Listed in the output's .bidsignore: statistic maps the schema has no suffix for, and the
#: app's own files.
BIDSIGNORE = ("*_statmap.nii.gz", "*_statmap.json", "logs", "group_*", "*.html", "figures")


@dataclass(frozen=True)
class OutputSpec:
    key: str  # field of FitResult, or "signal"/"failed" for the masks
    suffix: str
    desc: str | None
    units: str | None
    description: str


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
    OutputSpec("signal", "mask", "signal", None, "Voxels fitted (automatic signal mask)"),
    OutputSpec(
        "failed",
        "mask",
        "failed",
        None,
        "Voxels whose fit hit a bound, did not converge or had unusable input",
    ),
)


def output_stem(entities: Mapping[str, Any], spec: OutputSpec) -> str:
    parts = [f"{_SHORT[k]}-{entities[k]}" for k in OUTPUT_ENTITIES if k in entities]
    if spec.desc:
        parts.append(f"desc-{spec.desc}")
    return "_".join([*parts, spec.suffix])


def output_path(root: Path, echo_set: EchoSet, spec: OutputSpec, extension: str) -> Path:
    """``root/sub-L[/ses-S]/anat/<entities>[_desc-D]_<suffix><extension>``."""
    folder = Path(root) / f"sub-{echo_set.subject}"
    if echo_set.session is not None:
        folder = folder / f"ses-{echo_set.session}"
    return folder / "anat" / (output_stem(echo_set.entities, spec) + extension)


def dropped_entities(echo_set: EchoSet) -> list[str]:
    """Set entities that derivative names cannot carry (task, flip, inv, mt)."""
    return [k for k in SET_ENTITIES if k in echo_set.entities and k not in OUTPUT_ENTITIES]


def bids_uri(bids_dir: Path, path: Path) -> str:
    return f"bids:{SOURCE_LINK}:{Path(path).resolve().relative_to(bids_dir).as_posix()}"


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


def map_sidecar(
    spec: OutputSpec,
    echo_set: EchoSet,
    bids_dir: Path,
    fit_info: Mapping[str, Any],
) -> dict[str, Any]:
    """Sidecar of one output image. ``fit_info``: method, algorithm, device, noise fields."""
    sidecar: dict[str, Any] = {"Description": spec.description}
    if spec.units is not None:
        sidecar["Units"] = spec.units
    if spec.suffix == "mask":
        sidecar["Type"] = "ROI"  # the schema's only fitting value for these masks
    sidecar.update(
        {
            "SkullStripped": False,
            "Sources": [bids_uri(bids_dir, e.path) for e in echo_set.echoes],
            "EstimationAlgorithm": fit_info["EstimationAlgorithm"],
            "EstimationReference": ESTIMATION_REFERENCE,
            "EchoTime": [e.echo_time for e in echo_set.echoes],
            **common_acquisition([e.metadata for e in echo_set.echoes]),
            **{k: v for k, v in fit_info.items() if k != "EstimationAlgorithm"},
        }
    )
    return sidecar


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    """Identical for every run into the same output from the same input (concurrent jobs
    rewrite it with the same bytes)."""
    generated_by: dict[str, Any] = {
        "Name": "t2starmap",
        "Version": __version__,
        "Description": "Voxel-wise mono-exponential T2*/R2*/S0 fit of multi-echo GRE data",
        "CodeURL": CODE_URL,
    }
    import os

    container = os.environ.get("T2STARMAP_CONTAINER_TYPE")
    if container:
        generated_by["Container"] = {
            "Type": container,
            "Tag": os.environ.get("T2STARMAP_CONTAINER_TAG", f"t2starmap:{__version__}"),
        }
    return {
        "Name": "t2starmap: T2*, R2* and S0 maps",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": f"bids:{SOURCE_LINK}:"}],
        "DatasetLinks": {SOURCE_LINK: Path(bids_dir).resolve().as_uri()},
    }
