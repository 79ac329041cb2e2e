"""One HTML page per participant (and session) with a section per echo set.

A set's section is drawn from its record (:class:`t2starmap.bids.records.PublishedSet`) and its
maps: for the sets a run fits, the workflow hands over the maps it holds and the echoes it read
(:func:`set_section` with :class:`SetMaps` and :class:`EchoSamples`), so nothing is read back;
the sets earlier runs published are read from the output folder and the raw echoes from the
input (:func:`earlier_sections`). Sets that failed are listed with their reason
(:class:`t2starmap.bids.records.SetFailure`). Every image is read through
:mod:`t2starmap.bids.nifti`; nothing here changes a fit or writes anything but the page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from t2starmap.bids.atomic import write_text
from t2starmap.bids.func_records import PublishedRun, load_published_runs
from t2starmap.bids.records import PublishedSet, SetFailure, load_failures, load_published
from t2starmap.errors import describe_code
from t2starmap.report.func_section import load_run_maps, run_section
from t2starmap.report.html import render
from t2starmap.report.maps import echo_samples, in_memory_maps, load_set_maps
from t2starmap.report.methods import citation
from t2starmap.report.planes import DEFAULT_CONVENTION
from t2starmap.report.sections import Section, set_section

log = logging.getLogger("t2starmap.report")

#: What the workflows use of the pages (through :mod:`t2starmap.workflows.lazy_pages`).
__all__ = [
    "FailedSet",
    "Section",
    "earlier_sections",
    "echo_samples",
    "failed_sets",
    "in_memory_maps",
    "page_name",
    "recorded_runs",
    "recorded_sets",
    "render_page",
    "run_sections",
    "set_section",
    "write_participant_reports",
]


def page_name(subject: str, session: str | None) -> str:
    """File name of a participant page: ``sub-<L>[_ses-<S>].html`` (at the output root)."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "") + ".html"


@dataclass(frozen=True)
class FailedSet:
    """What a page says of an echo set that failed: why, when, and whether the outputs of an
    earlier run are still there (they are shown below it)."""

    name: str
    reason: str
    exit_code: str
    when: str
    earlier_kept: bool
    #: "Echo set" (MEGRE) or "BOLD run"
    kind: str = "Echo set"


def failed_sets(
    failures: Sequence[SetFailure], published_names: set[str] | frozenset[str]
) -> list[FailedSet]:
    """The page's list of failed sets; ``published_names``: sets whose earlier outputs the
    page shows."""
    return [
        FailedSet(
            f.name,
            f.reason,
            describe_code(f.exit_code),
            f.when,
            f.name in published_names,
            "BOLD run" if f.entities.get("datatype") == "func" else "Echo set",
        )
        for f in sorted(failures, key=lambda f: f.name)
    ]


def render_page(
    subject: str,
    session: str | None,
    sections: Sequence[Section],
    failed: Sequence[FailedSet],
    records: Sequence[PublishedSet | PublishedRun] = (),
) -> str:
    """The HTML of one participant/session page: failed sets first, then a section per set,
    then the methods paragraphs of ``records`` (the sets and BOLD runs shown), to cite."""
    heading = f"sub-{subject}" + (f" ses-{session}" if session else "")
    label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    return render(
        "participant.html",
        title=f"{heading} · t2starmap",
        heading=heading,
        sections=sorted(sections, key=lambda x: (x.kind != "Echo set", x.name)),
        failed=list(failed),
        citation=citation(records) if records else None,
        citation_file=f"logs/CITATION_{label}.md",
    )


def recorded_sets(
    output_dir: Path, subject: str, session: str | None
) -> tuple[list[PublishedSet], list[SetFailure]]:
    """The records and failure records of one participant/session in the output folder; a
    record that cannot be read is left out with a warning (the page shows the others)."""
    try:
        records = load_published(output_dir, [subject])
    except ValueError as err:
        log.warning("%s; the page leaves out the sets published earlier", err)
        records = []
    try:
        failures = load_failures(output_dir, [subject])
    except ValueError as err:
        log.warning("%s; the page leaves out the sets that failed earlier", err)
        failures = []
    return (
        [r for r in records if r.session == session],
        [f for f in failures if f.session == session],
    )


def recorded_runs(output_dir: Path, subject: str, session: str | None) -> list[PublishedRun]:
    """The records of the BOLD runs of one participant/session in the output folder; when one
    cannot be read, none (with a warning: the page shows the rest)."""
    try:
        runs = load_published_runs(output_dir, [subject])
    except ValueError as err:
        log.warning("%s; the page leaves out the BOLD runs published earlier", err)
        return []
    return [r for r in runs if r.session == session]


def run_sections(
    folder: Path, records: Sequence[PublishedRun], convention: str = DEFAULT_CONVENTION
) -> list[Section]:
    """Sections of BOLD runs whose maps are under ``folder`` (the staging folder for runs this
    run fitted, the output folder for runs published before)."""
    return [run_section(r, load_run_maps(folder, r), convention) for r in records]


def earlier_sections(
    output_dir: Path,
    bids_dir: Path,
    records: Sequence[PublishedSet],
    convention: str = DEFAULT_CONVENTION,
) -> list[Section]:
    """Sections of sets published before (``records``), their maps read from the output
    folder and their echoes from the input."""
    return [
        set_section(r, load_set_maps(output_dir, r), bids_dir, convention=convention)
        for r in records
    ]


def write_participant_reports(
    output_dir: Path,
    bids_dir: Path,
    published: Sequence[PublishedSet],
    convention: str = DEFAULT_CONVENTION,
) -> list[Path]:
    """Write ``OUTPUT_DIR/sub-<L>[_ses-<S>].html`` for every participant/session among
    ``published`` from what the output folder holds (maps and records already written; the
    participant run hands its maps over instead, see :mod:`t2starmap.workflows.participant`);
    return the pages written. A page covers every set of its participant/session recorded in the
    output folder, also those that other runs published, and the BOLD runs recorded there, and
    lists those that failed."""
    pages = sorted({(r.subject, r.session) for r in published}, key=lambda k: (k[0], k[1] or ""))
    written = []
    for subject, session in pages:
        started = time.perf_counter()
        records, failures = recorded_sets(output_dir, subject, session)
        names = {r.name for r in published}
        records = [*(r for r in published if (r.subject, r.session) == (subject, session))] + [
            r for r in records if r.name not in names
        ]
        runs = recorded_runs(output_dir, subject, session)
        sections = earlier_sections(output_dir, bids_dir, records, convention)
        sections += run_sections(output_dir, runs, convention)
        failed = failed_sets(failures, {r.name for r in records} | {r.name for r in runs})
        target = Path(output_dir) / page_name(subject, session)
        cited: list[PublishedSet | PublishedRun] = [*records, *runs]
        write_text(target, render_page(subject, session, sections, failed, cited))
        written.append(target)
        log.info("report %s written in %.2f s", target, time.perf_counter() - started)
    return written
