"""The participant level: fit, write maps and pages, publish them (the group level is
:mod:`t2starmap.workflows.group`; one set's staging :mod:`t2starmap.workflows.staging`).

Participant level:
1. checks the input (images present, bids-validator unless skipped), finds the echo sets and
   reads their headers;
2. takes the sets one participant/session page at a time: fits each set, writes its maps,
   sidecars and record into a private staging folder (``--work-dir`` or the system temp
   folder) and draws its report section from the maps it holds (nothing is read back); then
   the page, which also shows the sets earlier runs published there;
3. publishes that page's files (:func:`t2starmap.bids.publish.publish`), then goes on to the next.

Each echo set is its own unit: a set that fails (metadata, an unreadable image, bad data
found while fitting, an unexpected error) is recorded with its reason in a failure record
(``logs/failures/``) that the pages and the group level list, and the other sets go on; the
run ends with the exit code of the worst failure (:data:`t2starmap.errors.SEVERITY`) and a
one-line summary. ``--stop-on-first-crash`` stops at the first failure instead, before
anything is published, and leaves the output as it was.

The invariant: whenever the run stops (an error, Ctrl-C, SIGTERM), every echo set it
published is complete: maps, sidecars, record and the page that shows it appear in one
publication, with signals held off until it is done, and undone if a write fails. What was
not published is gone with the staging folder; an output folder the run created and
published nothing into is removed again (a failed validation keeps it for the validator's
log). The input dataset is only ever read.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2starmap.bids import outputs as derivatives
from t2starmap.bids import records
from t2starmap.bids.atomic import write_text
from t2starmap.bids.dataset_files import SHARED_FILES, shared_files
from t2starmap.bids.func_layout import BoldRun, BoldSearch, find_bold_runs
from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.layout import (
    EchoSet,
    SetProblem,
    check_images_present,
    check_labels,
    find_echo_sets,
)
from t2starmap.bids.nifti import Geometry, check_geometry
from t2starmap.bids.publish import Publication, publish
from t2starmap.bids.records import PublishedSet, SetFailure
from t2starmap.config import Settings
from t2starmap.errors import (
    BadDataError,
    ExitCode,
    InputMissingError,
    NothingSelectedError,
    OutputError,
    SetsFailedError,
    T2StarError,
    ValidationError,
    worst,
)
from t2starmap.interrupts import deferred_signals, raise_if_signalled
from t2starmap.resources import prepare_allocator
from t2starmap.workflows.func import StagedRun, stage_bold_run
from t2starmap.workflows.func_pages import log_published_run, readable_sections, runs_part
from t2starmap.workflows.lazy_pages import pages
from t2starmap.workflows.methods import stage_page_citation, write_output_citation
from t2starmap.workflows.outputs import (
    Progress,
    prepare_output,
    settings_log_name,
    staging_folder,
    validate_input,
    write_shared_files,
)
from t2starmap.workflows.staging import Run, StagedSet, fit_set, stage_set

if TYPE_CHECKING:
    import torch

log = logging.getLogger("t2starmap")


#: Failed sets named one by one in the final message; the rest are counted.
SUMMARY_FAILURES = 5


@dataclass(frozen=True)
class RunResult:
    """What a participant run published, and the echo sets that failed."""

    published: tuple[PublishedSet, ...]
    failures: tuple[SetFailure, ...]
    #: the names of the multi-echo BOLD runs published
    bold_published: tuple[str, ...] = ()

    def summary(self) -> str:
        """``3 echo set(s): 2 published, 1 failed: sub-02_ses-2: <reason>`` (``2 echo set(s)
        and 1 BOLD run(s)`` when there were BOLD runs)."""
        published = len(self.published) + len(self.bold_published)
        n_runs = len(self.bold_published) + sum(
            f.entities.get("datatype") == "func" for f in self.failures
        )
        n_sets = published + len(self.failures) - n_runs
        parts = [f"{n_sets} echo set(s)"] if n_sets or not n_runs else []
        what = " and ".join(parts + ([f"{n_runs} BOLD run(s)"] if n_runs else []))
        text = f"{what}: {published} published"
        if not self.failures:
            return text
        named = "; ".join(f"{f.name}: {f.reason}" for f in self.failures[:SUMMARY_FAILURES])
        more = len(self.failures) - SUMMARY_FAILURES
        rest = f"; and {more} more (logs/failures/)" if more > 0 else ""
        return f"{text}, {len(self.failures)} failed: {named}{rest}"


@dataclass
class _Page:
    """The echo sets and BOLD runs of one participant/session page, and those found unfit
    to fit."""

    subject: str
    session: str | None
    sets: list[tuple[EchoSet, Geometry]] = field(default_factory=list)
    failures: list[SetFailure] = field(default_factory=list)
    #: the multi-echo BOLD runs of the page, fitted after its echo sets
    runs: list[BoldRun] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


@dataclass(frozen=True)
class _StagedPage:
    """A page ready to publish: what :func:`publish` puts in place, and the records and
    failure records among it."""

    publication: Publication
    records: tuple[PublishedSet, ...]
    failures: tuple[SetFailure, ...]
    #: the records of the BOLD runs among it
    runs: tuple[PublishedRun, ...] = ()


def run_participant(settings: Settings) -> RunResult:
    """Fit every selected echo set and publish its maps, record and page, one participant/
    session page at a time (module docstring). Raises SetsFailedError (the worst failure's
    exit code) when some sets failed; with ``stop_on_first_crash``, the first set's error
    before anything is published."""
    with staging_folder(settings.work_dir) as stage:
        run = Run(settings, stage, fit_set)
        with _output_guard(run):
            run.device = _check_input(settings)
            plan, bold = _plan(settings)
            n_sets = sum(len(p.sets) for p in plan)
            log.info("%d echo set(s) to fit on %s with %s", n_sets, run.device, settings.fit_method)
            if bold.runs:
                log.info("%d multi-echo BOLD run(s) to fit", len(bold.runs))
            progress = Progress(n_sets + len(bold.runs))
            try:
                _stage_and_publish(run, plan, progress)
            finally:
                progress.close()
            if run.published or run.bold_records:
                write_output_citation(settings.output_dir, [*run.published, *run.bold_records])
    result = RunResult(tuple(run.published), tuple(run.failures), tuple(run.bold_published))
    if run.failures:
        raise SetsFailedError(result.summary(), worst([f.exit_code for f in run.failures]))
    log.info("%s", result.summary())
    return result


def _stage_and_publish(run: Run, plan: list[_Page], progress: Progress) -> None:
    """Each page (its echo sets and BOLD runs), staged and published one at a time; with
    ``stop_on_first_crash`` all are staged before any is published."""
    units: list[tuple[str, Callable[[], _StagedPage]]] = [
        (page.label, partial(_stage_page, run, page, progress)) for page in plan
    ]
    if run.settings.stop_on_first_crash:  # all or nothing: stage everything first
        staged = [(label, stage()) for label, stage in units]
        for label, publication in staged:
            _publish(run, label, publication)
    else:
        for label, stage in units:
            _publish(run, label, stage())


@contextmanager
def _output_guard(run: Run) -> Iterator[None]:
    """Create the output folder; when the run stops before it published anything, remove
    what this created (no empty folder is left behind), except after a failed validation,
    whose log is there. When it stops after publishing, say what is complete."""
    created = prepare_output(run.settings.output_dir)
    try:
        yield
    except ValidationError:
        raise
    except BaseException as err:
        if run.published_any:
            if isinstance(err, KeyboardInterrupt):
                names = ", ".join(r.name for r in run.published) or "none"
                log.warning(
                    "stopped; published complete before it: %s (with their pages); the other "
                    "sets were not published: run again to finish them",
                    names,
                )
        elif created is not None:
            with deferred_signals("removing the output folder this run created"):
                shutil.rmtree(created, ignore_errors=True)
        raise


def _check_input(settings: Settings) -> torch.device:
    """Images present, the validator (unless skipped), the compute device."""
    from t2starmap.fit import resolve_device

    # the labels first, as every usage check: the validator takes seconds to minutes
    check_labels(settings.bids_dir, settings.participant_labels, settings.session_labels)
    check_images_present(settings.bids_dir, settings.participant_labels)
    if settings.skip_validation:
        log.info("input validation skipped (--skip-bids-validation)")
    else:
        validate_input(settings)
    device = resolve_device(settings.device)  # settings refused one torch lacks
    import torch

    # One torch thread; the fit runs ``nprocs`` chunks at once instead (fit_t2star's
    # ``workers``): torch's own threads wait for each other at every operation, which makes
    # them several times slower as soon as another process wants a CPU.
    torch.set_num_threads(1)
    prepare_allocator(settings.nprocs)
    return device


def _plan(settings: Settings) -> tuple[list[_Page], BoldSearch]:
    """The echo sets by page, their headers read; sets found unfit (metadata, headers) become
    failures of their page (with ``stop_on_first_crash``, the first one's error is raised).
    And the multi-echo BOLD runs: a dataset without MEGRE is fine when it holds BOLD runs."""
    bold = find_bold_runs(
        settings.bids_dir,
        settings.participant_labels,
        settings.session_labels,
        settings.bold_filters,
    )
    if settings.stop_on_first_crash and bold.problems:
        raise bold.problems[0].error
    problems: list[SetProblem] | None = None if settings.stop_on_first_crash else []
    try:
        echo_sets = find_echo_sets(
            settings.bids_dir,
            settings.participant_labels,
            settings.session_labels,
            settings.bids_filters,
            problems,
        )
    except (InputMissingError, NothingSelectedError) as err:
        if not (bold.runs or bold.problems):
            raise
        log.info("no MEGRE echo set to fit: %s", err)
        echo_sets = []
    _check_unique_outputs(echo_sets)
    plan: dict[tuple[str, str | None], _Page] = {}

    def page_of(subject: str, session: str | None) -> _Page:
        return plan.setdefault((subject, session), _Page(subject, session))

    for problem in [*(problems or []), *bold.problems]:
        failure = _failure(settings, problem.entities, problem.first_file, problem.error)
        page_of(problem.subject, problem.session).failures.append(failure)
    for bold_run in bold.runs:
        page_of(bold_run.subject, bold_run.session).runs.append(bold_run)
    for echo_set in echo_sets:
        geometry = _attempt(settings, echo_set, partial(check_geometry, echo_set.paths))
        page = page_of(echo_set.subject, echo_set.session)
        if isinstance(geometry, SetFailure):
            page.failures.append(geometry)
        else:
            page.sets.append((echo_set, geometry))
    return [plan[k] for k in sorted(plan, key=lambda k: (k[0], k[1] or ""))], bold


def _attempt(settings: Settings, echo_set: EchoSet | BoldRun, action: Callable[[], Any]) -> Any:
    """``action()``, or the :class:`SetFailure` of ``echo_set`` when it raises (logged as a
    warning: the other sets go on). Errors that are not the set's (the output cannot be
    written) and signals go on; so does every error with ``stop_on_first_crash``."""
    try:
        return action()
    except OutputError:
        raise
    except Exception as err:
        if settings.stop_on_first_crash:
            raise
        return _failure(settings, echo_set.entities, echo_set.echoes[0].path, err)


def _failure(
    settings: Settings, entities: Any, first: Path | None, err: BaseException
) -> SetFailure:
    """The failure record of a set, from its error; logged at once."""
    expected = isinstance(err, T2StarError)
    reason = str(err) if expected else f"unexpected error: {type(err).__name__}: {err}"
    reason = " ".join(reason.split())  # one line
    failure = SetFailure(
        entities=dict(entities),
        reason=reason,
        exit_code=int(err.exit_code) if isinstance(err, T2StarError) else int(ExitCode.UNEXPECTED),
        error=type(err).__name__,
        first_echo=derivatives.bids_path(settings.bids_dir, first) if first else None,
        when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        traceback=None if expected else "".join(traceback.format_exception(err)),
    )
    what = "run" if failure.entities.get("datatype") == "func" else "echo set"
    log.warning(
        "%s %s failed, the other sets and runs go on: %s",
        what,
        failure.name,
        reason,
        exc_info=err if not expected and log.isEnabledFor(logging.DEBUG) else None,
    )
    return failure


def _stage_page(run: Run, page: _Page, progress: Progress) -> _StagedPage:
    """Fit and stage every set of ``page``, then its page: what :func:`publish` will put in
    place together."""
    staged: list[StagedSet] = []
    failures = list(page.failures)
    for echo_set, geometry in page.sets:
        outcome = _attempt(run.settings, echo_set, partial(stage_set, run, echo_set, geometry))
        (failures if isinstance(outcome, SetFailure) else staged).append(outcome)
        progress.step()
    staged_runs: list[StagedRun] = []
    for bold_run in page.runs:
        log.info("%s: fitting the multi-echo BOLD run", bold_run.name)
        assert run.device is not None, "the input is checked before anything is fitted"
        action = partial(stage_bold_run, run.settings, run.stage, bold_run, run.device)
        outcome = _attempt(run.settings, bold_run, action)
        (failures if isinstance(outcome, SetFailure) else staged_runs).append(outcome)
        progress.step()
    return _page_publication(run, page, (staged, staged_runs), failures)


def _page_publication(
    run: Run,
    page: _Page,
    fitted: tuple[list[StagedSet], list[StagedRun]],
    failures: list[SetFailure],
) -> _StagedPage:
    """Draw the page (this run's sections, the sections of sets and BOLD runs earlier runs
    published there, the failed ones) into the staging folder; list what publishing it
    writes and removes. ``fitted``: the echo sets and the BOLD runs staged."""
    settings, stage = run.settings, run.stage
    staged, staged_runs = fitted
    log.info("%s: drawing its page", page.label)
    on_disk, failed_before = pages.recorded_sets(settings.output_dir, page.subject, page.session)
    ours = {s.record.name for s in staged}
    attempted = ours | {f.name for f in failures} | {r.record.name for r in staged_runs}
    earlier = [r for r in on_disk if r.name not in ours]
    where = (page.subject, page.session)
    bold = runs_part(settings.output_dir, stage, where, staged_runs, settings.report_convention)
    sections = [s.section for s in staged] + _earlier_sections(settings, earlier) + bold.sections
    shown_failures = failures + [f for f in failed_before if f.name not in attempted]
    failed = pages.failed_sets(shown_failures, {r.name for r in earlier} | bold.earlier)
    page_file = pages.page_name(page.subject, page.session)
    shown = [s.record for s in staged] + earlier
    cited: list[PublishedSet | PublishedRun] = [*shown, *bold.records]
    page_html = pages.render_page(page.subject, page.session, sections, failed, cited)
    write_text(stage / page_file, page_html)
    files = [name for s in staged for name in s.files] + bold.files
    files += stage_page_citation(stage, page.label, cited)
    for failure in failures:
        path = records.failure_path(Path(), failure.entities)
        write_text(stage / path, failure.to_json())
        files.append(path.as_posix())
    remove = [records.failure_path(Path(), s.record.entities).as_posix() for s in staged]
    remove += bold.remove
    for old in (r for r in on_disk if r.name in ours):  # outputs the new record no longer has
        log.info("%s: replacing the outputs an earlier run published", old.name)
        new = set(next(s.files for s in staged if s.record.name == old.name))
        remove += [f for f in records.record_paths(old) if f not in new]
    publication = Publication(
        page.label, tuple((stage / name, name) for name in [*files, page_file]), tuple(remove)
    )
    runs = tuple(r.record for r in staged_runs)
    return _StagedPage(publication, tuple(s.record for s in staged), tuple(failures), runs)


def _earlier_sections(settings: Settings, records: list[PublishedSet]) -> list[pages.Section]:
    """The page sections of sets earlier runs published (those whose maps can be read)."""
    out, bids, convention = settings.output_dir, settings.bids_dir, settings.report_convention
    return readable_sections(records, lambda r: pages.earlier_sections(out, bids, [r], convention))


def _publish(run: Run, label: str, staged: _StagedPage) -> None:
    """Publish one page's (or BOLD run's) files (with the shared files and the settings log
    the first time) and log what it holds."""
    raise_if_signalled()
    settings = run.settings
    extra = _stage_shared_files(settings, run.stage) if not run.published_any else []
    publication = staged.publication
    files = tuple((run.stage / name, name) for name in extra) + publication.files
    # held signals act once the files are in place AND the run knows they are (else a stop
    # right after would take the output folder for one it created and published nothing in)
    with deferred_signals(f"publishing {label}"):
        log.info("%s: publishing", label)
        shared = frozenset(SHARED_FILES)  # other runs may be writing them too
        publish(
            settings.output_dir,
            Publication(publication.label, files, publication.remove, shared),
        )
        run.published_any = True
        run.published += staged.records
        run.failures += staged.failures
        run.bold_published += [r.name for r in staged.runs]
        run.bold_records += staged.runs
    for record in staged.records:
        log.info(
            "%s: %d voxels fitted, %.1f%% failed, %.1f%% misfit, %.2f s -> %s",
            record.name,
            record.n_voxels,
            100 * record.failed_fraction,
            100 * record.misfit_fraction,
            record.seconds or 0.0,
            record.path(settings.output_dir, "t2star").parent,
        )
    for bold_record in staged.runs:
        log_published_run(bold_record, settings.output_dir)


def _stage_shared_files(settings: Settings, stage: Path) -> list[str]:
    """The settings log, and the shared files (``dataset_description.json``, ``.bidsignore``,
    ``README.md``; rewritten in place when all are present: other jobs into the same output
    write the same bytes), staged for the run's first publication."""
    out = settings.output_dir
    staged = [settings_log_name(settings)]
    write_text(stage / staged[0], settings.to_json())
    shared = shared_files(settings.bids_dir)
    if all((out / name).exists() for name in shared):
        write_shared_files(settings)
        return staged
    for name, text in shared.items():
        write_text(stage / name, text)
    return [*staged, *shared]


def _check_unique_outputs(echo_sets: list[EchoSet]) -> None:
    seen: dict[Path, EchoSet] = {}
    for echo_set in echo_sets:
        path = records.record_path(Path(), echo_set.entities)
        if path in seen:
            raise BadDataError(
                f"{echo_set.echoes[0].path}: echo sets {seen[path].name} and {echo_set.name} "
                f"differ only in {', '.join(derivatives.dropped_entities(echo_set))}, which "
                "derivative names cannot carry; select one with --bids-filter-file"
            )
        seen[path] = echo_set
