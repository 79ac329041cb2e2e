"""Find MEGRE echo sets in a BIDS dataset with pybids and read their echo times.

One echo set = every magnitude MEGRE file sharing all entities except ``echo`` and ``part``.
Magnitude means ``part-mag`` or no ``part`` entity; phase/real/imag files are ignored here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2starmap.bids.echo_times import check_distinct_echo_times, echo_time_of
from t2starmap.errors import BadDataError, InputMissingError, NothingSelectedError

__all__ = [
    "SET_ENTITIES",
    "Echo",
    "EchoSet",
    "SetProblem",
    "build_echo_set",
    "echo_time_of",
    "find_echo_sets",
]

log = logging.getLogger("t2starmap.bids.layout")

#: Entities that distinguish echo sets, in BIDS file-name order (MEGRE minus echo and part).
SET_ENTITIES = (
    "subject",
    "session",
    "task",
    "acquisition",
    "ceagent",
    "reconstruction",
    "run",
    "flip",
    "inversion",
    "mtransfer",
)
_SHORT = {
    "subject": "sub",
    "session": "ses",
    "task": "task",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "run": "run",
    "flip": "flip",
    "inversion": "inv",
    "mtransfer": "mt",
}


#: Entities that distinguish multi-echo BOLD runs, in BIDS file-name order (bold minus echo
#: and part), with their short names (:mod:`t2starmap.bids.func_layout`).
BOLD_ENTITIES = {
    key: {**_SHORT, "direction": "dir"}[key] for key in (*SET_ENTITIES[:6], "direction", "run")
}


def run_name(entities: Mapping[str, Any]) -> str:
    """``sub-01_ses-1_task-rest_run-1``: a BOLD run's entities as in a file name."""
    return "_".join(f"{short}-{entities[k]}" for k, short in BOLD_ENTITIES.items() if k in entities)


@dataclass(frozen=True)
class Echo:
    path: Path
    echo_time: float  # seconds
    metadata: Mapping[str, Any]


class SubjectSession:
    """``subject`` and ``session`` of anything that has BIDS ``entities`` (pybids names)."""

    entities: Mapping[str, str]

    @property
    def subject(self) -> str:
        return str(self.entities["subject"])

    @property
    def session(self) -> str | None:
        value = self.entities.get("session")
        return None if value is None else str(value)


@dataclass(frozen=True)
class EchoSet(SubjectSession):
    """Echoes of one acquisition, sorted by ascending echo time."""

    entities: Mapping[str, str]  # SET_ENTITIES present, pybids names -> values
    echoes: tuple[Echo, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        """The echoes' image files, in ascending echo time."""
        return tuple(echo.path for echo in self.echoes)

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(e.echo_time for e in self.echoes)

    @property
    def name(self) -> str:
        """The set's entities as in a file name, e.g. ``sub-01_ses-1_run-2``."""
        return "_".join(
            f"{_SHORT[k]}-{self.entities[k]}" for k in SET_ENTITIES if k in self.entities
        )


@dataclass(frozen=True)
class SetProblem(SubjectSession):
    """An echo set that was found but cannot be fitted as it is (an echo without EchoTime,
    a single echo, two echoes at one echo time): its entities, first file and the error."""

    entities: Mapping[str, str]
    first_file: Path
    error: BadDataError

    @property
    def name(self) -> str:
        if self.entities.get("datatype") == "func":  # a multi-echo BOLD run's
            return run_name(self.entities)
        return "_".join(f"{_SHORT[k]}-{v}" for k, v in self.entities.items())


def build_echo_set(entities: Mapping[str, str], echoes: Sequence[Echo]) -> EchoSet:
    """Sort by EchoTime; refuse a single echo or two at the same echo time (BadDataError,
    :func:`t2starmap.bids.echo_times.check_distinct_echo_times`)."""
    name = "_".join(f"{_SHORT[k]}-{v}" for k, v in entities.items())
    order = check_distinct_echo_times(name, [e.path for e in echoes], [e.echo_time for e in echoes])
    return EchoSet(entities=dict(entities), echoes=tuple(echoes[k] for k in order))


def _query_value(value: Any) -> Any:
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def _index(
    bids_dir: Path,
    participant_labels: Sequence[str] | None,
    suffix: str = "MEGRE",
    config: Sequence[str] = ("bids",),
) -> Any:
    """A pybids layout of the dataset. With participant labels, the other participants'
    folders are not even walked (one job of a SLURM array must not index hundreds of
    participants), and metadata is indexed for ``suffix`` files only. ``config``: pybids'
    entity configurations (``derivatives`` adds ``desc`` and ``space``)."""
    from bids import BIDSLayout
    from bids.layout.index import BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    ignore = [*DEFAULT_LOCATIONS_TO_IGNORE, re.compile(r"^/derivatives")]
    if participant_labels:
        wanted = "|".join(re.escape(label) for label in participant_labels)
        ignore.append(re.compile(rf"^/sub-(?!(?:{wanted})(?:/|$))"))
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, suffix=suffix)
    return BIDSLayout(
        str(bids_dir), validate=False, derivatives=False, config=list(config), indexer=indexer
    )


