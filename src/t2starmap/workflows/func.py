"""One multi-echo BOLD run of a participant run, staged: fitted with the ``t2starmap t2smap``
numerics (:func:`t2starmap.workflows.t2smap.run_t2smap`, into a private folder of the
staging folder), its files renamed into ``sub-<s>[/ses-<t>]/func/`` with their sidecars.
Nothing here is published (:mod:`t2starmap.workflows.participant` does that, one run per
publication).

The fit: the noise-aware NLLS (``--fittype nlls`` of ``t2smap``): a Rician likelihood, with
the thermal noise measured from the volumes, so echoes on the noise floor (signal dropout
near sinuses) do not bias T2* long, as tedana's default log-linear fit does; the same
reasoning as the MEGRE default. A run of one volume cannot give the noise: it gets tedana's
``curvefit`` (Gaussian least squares), said in the sidecars and the log. The mask is the one
``t2smap`` computes from the first echo without ``--mask`` (no brain extraction), then
tedana's adaptive mask (``dropout``).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2starmap.bids.atomic import write_json, write_text
from t2starmap.bids.conventions import sidecar_path
from t2starmap.bids.func_layout import BoldRun
from t2starmap.bids.func_outputs import FUNC_EXTRAS, FUNC_OUTPUTS, func_sidecar, func_target
from t2starmap.bids.func_records import PublishedRun, run_record_path
from t2starmap.bids.outputs import bids_uri
from t2starmap.bids.parts import sibling
from t2starmap.bids.series import series_geometry
from t2starmap.config import Settings
from t2starmap.resources import release_free_memory
from t2starmap.workflows.func_record import RunFit, run_record

if TYPE_CHECKING:
    import torch

log = logging.getLogger("t2starmap")

#: The fit of runs with two or more volumes, and of runs with one.
FUNC_FIT = "nlls"
ONE_VOLUME_FIT = "curvefit"
#: ``EstimationAlgorithm`` by fit type.
ALGORITHMS = {
    "nlls": "Mono-exponential decay S0 exp(-TE/T2*) fitted to each voxel's echo means over "
    "volumes by maximum likelihood under Rician noise, the noise level measured from the "
    "volumes (t2starmap t2smap --fittype nlls)",
    "curvefit": "Mono-exponential decay S0 exp(-TE/T2*) fitted to each voxel's echo means by "
    "least squares (tedana's curvefit; t2starmap t2smap --fittype curvefit)",
    "complex": "Complex decay S0 exp(-TE/T2*) exp(i (phi0 + 2 pi f TE)) fitted by least "
    "squares to each voxel's complex echoes (part-mag and part-phase) averaged over volumes "
    "after removing each volume's phase offset (t2starmap t2smap --phase)",
}


@dataclass(frozen=True)
class StagedRun:
    """One fitted BOLD run in the staging folder: its record and its files (relative to the
    staging folder, record last)."""

    record: PublishedRun
    files: tuple[str, ...]


def stage_bold_run(
    settings: Settings, stage: Path, bold_run: BoldRun, device: torch.device
) -> StagedRun:
    """Fit ``bold_run`` and write its files under ``stage`` (:data:`FUNC_OUTPUTS` with their
    sidecars, :data:`FUNC_EXTRAS`, the record last). BadDataError for echoes that cannot be
    read or fitted."""
    from t2starmap.workflows.t2smap import T2smapSettings, run_t2smap

    started = time.perf_counter()
    paths = tuple(e.path for e in bold_run.echoes)
    geometry = series_geometry(paths, len(paths))
    n_volumes = geometry.shape[3]
    fittype = FUNC_FIT if n_volumes >= 2 else ONE_VOLUME_FIT
    warnings: tuple[str, ...] = ()
    if fittype != FUNC_FIT:
        warnings = (f"one volume, no noise level to measure: fitted by {fittype}; no tSNR",)
        log.warning("%s: %s", bold_run.name, warnings[0])
    tr = bold_run.repetition_time or float(geometry.zooms[3])
    private = stage / ".func" / bold_run.name
    private.mkdir(parents=True, exist_ok=True)
    s = T2smapSettings(
        data=paths,
        tes=bold_run.echo_times,
        out_dir=private,
        prefix=bold_run.name,
        convention="bids",
        verbose=False,
        overwrite=True,
        mask=None,
        masktype=("dropout",),
        dummy_scans=0,
        exclude=(),
        fittype=fittype,
        fitmode="all",
        combmode="t2s",
        workers=settings.nprocs,
        device=str(device),
        command=shlex.join(["t2starmap", "participant", bold_run.name]),
        phase=phase_echoes(bold_run),
        tsnr=True,
    )
    log.info("%s: %d echoes, %d volumes, fit %s", bold_run.name, len(paths), n_volumes, fittype)
    notes: dict[str, Any] = {}
    try:
        with _quiet(logging.getLogger("t2starmap.t2smap")):
            placed = run_t2smap(s, notes)
        tsnr = notes.pop("tsnr")
        fields = _with_notes(_fit_fields(fittype, n_volumes), notes, bold_run, settings)
        fit = RunFit(fields["FitType"], fields["EstimationAlgorithm"], tr, None, warnings, tsnr)
        record = run_record(bold_run, settings.bids_dir, placed, geometry, fit)
        files = _place(settings, stage, bold_run, placed, fields, tr)
        record = replace(record, seconds=time.perf_counter() - started)
        record_file = run_record_path(Path(), bold_run.entities)
        write_text(stage / record_file, record.to_json())
        return StagedRun(record, (*files, record_file.as_posix()))
    finally:
        shutil.rmtree(private, ignore_errors=True)
        release_free_memory()  # what the fit's threads and temporaries left in the heap


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """``t2smap``'s own log lines speak of its command (``--mask``, the private folder it
    wrote): errors only while the participant level runs it."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def phase_echoes(bold_run: BoldRun) -> tuple[Path, ...]:
    """The run's ``part-phase`` echoes beside its ``part-mag`` ones, in echo order; none
    unless every echo has one."""
    found = [sibling(e.path, "phase") for e in bold_run.echoes]
    return tuple(p for p in found if p is not None) if all(found) else ()


