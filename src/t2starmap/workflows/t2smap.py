"""The ``t2starmap t2smap`` run: echoes in, tedana's maps (and ours) out.

read the echo series inside the mask -> drop dummy scans -> temporal moments of the volumes
not excluded -> adaptive mask -> decay fit (one per voxel, or per voxel and volume) ->
floors and limited maps -> optimal combination of every volume -> RMSE -> files (staged,
then moved into place together; see :mod:`t2starmap.bids.t2smap_outputs`).

The maths is in :mod:`t2starmap.fit.adaptive_mask`, :mod:`t2starmap.fit.bold` and
:mod:`t2starmap.fit.combine`; images are read in :mod:`t2starmap.bids.series`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from t2starmap.bids.series import (
    read_echo_series,
    read_mask,
    read_phase_series,
    series_geometry,
)
from t2starmap.bids.t2smap_outputs import Stage
from t2starmap.errors import UsageError
from t2starmap.fit import adaptive_mask as am
from t2starmap.fit import bold, combine
from t2starmap.fit.bold_sigma import choose_noise, describe
from t2starmap.fit.status import Failure
from t2starmap.fit.tsnr import TsnrSummary, compare_tsnr
from t2starmap.resources import gpu_possible
from t2starmap.workflows.t2smap_complex import complex_fit
from t2starmap.workflows.t2smap_ts import ts_mode
from t2starmap.workflows.t2smap_write import (
    Run,
    description,
    expand,
    write_combination,
    write_fit_quality,
    write_maps,
    write_rmse,
)


@dataclass(frozen=True)
class T2smapSettings:
    """One run, checked: echo files and times (s, ascending), mask, volumes, fit and output;
    ``phase``: the phase echoes (ours, ``--phase``), one per echo file, or none; ``tsnr``:
    compare the combined series' temporal SNR with each echo's while both are in memory (the
    BIDS-App's run record; ``fitmode all``)."""

    data: tuple[Path, ...]
    tes: tuple[float, ...]
    out_dir: Path
    prefix: str
    convention: str
    verbose: bool
    overwrite: bool
    mask: Path | None
    masktype: tuple[str, ...]
    dummy_scans: int
    exclude: tuple[int, ...]
    fittype: str
    fitmode: str
    combmode: str
    workers: int | None
    device: str
    command: str
    phase: tuple[Path, ...] = ()
    tsnr: bool = False


log = logging.getLogger("t2starmap.t2smap")

#: nilearn's compute_epi_mask cut-offs: the threshold is the largest gap in the sorted
#: first-echo means between these fractions.
EPI_MASK_CUTOFFS = (0.2, 0.85)


def epi_mask(first_echo_mean: np.ndarray) -> np.ndarray:
    """The mask tedana computes without ``--mask`` (nilearn's compute_epi_mask, without its
    morphological opening): above the middle of the largest gap between sorted first-echo
    means, between the 20th and 85th percentile of them."""
    values = np.sort(first_echo_mean.ravel())
    lo, hi = (int(f * values.size) for f in EPI_MASK_CUTOFFS)
    part = values[lo:hi]
    if part.size < 2:
        return first_echo_mean > 0
    gap = int(np.argmax(np.diff(part)))
    return first_echo_mean >= 0.5 * (part[gap] + part[gap + 1])


def load(s: T2smapSettings) -> Run:
    """The echo series inside the mask, dummy scans dropped. BadDataError / UsageError."""
    geometry = series_geometry(s.data, len(s.tes))
    shape3 = tuple(geometry.shape[:3])
    geometry3 = replace(geometry, shape=shape3, zooms=geometry.zooms[:3])
    mask = read_mask(s.mask, geometry) if s.mask else np.ones(shape3, dtype=bool)
    log.info("reading %d echo file(s), %d voxels in the mask", len(s.data), int(mask.sum()))
    echoes = read_echo_series(s.data, len(s.tes), geometry, mask)
    phase = read_phase_series(s.phase, len(s.tes), geometry, mask) if s.phase else None
    if s.mask is None:
        log.warning("no --mask: computing one from the first echo (give one when you can)")
        inside = epi_mask(echoes[0].mean(axis=1))
        in_file_order = np.zeros(shape3[::-1], dtype=bool)  # the rows' voxel order
        in_file_order.reshape(-1)[np.flatnonzero(inside)] = True
        mask = in_file_order.T
        echoes = [x[inside] for x in echoes]
        phase = None if phase is None else [x[inside] for x in phase]
    n_volumes = echoes[0].shape[1]
    if s.dummy_scans >= n_volumes:
        raise UsageError(f"--dummy-scans {s.dummy_scans}: the data have {n_volumes} volumes")
    if s.dummy_scans:
        log.warning("removing the first %d volumes as dummy scans", s.dummy_scans)
        echoes = [np.ascontiguousarray(x[:, s.dummy_scans :]) for x in echoes]
        phase = None if phase is None else [x[:, s.dummy_scans :] for x in phase]
    geometry4 = replace(geometry, shape=(*shape3, n_volumes - s.dummy_scans))
    te = np.asarray(s.tes, dtype=np.float64)
    return Run(echoes, mask, geometry3, geometry4, te, phase)


def fit_volumes(s: T2smapSettings, n_volumes: int) -> np.ndarray | None:
    """The volumes the mask and fit use (bool (T,)), None for all: ``--exclude`` indices after
    the dummy scans, shifted to the data kept. UsageError for an index past the data."""
    if not s.exclude:
        return None
    shifted = [i - s.dummy_scans for i in s.exclude if i >= s.dummy_scans]
    if not shifted:
        log.warning("every --exclude index is a dummy scan")
        return None
    if max(shifted) >= n_volumes:
        raise UsageError(
            f"--exclude index {max(shifted) + s.dummy_scans} is past the last volume "
            f"({n_volumes + s.dummy_scans} volumes)"
        )
    keep = np.ones(n_volumes, dtype=bool)
    keep[shifted] = False
    if not keep.any():
        raise UsageError("--exclude leaves no volume to fit")
    log.info("excluding %d volume(s) from the adaptive mask and the fit", len(shifted))
    return keep


def _fit(
    s: T2smapSettings, m: bold.EchoMoments, run: Run, count: np.ndarray,
    volumes: np.ndarray | None,
) -> tuple[bold.DecayFit, dict[str, object]]:  # fmt: skip
    """The decay fit, and what the provenance records of it (the complex fit, or why not;
    the noise sigma of nlls)."""
    if run.phase is not None:
        fit, notes = complex_fit(s, run, m, volumes)
        if fit is not None:
            return fit, notes
        magnitude, more = _magnitude_fit(s, m, run, count)
        return magnitude, {**notes, **more}
    return _magnitude_fit(s, m, run, count)


def _magnitude_fit(
    s: T2smapSettings, m: bold.EchoMoments, run: Run, count: np.ndarray
) -> tuple[bold.DecayFit, dict[str, object]]:
    how = bold.Compute(fit_device(s.device), s.workers)
    if s.fittype == "loglin":
        return bold.fit_loglin(m, run.te, am.echoes_used(count)), {}
    if s.fittype == "curvefit":
        return bold.fit_curvefit(m, run.te, am.echoes_used(count), how), {}
    inside = np.asarray(~m.bad.all(axis=1))
    # The rows follow the C order of the transposed mask (voxel_rows): the grid's True cells.
    noise = choose_noise(m.mean[:, -1], m.diff_var[:, -1], inside, run.mask.T, m.n_volumes)
    if not np.isfinite(noise.median):
        raise UsageError("--fittype nlls needs at least two volumes to measure the noise")
    log.info(
        "nlls: thermal noise sigma %.4g (temporal, Rician-corrected), %s; real variation "
        "across the image %.3f",
        noise.median,
        "per voxel" if noise.per_voxel else "one for the run",
        noise.excess,
    )
    sigma = noise.sigma if noise.per_voxel else noise.median
    return bold.fit_nlls(m, run.te, inside, sigma, how), describe(noise)


def fitted_voxels(
    s: T2smapSettings, count: np.ndarray, fit: bold.DecayFit, all_echoes: bool = False
) -> np.ndarray:
    """The voxels with maps: tedana's (adaptive mask >= 1); for nlls (and the complex fit:
    ``all_echoes``) those it could fit."""
    if s.fittype == "nlls" or all_echoes:
        return np.asarray(((fit.reason & int(Failure.BAD_INPUT)) == 0) & (fit.t2star > 0))
    return count > 0


def fit_device(device: str) -> str:
    """``device`` with "auto" resolved to "cpu" where no GPU can exist (no NVIDIA device node:
    :func:`t2starmap.resources.gpu_possible`), without importing torch; else as given (torch
    decides "auto")."""
    return "cpu" if device == "auto" and not gpu_possible() else device


def needs_torch(s: T2smapSettings) -> bool:
    """Whether the run's fit loads torch: ``nlls``, the complex fit (``--phase``),
    ``curvefit`` per volume or off the CPU; never ``loglin``. ``fitmode all`` curvefit on the
    CPU runs in numpy (:mod:`t2starmap.fit.decay_cpu`)."""
    if s.fittype == "loglin":
        return False
    if s.fittype == "nlls" or s.phase or s.fitmode != "all":
        return True
    return not bold.Compute(fit_device(s.device), s.workers).numpy_engine


def _load_solver() -> None:
    """Import the solver's modules (and torch); a later import waits for this one."""
    import t2starmap.fit.bold_nlls  # noqa: F401  (imports fit.magnitude and torch)


def run_t2smap(s: T2smapSettings, notes: dict[str, object] | None = None) -> dict[str, Path]:
    """Run ``t2smap`` with settings ``s``; return the files written by registry key.
    ``notes``, when given, receives what the fit records beyond the settings (the noise sigma
    of nlls: :func:`t2starmap.fit.bold_sigma.describe`), as dataset_description.json does,
    and with ``s.tsnr`` the :class:`~t2starmap.fit.tsnr.TsnrSummary` under ``"tsnr"``."""
    stage = Stage(s.out_dir, s.prefix, s.convention, s.overwrite)
    if needs_torch(s):  # torch loads (a second or more) while the echoes are read
        threading.Thread(target=_load_solver, name="t2smap-import", daemon=True).start()
    try:
        run = load(s)
        volumes = fit_volumes(s, run.echoes[0].shape[1])
        if s.fitmode == "all":
            moments = bold.echo_moments(run.echoes, volumes)
            mean, bad = moments.mean, moments.bad
        else:  # the volumes are fitted, not the moments
            mean, bad = bold.echo_means(run.echoes, volumes)
        count = am.adaptive_mask(mean, bad, s.masktype)
        log.info("adaptive mask: voxels by good echoes %s", np.bincount(count).tolist())
        stage.image("adaptive mask img", count.astype(np.uint8), run.mask, run.geometry3)
        fitted: dict[str, object] = {}
        tsnr: TsnrSummary | None = None
        if s.fitmode == "all":
            fitted, tsnr = _all_mode(s, run, (moments, volumes), count, stage)
        else:
            ts_mode(s, run, count, stage)
        stage.json("data description json", description(s, fitted))
        placed = stage.publish()
    except BaseException:
        stage.discard()
        raise
    log.info("wrote %d files to %s", len(placed), s.out_dir)
    if notes is not None:
        notes.update(fitted)
        if s.tsnr:
            notes["tsnr"] = tsnr
    return placed


def _all_mode(
    s: T2smapSettings,
    run: Run,
    moments: tuple[bold.EchoMoments, np.ndarray | None],
    count: np.ndarray,
    stage: Stage,
) -> tuple[dict[str, object], TsnrSummary | None]:
    """Fit the moments, write the maps and the combination; what the fit records, and (with
    ``s.tsnr``) the combination's tSNR against the echoes' over the voxels with a good echo."""
    fit, fitted = _fit(s, moments[0], run, count, moments[1])
    sel = fitted_voxels(s, count, fit, fitted.get("ComplexFit") is True)
    maps = combine.floor_maps(fit.t2star[sel].copy(), fit.s0[sel].copy(), run.te)
    full = combine.FinalMaps(expand(maps.t2star, sel), expand(maps.s0, sel))
    write_maps(stage, run, full, combine.limited(maps, count[sel]), sel)
    write_fit_quality(s, stage, run, fit, sel)
    used = am.echoes_used(count)
    optcom = write_combination(s, stage, run, used, full.t2star)
    write_rmse(stage, run, used, full)
    if not s.tsnr:
        return fitted, None
    good = count >= 1
    return fitted, compare_tsnr(optcom[good], [e[good] for e in run.echoes])
