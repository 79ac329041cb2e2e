"""Group-level numbers: per-set statistics of the maps and the group table.

The statistics of a set are computed once, from the maps as published, and kept in its record
(:class:`t2starmap.bids.records.SetStatistics`); the group level reads records, not maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.outputs import set_name
from t2starmap.bids.records import PublishedSet, SetFailure, SetStatistics

GROUP_TABLE = "group_T2starmap.tsv"

#: Column -> description (the table's JSON sidecar), in table order. The columns of BOLD runs
#: (datatype .. tsnr_ratio) come after those of MEGRE echo sets, which keep their places.
GROUP_COLUMNS = {
    "participant_id": "Participant (sub-<label>)",
    "session_id": "Session (ses-<label>), n/a without sessions",
    "echo_set": "Entities of the echo set or BOLD run, as in the map file names",
    "n_voxels": "Voxels in the signal mask (BOLD runs: voxels with at least one good echo in "
    "the adaptive mask)",
    "failed_fraction": "Fraction of signal-mask voxels whose fit failed (no usable estimate)",
    "misfit_fraction": "Fraction of signal-mask voxels whose decay does not follow the model "
    "(an estimate exists, its SE inflated; not failed, and in the statistics)",
    "t2star_median": "Median T2* (s; the pages show ms) over signal-mask voxels whose fit did "
    "not fail (misfit voxels included)",
    "t2star_q1": "25th percentile of T2* (s), same voxels",
    "t2star_q3": "75th percentile of T2* (s), same voxels",
    "t2star_iqr": "Interquartile range of T2* (s), same voxels",
    "r2star_median": "Median R2* (1/s), same voxels",
    "r2star_q1": "25th percentile of R2* (1/s)",
    "r2star_q3": "75th percentile of R2* (1/s)",
    "r2star_iqr": "Interquartile range of R2* (1/s)",
    "noise_sigma": "Noise SD used by the fit (input units), n/a when unknown",
    "snr": "Median S0 over the same voxels divided by noise_sigma, n/a when unknown",
    "noise_caveat": "Why noise_sigma may be off by more than 15 % (the data cannot tell the "
    "thermal noise from what changes with the signal; the sidecars' NoiseSigmaCaveat), n/a "
    "when there is none",
    "datatype": "anat: a multi-echo gradient-echo (MEGRE) echo set; func: a multi-echo BOLD run",
    "task": "Task label of a BOLD run (n/a without one)",
    "run": "Run index (n/a without one)",
    "n_echoes": "Echoes fitted",
    "n_volumes": "Volumes of a BOLD run (n/a for MEGRE echo sets)",
    "tsnr_optcom": "BOLD runs: median temporal SNR (mean / SD over volumes) of the optimally "
    "combined series over the voxels with at least one good echo (n/a with one volume)",
    "tsnr_best_echo": "BOLD runs: median temporal SNR of the best single echo (the echo with "
    "the highest median), same voxels",
    "best_echo": "BOLD runs: index of that echo (1 = shortest echo time)",
    "tsnr_ratio": "BOLD runs: tsnr_optcom / tsnr_best_echo",
    "status": "published: the set's maps are in the output; failed: the last run that tried "
    "it could not fit it (its numbers are n/a; the maps of an earlier run may still be there, "
    "in a row of their own)",
    "failure_reason": "Why the set failed (the error message, naming the file), n/a for a "
    "published set",
}
#: Units of the group table's columns that have units. T2* is in seconds here, as in the
#: maps; the pages show it in milliseconds.
GROUP_UNITS = {
    **{f"t2star_{q}": "s" for q in ("median", "q1", "q3", "iqr")},
    **{f"r2star_{q}": "1/s" for q in ("median", "q1", "q3", "iqr")},
    "noise_sigma": "arbitrary",
}


def group_sidecar() -> dict[str, dict[str, str]]:
    """The group table's JSON sidecar: every column's ``Description``, and ``Units`` where it
    has units."""
    return {
        column: {
            "Description": text,
            **({"Units": GROUP_UNITS[column]} if column in GROUP_UNITS else {}),
        }
        for column, text in GROUP_COLUMNS.items()
    }


#: Significant digits written per column (the rest: 6).
_DIGITS = {"snr": 4, "tsnr_optcom": 4, "tsnr_best_echo": 4, "tsnr_ratio": 4}
PUBLISHED, FAILED = "published", "failed"


def set_statistics(
    t2star: np.ndarray, r2star: np.ndarray, s0: np.ndarray, good: np.ndarray
) -> SetStatistics:
    """Quartiles of T2* (s) and R2* (1/s) and median S0 over ``good`` voxels (same shapes)."""
    if not good.any():
        return SetStatistics()

    def quartiles(values: np.ndarray) -> tuple[float, float, float]:
        q1, median, q3 = np.percentile(values[good].astype(np.float64), [25, 50, 75])
        return float(q1), float(median), float(q3)

    return SetStatistics(
        t2star=quartiles(t2star),
        r2star=quartiles(r2star),
        s0_median=float(np.median(s0[good].astype(np.float64))),
    )


@dataclass(frozen=True)
class GroupTable:
    """One row per echo set, published or failed, columns :data:`GROUP_COLUMNS` (NaN for
    n/a); published sets first, each part in name order."""

    frame: pd.DataFrame

    @property
    def published(self) -> pd.DataFrame:
        """The rows of published sets."""
        return self.frame[self.frame["status"] == PUBLISHED]

    @property
    def failed(self) -> pd.DataFrame:
        """The rows of sets that failed."""
        return self.frame[self.frame["status"] == FAILED]

    def write(self, path: Path) -> str:
        """The TSV text (``n/a`` for missing values); the caller writes it atomically."""
        shown = self.frame.copy()
        for column in shown.columns:
            if shown[column].dtype.kind == "f":
                digits = _DIGITS.get(column, 6)
                shown[column] = [
                    f"{v:.{digits}g}" if np.isfinite(v) else np.nan for v in shown[column]
                ]
        return str(shown.to_csv(sep="\t", na_rep="n/a", index=False, lineterminator="\n"))


def _ids(item: PublishedSet | PublishedRun | SetFailure) -> dict[str, object]:
    rest = {k: v for k, v in item.entities.items() if k not in ("subject", "session")}
    return {
        "participant_id": f"sub-{item.subject}",
        "session_id": f"ses-{item.session}" if item.session else np.nan,
        "echo_set": set_name(rest) or np.nan,
        "datatype": "func" if item.entities.get("datatype") == "func" else "anat",
        "task": item.entities.get("task", np.nan),
        "run": item.entities.get("run", np.nan),
    }


def _statistics(stats: SetStatistics) -> dict[str, object]:
    nan3 = (np.nan, np.nan, np.nan)
    t2 = stats.t2star or nan3
    r2 = stats.r2star or nan3
    return {
        "t2star_median": t2[1],
        "t2star_q1": t2[0],
        "t2star_q3": t2[2],
        "t2star_iqr": t2[2] - t2[0],
        "r2star_median": r2[1],
        "r2star_q1": r2[0],
        "r2star_q3": r2[2],
        "r2star_iqr": r2[2] - r2[0],
    }


def _published_row(record: PublishedSet) -> dict[str, object]:
    stats = record.statistics
    sigma = record.noise_sigma if record.noise_sigma and record.noise_sigma > 0 else None
    snr = stats.s0_median / sigma if sigma and stats.s0_median is not None else np.nan
    return {
        **_ids(record),
        "n_echoes": len(record.sources),
        "n_voxels": record.n_voxels,
        "failed_fraction": float(record.failed_fraction),
        "misfit_fraction": float(record.misfit_fraction),
        **_statistics(stats),
        "noise_sigma": float(sigma) if sigma else np.nan,
        "snr": snr,
        "noise_caveat": record.noise_caveat or np.nan,
        "status": PUBLISHED,
        "failure_reason": np.nan,
    }


def _run_row(record: PublishedRun) -> dict[str, object]:
    """A published BOLD run's row: its entities, echoes, volumes, numbers and tSNR."""
    t = record.tsnr
    return {
        **_ids(record),
        "n_echoes": record.n_echoes,
        "n_volumes": record.n_volumes,
        "n_voxels": record.n_voxels,
        "failed_fraction": float(record.failed_fraction),
        "misfit_fraction": float(record.misfit_fraction),
        **_statistics(record.statistics),
        "tsnr_optcom": t.optcom_median if t else np.nan,
        "tsnr_best_echo": t.best_median if t else np.nan,
        "best_echo": t.best_echo if t else np.nan,
        "tsnr_ratio": t.ratio if t else np.nan,
        "status": PUBLISHED,
        "failure_reason": np.nan,
    }


def group_table(
    published: Sequence[PublishedSet],
    failures: Sequence[SetFailure] = (),
    runs: Sequence[PublishedRun] = (),
) -> GroupTable:
    """The group table: a row per published set, a row per published BOLD run, then a row per
    failed set or run (status ``failed``, its reason, every number n/a)."""
    rows = [_published_row(r) for r in published]
    rows += [_run_row(r) for r in sorted(runs, key=lambda r: r.name)]
    rows += [
        {**_ids(f), "status": FAILED, "failure_reason": f.reason}
        for f in sorted(failures, key=lambda f: f.name)
    ]
    frame = pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
    for column in _COUNT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    numeric = [c for c in GROUP_COLUMNS if c not in (*_TEXT_COLUMNS, *_COUNT_COLUMNS)]
    frame[numeric] = frame[numeric].astype("float64")
    return GroupTable(frame)


_TEXT_COLUMNS = (
    "participant_id",
    "session_id",
    "echo_set",
    "datatype",
    "task",
    "run",
    "noise_caveat",
    "status",
    "failure_reason",
)
_COUNT_COLUMNS = ("n_voxels", "n_echoes", "n_volumes", "best_echo")
