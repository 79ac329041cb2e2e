"""After the decay fit of multi-echo BOLD: tedana's floors and caps of the maps, the optimal
combination of the echoes, and the fit's RMSE per voxel and volume.

Pure numpy: no I/O, no logging. Voxels on the first axis; each echo's samples (V, T) float32,
echoes ascending, echo times in seconds, T2* in s. ``used`` (V,): the echoes each voxel is
fitted and combined with (:func:`t2starmap.fit.adaptive_mask.echoes_used`), 0 for none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: tedana's replacements: an infinite T2* becomes 0.5 s, a T2* <= 0 becomes 0.001 s.
T2STAR_FOR_INF = 0.5
T2STAR_FOR_NONPOSITIVE = 0.001
#: The limited map's cap: values above CAP_FACTOR x its CAP_PERCENTILE-th percentile ("lower")
#: become that percentile.
CAP_PERCENTILE = 99.5
CAP_FACTOR = 10.0
COMBMODES = ("t2s", "paid")
#: Columns of the confounds table: the RMSE across voxels of each volume.
RMSE_COLUMNS = (
    "rmse_mean", "rmse_std", "rmse_min", "rmse_percentile02", "rmse_percentile25",
    "rmse_median", "rmse_percentile75", "rmse_percentile98", "rmse_max",
)  # fmt: skip
_PERCENTILES = (0, 2, 25, 50, 75, 98, 100)


#: exp(-x) is 0 in float64 beyond this x (half the smallest subnormal): tedana's floor test.
EXP_UNDERFLOW = 745.1332191019412
#: Voxel rows combined at a time: bounds the temporaries of the combination and the RMSE.
ROWS = 1 << 14


@dataclass(frozen=True)
class FinalMaps:
    """The written T2* (s) and S0 maps of the fitted voxels, (V,) or (V, T)."""

    t2star: np.ndarray
    s0: np.ndarray


def floor_maps(t2star: np.ndarray, s0: np.ndarray, te: np.ndarray) -> FinalMaps:
    """tedana's floors, in place (dtype kept): T2* inf -> 0.5 s, <= 0 (or NaN) -> 0.001 s,
    and where exp(-TE/T2*) underflows at some echo (float64), max(TE) / -log(eps): the
    smallest T2* every weight of the combination survives. S0 NaN -> 0."""
    t2star[np.isinf(t2star)] = T2STAR_FOR_INF
    t2star[~(t2star > 0)] = T2STAR_FOR_NONPOSITIVE
    top = float(np.max(te))
    t2star[top / t2star > EXP_UNDERFLOW] = top / -np.log(np.finfo(np.float64).eps)
    np.nan_to_num(s0, copy=False, nan=0.0)
    return FinalMaps(t2star, s0)


def limited(maps: FinalMaps, count: np.ndarray) -> FinalMaps:
    """The limited maps (copies): 0 where ``count`` (the adaptive mask, (V,)) is 1, and T2*
    above :data:`CAP_FACTOR` x its :data:`CAP_PERCENTILE`-th percentile ("lower") set to it."""
    t2 = maps.t2star.copy()
    s0 = maps.s0.copy()
    one = count == 1
    t2[one] = 0
    s0[one] = 0
    if t2.size:
        cap = float(np.percentile(t2, CAP_PERCENTILE, method="lower"))
        t2[t2 > cap * CAP_FACTOR] = cap
    return FinalMaps(t2, s0)


def _rows(t2star: np.ndarray | None) -> int:
    """Voxel rows per block: :data:`ROWS`, or fewer with per-volume T2* (rows x volumes
    weights in float64 for each echo)."""
    if t2star is None or t2star.ndim == 1:
        return ROWS
    return max(1, (1 << 18) // max(int(t2star.shape[1]), 1))


def _weights(
    te: np.ndarray, used: np.ndarray, t2star: np.ndarray | None, snr: np.ndarray | None
) -> list[np.ndarray]:
    """Each echo's combination weights for a block of rows, (n,) or (n, T), normalised to sum
    1 over the echoes used; the plain mean where they sum to 0."""
    per_volume = t2star is not None and t2star.ndim == 2
    weights = []
    for k in range(te.size):
        on = (used > k).astype(np.float64)
        if per_volume:
            on = on[:, None]
        if t2star is not None:
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                w = np.nan_to_num(float(te[k]) * np.exp(-float(te[k]) / t2star), nan=0.0)
        else:
            assert snr is not None
            w = snr[:, k] * float(te[k])
        weights.append(w * on)
    total = np.sum(weights, axis=0)
    flat = ~(total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(flat, 0.0, 1.0 / total)
    n_used = np.maximum(used, 1).astype(np.float64)
    plain = flat / (n_used[:, None] if per_volume else n_used)
    return [w * inv + plain * (used > k).reshape(-1, *([1] * (w.ndim - 1))) for k, w in
            enumerate(weights)]  # fmt: skip


def combine(
    echoes: Sequence[np.ndarray],
    te: np.ndarray,
    used: np.ndarray,
    *,
    t2star: np.ndarray | None = None,
    snr: np.ndarray | None = None,
) -> np.ndarray:
    """The optimally combined series (V, T) float32: the weighted mean of each voxel's first
    ``used`` echoes, weights TE exp(-TE/T2*) (``t2star`` (V,) or (V, T): Posse's ``t2s``) or
    TE x temporal SNR (``snr`` (V, E): Poser's ``paid``). Where the weights sum to 0, the
    plain mean; 0 where ``used`` is 0. Computed :data:`ROWS` voxels at a time."""
    n_rows = len(used)
    out = np.zeros(echoes[0].shape, dtype=np.float32)
    step = _rows(t2star)
    for a in range(0, n_rows, step):
        b = min(a + step, n_rows)
        ws = _weights(
            te, used[a:b], None if t2star is None else t2star[a:b],
            None if snr is None else snr[a:b],
        )  # fmt: skip
        for w, x in zip(ws, echoes, strict=False):
            out[a:b] += (w if w.ndim == 2 else w[:, None]).astype(np.float32) * x[a:b]
    return out


def temporal_snr(mean: np.ndarray, sq_dev: np.ndarray, n_volumes: int) -> np.ndarray:
    """Mean over (population) standard deviation across time, 0 where the latter is 0."""
    sd = np.sqrt(sq_dev / n_volumes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd != 0, mean / sd, 0.0)


def rmse(
    echoes: Sequence[np.ndarray], te: np.ndarray, used: np.ndarray, maps: FinalMaps
) -> np.ndarray:
    """RMS over each voxel's first ``used`` echoes of the data minus S0 exp(-TE/T2*) (the full
    maps), (V, T) float32; NaN where ``used`` is 0. :data:`ROWS` voxels at a time."""
    n_rows = len(used)
    out = np.zeros(echoes[0].shape, dtype=np.float32)
    n = np.where(used > 0, used, np.nan).astype(np.float32)
    step = _rows(maps.t2star)
    for a in range(0, n_rows, step):
        b = min(a + step, n_rows)
        t2, s0 = maps.t2star[a:b], maps.s0[a:b]
        for k, x in enumerate(echoes):
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                pred = np.nan_to_num(s0 * np.exp(-float(te[k]) / t2)).astype(np.float32)
            resid = x[a:b] - (pred if pred.ndim == 2 else pred[:, None])
            out[a:b] += np.square(resid) * (used[a:b] > k).astype(np.float32)[:, None]
        out[a:b] = np.sqrt(out[a:b] / n[a:b, None])
    return out


def rmse_table(per_volume: np.ndarray) -> np.ndarray:
    """(T, 9) the :data:`RMSE_COLUMNS` of each volume over the voxels with an RMSE (a few
    volumes at a time: the percentiles sort a copy)."""
    good = np.flatnonzero(np.isfinite(per_volume).all(axis=1))
    n_vol = per_volume.shape[1]
    out = np.full((n_vol, len(RMSE_COLUMNS)), np.nan)
    if good.size == 0:
        return out
    step = max(1, (1 << 22) // good.size)  # about 32 MB of float64 at a time
    for a in range(0, n_vol, step):
        # volumes as rows: the percentiles partition contiguous memory (5x faster)
        part = np.ascontiguousarray(per_volume[good, a : a + step].T, dtype=np.float64)
        out[a : a + step, 0] = part.mean(axis=1)
        out[a : a + step, 1] = part.std(axis=1)
        out[a : a + step, 2:] = np.percentile(part, _PERCENTILES, axis=1).T
    return out
