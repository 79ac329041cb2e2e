"""DICOM folder -> BIDS files for one participant (and session): the only orchestrator.

Order of work: check the arguments against the file system; read every header and decide
which series are ME-GRE (``anat``), ME-EPI (``func``) or field maps (``fmap``), nothing
written yet; convert each part of each acquisition with dcm2niix in a temporary folder inside
the target (so the final move is a rename); rename to BIDS, clean the sidecars, put phase in
radians; move the participant (or session) folder into place and add the participant to
``participants.tsv``. The DICOM folder is only read.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2starmap.bids.atomic import write_json
from t2starmap.bids.conventions import sidecar_path
from t2starmap.bids.echo_times import echo_time_seconds
from t2starmap.bids.nifti import header_geometry, read_volume
from t2starmap.bids.nifti_write import save_like
from t2starmap.convert import bids
from t2starmap.convert.dcm2niix import Output
from t2starmap.convert.fieldmaps import add_intended_for
from t2starmap.convert.outputs import datatype_fields, target_for
from t2starmap.convert.plan import Acquisition, Member, plan_acquisitions
from t2starmap.convert.scan import scan_dicom_dir
from t2starmap.convert.series import Decision, classify_series, group_series
from t2starmap.convert.staging import convert_member
from t2starmap.errors import (
    BadDataError,
    InputMissingError,
    OutputError,
    UsageError,
)

log = logging.getLogger("t2starmap.convert")


@dataclass(frozen=True)
class ConvertResult:
    """What was written: the target folder and the NIfTI files in it (final paths)."""

    target: Path
    files: tuple[Path, ...]
    acquisitions: tuple[Acquisition, ...]


def convert(
    dicom_dir: Path,
    bids_dir: Path,
    subject: str,
    session: str | None = None,
    *,
    overwrite: bool = False,
    task_label: str | None = None,
) -> ConvertResult:
    """Convert the ME-GRE, ME-EPI and field-map series under ``dicom_dir`` into ``bids_dir``
    as ``sub-<subject>``; ``task_label`` names the task of every ME-EPI run.

    Raises InputMissingError (no DICOM, nothing to convert), BadDataError (series that cannot
    be converted), UsageError (labels, folders, existing participant without ``overwrite``),
    OutputError (the target cannot be written).
    """
    dicom_dir = Path(dicom_dir).absolute()
    bids_dir = Path(bids_dir).absolute()
    _check_folders(dicom_dir, bids_dir)
    target = bids_dir / f"sub-{subject}" / (f"ses-{session}" if session else "")
    target = Path(os.path.normpath(target))
    _check_target(bids_dir, target, subject, session, overwrite)
    real_target, real_dicom = target.resolve(), dicom_dir.resolve()
    if real_target == real_dicom or real_target in real_dicom.parents:
        # DICOM in BIDS_DIR/sourcedata/ is the BIDS way; inside the folder written is not
        raise UsageError(f"DICOM folder {dicom_dir} is inside {target}, which would be written")

    acquisitions = find_acquisitions(dicom_dir, task_label=task_label)

    parent = bids_dir if bids_dir.exists() else bids_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=".t2starmap-convert-", dir=parent))
    except OSError as err:
        raise OutputError(f"cannot write in {parent}: {err.strerror}") from err
    try:
        tree = workspace / "tree"
        built = tree / target.relative_to(bids_dir)
        results = _build(acquisitions, workspace, built, subject, session)
        add_intended_for(results, target.relative_to(bids_dir).as_posix())
        final = [target / f.relative_to(built) for _, files in results for f in files]
        _move_into_place(tree, workspace, bids_dir, target, subject, overwrite)
    except OSError as err:
        raise OutputError(f"cannot write {target}: {err}") from err
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    for folder in sorted({f.parent for f in final}):
        n = sum(1 for f in final if f.parent == folder)
        log.info("wrote %d images and their %d JSON sidecars to %s", n, n, folder)
    return ConvertResult(target, tuple(final), acquisitions)


def _check_folders(dicom_dir: Path, bids_dir: Path) -> None:
    if not dicom_dir.exists():
        raise InputMissingError(f"DICOM folder {dicom_dir} does not exist")
    if not dicom_dir.is_dir():
        raise InputMissingError(f"DICOM folder {dicom_dir} is not a folder")
    real_dicom, real_bids = dicom_dir.resolve(), bids_dir.resolve()
    if real_bids == real_dicom or real_dicom in real_bids.parents:
        raise UsageError(f"BIDS folder {bids_dir} must not be inside the DICOM folder {dicom_dir}")
    if bids_dir.exists() and not bids_dir.is_dir():
        raise OutputError(f"BIDS folder {bids_dir} exists and is not a folder")
    if (
        bids_dir.is_dir()
        and any(bids_dir.iterdir())
        and not (bids_dir / "dataset_description.json").exists()
    ):
        raise UsageError(
            f"{bids_dir} is not empty and has no dataset_description.json: "
            "not a BIDS dataset; give a new or a BIDS folder"
        )


def _check_target(
    bids_dir: Path, target: Path, subject: str, session: str | None, overwrite: bool
) -> None:
    subject_dir = bids_dir / f"sub-{subject}"
    if session and subject_dir.is_dir():
        plain = [
            p.name
            for p in subject_dir.iterdir()
            if not p.name.startswith(("ses-", ".")) and p.is_dir()
        ]
        if plain:
            raise UsageError(
                f"{subject_dir} holds data without sessions ({', '.join(plain)}); "
                f"cannot add session {session} beside it"
            )
    if (
        not session
        and subject_dir.is_dir()
        and any(p.name.startswith("ses-") for p in subject_dir.iterdir())
        and not overwrite
    ):
        raise UsageError(f"{subject_dir} already has sessions: give --session-label")
    if target.exists() and not overwrite:
        raise UsageError(f"{target} already exists: use --overwrite to replace it")


def find_acquisitions(dicom_dir: Path, *, task_label: str | None = None) -> tuple[Acquisition, ...]:
    """Read the headers under ``dicom_dir`` and plan the acquisitions to convert; log the rest."""
    scan = scan_dicom_dir(dicom_dir)
    for path, why in scan.corrupt:
        log.warning("corrupt DICOM file %s: %s (left out)", path, why)
    if scan.ignored:
        log.info(
            "ignored %d file(s) that are not DICOM images, e.g. %s",
            len(scan.ignored),
            scan.ignored[0],
        )
    if not scan.images:
        what = "is empty" if not (scan.ignored or scan.corrupt) else "holds no readable DICOM image"
        raise InputMissingError(f"DICOM folder {dicom_dir} {what}")
    decisions = [classify_series(s) for s in group_series(scan.images)]
    for d in decisions:
        _log_decision(d)
    plan = plan_acquisitions(decisions, task_label=task_label)
    for series, why in plan.skipped:
        log.warning("skipped %s: %s", series.label(), why)
    for acquisition in plan.acquisitions:
        _log_acquisition(acquisition)
    if not plan.acquisitions:
        refused = [d for d in decisions if d.refused]
        found = "; ".join(f"{d.series.label()}: {d.reason or 'unpaired'}" for d in decisions)
        what = "multi-echo gradient-echo series, multi-echo EPI or field map"
        if refused:
            raise BadDataError(f"no complete {what} in {dicom_dir}: {found}")
        raise InputMissingError(f"no {what} in {dicom_dir}; found {found}")
    return plan.acquisitions


def _log_acquisition(acquisition: Acquisition) -> None:
    """Say where a field map goes, and that it is not ME-GRE."""
    if acquisition.datatype != "fmap":
        return
    series = ", ".join(m.decision.series.label() for m in acquisition.members)
    kind = "phasediff" if any(map(acquisition.is_phasediff, acquisition.members)) else "phase1/2"
    log.info(
        "%s: a dual-echo field map (magnitude1/2 + %s), written to fmap/ and not fitted as ME-GRE",
        series,
        kind,
    )


def _log_decision(d: Decision) -> None:
    if d.accepted:
        extra = f", {d.dropped} scanner-made map image(s) left out" if d.dropped else ""
        if d.datatype == "func":
            extra = f", {d.n_volumes} volumes" + extra
        log.info(
            "%s: %s, %d echo%s (%s ms), %s%s",
            d.series.label(),
            d.kind,
            len(d.echo_times),
            "" if len(d.echo_times) == 1 else "es",
            ", ".join(f"{t:g}" for t in d.echo_times),
            "/".join(d.parts),
            extra,
        )
    elif d.refused:
        log.warning("refused %s: %s but %s", d.series.label(), d.kind, d.reason)
    else:
        log.info("skipped %s: %s", d.series.label(), d.reason)


def _build(
    acquisitions: tuple[Acquisition, ...],
    workspace: Path,
    root: Path,
    subject: str,
    session: str | None,
) -> list[tuple[Acquisition, list[Path]]]:
    """Convert every acquisition into its datatype's folder under ``root``; one that fails is
    left out whole (warned). Returns each converted acquisition with its images."""
    written: list[tuple[Acquisition, list[Path]]] = []
    failed: list[str] = []
    for a_index, acquisition in enumerate(acquisitions):
        work = workspace / f"a{a_index}"
        try:
            files = _convert_acquisition(acquisition, work, root, subject, session)
            written.append((acquisition, files))
        except BadDataError as err:
            log.warning("%s", err)
            failed.append(str(err))
    if not written:
        raise BadDataError("; ".join(failed) or "nothing converted")
    return written


def _convert_acquisition(
    acquisition: Acquisition, work: Path, root: Path, subject: str, session: str | None
) -> list[Path]:
    """All parts and echoes of one acquisition, moved into ``root/<datatype>`` only when all
    succeeded."""
    staged = work / "bids"
    staged.mkdir(parents=True)
    done = []
    for m_index, member in enumerate(acquisition.members):
        outputs = convert_member(member, work / f"m{m_index}")
        by_echo = _match_echoes(outputs, member)
        for echo, output in by_echo.items():
            target = target_for(acquisition, member, echo, subject, session)
            done.append(_write_bids_pair(output, staged / target.stem, acquisition, member))
    folder = root / acquisition.datatype
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for nifti in done:
        sidecar = sidecar_path(nifti)
        os.replace(sidecar, folder / sidecar.name)
        os.replace(nifti, folder / nifti.name)
        written.append(folder / nifti.name)
    return written


def _match_echoes(outputs: list[Output], member: Member) -> dict[int, Output]:
    """dcm2niix's outputs by echo index (1-based) of the member's own echo times."""
    label = f"{member.decision.series.label()} ({member.part})"
    tes = member.decision.echo_times
    tolerance = 0.01 if len(tes) < 2 else min(0.01, min(np.diff(tes)) / 4)
    by_echo: dict[int, Output] = {}
    for output in outputs:
        meta = bids.load_json(output.sidecar)
        try:
            te_ms = echo_time_seconds(meta.get("EchoTime")) * 1000.0
        except ValueError as err:
            raise BadDataError(
                f"dcm2niix wrote {output.sidecar.name} for {label} without a usable EchoTime "
                f"({err})"
            ) from err
        distances = [abs(te_ms - t) for t in tes]
        k = int(np.argmin(distances))
        if distances[k] > tolerance:
            raise BadDataError(
                f"dcm2niix wrote an image at TE {te_ms:g} ms for {label}, "
                f"not one of the series' echo times"
            )
        if k + 1 in by_echo:
            raise BadDataError(
                f"dcm2niix split {label} into several images at TE {tes[k]:g} ms "
                f"({by_echo[k + 1].nifti.name}, {output.nifti.name})"
            )
        by_echo[k + 1] = output
    if len(by_echo) != len(tes):
        raise BadDataError(f"dcm2niix wrote {len(by_echo)} of {len(tes)} echoes for {label}")
    return dict(sorted(by_echo.items()))


def _check_shape(shape: tuple[int, ...], decision: Decision, label: str) -> None:
    """One 3-D volume per echo (a 4-D run for EPI) with the series' slices and volumes."""
    volumes = shape[3] if len(shape) > 3 else 1
    if (len(shape) > 4 and any(n > 1 for n in shape[4:])) or volumes != decision.n_volumes:
        raise BadDataError(
            f"dcm2niix wrote a {shape} image for one echo of {label}, the series has "
            f"{decision.n_volumes} volume(s)"
        )
    slices = shape[2] if len(shape) > 2 else 1
    if slices != decision.n_slices:
        # e.g. enhanced files holding magnitude and phase frames, which dcm2niix stacks
        raise BadDataError(
            f"dcm2niix wrote {slices} slices for one echo of {label}, the series has "
            f"{decision.n_slices}: not converted (mixed image kinds in one file?)"
        )


