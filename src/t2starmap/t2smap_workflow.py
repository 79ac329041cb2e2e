"""The ``t2starmap t2smap`` run: echoes in, tedana's maps (and ours) out.

read the echo series inside the mask -> drop dummy scans -> temporal moments of the volumes
not excluded -> adaptive mask -> decay fit (one per voxel, or per voxel and volume) ->
floors and limited maps -> optimal combination of every volume -> RMSE -> files (staged,
then moved into place together; see :mod:`t2starmap.t2smap_outputs`).

The maths is in :mod:`t2starmap.fit.adaptive_mask`, :mod:`t2starmap.fit.bold` and
:mod:`t2starmap.fit.combine`; images are read in :mod:`t2starmap.nifti_series`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from t2starmap import __version__
from t2starmap.errors import UsageError
from t2starmap.fit import adaptive_mask as am
from t2starmap.fit import bold, combine
from t2starmap.fit.status import Failure, labels, levels_tsv
from t2starmap.nifti import Geometry
from t2starmap.nifti_series import read_echo_series, read_mask, series_geometry
from t2starmap.t2smap_cli import T2smapSettings
from t2starmap.t2smap_outputs import Stage, tsv

log = logging.getLogger("t2starmap.t2smap")

#: Fit rows (voxels x volumes) per block of ``--fitmode ts``: bounds its temporaries.
TS_ROWS = 1 << 18
#: nilearn's compute_epi_mask cut-offs: the threshold is the largest gap in the sorted
#: first-echo means between these fractions.
EPI_MASK_CUTOFFS = (0.2, 0.85)


@dataclass
class Run:
    """The data of one run: each echo's samples inside ``mask`` (V, T) float32, the 3-D mask,
    the geometry of a volume and of the series, echo times in s."""

    echoes: list[np.ndarray]
    mask: np.ndarray
    geometry3: Geometry
    geometry4: Geometry
    te: np.ndarray


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
    if s.mask is None:
        log.warning("no --mask: computing one from the first echo (give one when you can)")
        inside = epi_mask(echoes[0].mean(axis=1))
        mask = np.zeros(shape3, dtype=bool)
        mask.reshape(-1)[np.flatnonzero(inside)] = True
        echoes = [x[inside] for x in echoes]
    n_volumes = echoes[0].shape[1]
    if s.dummy_scans >= n_volumes:
        raise UsageError(f"--dummy-scans {s.dummy_scans}: the data have {n_volumes} volumes")
    if s.dummy_scans:
        log.warning("removing the first %d volumes as dummy scans", s.dummy_scans)
        echoes = [np.ascontiguousarray(x[:, s.dummy_scans :]) for x in echoes]
    geometry4 = replace(geometry, shape=(*shape3, n_volumes - s.dummy_scans))
    return Run(echoes, mask, geometry3, geometry4, np.asarray(s.tes, dtype=np.float64))


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
    s: T2smapSettings, m: bold.EchoMoments, te: np.ndarray, count: np.ndarray
) -> bold.DecayFit:
    how = bold.Compute(s.device, s.workers)
    if s.fittype == "loglin":
        return bold.fit_loglin(m, te, am.echoes_used(count))
    if s.fittype == "curvefit":
        return bold.fit_curvefit(m, te, am.echoes_used(count), how)
    inside = np.asarray(~m.bad.all(axis=1))
    sigma = bold.temporal_noise(m, inside)
    if not np.isfinite(sigma):
        raise UsageError("--fittype nlls needs at least two volumes to measure the noise")
    log.info("nlls: thermal noise sigma %.4g (temporal, Rician-corrected)", sigma)
    return bold.fit_nlls(m, te, inside, sigma, how)


def fitted_voxels(s: T2smapSettings, count: np.ndarray, fit: bold.DecayFit) -> np.ndarray:
    """The voxels with maps: tedana's (adaptive mask >= 1); for nlls those it could fit."""
    if s.fittype == "nlls":
        return (fit.reason & int(Failure.BAD_INPUT)) == 0
    return count > 0


def run_t2smap(s: T2smapSettings) -> dict[str, Path]:
    """Run ``t2smap`` with settings ``s``; return the files written by registry key."""
    stage = Stage(s.out_dir, s.prefix, s.convention, s.overwrite)
    try:
        run = load(s)
        volumes = fit_volumes(s, run.echoes[0].shape[1])
        moments = bold.echo_moments(run.echoes, volumes)
        count = am.adaptive_mask(moments.mean, moments.bad, s.masktype)
        log.info("adaptive mask: voxels by good echoes %s", np.bincount(count).tolist())
        stage.image("adaptive mask img", count.astype(np.uint8), run.mask, run.geometry3)
        if s.fitmode == "all":
            _all_mode(s, run, moments, count, stage)
        else:
            from t2starmap.t2smap_ts import ts_mode

            ts_mode(s, run, count, stage)
        stage.json("data description json", description(s))
        placed = stage.publish()
    except BaseException:
        stage.discard()
        raise
    log.info("wrote %d files to %s", len(placed), s.out_dir)
    return placed