def annex_missing_message(path: Path) -> str:
    """What to say of an image that is a link to content that is not here (DataLad)."""
    return (
        f"{path}: the image is a link to content that is not here (a DataLad/git-annex "
        f"dataset whose data was not fetched?); fetch it with: datalad get {path}"
    )


#: Multi-echo BOLD echoes (raw or fMRIPrep's desc-preproc), by file-name pattern.
BOLD_IMAGES = "*_echo-*_bold.nii*"
#: The images a run reads, by file-name pattern: MEGRE echoes, multi-echo BOLD echoes.
IMAGE_PATTERNS = ("*_MEGRE.nii*", BOLD_IMAGES)


def participant_images(
    bids_dir: Path, participant_labels: Sequence[str] | None, patterns: Sequence[str]
) -> list[Path]:
    """The files matching any of ``patterns`` (file-name globs) in the folders of the
    participants selected (all ``sub-*`` without labels), sorted per participant."""
    folders = (
        [Path(bids_dir) / f"sub-{label}" for label in participant_labels]
        if participant_labels
        else sorted(Path(bids_dir).glob("sub-*"))
    )
    return [
        path
        for folder in folders
        for path in sorted(p for pattern in patterns for p in folder.rglob(pattern))
    ]


def check_images_present(bids_dir: Path, participant_labels: Sequence[str] | None) -> None:
    """Refuse MEGRE and multi-echo BOLD images that are dangling links (DataLad content not
    fetched) before anything else looks at them. Raises InputMissingError (exit 66) naming
    the first."""
    missing = [
        path
        for path in participant_images(bids_dir, participant_labels, IMAGE_PATTERNS)
        if path.is_symlink() and not path.exists()
    ]
    if missing:
        more = f" ({len(missing) - 1} more like it)" if len(missing) > 1 else ""
        raise InputMissingError(annex_missing_message(missing[0]) + more)


#: Most labels listed when a selection names labels the dataset does not have.
LISTED_LABELS = 12


def _listed(prefix: str, labels: Sequence[str]) -> str:
    """``sub-01, sub-02 (and 3 more)``: the labels a dataset has, for a message."""
    shown = ", ".join(f"{prefix}{label}" for label in labels[:LISTED_LABELS])
    more = len(labels) - LISTED_LABELS
    return (shown + (f" (and {more} more)" if more > 0 else "")) or "none"


def _check_participants(bids_dir: Path, participant_labels: Sequence[str] | None) -> None:
    """NothingSelectedError naming the participants asked for that the dataset lacks, and
    listing those it has."""
    if not participant_labels:
        return
    present = sorted(p.name[4:] for p in Path(bids_dir).glob("sub-*") if p.is_dir())
    missing = sorted(set(participant_labels) - set(present))
    if missing:
        names = ", ".join("sub-" + m for m in missing)
        raise NothingSelectedError(
            f"{bids_dir}: no participant {names} in the dataset; it has {_listed('sub-', present)}"
        )


def check_labels(
    bids_dir: Path,
    participant_labels: Sequence[str] | None,
    session_labels: Sequence[str] | None,
) -> None:
    """NothingSelectedError (exit 18) when the labels name participants the dataset lacks, or
    sessions none of the selected participants has, from the folder names alone: cheap
    enough to run before the validator."""
    _check_participants(bids_dir, participant_labels)
    if not session_labels:
        return
    subjects = (
        [Path(bids_dir) / f"sub-{label}" for label in participant_labels]
        if participant_labels
        else sorted(Path(bids_dir).glob("sub-*"))
    )
    present = sorted({p.name[4:] for s in subjects for p in s.glob("ses-*") if p.is_dir()})
    if not set(session_labels) & set(present):
        names = ", ".join("ses-" + s for s in session_labels)
        raise NothingSelectedError(
            f"{bids_dir}: no session {names} in the selected participants; there are "
            f"{_listed('ses-', present)}"
        )


