"""The group level: the group table and page from the records of the published sets and BOLD
runs and the failure records of those that failed, and the methods paragraphs of every
published set."""

from __future__ import annotations

import logging
from pathlib import Path

from t2starmap.bids import records
from t2starmap.bids.atomic import write_json, write_text
from t2starmap.bids.func_records import load_published_runs
from t2starmap.bids.summary import GROUP_TABLE, group_sidecar, group_table
from t2starmap.config import Settings
from t2starmap.errors import (
    BadDataError,
    InputMissingError,
)
from t2starmap.workflows.methods import write_output_citation
from t2starmap.workflows.outputs import prepare_output, write_settings_log, write_shared_files

log = logging.getLogger("t2starmap")


def run_group(settings: Settings) -> Path:
    """The group table and page from the records of every selected published set and the
    failure records of every selected set that failed."""
    out = settings.output_dir
    try:
        labels = (settings.participant_labels, settings.session_labels)
        published = records.load_published(out, *labels)
        runs = load_published_runs(out, *labels)
        failures = records.load_failures(out, *labels)
    except ValueError as err:
        raise BadDataError(str(err)) from err
    if not published and not runs and not failures:
        raise InputMissingError(
            f"{out}: no participant-level outputs (*record_of.json beside the maps) found"
            + (
                " for the selected participants/sessions"
                if settings.participant_labels or settings.session_labels
                else ""
            )
            + "; run the participant level first"
        )
    prepare_output(out)
    write_shared_files(settings)
    table = group_table(published, failures, runs)
    path = out / GROUP_TABLE
    write_text(path, table.write(path))
    write_json(path.with_suffix(".json"), group_sidecar())
    from t2starmap.report import write_group_report

    write_group_report(out, table)
    write_output_citation(out)
    write_settings_log(settings)
    n_runs = len(runs) + sum(f.entities.get("datatype") == "func" for f in failures)
    n_sets = len(published) + len(failures) + len(runs) - n_runs
    what = [f"{n_sets} echo set(s)"] if n_sets or not n_runs else []
    what += [f"{n_runs} BOLD run(s)"] if n_runs else []
    log.info(
        "group summary of %s, %d published and %d failed: %s",
        " and ".join(what),
        len(published) + len(runs),
        len(failures),
        path,
    )
    return path
