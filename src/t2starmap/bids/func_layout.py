"""Find multi-echo BOLD runs (``func/*_echo-<k>[_part-mag]_bold.nii.gz``) with pybids.

One run = every magnitude BOLD file sharing all entities except ``echo`` and ``part``, with
``EchoTime`` per echo from pybids metadata (inheritance honoured). fMRIPrep's per-echo
outputs (``--me-output-echos``: ``*_echo-<k>_desc-preproc_bold.nii.gz``, native space) are
accepted as input too; a dataset holding both the raw and the preprocessed echoes of a run
gives the preprocessed ones (motion-corrected), and the raw run is skipped with that reason.
A run of one echo is skipped with its reason; a run whose echoes lack or repeat ``EchoTime``
is a :class:`t2starmap.bids.layout.SetProblem`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2starmap.bids.echo_times import check_distinct_echo_times, echo_time_of
from t2starmap.bids.layout import (
    BOLD_ENTITIES,
    BOLD_IMAGES,
    Echo,
    Members,
    SetProblem,
    SubjectSession,
    _index,
    participant_images,
    run_name,
    selection_query,
)
from t2starmap.errors import BadDataError, NothingSelectedError

__all__ = ["BOLD_ENTITIES", "BoldRun", "BoldSearch", "SkippedRun", "find_bold_runs", "run_name"]

log = logging.getLogger("t2starmap.bids.func_layout")

#: The ``desc`` of fMRIPrep's motion-corrected per-echo outputs.
PREPROC = "preproc"


@dataclass(frozen=True)
class BoldRun(SubjectSession):
    """The echoes of one multi-echo BOLD run, by ascending echo time. ``entities``: the
    :data:`BOLD_ENTITIES` present and ``datatype: func``; ``preprocessed``: fMRIPrep's
    motion-corrected echoes, not raw ones."""

    entities: Mapping[str, str]
    echoes: tuple[Echo, ...]
    preprocessed: bool = False

    @property
    def name(self) -> str:
        return run_name(self.entities)

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(e.echo_time for e in self.echoes)

    @property
    def repetition_time(self) -> float | None:
        """``RepetitionTime`` (s) of the first echo's metadata, None when absent."""
        value = self.echoes[0].metadata.get("RepetitionTime")
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class SkippedRun(SubjectSession):
    """A run found but not fitted, and why (not a failure: one echo, or a preprocessed
    version of it is fitted instead)."""

    entities: Mapping[str, str]
    first_file: Path
    reason: str

    @property
    def name(self) -> str:
        return run_name(self.entities)


@dataclass
class BoldSearch:
    """What :func:`find_bold_runs` found: runs to fit, runs found unfit, runs skipped."""

    runs: list[BoldRun] = field(default_factory=list)
    problems: list[SetProblem] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)


def _query(
    participant_labels: Sequence[str] | None,
    session_labels: Sequence[str] | None,
    filters: Mapping[str, Any] | None,
) -> dict[str, Any]:
    from bids.layout import Query

    base = {
        "suffix": "bold",
        "datatype": "func",
        "extension": [".nii", ".nii.gz"],
        "space": Query.NONE,
        "return_type": "object",
    }
    return selection_query(base, participant_labels, session_labels, filters)


def _groups(files: Sequence[Any]) -> dict[tuple[tuple[str, str], ...], Members]:
    """Magnitude files by run (entities, then ``desc``: raw "" or ``preproc``)."""
    groups: dict[tuple[tuple[str, str], ...], Members] = {}
    for bids_file in files:
        entities = bids_file.get_entities()
        desc = entities.get("desc")
        if entities.get("part", "mag") != "mag" or desc not in (None, PREPROC):
            continue
        key = tuple((k, str(entities[k])) for k in BOLD_ENTITIES if k in entities)
        key += (("datatype", "func"), ("desc", desc or ""))
        groups.setdefault(key, []).append((Path(bids_file.path), bids_file.get_metadata()))
    return groups


def _classify(key: tuple[tuple[str, str], ...], members: Members, found: BoldSearch) -> None:
    """One group: a run, a problem or a skipped run, into ``found``."""
    entities = {k: v for k, v in key if k != "desc"}
    preprocessed = dict(key)["desc"] == PREPROC
    first = sorted(path for path, _ in members)[0]
    if len(members) == 1:
        reason = "one echo only (single-echo BOLD): nothing to fit a decay to"
        found.skipped.append(SkippedRun(entities, first, reason))
        return
    try:
        echoes = [Echo(path, echo_time_of(path, meta), meta) for path, meta in members]
        order = check_distinct_echo_times(
            run_name(entities), [e.path for e in echoes], [e.echo_time for e in echoes]
        )
    except BadDataError as err:
        found.problems.append(SetProblem(entities, first, err))
        return
    found.runs.append(BoldRun(entities, tuple(echoes[k] for k in order), preprocessed))


def find_bold_runs(
    bids_dir: Path,
    participant_labels: Sequence[str] | None = None,
    session_labels: Sequence[str] | None = None,
    filters: Mapping[str, Any] | None = None,
) -> BoldSearch:
    """The multi-echo BOLD runs selected by labels and ``filters`` (PyBIDS entity filters, the
    filter file's ``"bold"`` key), in a stable order. None is no error here: a dataset may
    hold MEGRE only (then no pybids index is made: one costs a tenth of a second and more).
    NothingSelectedError when pybids rejects a filter."""
    if not participant_images(bids_dir, participant_labels, (BOLD_IMAGES,)):
        return BoldSearch()
    layout = _index(bids_dir, participant_labels, "bold", ("bids", "derivatives"))
    try:
        files = layout.get(**_query(participant_labels, session_labels, filters))
    except (ValueError, KeyError) as err:  # pybids rejects unknown entities
        raise NothingSelectedError(f"BIDS filter for bold not understood: {err}") from err
    found = BoldSearch()
    for key, members in sorted(_groups(files).items()):
        _classify(key, members, found)
    preprocessed = {r.name for r in found.runs if r.preprocessed}
    for bold_run in [r for r in found.runs if not r.preprocessed and r.name in preprocessed]:
        found.runs.remove(bold_run)
        reason = "fMRIPrep's motion-corrected echoes (desc-preproc) of this run are fitted instead"
        found.skipped.append(SkippedRun(bold_run.entities, bold_run.echoes[0].path, reason))
    for skipped in found.skipped:
        log.info("BOLD run %s skipped: %s", skipped.name, skipped.reason)
    return found