def _with_notes(
    fields: dict[str, Any], notes: dict[str, Any], bold_run: BoldRun, settings: Settings
) -> dict[str, Any]:
    """The sidecar fields with what the fit recorded; with phase, the phase echoes in
    ``Sources`` and, when the complex fit was used, its algorithm."""
    out = {**fields, **notes}
    phase_files = out.pop("PhaseFiles", None)
    if phase_files:
        out["Sources"] = [
            bids_uri(settings.bids_dir, p)
            for p in (*(e.path for e in bold_run.echoes), *map(Path, phase_files))
        ]
    if out.get("ComplexFit") is True:
        out["EstimationAlgorithm"] = ALGORITHMS["complex"]
        out["FitType"] = "complex"
    return out


def _fit_fields(fittype: str, n_volumes: int) -> dict[str, Any]:
    return {
        "EstimationAlgorithm": ALGORITHMS[fittype],
        "FitType": fittype,
        "NumberOfVolumes": n_volumes,
        "MaskMethod": "computed from the first echo's mean (no brain extraction), then "
        "tedana's adaptive mask (dropout)",
    }


def _place(
    settings: Settings,
    stage: Path,
    bold_run: BoldRun,
    placed: dict[str, Path],
    fit: dict[str, Any],
    tr: float,
) -> list[str]:
    """Move the kept t2smap files to their published names under ``stage``; sidecars."""
    files = []
    for output in FUNC_OUTPUTS:
        if output.key not in placed:
            continue
        target = func_target(bold_run, output.key)
        (stage / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(placed[output.key], stage / target)
        sidecar = sidecar_path(Path(target))
        write_json(stage / sidecar, func_sidecar(output, bold_run, settings.bids_dir, fit, tr))
        files += [target, sidecar.as_posix()]
    for key in FUNC_EXTRAS:
        target = func_target(bold_run, key)
        shutil.move(placed[key], stage / target)
        files.append(target)
    return files
