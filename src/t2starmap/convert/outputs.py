"""The BIDS name and the datatype's own sidecar fields of every file an acquisition makes.

- ``anat``: ``sub-<s>[_ses-][_acq-][_run-]_echo-<k>_part-<p>_MEGRE``;
- ``func``: ``sub-<s>[_ses-]_task-<t>[_run-]_echo-<k>[_part-<p>]_bold`` (``part`` only when
  the run has a phase), with ``TaskName``; ``RepetitionTime`` must be there;
- ``fmap``: ``sub-<s>[_ses-][_acq-][_run-]_magnitude1|2`` and ``_phasediff`` (with
  ``EchoTime1``/``EchoTime2``), or ``_phase1|2`` when the phase of both echoes was saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from t2starmap.convert import bids
from t2starmap.convert.plan import Acquisition, Member


@dataclass(frozen=True)
class Target:
    """Where one echo of one member goes: its folder (datatype) and its file stem."""

    datatype: str
    stem: str


def target_for(
    acquisition: Acquisition, member: Member, echo: int, subject: str, session: str | None
) -> Target:
    """The BIDS folder and stem of echo ``echo`` (1-based, of the member's own echo times)."""
    a = acquisition
    if a.datatype == "func":
        part = member.part if len(a.members) > 1 else None
        stem = bids.bids_stem(
            subject, session=session, task=a.task, run=a.run, echo=echo, part=part, suffix="bold"
        )
    elif a.datatype == "fmap":
        stem = bids.bids_stem(
            subject, session=session, acq=a.acq, run=a.run, suffix=_fmap_suffix(a, member, echo)
        )
    else:
        stem = bids.bids_stem(
            subject, session=session, acq=a.acq, run=a.run, echo=echo, part=member.part
        )
    return Target(a.datatype, stem)


def _fmap_suffix(acquisition: Acquisition, member: Member, echo: int) -> str:
    if member.part == "mag":
        return f"magnitude{echo}"
    if acquisition.is_phasediff(member):
        return "phasediff"
    return f"phase{echo}"


def datatype_fields(
    acquisition: Acquisition, member: Member, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Sidecar fields the datatype adds to (or requires of) the cleaned dcm2niix sidecar.

    Raises ValueError when a required field cannot be had (a BOLD run without
    RepetitionTime).
    """
    if acquisition.datatype == "func":
        if not isinstance(meta.get("RepetitionTime"), int | float):
            raise ValueError("the BOLD sidecar has no RepetitionTime")
        return {"TaskName": acquisition.task_name}
    if acquisition.datatype == "fmap" and acquisition.is_phasediff(member):
        first, second = acquisition.echo_times
        return {"EchoTime1": round(first / 1000.0, 9), "EchoTime2": round(second / 1000.0, 9)}
    return {}
