"""One frozen settings object, built from the parsed arguments and checked once.

Every usage check happens in :func:`settings_from_args`, before the workflow creates or
validates anything. Passed explicitly to the workflow; a copy goes to ``OUTPUT_DIR/logs/`` for
provenance. No torch here unless ``--device cuda`` is asked for (to see whether there is one).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from t2starmap.bids.conventions import DEFAULT_REPORT_CONVENTION, LABEL_RE
from t2starmap.errors import InputMissingError, UsageError
from t2starmap.fit.limits import DEFAULT_METHOD
from t2starmap.resources import SOURCE_COMMAND_LINE, available_cpus


@dataclass(frozen=True)
class Settings:
    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_labels: tuple[str, ...] | None = None
    session_labels: tuple[str, ...] | None = None
    bids_filters: Mapping[str, Any] = field(default_factory=dict)
    #: the filter file's ``bold`` entity filters (multi-echo BOLD runs)
    bold_filters: Mapping[str, Any] = field(default_factory=dict)
    skip_validation: bool = False
    fit_method: str = DEFAULT_METHOD
    noise_sigma: float | None = None
    noise_coils: float | None = None
    b0_correction: str = "auto"
    #: ``auto`` (the headers', else estimated from the data) or a profile spec
    #: (:func:`t2starmap.bids.slice_profiles.parse_slice_profile`; a table's path made absolute)
    slice_profile: str = "auto"
    device: str = "auto"
    nprocs: int = 1
    #: where ``nprocs`` came from: ``--nprocs`` or a :mod:`t2starmap.resources` source
    nprocs_source: str = SOURCE_COMMAND_LINE
    work_dir: Path | None = None
    #: stop at the first echo set that fails, publishing nothing (fMRIPrep's option)
    stop_on_first_crash: bool = False
    #: how axial and coronal tiles face on the pages (:mod:`t2starmap.report.planes`)
    report_convention: str = DEFAULT_REPORT_CONVENTION

    def to_json(self) -> str:
        def encode(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, Mapping):
                return {k: encode(v) for k, v in value.items()}
            if isinstance(value, tuple | list):
                return [encode(v) for v in value]
            return value

        return json.dumps(encode(asdict(self)), indent=2) + "\n"


def clean_labels(labels: list[str] | None, prefix: str) -> tuple[str, ...] | None:
    """Strip ``sub-``/``ses-``, de-duplicate (keeping order), refuse non-alphanumeric labels."""
    if not labels:
        return None
    cleaned: list[str] = []
    for raw in labels:
        label = raw[len(prefix) :] if raw.startswith(prefix) else raw
        if not LABEL_RE.match(label):
            raise UsageError(f"label {raw!r} is not alphanumeric (BIDS labels are [A-Za-z0-9]+)")
        if label not in cleaned:
            cleaned.append(label)
    return tuple(cleaned)


def check_device(device: str) -> None:
    """UsageError when ``--device cuda`` is asked for and torch sees no CUDA device. Imports
    torch for that question only."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device (use --device auto or cpu)")


#: Most files looked at when telling whether a folder holds DICOM files.
DICOM_SNIFF_FILES = 200


def holds_dicom(folder: Path) -> bool:
    """Whether one of the first files below ``folder`` is a DICOM file (``DICM`` at byte 128)."""
    seen = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            seen += 1
            if seen > DICOM_SNIFF_FILES:
                return False
            try:
                with open(os.path.join(root, name), "rb") as handle:
                    if handle.read(132)[128:] == b"DICM":
                        return True
            except OSError:
                continue
    return False


#: The data-type keys of a filter file (fMRIPrep style): MEGRE echo sets, BOLD runs.
FILTER_KEYS = ("megre", "bold")


def read_filter_file(path: Path | None) -> dict[str, Any]:
    """The MEGRE entity filters of a PyBIDS-style filter file (:func:`read_filter_sections`)."""
    return read_filter_sections(path)["megre"]


def read_filter_sections(path: Path | None) -> dict[str, dict[str, Any]]:
    """PyBIDS-style entity filters by data type (``megre``, ``bold``). Accepts
    ``{"megre": {...}, "bold": {...}}`` (fMRIPrep style, keyed by data type; a type not named
    is not filtered) or a flat ``{entity: value}`` mapping (for both)."""
    if path is None:
        return {key: {} for key in FILTER_KEYS}
    if not path.is_file():
        raise InputMissingError(f"{path}: BIDS filter file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not a readable JSON filter file ({err})") from err
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a BIDS filter file holds a JSON object of entity filters")
    if any(isinstance(data.get(key), dict) for key in FILTER_KEYS):
        sections = {key: data.get(key, {}) for key in FILTER_KEYS}
    else:
        sections = {key: data for key in FILTER_KEYS}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise UsageError(f"{path}: {name!r} holds a JSON object of entity filters")
        for key in ("suffix", "extension", "subject", "session"):
            if key in section:
                raise UsageError(
                    f"{path}: filter on {key!r} is not allowed here (use --participant-label / "
                    "--session-label for subjects and sessions)"
                )
    return sections


