"""Which files of a series dcm2niix converts together, staged as links; enhanced EPI volumes
that dcm2niix leaves apart are joined here.

Classic files go together (dcm2niix stacks the slices and volumes). Enhanced multi-frame
ME-GRE files hold whole volumes and go one per call: dcm2niix v1.0.20260724 mis-scales all
but the first of several enhanced files converted together when it decides to save floats.
Enhanced EPI comes as one file per echo holding every volume (Philips: converted alone, a
4-D image) or as one file per volume and echo (Siemens XA): dcm2niix converts every enhanced
file on its own, so those are converted one by one and joined, in the order of their
acquisition times, into one 4-D image per echo.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from t2starmap.bids.nifti_write import concatenate_volumes
from t2starmap.convert.dcm2niix import Output, run_dcm2niix
from t2starmap.convert.plan import Member
from t2starmap.errors import BadDataError


def dcm2niix_groups(member: Member) -> list[list[Path]]:
    """The member's files in the groups that make one output each (see the module)."""
    decision = member.decision
    files = decision.files_for(member.part)
    if not any(im.frame is not None for im in decision.images):
        return [list(files)]
    if decision.datatype != "func":
        return [[f] for f in files]
    tes: dict[Path, set[float]] = {}
    times: dict[Path, str] = {}
    for im in decision.images:
        if im.part == member.part:
            tes.setdefault(im.path, set()).add(round(im.echo_time or 0.0, 3))
            times[im.path] = min(times.get(im.path, im.acquired), im.acquired)
    groups: dict[tuple[float, ...], list[Path]] = {}
    for path in files:
        key = tuple(sorted(tes[path]))
        groups.setdefault(key if len(key) == 1 else (len(groups) + 1e9,), []).append(path)
    ordered = [sorted(group, key=lambda f: times[f]) for group in groups.values()]
    for group in ordered:
        if len({times[f] for f in group}) < len(group):
            raise BadDataError(
                f"{decision.series.label()}: {len(group)} enhanced files of one echo, one volume "
                "each, without distinct acquisition times: their order in time is unknown"
            )
    return ordered


def convert_member(member: Member, work: Path) -> list[Output]:
    """Convert the member's files group by group; a group of several enhanced EPI files (one
    volume each) file by file, joined into one 4-D image."""
    label = f"{member.decision.series.label()} ({member.part})"
    enhanced = any(im.frame is not None for im in member.decision.images)
    outputs: list[Output] = []
    for g_index, group in enumerate(dcm2niix_groups(member)):
        if not (enhanced and len(group) > 1):
            outputs.extend(_convert(group, work / f"g{g_index}", label))
            continue
        volumes = [_convert([f], work / f"g{g_index}v{i}", label) for i, f in enumerate(group)]
        if any(len(v) != 1 for v in volumes):
            raise BadDataError(f"dcm2niix split one enhanced volume of {label} into several")
        joined = work / f"g{g_index}.nii.gz"
        concatenate_volumes([v[0].nifti for v in volumes], joined)
        sidecar = work / f"g{g_index}.json"
        shutil.copyfile(volumes[0][0].sidecar, sidecar)
        outputs.append(Output(joined, sidecar))
    return outputs


def _convert(files: list[Path], work: Path, label: str) -> list[Output]:
    """Stage ``files`` as symbolic links (copies where links fail) and run dcm2niix on them."""
    stage = work / "dicom"
    stage.mkdir(parents=True)
    for i, path in enumerate(files):
        link = stage / f"{i:06d}.dcm"
        try:
            link.symlink_to(path)
        except OSError:  # a file system without symbolic links: copy
            shutil.copyfile(path, link)
    return run_dcm2niix(stage, work / "nifti", label=label)
