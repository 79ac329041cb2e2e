"""The only orchestrator: participant level (fit and write maps) and group level (summary).

Participant level runs in three phases so that bad input stops it before anything is written:
1. find the echo sets and check their metadata and headers;
2. fit each set and write its maps into a private staging folder (``--work-dir`` or the
   system temp folder);
3. publish: copy every staged file into the output atomically, then the settings log.
A failure in 1 or 2 leaves the output as it was: an output folder the run created is removed
again (a failed validation keeps it for the validator's log); the input dataset is only ever
read.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2starmap import derivatives
from t2starmap.atomic import remove_stale_temporaries, write_json, write_text, write_with
from t2starmap.conventions import sidecar_path
from t2starmap.derivatives import PublishedSet
from t2starmap.errors import (
    BadDataError,
    InputMissingError,
    NothingSelectedError,
    OutputError,
    UsageError,
    ValidationError,
)
from t2starmap.fit import status as fit_status
from t2starmap.layout import EchoSet, check_images_present, find_echo_sets
from t2starmap.nifti import Geometry, check_geometry, save_map
from t2starmap.report import write_group_report, write_participant_reports
from t2starmap.report.participant import EchoSamples, echo_samples
from t2starmap.settings import Settings
from t2starmap.summary import GROUP_COLUMNS, GROUP_TABLE, group_table, set_statistics

if TYPE_CHECKING:
    from t2starmap.estimate import Options, SetFit

log = logging.getLogger("t2starmap")

# --- shared by both levels -------------------------------------------------------------------


def prepare_output(output_dir: Path) -> Path | None:
    """Create the output folder (exit 73 when impossible); return the topmost folder this
    call created (None when the output folder existed)."""
    missing = [p for p in (output_dir, *output_dir.parents) if not p.exists()]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutputError(
            f"{output_dir}: cannot create or write the output folder ({err})"
        ) from err
    return missing[-1] if missing else None


@contextmanager
def output_folder(output_dir: Path) -> Iterator[None]:
    """Create the output folder for a run; when the run fails before it published anything
    (bad data, nothing selected, usage, missing input), remove what this created, so no
    empty folder is left behind. A validation failure keeps it: its log is there."""
    created = prepare_output(output_dir)
    try:
        yield
    except (BadDataError, NothingSelectedError, UsageError, InputMissingError):
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def write_shared_files(settings: Settings) -> None:
    out = settings.output_dir
    write_json(out / "dataset_description.json", derivatives.dataset_description(settings.bids_dir))
    write_text(out / ".bidsignore", "\n".join(derivatives.BIDSIGNORE) + "\n")


def write_settings_log(settings: Settings) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    who = "_".join(f"sub-{p}" for p in settings.participant_labels or ())[:80] or "all"
    path = settings.output_dir / "logs" / f"settings_{settings.analysis_level}_{who}_{stamp}.json"
    write_text(path, settings.to_json())
    return path


def validate_input(settings: Settings) -> None:
    """Run bids-validator on the input; exit 16 with one line per distinct problem, the full
    report written to ``OUTPUT_DIR/logs/``."""
    from t2starmap.validate import validate_bids

    log.info(
        "validating %s with bids-validator (skip with --skip-bids-validation)", settings.bids_dir
    )
    try:
        report = validate_bids(settings.bids_dir)
    except (RuntimeError, OSError) as err:
        raise ValidationError(f"{settings.bids_dir}: could not run bids-validator ({err})") from err
    if not report.ok:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        full = settings.output_dir / "logs" / f"bids-validator_{stamp}.json"
        write_text(full, report.raw)
        lines = "\n".join(f"  {line}" for line in report.summary())
        raise ValidationError(
            f"{settings.bids_dir}: bids-validator found {len(report.errors)} error(s):\n"
            f"{lines}\nFix them, or run with --skip-bids-validation; the full report is {full}"
        )


@contextmanager
def staging_folder(work_dir: Path | None) -> Iterator[Path]:
    try:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="t2starmap-", dir=work_dir))
    except OSError as err:
        raise OutputError(f"{work_dir}: cannot create a work folder ({err})") from err
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _progress(iterable: list[EchoSet]) -> Any:
    """A progress bar on a terminal, nothing extra otherwise (log lines say where we are)."""
    if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
        from tqdm import tqdm

        return tqdm(iterable, desc="echo sets", unit="set", file=sys.stderr)
    return iterable


# --- participant level -----------------------------------------------------------------------


def run_participant(settings: Settings) -> list[PublishedSet]:
    """Fit every selected echo set, publish maps and records, write the pages."""
    from t2starmap.fit import resolve_device

    with staging_folder(settings.work_dir) as stage:
        with output_folder(settings.output_dir):  # nothing published yet
            check_images_present(settings.bids_dir, settings.participant_labels)
            if settings.skip_validation:
                log.info("input validation skipped (--skip-bids-validation)")
            else:
                validate_input(settings)
            device = resolve_device(settings.device)  # settings refused one torch lacks
            import torch

            # One torch thread; the fit runs ``nprocs`` chunks at once instead (fit_t2star's
            # ``workers``): torch's own threads wait for each other at every operation, which
            # makes them several times slower as soon as another process wants a CPU.
            torch.set_num_threads(1)
            echo_sets = find_echo_sets(
                settings.bids_dir,
                settings.participant_labels,
                settings.session_labels,
                settings.bids_filters,
            )
            geometries = [check_geometry(s) for s in echo_sets]
            _check_unique_outputs(echo_sets)
            log.info(
                "%d echo set(s) to fit on %s with %s", len(echo_sets), device, settings.fit_method
            )
            staged = []
            samples: dict[str, EchoSamples] = {}
            options = _options(settings, device)
            for echo_set, geometry in zip(_progress(echo_sets), geometries, strict=True):
                fitted = _fit_set(echo_set, geometry, options)
                staged.append(_stage(settings, stage, echo_set, geometry, fitted))
                if fitted.magnitude is not None:  # the report need not read them again
                    samples[echo_set.name] = echo_samples(fitted.magnitude, fitted.maps)
                del fitted
        write_shared_files(settings)
        published = [_publish(settings, stage, record, files) for record, files in staged]
    write_settings_log(settings)
    for record in published:
        log.info(
            "%s: %d voxels fitted, %.1f%% failed, %.2f s -> %s",
            record.name,
            record.n_voxels,
            100 * record.failed_fraction,
            record.seconds or 0.0,
            record.path(settings.output_dir, "t2star").parent,
        )
    write_participant_reports(settings.output_dir, settings.bids_dir, published, samples)
    return published


def _options(settings: Settings, device: Any) -> Options:
    from t2starmap.estimate import Options  # torch: participant level only

    return Options(
        fit_method=settings.fit_method,
        noise_sigma=settings.noise_sigma,
        noise_coils=settings.noise_coils,
        b0_correction=settings.b0_correction,
        device=device,
        workers=settings.nprocs,
    )


def _fit_set(echo_set: EchoSet, geometry: Geometry, options: Options) -> SetFit:
    """:func:`t2starmap.estimate.fit_echo_set`, its option errors worded as the command line's
    flags."""
    from t2starmap.estimate import OptionError, fit_echo_set

    try:
        return fit_echo_set(echo_set, geometry, options)
    except OptionError as err:
        flag = "--" + err.option.replace("_", "-")
        worded = f"{err.where}: {flag} {err.value}: {err.reason}"
        raise (BadDataError(worded) if err.bad_data else UsageError(worded)) from err


def _publish(
    settings: Settings, stage: Path, record: PublishedSet, files: list[Path]
) -> PublishedSet:
    """Copy one set's staged files into the output atomically, then write its record."""
    for path in files:
        target = settings.output_dir / path.relative_to(stage)
        remove_stale_temporaries(target)  # left by an earlier, killed run
        write_with(target, partial(shutil.copyfile, path))
    write_text(derivatives.record_path(settings.output_dir, record.entities), record.to_json())
    return record


