"""Accepted series -> acquisitions with their BIDS entities (pure, like :mod:`series`).

A series holding magnitude images starts an acquisition; a series holding only phase (or
real/imaginary) images joins the magnitude series of the same kind, protocol and geometry
that lacks those parts, the nearest earlier one first (Siemens writes magnitude as series N
and phase as series N+1, sometimes both with the same number). Then:

- ME-GRE (``anat``): ``acq-<protocol>`` when the protocols differ, ``run-<n>`` where one
  repeats;
- ME-EPI (``func``): ``task-<label>`` from the protocol name made BIDS-safe (or the label the
  user gives), ``run-<n>`` where a task repeats;
- field maps (``fmap``): a magnitude pair joined by a phase series at its second echo time
  (a phase difference: ``phasediff``) or at both (``phase1``/``phase2``); ``acq``/``run`` as
  for ME-GRE. A magnitude pair without its phase is skipped: BIDS has no field map without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from t2starmap.convert.series import PARTS, Decision, Series

DATATYPES = ("anat", "func", "fmap")
"""BIDS folders the converter writes, in the order it plans them."""


@dataclass(frozen=True)
class Member:
    """One part of an acquisition and the series it comes from."""

    decision: Decision
    part: str


@dataclass(frozen=True)
class Acquisition:
    """One acquisition: BIDS entities shared by all its files, and its parts.

    ``acq``, ``run`` and ``task`` are None when not needed; ``echo_times`` (ms, ascending)
    gives the echo index: echo k is ``echo_times[k - 1]``. ``datatype`` is the BIDS folder
    (``anat``, ``func``, ``fmap``); ``task_name`` the free-text TaskName of a ``func`` run.
    """

    members: tuple[Member, ...]
    echo_times: tuple[float, ...]
    acq: str | None = None
    run: int | None = None
    protocol_label: str = ""
    datatype: str = "anat"
    task: str | None = None
    task_name: str = ""

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(m.part for m in self.members)

    def is_phasediff(self, member: Member) -> bool:
        """Whether ``member`` is a field map's phase difference (one image, second echo)."""
        return (
            self.datatype == "fmap"
            and member.part == "phase"
            and member.decision.echo_times == self.echo_times[-1:]
        )


@dataclass(frozen=True)
class Plan:
    """What :func:`plan_acquisitions` makes of the accepted series."""

    acquisitions: tuple[Acquisition, ...]
    skipped: tuple[tuple[Series, str], ...] = field(default_factory=tuple)


def sanitize_label(text: str) -> str:
    """A BIDS label (letters and digits only) from free text such as a protocol name."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def plan_acquisitions(decisions: Sequence[Decision], *, task_label: str | None = None) -> Plan:
    """Pair the accepted series into acquisitions and give them their entities.

    ``task_label`` (letters and digits) replaces the task label of every ME-EPI run.
    """
    accepted = sorted((d for d in decisions if d.accepted), key=_decision_order)
    acquisitions: list[Acquisition] = []
    skipped: list[tuple[Series, str]] = []
    for datatype in DATATYPES:
        of_kind = [d for d in accepted if d.datatype == datatype]
        groups = _pair(of_kind, skipped, _fmap_partner if datatype == "fmap" else _same_echoes)
        if datatype == "fmap":
            groups = _complete_fieldmaps(groups, skipped)
        acquisitions.extend(_entities(groups, datatype, task_label))
    return Plan(tuple(acquisitions), tuple(skipped))


EchoMatch = Callable[[Decision, Decision], bool]


def _same_echoes(primary: Decision, other: Decision) -> bool:
    return primary.echo_times == other.echo_times


def _fmap_partner(primary: Decision, other: Decision) -> bool:
    return other.echo_times in (primary.echo_times, primary.echo_times[-1:])


def _pair(
    accepted: list[Decision], skipped: list[tuple[Series, str]], match: EchoMatch
) -> list[list[Member]]:
    primaries = [[Member(d, p) for p in d.parts] for d in accepted if "mag" in d.parts]
    for decision in accepted:
        if "mag" in decision.parts:
            continue
        home, why = _find_partner(decision, primaries, match)
        if home is None:
            skipped.append((decision.series, why))
            continue
        home.extend(Member(decision, p) for p in decision.parts)
    return primaries


def _complete_fieldmaps(
    groups: list[list[Member]], skipped: list[tuple[Series, str]]
) -> list[list[Member]]:
    """Field maps are a magnitude pair and its phase; anything less is skipped."""
    kept = []
    for members in groups:
        first = members[0].decision
        if len(first.echo_times) != 2 or first.parts != ("mag",):
            skipped.append(
                (first.series, f"field map with {len(first.echo_times)} echo time(s) and parts "
                 f"{'/'.join(first.parts)}: not a magnitude pair")
            )  # fmt: skip
        elif len(members) == 1:
            skipped.append(
                (first.series, "field-map magnitude without its phase-difference series")
            )
        else:
            kept.append(members)
    return kept


def _entities(
    groups: list[list[Member]], datatype: str, task_label: str | None
) -> list[Acquisition]:
    labels = [
        sanitize_label(_protocol(m[0].decision)) or f"series{m[0].decision.series.number}"
        for m in groups
    ]
    if datatype == "func" and task_label:
        labels = [task_label] * len(groups)
    distinct = list(dict.fromkeys(labels))
    acquisitions = []
    for index, (members, label) in enumerate(zip(groups, labels, strict=True)):
        same = [i for i, lab in enumerate(labels) if lab == label]
        first = members[0].decision
        acquisitions.append(
            Acquisition(
                members=tuple(sorted(members, key=lambda m: PARTS.index(m.part))),
                echo_times=first.echo_times,
                acq=label if len(distinct) > 1 and datatype != "func" else None,
                run=same.index(index) + 1 if len(same) > 1 else None,
                protocol_label=label,
                datatype=datatype,
                task=label if datatype == "func" else None,
                task_name=(task_label or _protocol(first)) if datatype == "func" else "",
            )
        )
    return acquisitions


def _decision_order(d: Decision) -> tuple[int, str]:
    number = d.series.number
    return (number if number is not None else 1 << 30, d.series.uid)


def _protocol(decision: Decision) -> str:
    return decision.series.first.protocol_name or decision.series.first.series_description


def _geometry(decision: Decision) -> tuple[int, int, int, int]:
    first = decision.series.first
    return (first.rows, first.columns, decision.n_slices, decision.n_volumes)


def _find_partner(
    decision: Decision, primaries: list[list[Member]], match: EchoMatch
) -> tuple[list[Member] | None, str]:
    candidates = [
        members
        for members in primaries
        if _protocol(members[0].decision) == _protocol(decision)
        and _geometry(members[0].decision) == _geometry(decision)
        and not set(decision.parts) & {m.part for m in members}
    ]
    what = "/".join(decision.parts)
    if not candidates:
        return None, f"{what} images without a matching magnitude series"
    matching = [m for m in candidates if match(m[0].decision, decision)]
    if not matching:
        nearest = candidates[-1][0].decision.series
        return None, (
            f"{what} echo times differ from those of the magnitude "
            f"{nearest.label()} (missing echoes?)"
        )
    own = decision.series.number or 0

    def distance(members: list[Member]) -> tuple[bool, int]:
        number = members[0].decision.series.number or 0
        return (number > own, abs(own - number))  # the nearest earlier series first

    return min(matching, key=distance), ""
