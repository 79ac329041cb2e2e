"""BIDS names, cleaned sidecars, phase in radians, and the dataset-level files.

Names are built from entities in the order the specification fixes
(``sub ses acq run echo part``), never from DICOM text that was not sanitised first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap import __version__
from t2starmap.bids.atomic import write_json, write_text
from t2starmap.bids.conventions import BIDS_VERSION, CODE_URL, LABEL_RE
from t2starmap.bids.echo_times import echo_time_seconds

# Sidecar keys that identify a person, a place or a date (dcm2niix's ``-ba y`` already drops
# the patient's name, ID and birth date; these go as well).
_PHI_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "PatientAddress",
        "OtherPatientIDs",
        "PatientComments",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "AccessionNumber",
        "StudyID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "StudyDescription",
        "ProcedureStepDescription",
        "ImageComments",
        "AcquisitionDateTime",
        "AcquisitionDate",
        "StudyDate",
        "SeriesDate",
        "ContentDate",
        "StudyTime",
        "DeidentificationMethod",
        "BidsGuess",
    }
)
# Anything whose key says it names a person, a place, a date or a UID goes too.
_PHI_KEY_PATTERN = re.compile(r"^Patient(?!Position)|Physician|Operator|Institution|Date|UID$")


def check_label(value: str, what: str) -> str:
    """A participant/session label without its ``sub-``/``ses-`` prefix; ValueError if unsafe."""
    prefix = {"participant": "sub-", "session": "ses-"}.get(what, "")
    label = value[len(prefix) :] if prefix and value.startswith(prefix) else value
    if not LABEL_RE.match(label):
        raise ValueError(f"{what} label {value!r} must be letters and digits only")
    return label


def bids_stem(
    subject: str,
    *,
    session: str | None = None,
    task: str | None = None,
    acq: str | None = None,
    run: int | None = None,
    echo: int | None = None,
    part: str | None = None,
    suffix: str = "MEGRE",
) -> str:
    """``sub-01_ses-1_task-x_acq-y_run-1_echo-2_part-mag_MEGRE``: entities in the BIDS order
    (those that are None left out)."""
    entities: list[tuple[str, str | int | None]] = [
        ("sub", subject),
        ("ses", session),
        ("task", task),
        ("acq", acq),
        ("run", run),
        ("echo", echo),
        ("part", part),
    ]
    for key, value in entities:
        if value is not None and not LABEL_RE.match(str(value)):
            raise ValueError(f"BIDS {key} label {value!r} is not alphanumeric")
    return "_".join(f"{k}-{v}" for k, v in entities if v is not None) + f"_{suffix}"


def clean_sidecar(meta: Mapping[str, Any], *, part: str) -> dict[str, Any]:
    """The dcm2niix sidecar without identifying fields, EchoTime a number in s, phase Units.

    Raises ValueError when EchoTime is missing or breaks
    :func:`t2starmap.bids.echo_times.echo_time_seconds` (not a positive number of seconds).
    """
    out = {k: v for k, v in meta.items() if k not in _PHI_KEYS and not _PHI_KEY_PATTERN.search(k)}
    if "EchoTime" not in out:
        raise ValueError("the sidecar has no EchoTime")
    out["EchoTime"] = echo_time_seconds(out["EchoTime"])
    if part == "phase":
        out["Units"] = "rad"
    else:
        out.pop("Units", None)
    return out


# Siemens stores phase as 12-bit integers, -4096..4095 after rescaling, for -pi..pi.
_SIEMENS_PHASE_SCALE = math.pi / 4096.0


def phase_to_radians(data: np.ndarray, manufacturer: str) -> np.ndarray:
    """Phase values as dcm2niix writes them -> radians in [-pi, pi), float32.

    Data already within [-pi, pi] (Philips after its rescale slope; enhanced DICOM with a
    real-world value map) are kept; Siemens 12-bit phase (-4096..4095) and GE phase in
    milliradians are scaled. Raises ValueError for any other range, rather than guessing.
    """
    finite = data[np.isfinite(data)]
    peak = float(np.max(np.abs(finite))) if finite.size else 0.0
    vendor = manufacturer.strip().upper()
    if peak <= math.pi * (1 + 1e-4):
        rad = data.astype(np.float64)
    elif vendor.startswith("GE") and peak <= 1000 * math.pi * (1 + 1e-3):
        rad = data.astype(np.float64) / 1000.0
    elif peak <= 4096 * (1 + 1e-6):
        rad = data.astype(np.float64) * _SIEMENS_PHASE_SCALE
    else:
        raise ValueError(
            f"phase values up to {peak:g} in units this converter does not know ({manufacturer})"
        )
    wrapped = (rad + math.pi) % (2 * math.pi) - math.pi
    return np.asarray(wrapped, dtype=np.float32)


# --- dataset-level files -----------------------------------------------------------------------


def dataset_description() -> dict[str, Any]:
    return {
        "Name": "Multi-echo data converted from DICOM by t2starmap",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": [
            {
                "Name": "t2starmap convert",
                "Version": __version__,
                "Description": "DICOM to BIDS (MEGRE, multi-echo BOLD, field maps) with dcm2niix",
                "CodeURL": CODE_URL,
            }
        ],
    }


README_TEXT = (
    "Multi-echo gradient-echo (anat/*_MEGRE), multi-echo BOLD (func/*_echo-<k>_bold) and\n"
    "field-map (fmap/) data converted from DICOM by `t2starmap convert` (dcm2niix,\n"
    "anonymised sidecars). Fit T2* maps of the MEGRE data with:\n\n"
    "    t2starmap BIDS_DIR OUTPUT_DIR participant\n"
)


def write_dataset_files(root: Path) -> None:
    """``dataset_description.json``, ``README``, an empty ``participants.tsv``/``.json``."""
    write_json(root / "dataset_description.json", dataset_description())
    write_text(root / "README", README_TEXT)
    write_text(root / "participants.tsv", "participant_id\n")
    write_json(
        root / "participants.json",
        {
            "participant_id": {"Description": "Participant label, as given to t2starmap convert"},
        },
    )


def add_participant(root: Path, subject: str) -> bool:
    """Add ``sub-<subject>`` to ``participants.tsv`` (created if absent) unless there already.

    Other columns, if any, get ``n/a``. Returns True when a row was added.
    """
    path = root / "participants.tsv"
    participant = f"sub-{subject}"
    if not path.exists():
        write_text(path, f"participant_id\n{participant}\n")
        return True
    text = path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows:
        write_text(path, f"participant_id\n{participant}\n")
        return True
    header = rows[0]
    column = header.index("participant_id") if "participant_id" in header else 0
    if any(len(r) > column and r[column] == participant for r in rows[1:]):
        return False
    row = ["n/a"] * len(header)
    row[column] = participant
    body = text if text.endswith("\n") or not text else text + "\n"
    write_text(path, body + "\t".join(row) + "\n")
    return True


def load_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data