def _check_unique_outputs(echo_sets: list[EchoSet]) -> None:
    seen: dict[Path, EchoSet] = {}
    for echo_set in echo_sets:
        path = derivatives.record_path(Path(), echo_set.entities)
        if path in seen:
            raise BadDataError(
                f"{echo_set.echoes[0].path}: echo sets {seen[path].name} and {echo_set.name} "
                f"differ only in {', '.join(derivatives.dropped_entities(echo_set))}, which "
                "derivative names cannot carry; select one with --bids-filter-file"
            )
        seen[path] = echo_set


def _stage(
    settings: Settings, stage: Path, echo_set: EchoSet, geometry: Geometry, fitted: SetFit
) -> tuple[PublishedSet, list[Path]]:
    """Write one set's maps and sidecars under ``stage``; its record (not yet written)."""
    files = []
    for spec in derivatives.OUTPUTS:
        if spec.key not in fitted.maps:
            continue
        image = derivatives.output_path(stage, echo_set.entities, spec, ".nii.gz")
        save_map(image, fitted.maps[spec.key], geometry)
        sidecar = sidecar_path(image)
        write_json(
            sidecar, derivatives.map_sidecar(spec, echo_set, settings.bids_dir, fitted.fit_info)
        )
        files += [image, sidecar]
        if spec.key == "status":  # its levels, beside it
            levels = image.with_name(image.name.replace(".nii.gz", ".tsv"))
            write_text(levels, fit_status.levels_tsv())
            files.append(levels)
    maps = fitted.maps
    record = PublishedSet(
        entities=dict(echo_set.entities),
        files=derivatives.output_files(echo_set.entities, fitted.maps),
        sources=tuple(
            derivatives.Source(
                derivatives.bids_path(settings.bids_dir, e.path),
                e.echo_time,
                {k: e.metadata[k] for k in derivatives.SOURCE_FIELDS if k in e.metadata},
            )
            for e in echo_set.echoes
        ),
        n_voxels=fitted.n_voxels,
        failed_fraction=fitted.failed_fraction,
        noise_sigma=fitted.noise.sigma,
        noise_model=fitted.noise_model,
        noise_coils=float(fitted.fit_info["NoiseCoils"]),
        noise_method=fitted.noise.method or "none",
        status_counts=dict(fitted.status_counts),
        fit_method=fitted.fit_method,
        algorithm=fitted.algorithm,
        device=fitted.device,
        statistics=set_statistics(
            maps["t2star"], maps["r2star"], maps["s0"], maps["signal"] & ~maps["failed"]
        ),
        seconds=fitted.seconds,
        warnings=fitted.warnings,
        solver_runs=fitted.solver_runs,
        steps=dict(fitted.steps),
        noise_candidates=dict(fitted.noise.candidates),
    )
    return record, files


# --- group level -----------------------------------------------------------------------------


def run_group(settings: Settings) -> Path:
    """The group table and page from the records of every selected published set."""
    out = settings.output_dir
    try:
        published = derivatives.load_published(
            out, settings.participant_labels, settings.session_labels
        )
    except ValueError as err:
        raise BadDataError(str(err)) from err
    if not published:
        raise InputMissingError(
            f"{out}: no participant-level outputs (*_record.json beside the maps) found"
            + (
                " for the selected participants/sessions"
                if settings.participant_labels or settings.session_labels
                else ""
            )
            + "; run the participant level first"
        )
    prepare_output(out)
    write_shared_files(settings)
    table = group_table(published)
    path = out / GROUP_TABLE
    write_text(path, table.write(path))
    write_json(path.with_suffix(".json"), {k: {"Description": v} for k, v in GROUP_COLUMNS.items()})
    write_group_report(out, table)
    write_settings_log(settings)
    log.info("group summary of %d echo set(s): %s", len(published), path)
    return path
