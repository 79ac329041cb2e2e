"""One echo set of a participant run, staged: fitted, its maps, sidecars and record written
into the run's staging folder, its page section drawn from the maps it holds. Nothing here is
published (:mod:`t2starmap.workflows.participant` does that)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from t2starmap.bids import outputs as derivatives
from t2starmap.bids import records
from t2starmap.bids.atomic import write_json, write_text
from t2starmap.bids.conventions import sidecar_path
from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.layout import (
    EchoSet,
)
from t2starmap.bids.nifti import Geometry
from t2starmap.bids.nifti_write import save_map
from t2starmap.bids.records import PublishedSet, SetFailure
from t2starmap.bids.summary import set_statistics
from t2starmap.config import Settings
from t2starmap.errors import (
    BadDataError,
    UsageError,
)
from t2starmap.fit import status as fit_status
from t2starmap.interrupts import raise_if_signalled
from t2starmap.resources import release_free_memory, software_versions
from t2starmap.workflows.lazy_pages import pages

if TYPE_CHECKING:
    import torch

    from t2starmap.workflows.echo_set import SetFit

log = logging.getLogger("t2starmap")


@dataclass
class Run:
    """The state of one participant run: where it stages, how it fits, what it published."""

    settings: Settings
    stage: Path
    fit: Callable[[Settings, EchoSet, Geometry, torch.device], SetFit]
    device: torch.device | None = None  # known once the input is checked
    published: list[PublishedSet] = field(default_factory=list)
    failures: list[SetFailure] = field(default_factory=list)
    published_any: bool = False
    #: names of the multi-echo BOLD runs published
    bold_published: list[str] = field(default_factory=list)
    #: their records (for the methods paragraphs of logs/CITATION)
    bold_records: list[PublishedRun] = field(default_factory=list)


@dataclass(frozen=True)
class StagedSet:
    """One fitted set in the staging folder: its record, its files (relative, record last)
    and its page section, drawn from the maps the run held."""

    record: PublishedSet
    files: tuple[str, ...]
    section: pages.Section


#: Most threads that write (compress) a set's maps at once, while its page section is drawn.
WRITE_THREADS = 2


def stage_set(run: Run, echo_set: EchoSet, geometry: Geometry) -> StagedSet:
    """Fit one set; write its maps, sidecars and record into the staging folder; draw its
    page section from the maps and echoes the fit holds. The maps are written in threads,
    those the page does not show first (their memory is freed once they are written, before
    the section's figures take theirs), the others while the section is drawn (gzip and PNG
    encoding release the GIL)."""
    settings = run.settings
    log.info("%s: fitting", echo_set.name)
    assert run.device is not None, "the input is checked before anything is fitted"
    fitted = run.fit(settings, echo_set, geometry, run.device)
    raise_if_signalled()  # a stop whose exception Python dropped (raised in a finalizer)
    samples = (
        pages.echo_samples(fitted.magnitude, fitted.maps) if fitted.magnitude is not None else None
    )
    fitted = replace(fitted, magnitude=None)  # the echoes' memory is free from here on
    release_free_memory()  # and what the fit's threads and temporaries left in the heap
    record = record_of(settings, echo_set, fitted)
    shown = pages.in_memory_maps(fitted.maps, geometry.affine, geometry.zooms, fitted.fit_info)
    log.info("%s: writing its maps", echo_set.name)
    threads = max(1, min(WRITE_THREADS, settings.nprocs))
    with ThreadPoolExecutor(threads, thread_name_prefix="t2starmap-write") as pool:
        try:
            files, written = write_maps(
                settings, run.stage, echo_set, geometry, fitted, pool, last=set(shown.maps)
            )
            del fitted  # the maps not shown are now held by their writes alone
            record_file = records.record_path(Path(), record.entities)
            write_text(run.stage / record_file, record.to_json())
            for key, job in written:
                if key not in shown.maps:
                    job.result()
            log.info("%s: drawing its report", echo_set.name)
            section = pages.set_section(
                record, shown, settings.bids_dir, samples, settings.report_convention
            )
            for _, job in written:
                job.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # an error or a stop: no more maps
            raise
    return StagedSet(record, (*files, record_file.as_posix()), section)


def write_maps(
    settings: Settings,
    stage: Path,
    echo_set: EchoSet,
    geometry: Geometry,
    fitted: SetFit,
    pool: ThreadPoolExecutor,
    last: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[str], list[tuple[str, Future[Path]]]]:
    """Write one set's sidecars, and start writing its maps in ``pool`` (those in ``last``
    last), under ``stage``: their paths relative to it, and each map's key and job (which
    raises what its write raised)."""
    files = []
    images = []
    for spec in derivatives.OUTPUTS:
        if spec.key not in fitted.maps:
            continue
        image = derivatives.output_path(stage, echo_set.entities, spec, ".nii.gz")
        images.append((spec.key, image))
        sidecar = sidecar_path(image)
        write_json(
            sidecar,
            derivatives.map_sidecar(
                spec, echo_set, settings.bids_dir, fitted.fit_info, fitted.part_files
            ),
        )
        files += [image, sidecar]
        if spec.key == "status":  # its levels, beside it
            levels = image.with_name(image.name.replace(".nii.gz", ".tsv"))
            write_text(levels, fit_status.levels_tsv())
            files.append(levels)
    images.sort(key=lambda item: item[0] in last)
    jobs = [
        (key, pool.submit(save_map, image, fitted.maps[key], geometry)) for key, image in images
    ]
    return [f.relative_to(stage).as_posix() for f in files], jobs


def fit_set(
    settings: Settings, echo_set: EchoSet, geometry: Geometry, device: torch.device
) -> SetFit:
    """:func:`t2starmap.workflows.echo_set.fit_echo_set` with the options the settings give (torch:
    participant level only), its option errors worded as the command line's flags."""
    from t2starmap.workflows.echo_set import OptionError, Options, fit_echo_set

    options = Options(
        fit_method=settings.fit_method,
        noise_sigma=settings.noise_sigma,
        noise_coils=settings.noise_coils,
        b0_correction=settings.b0_correction,
        slice_profile=settings.slice_profile,
        device=device,
        workers=settings.nprocs,
    )
    try:
        return fit_echo_set(echo_set, geometry, options)
    except OptionError as err:
        flag = "--" + err.option.replace("_", "-")
        worded = f"{err.where}: {flag} {err.value}: {err.reason}"
        raise (BadDataError(worded) if err.bad_data else UsageError(worded)) from err


def record_of(settings: Settings, echo_set: EchoSet, fitted: SetFit) -> PublishedSet:
    """The record of a fitted set (written beside its maps when published)."""
    maps = fitted.maps
    return PublishedSet(
        entities=dict(echo_set.entities),
        files=derivatives.output_files(echo_set.entities, fitted.maps),
        sources=tuple(
            records.Source(
                derivatives.bids_path(settings.bids_dir, e.path),
                e.echo_time,
                {k: e.metadata[k] for k in records.SOURCE_FIELDS if k in e.metadata},
            )
            for e in echo_set.echoes
        ),
        n_voxels=fitted.n_voxels,
        failed_fraction=fitted.failed_fraction,
        misfit_fraction=fitted.misfit_fraction,
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
        noise_caveat=fitted.noise.caveat,
        part_sources=tuple(derivatives.bids_path(settings.bids_dir, p) for p in fitted.part_files),
        methods=dict(fitted.fit_info),
        software=software_versions(),
    )