#: One set's (image, sidecar metadata) pairs.
Members = list[tuple[Path, Mapping[str, Any]]]


def find_echo_sets(
    bids_dir: Path,
    participant_labels: Sequence[str] | None = None,
    session_labels: Sequence[str] | None = None,
    filters: Mapping[str, Any] | None = None,
    problems: list[SetProblem] | None = None,
) -> list[EchoSet]:
    """All magnitude MEGRE echo sets selected by labels and filters, in a stable order.

    Raises InputMissingError (the dataset holds no MEGRE at all) or NothingSelectedError
    (labels or filters select none; the message lists the participants or sessions there
    are). A selected set that cannot be fitted (:class:`SetProblem`) raises its
    BadDataError, unless ``problems`` is a list: then it is appended there and the other
    sets are returned.
    """
    _check_participants(bids_dir, participant_labels)
    layout = _index(bids_dir, participant_labels)
    base = {"suffix": "MEGRE", "extension": [".nii", ".nii.gz"], "return_type": "object"}
    if not layout.get(**base):
        if participant_labels:
            names = ", ".join("sub-" + m for m in participant_labels)
            raise NothingSelectedError(f"{bids_dir}: {names} hold(s) no MEGRE images")
        raise InputMissingError(f"{bids_dir}: the dataset holds no MEGRE images (*_MEGRE.nii[.gz])")
    query = selection_query(base, participant_labels, session_labels, filters)
    try:
        files = layout.get(**query)
    except (ValueError, KeyError) as err:  # pybids rejects unknown entities
        raise NothingSelectedError(f"BIDS filter not understood: {err}") from err
    groups = _magnitude_groups(files)
    if not groups:
        raise NothingSelectedError(_nothing_matches(layout, bids_dir, query, filters))
    sets = []
    for found, members in sorted(groups.items()):
        try:
            echoes = [Echo(path, echo_time_of(path, meta), meta) for path, meta in members]
            sets.append(build_echo_set(dict(found), echoes))
        except BadDataError as err:
            if problems is None:
                raise
            first = sorted(path for path, _ in members)[0]
            problems.append(SetProblem(dict(found), first, err))
    for echo_set in sets:
        log.debug("echo set %s: %d echoes, TE %s s", *_described(echo_set))
    return sets


def _described(echo_set: EchoSet) -> tuple[str, int, tuple[float, ...]]:
    return echo_set.name, len(echo_set.echoes), echo_set.echo_times


def selection_query(
    base: Mapping[str, Any],
    participant_labels: Sequence[str] | None,
    session_labels: Sequence[str] | None,
    filters: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A pybids query: ``base`` narrowed to the labels and to the filter file's entities
    (``null`` means "entity absent", ``"*"`` "any value")."""
    query: dict[str, Any] = dict(base)
    if participant_labels:
        query["subject"] = list(participant_labels)
    if session_labels:
        query["session"] = list(session_labels)
    for key, value in (filters or {}).items():
        query[key] = (
            [_query_value(v) for v in value] if isinstance(value, list) else _query_value(value)
        )
    return query


def _magnitude_groups(files: Sequence[Any]) -> dict[tuple[tuple[str, str], ...], Members]:
    """The magnitude files (no ``part``, or ``part-mag``) grouped by their set's entities."""
    groups: dict[tuple[tuple[str, str], ...], Members] = {}
    for bids_file in files:
        entities = bids_file.get_entities()
        if entities.get("part", "mag") != "mag":
            continue
        set_key = tuple((k, str(entities[k])) for k in SET_ENTITIES if k in entities)
        groups.setdefault(set_key, []).append((Path(bids_file.path), bids_file.get_metadata()))
    return groups


def _nothing_matches(
    layout: Any, bids_dir: Path, query: Mapping[str, Any], filters: Mapping[str, Any] | None
) -> str:
    """Why nothing was selected: what was asked for, and the sessions there are."""
    what = []
    if query.get("subject"):
        what.append("participant " + " ".join(query["subject"]))
    if query.get("session"):
        who = {"subject": query["subject"]} if query.get("subject") else {}
        sessions = layout.get_sessions(suffix="MEGRE", **who)
        what.append(
            "session "
            + " ".join(query["session"])
            + f" (there are {_listed('ses-', sorted(sessions))})"
        )
    if filters:
        what.append(f"filters {dict(filters)}")
    return f"{bids_dir}: no magnitude MEGRE images match {'; '.join(what) or 'the selection'}"
