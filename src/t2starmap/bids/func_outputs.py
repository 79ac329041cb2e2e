"""What the participant level writes for a multi-echo BOLD run: the names table (the
``t2starmap t2smap`` registry keys kept, with their BIDS names) and the sidecars.

Files go to ``sub-<s>[/ses-<t>]/func/`` and are named as fMRIPrep names its multi-echo
derivatives, without a space entity (native space): ``<run>_T2starmap.nii.gz`` and so on,
``<run>`` being the run's entities (:func:`t2starmap.bids.layout.run_name`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2starmap.bids.func_layout import BoldRun
from t2starmap.bids.outputs import DSEG_DESCRIPTION_COLUMN, bids_uri, common_acquisition
from t2starmap.bids.t2smap_outputs import file_name


@dataclass(frozen=True)
class FuncOutput:
    """One published file of a run: the t2smap registry key, units, description."""

    key: str
    units: str | None
    description: str


#: The t2smap outputs a BIDS-App run publishes, in writing order (the others, tedana's
#: statmaps, limited maps, RMSE and confounds, are not published).
FUNC_OUTPUTS = (
    FuncOutput("t2star img", "s", "T2* of the echoes' mean over volumes"),
    FuncOutput("r2star img", "1/s", "R2* = 1/T2* of the echoes' mean over volumes"),
    FuncOutput("s0 img", "arbitrary", "S0 (signal at TE = 0) of the echoes' mean over volumes"),
    FuncOutput("t2star stderr img", "s", "Standard error of T2*"),
    FuncOutput("r2star stderr img", "1/s", "Standard error of R2*"),
    FuncOutput("s0 stderr img", "arbitrary", "Standard error of S0"),
    FuncOutput(
        "adaptive mask img",
        None,
        "Adaptive mask: in each voxel, the number of echoes with good signal (tedana's "
        "dropout rule); the maps and the combination use these echoes",
    ),
    FuncOutput("fit failures img", None, "Voxels of the adaptive mask whose decay fit failed (1)"),
    FuncOutput("fit status img", None, "Why each voxel's fit is or is not to be trusted"),
    FuncOutput(
        "combined img",
        "arbitrary",
        "Optimal combination of the echoes: every volume, the echoes weighted by "
        "TE exp(-TE/T2*) (Posse et al. 1999)",
    ),
)
#: Files published beside the images without a sidecar of their own.
FUNC_EXTRAS = ("fit status tsv",)

RAW_NOTE = (
    "Fitted from the raw echoes, which are not motion-corrected: head motion between volumes "
    "blurs these maps. Give fMRIPrep's per-echo outputs (--me-output-echos, "
    "desc-preproc) as input to fit motion-corrected echoes."
)
PREPROC_NOTE = "Fitted from fMRIPrep's motion-corrected echoes (desc-preproc)."


def func_folder(entities: Mapping[str, Any]) -> Path:
    """``sub-<s>[/ses-<t>]/func`` (relative to the output folder)."""
    folder = Path(f"sub-{entities['subject']}")
    if entities.get("session") is not None:
        folder = folder / f"ses-{entities['session']}"
    return folder / "func"


def func_target(bold_run: BoldRun, key: str) -> str:
    """The published path (relative, POSIX) of a registry key's file of ``bold_run``."""
    return (func_folder(bold_run.entities) / file_name(key, bold_run.name, "bids")).as_posix()


def func_sidecar(
    output: FuncOutput, bold_run: BoldRun, bids_dir: Path, fit: Mapping[str, Any], tr: float
) -> dict[str, Any]:
    """The sidecar of one image. ``fit``: ``EstimationAlgorithm`` and the fit's settings;
    ``tr``: the repetition time (s), the combined series' ``RepetitionTime``."""
    note = PREPROC_NOTE if bold_run.preprocessed else RAW_NOTE
    sidecar: dict[str, Any] = {"Description": f"{output.description}. {note}"}
    if output.units is not None:
        sidecar["Units"] = output.units
    if output.key.endswith("mask img") or output.key == "fit failures img":
        sidecar["Type"] = "ROI"
    if output.key == "fit status img":
        sidecar["description"] = {"Description": DSEG_DESCRIPTION_COLUMN}
    metadata = [e.metadata for e in bold_run.echoes]
    sidecar.update(
        {
            "SkullStripped": False,
            "MotionCorrected": bold_run.preprocessed,
            "Sources": [bids_uri(bids_dir, e.path) for e in bold_run.echoes],
            "EchoTime": list(bold_run.echo_times),
            **common_acquisition(metadata),
            **fit,
        }
    )
    if output.key == "combined img":
        sidecar["RepetitionTime"] = tr
        if "TaskName" in metadata[0]:
            sidecar["TaskName"] = metadata[0]["TaskName"]
    else:
        sidecar.pop("RepetitionTime", None)
    return sidecar
