"""The BOLD runs' part of a participant/session page: the sections of the runs this run
staged (drawn from their files in the staging folder) and of those earlier runs published
(from the output folder), the files publishing them writes and those it makes stale."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from t2starmap.bids import records
from t2starmap.bids.func_records import PublishedRun, run_record_files
from t2starmap.bids.records import PublishedSet
from t2starmap.errors import T2StarError
from t2starmap.workflows.func import StagedRun
from t2starmap.workflows.lazy_pages import pages

log = logging.getLogger("t2starmap")

_Record = TypeVar("_Record", PublishedSet, PublishedRun)


@dataclass(frozen=True)
class RunsPart:
    """What a page holds of its BOLD runs: ``sections``; ``files`` to publish (relative to the
    staging folder), ``remove``: files made stale (the failure record of a run now published,
    files an earlier record listed that the new one does not); ``earlier``: names of runs
    published before whose outputs the page shows; ``records``: the records of the runs the
    page shows (staged now, then earlier), for its methods paragraphs."""

    sections: list[pages.Section]
    files: list[str]
    remove: list[str]
    earlier: set[str]
    records: list[PublishedRun]


def runs_part(
    output_dir: Path,
    stage: Path,
    where: tuple[str, str | None],
    staged: list[StagedRun],
    convention: str,
) -> RunsPart:
    """The BOLD runs of the page of ``where`` (subject, session): those ``staged`` now and
    those published earlier."""
    on_disk = pages.recorded_runs(output_dir, *where)
    ours = {s.record.name for s in staged}
    earlier = [r for r in on_disk if r.name not in ours]
    sections = pages.run_sections(stage, [s.record for s in staged], convention)
    sections += readable_sections(
        earlier, lambda r: pages.run_sections(output_dir, [r], convention)
    )
    files = [name for s in staged for name in s.files]
    remove = [records.failure_path(Path(), s.record.entities).as_posix() for s in staged]
    for old in (r for r in on_disk if r.name in ours):
        log.info("%s: replacing the outputs an earlier run published", old.name)
        new = set(next(s.files for s in staged if s.record.name == old.name))
        remove += [f for f in run_record_files(old) if f not in new]
    shown = [s.record for s in staged] + earlier
    return RunsPart(sections, files, remove, {r.name for r in earlier}, shown)


def readable_sections(
    records: Sequence[_Record], draw: Callable[[_Record], list[pages.Section]]
) -> list[pages.Section]:
    """``draw(record)`` for each record published earlier (an echo set or a BOLD run); one
    whose maps cannot be read any more is left out with a warning (it must not keep this
    run's sets and runs from their page)."""
    sections = []
    for record in records:
        try:
            sections += draw(record)
        except (OSError, T2StarError) as err:
            log.warning(
                "%s: published earlier, but its maps cannot be read (%s); the page leaves it out",
                record.name,
                err,
            )
    return sections


def log_published_run(record: PublishedRun, output_dir: Path) -> None:
    """One line on a published run: voxels, failed and misfit shares, tSNR ratio, where."""
    log.info(
        "%s: %d voxels fitted, %.1f%% failed, %.1f%% misfit, tSNR ratio %s -> %s",
        record.name,
        record.n_voxels,
        100 * record.failed_fraction,
        100 * record.misfit_fraction,
        f"{record.tsnr.ratio:.2f}" if record.tsnr else "n/a",
        record.path(output_dir, "t2star img").parent,
    )
