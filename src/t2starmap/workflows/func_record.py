"""The record of one fitted multi-echo BOLD run (:class:`t2starmap.bids.func_records
.PublishedRun`), from the files ``t2smap`` wrote for it (before they are renamed into
``func/``): the adaptive mask's counts, the fit-status counts, the T2* statistics and the
temporal SNR of the combined series against each echo (:mod:`t2starmap.fit.tsnr`).

The tSNR is computed over the fitted voxels (adaptive mask >= 1): the echoes and the combined
series are read again, inside that mask only, one file at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2starmap.bids import outputs as derivatives
from t2starmap.bids.func_layout import BoldRun
from t2starmap.bids.func_outputs import FUNC_EXTRAS, FUNC_OUTPUTS, func_target
from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.nifti import Geometry, read_map_image
from t2starmap.bids.records import SOURCE_FIELDS, Source
from t2starmap.bids.summary import set_statistics
from t2starmap.fit import status as fit_status
from t2starmap.fit.tsnr import TsnrSummary
from t2starmap.resources import software_versions

#: The maps a run's record is computed from (t2smap registry keys).
_READ = ("t2star img", "r2star img", "s0 img", "adaptive mask img", "fit status img")
_FAILURE_LABELS = tuple(level.name for level in fit_status.LEVELS if level.failure)


@dataclass(frozen=True)
class RunFit:
    """How a run was fitted: fit type, its ``EstimationAlgorithm`` text, the repetition time
    (s), the seconds it took, the warnings said of it, the tSNR comparison the fit made while
    the series were in memory (None with too few volumes)."""

    fit_type: str
    algorithm: str
    repetition_time: float
    seconds: float | None
    warnings: tuple[str, ...] = ()
    tsnr: TsnrSummary | None = None


def read_run_maps(placed: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """The run's T2*, R2*, S0 (float32), adaptive mask and fit status (integers) as written."""
    return {key: read_map_image(placed[key]).data for key in _READ}


def run_record(
    bold_run: BoldRun,
    bids_dir: Path,
    placed: Mapping[str, Path],
    geometry: Geometry,
    fit: RunFit,
) -> PublishedRun:
    """The record of ``bold_run`` from the files ``t2smap`` placed (registry key -> path)."""
    maps = read_run_maps(placed)
    adaptive = maps["adaptive mask img"].astype(np.int64)
    fitted = adaptive >= 1
    status = maps["fit status img"].astype(np.uint8)
    counts = fit_status.counts(status, fitted)
    n = int(fitted.sum())
    failed = (
        np.isin(status, [fit_status.level_named(name).index for name in _FAILURE_LABELS]) & fitted
    )
    misfit = counts.get("decay_not_following_model", 0)
    n_echoes = len(bold_run.echoes)
    mask_counts = np.bincount(np.clip(adaptive, 0, n_echoes).ravel(), minlength=n_echoes + 1)
    return PublishedRun(
        entities=dict(bold_run.entities),
        files={
            key: func_target(bold_run, key)
            for key in (*(o.key for o in FUNC_OUTPUTS), *FUNC_EXTRAS)
            if key in placed
        },
        sources=tuple(
            Source(
                derivatives.bids_path(bids_dir, e.path),
                e.echo_time,
                {k: e.metadata[k] for k in SOURCE_FIELDS if k in e.metadata},
            )
            for e in bold_run.echoes
        ),
        n_volumes=int(geometry.shape[3]),
        repetition_time=fit.repetition_time,
        fit_type=fit.fit_type,
        algorithm=fit.algorithm,
        preprocessed=bold_run.preprocessed,
        n_voxels=n,
        mask_counts={str(k): int(c) for k, c in enumerate(mask_counts)},
        failed_fraction=float(failed.sum()) / n if n else 0.0,
        misfit_fraction=misfit / n if n else 0.0,
        status_counts=counts,
        statistics=set_statistics(
            maps["t2star img"], maps["r2star img"], maps["s0 img"], fitted & ~failed
        ),
        tsnr=fit.tsnr,
        seconds=fit.seconds,
        warnings=fit.warnings,
        software=software_versions(),
    )