def check_slice_profile(spec: str) -> str:
    """``--slice-profile``: ``auto``, or a spec
    :func:`t2starmap.bids.slice_profiles.parse_slice_profile` reads (a table's path made
    absolute). UsageError naming the problem otherwise; a table
    that is not there: InputMissingError."""
    if spec == "auto":
        return spec
    from t2starmap.bids.slice_profiles import parse_slice_profile

    if spec.lower().endswith(".tsv"):
        table = Path(spec).expanduser()
        if not table.is_file():
            raise InputMissingError(f"{spec}: --slice-profile table not found")
        spec = str(table.resolve())
    try:
        parse_slice_profile(spec)
    except ValueError as err:
        raise UsageError(f"--slice-profile {spec}: {err}") from err
    return spec


def _inside(folder: Path, dataset: Path) -> bool:
    """Whether ``folder`` (resolved) is ``dataset`` or below it."""
    return folder == dataset or dataset in folder.parents


def check_folders(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """The input, output and work folders, resolved: the input a BIDS dataset (participant
    level), neither the output (outside ``derivatives/``) nor the work folder inside it."""
    bids_dir = Path(args.bids_dir).expanduser().resolve()
    output_dir = Path(args.output_dir).expanduser().resolve()
    if args.analysis_level == "participant":
        if not bids_dir.is_dir():
            raise InputMissingError(f"{args.bids_dir}: BIDS dataset folder not found")
        if not (bids_dir / "dataset_description.json").is_file():
            if holds_dicom(bids_dir):
                raise InputMissingError(
                    f"{args.bids_dir}: a folder of DICOM files, not a BIDS dataset (no "
                    "dataset_description.json); convert it first: t2starmap convert "
                    f"{args.bids_dir} BIDS_DIR --participant-label LABEL"
                )
            raise InputMissingError(
                f"{args.bids_dir}: not a BIDS dataset (no dataset_description.json)"
            )
    derivatives_dir = bids_dir / "derivatives"
    if _inside(output_dir, bids_dir) and derivatives_dir not in output_dir.parents:
        raise UsageError(
            f"output folder {args.output_dir} is inside the input dataset {args.bids_dir}: "
            f"choose a folder outside it, or one under its derivatives/ folder (e.g. "
            f"{derivatives_dir / 't2starmap'})"
        )
    work_dir = Path(args.work_dir).expanduser().resolve() if args.work_dir else None
    if work_dir is not None and _inside(work_dir, bids_dir):
        raise UsageError(
            f"work folder {args.work_dir} is inside the input dataset {args.bids_dir}: the "
            "input is never written to (its validation would fail on the scratch files); "
            "choose a folder outside it"
        )
    return bids_dir, output_dir, work_dir


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Check the arguments that argparse cannot, and freeze them."""
    bids_dir, output_dir, work_dir = check_folders(args)
    if args.nprocs is not None:
        nprocs, nprocs_source = args.nprocs, SOURCE_COMMAND_LINE
        if nprocs < 1:
            raise UsageError(f"--nprocs must be at least 1, got {nprocs}")
    else:
        nprocs, nprocs_source = available_cpus(environ)
    coils = getattr(args, "noise_coils", None)
    if coils is not None and not coils >= 1:
        raise UsageError(f"--noise-coils must be at least 1, got {coils}")
    sigma = getattr(args, "noise_sigma", None)
    if sigma is not None and not sigma > 0:
        raise UsageError(f"--noise-sigma must be positive, got {sigma}")
    participant_labels = clean_labels(args.participant_label, "sub-")
    session_labels = clean_labels(args.session_label, "ses-")
    filters = read_filter_sections(args.bids_filter_file)
    check_device(args.device)
    return Settings(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        participant_labels=participant_labels,
        session_labels=session_labels,
        bids_filters=filters["megre"],
        bold_filters=filters["bold"],
        skip_validation=bool(args.skip_bids_validation),
        fit_method=args.fit_method,
        noise_sigma=sigma,
        noise_coils=coils,
        b0_correction=getattr(args, "b0_correction", "auto"),
        slice_profile=check_slice_profile(getattr(args, "slice_profile", "auto")),
        device=args.device,
        nprocs=nprocs,
        nprocs_source=nprocs_source,
        work_dir=work_dir,
        stop_on_first_crash=bool(getattr(args, "stop_on_first_crash", False)),
        report_convention=getattr(args, "report_convention", DEFAULT_REPORT_CONVENTION),
    )