def _write_bids_pair(output: Output, stem: Path, acquisition: Acquisition, member: Member) -> Path:
    meta = bids.load_json(output.sidecar)
    label = f"{member.decision.series.label()} ({member.part})"
    try:
        sidecar = bids.clean_sidecar(meta, part=member.part)
        sidecar.update(datatype_fields(acquisition, member, sidecar))
    except ValueError as err:
        raise BadDataError(f"{label}: {err}") from err
    nifti = stem.with_name(stem.name + ".nii.gz")
    shape, _ = header_geometry(output.nifti)
    _check_shape(tuple(shape), member.decision, label)
    if member.part == "phase":
        try:
            rad = bids.phase_to_radians(
                read_volume(output.nifti, np.float64), str(meta.get("Manufacturer", ""))
            )
        except ValueError as err:
            raise BadDataError(f"{label}: {err}") from err
        save_like(nifti, rad, output.nifti)
    else:
        os.replace(output.nifti, nifti)
    write_json(stem.with_name(stem.name + ".json"), sidecar)
    return nifti


def _move_into_place(
    tree: Path, workspace: Path, bids_dir: Path, target: Path, subject: str, overwrite: bool
) -> None:
    """Rename the built folder onto its final place; replace an old one (``--overwrite``).

    Runs under a lock on BIDS_DIR so that several conversions into one dataset at once (one
    job per participant) neither lose participants.tsv rows nor both claim one participant.
    """
    built = tree / target.relative_to(bids_dir)
    if not bids_dir.exists():
        bids.write_dataset_files(tree)
        bids.add_participant(tree, subject)
        try:
            os.rename(tree, bids_dir)  # the whole new dataset appears at once
            return
        except OSError:
            if not bids_dir.is_dir():
                raise
            # another conversion created the dataset meanwhile: join it below
    with _locked(bids_dir):
        if not (bids_dir / "dataset_description.json").exists():
            bids.write_dataset_files(bids_dir)  # an empty folder given as BIDS_DIR
        if target.exists() and not overwrite:
            raise UsageError(f"{target} already exists: use --overwrite to replace it")
        old = workspace / "old"
        replaced = False
        if target.exists():
            os.rename(target, old)
            replaced = True
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(built, target)
        except OSError:
            if replaced:
                os.rename(old, target)
            raise
        bids.add_participant(bids_dir, subject)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file is left in the dataset)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: run unlocked
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
