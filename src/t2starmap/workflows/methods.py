"""The methods paragraphs a participant run and the group level write (``logs/CITATION*``).

A participant/session page publishes ``logs/CITATION_sub-<L>[_ses-<S>].md`` (and ``.bib``,
``.html``) for the sets and BOLD runs it shows, with its other files.
``logs/CITATION.md`` (and ``.bib``, ``.html``) is, as fMRIPrep's, the last participant run's:
the sets and runs it published (from the records it holds: a study's thousandth task does
not read 999 records); the group level rewrites it for every set and run published in the
output folder. The text comes from the records
alone (:mod:`t2starmap.report.methods`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from t2starmap.bids.atomic import write_text
from t2starmap.bids.func_records import PublishedRun, load_published_runs
from t2starmap.bids.records import PublishedSet, load_published

log = logging.getLogger("t2starmap")

#: Where the citation files go, relative to the output folder.
LOGS = Path("logs")


def page_citation_name(label: str, extension: str) -> str:
    """``logs/CITATION_sub-01_ses-1.md``: a page's citation file, relative to the output."""
    return (LOGS / f"CITATION_{label}{extension}").as_posix()


def stage_page_citation(
    stage: Path, label: str, records: Sequence[PublishedSet | PublishedRun]
) -> list[str]:
    """Write the citation files of one page's sets and runs under ``stage``; their relative
    names."""
    from t2starmap.report.methods import citation_files

    if not records:
        return []
    names = []
    for extension, text in citation_files(records, f"t2starmap: methods of {label}").items():
        names.append(page_citation_name(label, extension))
        write_text(stage / names[-1], text)
    return names


def write_output_citation(
    output_dir: Path, records: Sequence[PublishedSet | PublishedRun] | None = None
) -> list[Path]:
    """``logs/CITATION.{md,bib,html}`` for ``records``, by default every set and BOLD run
    published in ``output_dir`` (nothing when there is none; a warning, not an error, when a
    record cannot be read)."""
    from t2starmap.report.methods import citation_files

    title = "t2starmap: methods of the echo sets and BOLD runs this run published"
    if records is None:
        title = "t2starmap: methods of every published echo set and BOLD run"
        try:
            records = [*load_published(output_dir), *load_published_runs(output_dir)]
        except ValueError as err:
            log.warning("logs/CITATION.md not written: %s", err)
            return []
    written = []
    for extension, text in (citation_files(records, title) if records else {}).items():
        written.append(write_text(output_dir / LOGS / f"CITATION{extension}", text))
    if written:
        log.info("methods paragraphs to cite: %s", written[0])
    return written
