"""DICOM folder -> BIDS MEGRE files for one participant (and session): the only orchestrator.

Order of work: check the arguments against the file system; read every header and decide
which series are ME-GRE (nothing written yet); convert each part of each acquisition with
dcm2niix in a temporary folder inside the target (so the final move is a rename); rename to
BIDS, clean the sidecars, put phase in radians; move the participant (or session) folder into
place and add the participant to ``participants.tsv``. The DICOM folder is only read.
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
from t2starmap.bids.nifti import header_geometry, read_volume, save_like
from t2starmap.convert import bids
from t2starmap.convert.dcm2niix import Output, run_dcm2niix
from t2starmap.convert.scan import scan_dicom_dir
from t2starmap.convert.series import (
    Acquisition,
    Decision,
    Member,
    classify_series,
    group_series,
    plan_acquisitions,
)
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
) -> ConvertResult:
    """Convert the ME-GRE series under ``dicom_dir`` into ``bids_dir`` as ``sub-<subject>``.

    Raises InputMissingError (no DICOM, no ME-GRE series), BadDataError (ME-GRE series that
    cannot be converted), UsageError (labels, folders, existing participant without
    ``overwrite``), OutputError (the target cannot be written).
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

    acquisitions = find_acquisitions(dicom_dir)

    parent = bids_dir if bids_dir.exists() else bids_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=".t2starmap-convert-", dir=parent))
    except OSError as err:
        raise OutputError(f"cannot write in {parent}: {err.strerror}") from err
    try:
        tree = workspace / "tree"
        built = tree / target.relative_to(bids_dir) / "anat"
        files = _build(acquisitions, workspace, built, subject, session)
        final = [target / "anat" / f.name for f in files]
        _move_into_place(tree, workspace, bids_dir, target, subject, overwrite)
    except OSError as err:
        raise OutputError(f"cannot write {target}: {err}") from err
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    log.info(
        "wrote %d images and their %d JSON sidecars to %s", len(final), len(final), target / "anat"
    )
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


def find_acquisitions(dicom_dir: Path) -> tuple[Acquisition, ...]:
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
    plan = plan_acquisitions(decisions)
    for series, why in plan.skipped:
        log.warning("skipped %s: %s", series.label(), why)
    if not plan.acquisitions:
        refused = [d for d in decisions if d.refused]
        found = "; ".join(f"{d.series.label()}: {d.reason}" for d in decisions)
        if refused:
            raise BadDataError(
                f"no complete multi-echo gradient-echo series in {dicom_dir}: {found}"
            )
        raise InputMissingError(f"no multi-echo gradient-echo series in {dicom_dir}; found {found}")
    return plan.acquisitions


def _log_decision(d: Decision) -> None:
    if d.accepted:
        extra = f", {d.dropped} scanner-made map image(s) left out" if d.dropped else ""
        log.info(
            "%s: ME-GRE, %d echoes (%s ms), %s%s",
            d.series.label(),
            len(d.echo_times),
            ", ".join(f"{t:g}" for t in d.echo_times),
            "/".join(d.parts),
            extra,
        )
    elif d.refused:
        log.warning("refused %s: ME-GRE but %s", d.series.label(), d.reason)
    else:
        log.info("skipped %s: %s", d.series.label(), d.reason)


def _build(
    acquisitions: tuple[Acquisition, ...],
    workspace: Path,
    anat: Path,
    subject: str,
    session: str | None,
) -> list[Path]:
    """Convert every acquisition into ``anat``; one that fails is left out whole (warned)."""
    anat.mkdir(parents=True)
    written: list[Path] = []
    failed: list[str] = []
    for a_index, acquisition in enumerate(acquisitions):
        try:
            written.extend(
                _convert_acquisition(acquisition, workspace / f"a{a_index}", anat, subject, session)
            )
        except BadDataError as err:
            log.warning("%s", err)
            failed.append(str(err))
    if not written:
        raise BadDataError("; ".join(failed) or "nothing converted")
    return written


def _convert_acquisition(
    acquisition: Acquisition, work: Path, anat: Path, subject: str, session: str | None
) -> list[Path]:
    """All parts and echoes of one acquisition, moved into ``anat`` only when all succeeded."""
    staged = work / "bids"
    staged.mkdir(parents=True)
    done = []
    for m_index, member in enumerate(acquisition.members):
        outputs = _dcm2niix_member(member, work / f"m{m_index}")
        by_echo = _match_echoes(outputs, acquisition, member)
        for echo, output in by_echo.items():
            stem = bids.bids_stem(
                subject,
                session=session,
                acq=acquisition.acq,
                run=acquisition.run,
                echo=echo,
                part=member.part,
            )
            done.append(_write_bids_pair(output, staged / stem, member))
    written = []
    for nifti in done:
        sidecar = sidecar_path(nifti)
        os.replace(sidecar, anat / sidecar.name)
        os.replace(nifti, anat / nifti.name)
        written.append(anat / nifti.name)
    return written


def _dcm2niix_member(member: Member, work: Path) -> list[Output]:
    """Stage the member's files as symbolic links and convert them.

    Classic files go to dcm2niix together (it stacks the slices). Enhanced multi-frame files
    hold whole volumes and go one per call: dcm2niix v1.0.20260724 mis-scales all but the
    first of several enhanced files converted together when it decides to save floats.
    """
    files = member.decision.files_for(member.part)
    enhanced = any(im.frame is not None for im in member.decision.images)
    groups = [[f] for f in files] if enhanced else [list(files)]
    label = f"{member.decision.series.label()} ({member.part})"
    outputs: list[Output] = []
    for g_index, group in enumerate(groups):
        stage = work / f"dicom{g_index}"
        stage.mkdir(parents=True)
        for i, path in enumerate(group):
            link = stage / f"{i:06d}.dcm"
            try:
                link.symlink_to(path)
            except OSError:  # a file system without symbolic links: copy
                shutil.copyfile(path, link)
        outputs.extend(run_dcm2niix(stage, work / f"nifti{g_index}", label=label))
    return outputs


def _match_echoes(
    outputs: list[Output], acquisition: Acquisition, member: Member
) -> dict[int, Output]:
    label = f"{member.decision.series.label()} ({member.part})"
    tes = acquisition.echo_times
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


def _write_bids_pair(output: Output, stem: Path, member: Member) -> Path:
    meta = bids.load_json(output.sidecar)
    label = f"{member.decision.series.label()} ({member.part})"
    try:
        sidecar = bids.clean_sidecar(meta, part=member.part)
    except ValueError as err:
        raise BadDataError(f"{label}: {err}") from err
    nifti = stem.with_name(stem.name + ".nii.gz")
    shape, _ = header_geometry(output.nifti)
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise BadDataError(f"dcm2niix wrote a {shape} image for one echo of {label}")
    slices = shape[2] if len(shape) > 2 else 1
    if slices != member.decision.n_slices:
        # e.g. enhanced files holding magnitude and phase frames, which dcm2niix stacks
        raise BadDataError(
            f"dcm2niix wrote {slices} slices for one echo of {label}, the series has "
            f"{member.decision.n_slices}: not converted (mixed image kinds in one file?)"
        )
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