def _all_mode(
    s: T2smapSettings, run: Run, m: bold.EchoMoments, count: np.ndarray, stage: Stage
) -> None:
    fit = _fit(s, m, run.te, count)
    sel = fitted_voxels(s, count, fit)
    maps = combine.floor_maps(fit.t2star[sel].copy(), fit.s0[sel].copy(), run.te)
    full = combine.FinalMaps(expand(maps.t2star, sel), expand(maps.s0, sel))
    write_maps(stage, run, full, combine.limited(maps, count[sel]), sel)
    write_fit_quality(s, stage, run, fit, sel)
    used = am.echoes_used(count)
    write_combination(s, stage, run, used, full.t2star)
    write_rmse(stage, run, used, full)


def expand(values: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Values of the ``sel`` voxels as (V, ...) with zeros elsewhere."""
    out = np.zeros(sel.shape + values.shape[1:], dtype=values.dtype)
    out[sel] = values
    return out


def write_maps(
    stage: Stage, run: Run, full: combine.FinalMaps, lim: combine.FinalMaps, sel: np.ndarray
) -> None:
    """T2*, R2*, S0 and the limited maps (3-D, or 4-D for ``ts``)."""
    geometry = run.geometry3 if full.t2star.ndim == 1 else run.geometry4
    stage.image("t2star img", full.t2star.astype(np.float32), run.mask, geometry)
    with np.errstate(divide="ignore"):
        r2 = np.where(full.t2star > 0, 1.0 / full.t2star, 0.0).astype(np.float32)
    stage.image("r2star img", r2, run.mask, geometry)
    del r2
    stage.image("s0 img", full.s0.astype(np.float32), run.mask, geometry)
    stage.image(
        "limited t2star img", expand(lim.t2star, sel).astype(np.float32), run.mask, geometry
    )
    stage.image("limited s0 img", expand(lim.s0, sel).astype(np.float32), run.mask, geometry)


def write_fit_quality(
    s: T2smapSettings, stage: Stage, run: Run, fit: bold.DecayFit, sel: np.ndarray
) -> None:
    """Failures (curvefit, nlls), standard errors, the fit-status map, and with
    ``--verbose`` the variances and covariance (T2* in s^2)."""
    g = run.geometry3
    if s.fittype != "loglin":
        stage.image("fit failures img", (fit.failed & sel).astype(np.uint8), run.mask, g)
    t2 = np.where(sel, fit.t2star, 0.0)
    se_t2 = np.sqrt(np.where(sel, fit.t2star_var, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        se_r2 = np.nan_to_num(np.where(t2 > 0, se_t2 / (t2 * t2), 0.0))
    stage.image("t2star stderr img", se_t2.astype(np.float32), run.mask, g)
    stage.image("r2star stderr img", se_r2.astype(np.float32), run.mask, g)
    se_s0 = np.sqrt(np.where(sel, fit.s0_var, 0.0)).astype(np.float32)
    stage.image("s0 stderr img", se_s0, run.mask, g)
    stage.image("fit status img", labels(fit.reason, sel), run.mask, g)
    stage.text("fit status tsv", levels_tsv())
    if s.verbose:
        for key, values in (
            ("t2star variance img", fit.t2star_var),
            ("s0 variance img", fit.s0_var),
            ("t2star-s0 covariance img", fit.covar),
        ):
            stage.image(key, np.where(sel, values, 0.0).astype(np.float32), run.mask, g)


def write_combination(
    s: T2smapSettings, stage: Stage, run: Run, used: np.ndarray, t2star: np.ndarray
) -> None:
    """The optimally combined series of every volume (excluded ones too)."""
    if s.combmode == "paid":
        m = bold.echo_moments(run.echoes)
        snr = combine.temporal_snr(m.mean, m.sq_dev, m.n_volumes)
        optcom = combine.combine(run.echoes, run.te, used, snr=snr)
    else:
        optcom = combine.combine(run.echoes, run.te, used, t2star=t2star)
    stage.image("combined img", optcom, run.mask, run.geometry4)


def write_rmse(stage: Stage, run: Run, used: np.ndarray, full: combine.FinalMaps) -> None:
    """The RMSE map (mean over volumes) and the per-volume table over voxels."""
    per_volume = combine.rmse(run.echoes, run.te, used, full)
    stage.text("confounds tsv", tsv(combine.RMSE_COLUMNS, combine.rmse_table(per_volume)))
    with np.errstate(invalid="ignore"):
        mean = np.nan_to_num(per_volume.mean(axis=1), nan=0.0)
    stage.image("rmse img", mean.astype(np.float32), run.mask, run.geometry3)


def description(s: T2smapSettings) -> dict[str, object]:
    """dataset_description.json: a BIDS derivative, generated by t2starmap's t2smap."""
    return {
        "Name": "t2smap Outputs",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "t2starmap t2smap",
                "Version": __version__,
                "Description": "T2* and S0 of multi-echo BOLD and the optimal combination of "
                f"its echoes (tedana's t2smap algorithm; --fittype {s.fittype}, --fitmode "
                f"{s.fitmode}, --combmode {s.combmode})",
                "CodeURL": "https://github.com/t2starmap/t2starmap",
                "Command": s.command,
                "Python": sys.version.split()[0],
            }
        ],
    }
