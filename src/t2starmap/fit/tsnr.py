"""Temporal SNR of multi-echo BOLD: the optimally combined series against the best single echo.

Torch-free and pure (numpy only, no I/O): the participant level reads the series, this
compares them. tSNR of a voxel = mean over time / standard deviation over time (ddof 1, the
sample SD); a voxel whose series does not vary (or is not finite) has no tSNR (NaN) and is
left out of the medians and histograms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Fewest volumes a tSNR needs (a mean and a sample SD).
MIN_VOLUMES = 2
#: Bins of the tSNR histograms kept in the record (the page draws them).
HISTOGRAM_BINS = 40


def temporal_snr(series: np.ndarray) -> np.ndarray:
    """tSNR of each voxel of ``series`` (V, T), time last: mean / sample SD, (V,) float64;
    NaN where the SD is 0 or the result is not finite. ValueError for fewer than
    :data:`MIN_VOLUMES` volumes."""
    data = np.asarray(series, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] < MIN_VOLUMES:
        raise ValueError(f"tSNR needs (V, T) with T >= {MIN_VOLUMES}, got {data.shape}")
    mean = data.mean(axis=1)
    sd = data.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = mean / sd
    return np.where(np.isfinite(snr) & (sd > 0), snr, np.nan)


@dataclass(frozen=True)
class TsnrSummary:
    """The tSNR comparison of one run over the voxels compared (``n_voxels``, those with a
    finite tSNR in the combined series).

    ``echo_medians``: median tSNR of each echo (echo order, ascending TE; NaN without one);
    ``best_echo``: 1-based index of the echo with the highest median; ``ratio``: the combined
    series' median over the best echo's; ``edges``: histogram bin edges shared by
    ``optcom_counts`` and ``best_counts`` (voxel counts per bin)."""

    n_voxels: int
    optcom_median: float
    echo_medians: tuple[float, ...]
    best_echo: int
    ratio: float
    edges: tuple[float, ...]
    optcom_counts: tuple[int, ...]
    best_counts: tuple[int, ...]

    @property
    def best_median(self) -> float:
        return self.echo_medians[self.best_echo - 1]


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def compare_tsnr(
    optcom: np.ndarray, echoes: Sequence[np.ndarray], bins: int = HISTOGRAM_BINS
) -> TsnrSummary | None:
    """Compare the tSNR of the combined series ``optcom`` (V, T) with each echo's (each
    (V, T), same voxels, ascending TE) over the voxels where the combined series has one;
    None when no voxel has (or there are too few volumes)."""
    if not echoes or optcom.ndim != 2 or optcom.shape[1] < MIN_VOLUMES:
        return None
    combined = temporal_snr(optcom)
    keep = np.isfinite(combined)
    if not keep.any():
        return None
    per_echo = [temporal_snr(e)[keep] for e in echoes]
    medians = tuple(_median(v) for v in per_echo)
    ranked = np.nan_to_num(np.asarray(medians), nan=-np.inf)
    best = int(np.argmax(ranked))
    shown = combined[keep]
    best_values = per_echo[best][np.isfinite(per_echo[best])]
    top = float(np.percentile(np.concatenate([shown, best_values]), 99.5))
    edges = np.linspace(0.0, top if top > 0 else 1.0, bins + 1)
    optcom_median = _median(shown)
    ratio = optcom_median / medians[best] if medians[best] > 0 else float("nan")
    return TsnrSummary(
        n_voxels=int(keep.sum()),
        optcom_median=optcom_median,
        echo_medians=medians,
        best_echo=best + 1,
        ratio=float(ratio),
        edges=tuple(float(e) for e in edges),
        optcom_counts=tuple(int(c) for c in np.histogram(np.clip(shown, 0, edges[-1]), edges)[0]),
        best_counts=tuple(
            int(c) for c in np.histogram(np.clip(best_values, 0, edges[-1]), edges)[0]
        ),
    )
