"""``--fitmode ts``: one decay fit per voxel and volume, in blocks of volumes (bounded
temporaries), then the same floors, combination and RMSE as one fit per voxel, with 4-D maps.

Memory: the echoes (V, T) float32 each, the 4-D T2* and S0 (float32), and one block of fits.
The echoes are released once the combination and the RMSE are written, before the limited
maps are made. The R2*, standard-error, variance and fit-status maps are not written in this
mode.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from t2starmap.bids.t2smap_outputs import Stage
from t2starmap.fit import adaptive_mask as am
from t2starmap.fit import bold, combine
from t2starmap.workflows.t2smap_write import Run, write_combination, write_maps, write_rmse

if TYPE_CHECKING:
    from t2starmap.workflows.t2smap import T2smapSettings

log = logging.getLogger("t2starmap.t2smap")
#: Fit rows (voxels x volumes) per block: bounds the temporaries.
TS_ROWS = 1 << 20


def _fit_block(
    s: T2smapSettings, m: bold.EchoMoments, te: np.ndarray, count: np.ndarray, sigma: float
) -> bold.DecayFit:
    how = bold.Compute(s.device, s.workers, engine="torch")  # chunk workers for millions
    if s.fittype == "loglin":
        return bold.fit_loglin(m, te, am.echoes_used(count), covariance=False)
    if s.fittype == "curvefit":
        return bold.fit_curvefit(m, te, am.echoes_used(count), how, covariance=False)
    return bold.fit_nlls(m, te, np.asarray(~m.bad.all(axis=1)), sigma, how)


def ts_mode(s: T2smapSettings, run: Run, count: np.ndarray, stage: Stage) -> None:
    """Fit every volume, write the 4-D maps, the combination (per-volume weights), the RMSE."""
    n_vox, n_vol = run.echoes[0].shape
    sigma = float("nan")
    if s.fittype == "nlls":
        sigma = bold.temporal_noise(bold.echo_moments(run.echoes), np.asarray(count >= 0))
        log.info("nlls: thermal noise sigma %.4g (temporal, Rician-corrected)", sigma)
    t2 = np.zeros((n_vox, n_vol), dtype=np.float32)
    s0 = np.zeros((n_vox, n_vol), dtype=np.float32)
    failed = np.zeros((n_vox, n_vol), dtype=np.uint8)
    block = max(1, TS_ROWS // max(n_vox, 1))
    starts = range(0, n_vol, block)
    quiet = not sys.stderr.isatty()
    for a in tqdm(starts, desc="t2smap ts", unit="block", disable=quiet):
        b = min(a + block, n_vol)
        m = bold.volume_moments(run.echoes, a, b)
        fit = _fit_block(s, m, run.te, np.repeat(count, b - a), sigma)
        t2[:, a:b] = fit.t2star.reshape(n_vox, b - a)
        s0[:, a:b] = fit.s0.reshape(n_vox, b - a)
        failed[:, a:b] = fit.failed.reshape(n_vox, b - a)
    sel = count > 0
    maps = combine.floor_maps(t2, s0, run.te)
    maps.t2star[~sel] = 0
    maps.s0[~sel] = 0
    used = am.echoes_used(count)
    write_combination(s, stage, run, used, maps.t2star)
    write_rmse(stage, run, used, maps)
    run.echoes.clear()  # the samples are not needed any more
    if s.fittype != "loglin":
        stage.image("fit failures img", failed * sel[:, None], run.mask, run.geometry4)
    del failed
    lim = combine.limited(combine.FinalMaps(maps.t2star[sel], maps.s0[sel]), count[sel])
    write_maps(stage, run, maps, lim, sel)
    del lim
