"""The group page: per-participant median T2* by session, failed fractions, outliers, and
the echo sets that failed.

Built from the group table (:class:`t2starmap.bids.summary.GroupTable`, made from the records of
every published set and the failure records of every set that failed), so it covers every
participant output in the folder, whichever runs wrote them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from t2starmap.bids.atomic import write_text
from t2starmap.bids.summary import GroupTable
from t2starmap.report import figures
from t2starmap.report.charts import fraction_bars_png
from t2starmap.report.html import Figure, render
from t2starmap.report.participant import page_name

log = logging.getLogger("t2starmap.report")

GROUP_REPORT = "group_report.html"
#: |robust z| above this flags an outlier (Iglewicz & Hoaglin's modified z-score cut-off).
ROBUST_Z_THRESHOLD = 3.5
#: A failed fraction is only flagged when it is also above this (a z-score on a column of
#: near-zeros flags trivial differences).
FAILED_FLOOR = 0.01
#: Fewer echo sets than this: no outliers are flagged (median and MAD mean little).
MIN_ROWS = 3


def robust_z(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Modified z-score 0.6745 (x - median) / MAD, NaN-aware.

    When the MAD is 0 (more than half the values equal), the mean absolute deviation scaled
    by 1.2533 stands in for it; when that is 0 too, every value is the median and z is 0.
    """
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.full(x.shape, np.nan)
    median = np.median(finite)
    mad = np.median(np.abs(finite - median))
    if mad > 0:
        return 0.6745 * (x - median) / mad
    mean_ad = np.mean(np.abs(finite - median))
    if mean_ad > 0:
        return (x - median) / (1.253314 * mean_ad)
    return np.where(np.isfinite(x), 0.0, np.nan)


def flag_outliers(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Robust z of median T2* and of the failed fraction per row (published sets), and why
    each row is flagged ("" when it is not)."""
    t2 = frame["t2star_median"].to_numpy(dtype=np.float64)
    failed = frame["failed_fraction"].to_numpy(dtype=np.float64)
    z_t2, z_failed = robust_z(t2), robust_z(failed)
    reasons = []
    for i in range(len(frame)):
        why = []
        if len(frame) >= MIN_ROWS:
            if abs(z_t2[i]) > ROBUST_Z_THRESHOLD:
                why.append(f"median T2* (z = {z_t2[i]:+.1f})")
            if z_failed[i] > ROBUST_Z_THRESHOLD and failed[i] > FAILED_FLOOR:
                why.append(f"failed fraction (z = {z_failed[i]:+.1f})")
        reasons.append("; ".join(why))
    return z_t2, z_failed, reasons


def _number(value: object, factor: float = 1.0, spec: str = ".4g") -> str:
    try:
        number = float(value) * factor  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:{spec}}" if np.isfinite(number) else "n/a"


def _present(value: object) -> bool:
    return isinstance(value, str) and value not in ("", "n/a")


@dataclass(frozen=True)
class Row:
    """One echo set's row of the page's tables."""

    label: str
    link: str
    page_exists: bool
    cells: Sequence[str]
    flagged: bool


#: Columns of the page's tables after the linked label; all numeric.
HEADER = (
    "Voxels",
    "Median T2* (ms)",
    "IQR (ms)",
    "Failed (%)",
    "Misfit (%)",
    "Noise σ",
    "SNR",
    "z (T2*)",
)


@dataclass(frozen=True)
class ListedSet:
    """An echo set or run the group page lists with a reason: one that failed (``reason``, and
    whether an earlier run's maps are kept), or one whose noise sigma carries a caveat."""

    label: str
    link: str
    page_exists: bool
    reason: str
    earlier_kept: bool


def _label(record: Mapping[str, Any]) -> str:
    return " ".join(
        [
            str(record["participant_id"]),
            *(str(record[k]) for k in ("session_id", "echo_set") if _present(record[k])),
        ]
    )


def _page_of(record: Mapping[str, Any]) -> str:
    session = record["session_id"] if _present(record["session_id"]) else None
    return page_name(
        str(record["participant_id"]).removeprefix("sub-"),
        str(session).removeprefix("ses-") if session else None,
    )


def _failed_rows(table: GroupTable, output_dir: Path) -> list[ListedSet]:
    published = {_label(r) for r in table.published.to_dict("records")}
    return [
        ListedSet(
            _label(r),
            _page_of(r),
            (output_dir / _page_of(r)).exists(),
            str(r["failure_reason"]),
            _label(r) in published,
        )
        for r in table.failed.to_dict("records")
    ]


def _fit_cells(record: Mapping[str, Any]) -> list[str]:
    """The cells every published set and run has: voxels, median and IQR of T2* (ms), the
    failed and the misfit shares (%)."""
    return [
        str(record["n_voxels"]),
        _number(record["t2star_median"], 1e3, ".1f"),
        _number(record["t2star_iqr"], 1e3, ".1f"),
        _number(record["failed_fraction"], 100, ".2f"),
        _number(record["misfit_fraction"], 100, ".2f"),
    ]


def _rows(frame: pd.DataFrame, output_dir: Path) -> tuple[list[Row], np.ndarray]:
    """The table rows of the published sets, and which are T2* outliers (|z| above the
    threshold, with enough sets)."""
    return _flagged_rows(
        frame,
        output_dir,
        lambda record: [
            *_fit_cells(record),
            _number(record["noise_sigma"], spec=".4g")
            + (" (caveat)" if _present(record["noise_caveat"]) else ""),
            _number(record["snr"], spec=".3g"),
        ],
    )


def _caveats(frame: pd.DataFrame, output_dir: Path) -> list[ListedSet]:
    """The published echo sets whose noise sigma carries a caveat, with it."""
    return [
        ListedSet(_label(r), _page_of(r), (output_dir / _page_of(r)).exists(), str(c), False)
        for r in frame.to_dict("records")
        if _present(c := r["noise_caveat"])
    ]


def _flagged_rows(
    frame: pd.DataFrame, output_dir: Path, cells_of: Callable[[Mapping[str, Any]], list[str]]
) -> tuple[list[Row], np.ndarray]:
    """Rows of ``frame`` (``cells_of`` each record, then its robust z of median T2* and why it
    is flagged), flagged among the rows of ``frame`` alone; and which are T2* outliers."""
    z_t2, _, reasons = flag_outliers(frame)
    rows = []
    for record, z, reason in zip(frame.to_dict("records"), z_t2, reasons, strict=True):
        cells = [*cells_of(record), f"{z:+.2f}" if np.isfinite(z) else "n/a", reason or "-"]
        name = _page_of(record)
        rows.append(Row(_label(record), name, (output_dir / name).exists(), cells, bool(reason)))
    enough = len(frame) >= MIN_ROWS
    return rows, enough & (np.nan_to_num(np.abs(z_t2), nan=0.0) > ROBUST_Z_THRESHOLD)


def _strip(frame: pd.DataFrame, t2_outlier: np.ndarray, column: str, absent: str) -> bytes:
    """The box plot of the rows' median T2* (ms), grouped by ``column`` (rows without a value:
    ``absent``; one group "all" when no row has one), T2* outliers as red diamonds."""
    grouped = any(_present(s) for s in frame[column])
    groups: dict[str, list[float]] = {}
    flagged: dict[str, list[bool]] = {}
    for record, outlier in zip(frame.to_dict("records"), t2_outlier, strict=True):
        key = (record[column] if _present(record[column]) else absent) if grouped else "all"
        groups.setdefault(key, []).append(float(record["t2star_median"]) * 1e3)
        flagged.setdefault(key, []).append(bool(outlier))
    return figures.group_strip_png(groups, flagged)


def _plots(frame: pd.DataFrame, rows: list[Row], t2_outlier: np.ndarray) -> list[Figure]:
    """The box plot of median T2* (T2* outliers as red diamonds) and the failed fractions."""
    has_sessions = any(_present(s) for s in frame["session_id"])
    strip = _strip(frame, t2_outlier, "session_id", "no session")
    bars = fraction_bars_png(
        [r.label for r in rows],
        frame["failed_fraction"].to_numpy(dtype=np.float64).tolist(),
        frame["misfit_fraction"].to_numpy(dtype=np.float64).tolist(),
    )
    return [
        Figure(
            figures.data_uri(strip),
            "median T2* per echo set",
            "Median T2* within the signal mask, one point per echo set"
            + (", by session" if has_sessions else "")
            + f"; boxes: quartiles; the axis starts at 0 ms. Red diamonds: T2* outliers, sets "
            f"whose median T2* has a robust z-score beyond ±{ROBUST_Z_THRESHOLD:g} (sets "
            "flagged only for their failed fraction are not marked here).",
        ),
        Figure(
            figures.data_uri(bars),
            "failed and misfit fractions per echo set",
            "Fractions of signal-mask voxels whose fit failed (red: no usable estimate) and "
            "whose decay does not follow the model (orange: misfit, an estimate exists with an "
            "inflated standard error; counted apart from failures)"
            + (
                f" (the {figures.MAX_BARS} highest of {len(rows)} echo sets)."
                if len(rows) > figures.MAX_BARS
                else "."
            ),
        ),
    ]


#: Columns of the page's table of BOLD runs after the linked label.
RUN_HEADER = (
    "Echoes",
    "Volumes",
    "Voxels",
    "Median T2* (ms)",
    "IQR (ms)",
    "Failed (%)",
    "Misfit (%)",
    "tSNR optcom",
    "tSNR best echo",
    "Ratio",
    "z (T2*)",
)


def _is_run(frame: pd.DataFrame) -> np.ndarray:
    """Rows of BOLD runs (``datatype`` func); the rest are MEGRE echo sets."""
    if "datatype" not in frame:
        return np.zeros(len(frame), dtype=bool)
    return (frame["datatype"] == "func").to_numpy(dtype=bool)


def _run_rows(frame: pd.DataFrame, output_dir: Path) -> tuple[list[Row], np.ndarray]:
    """The rows of the published BOLD runs, flagged among the runs alone (a BOLD run's T2*
    is not comparable with a MEGRE set's: other echo times, resolution, tissue), and which
    are T2* outliers."""

    def cells_of(record: Mapping[str, Any]) -> list[str]:
        best = record["best_echo"]
        return [
            _number(record["n_echoes"], spec=".0f"),
            _number(record["n_volumes"], spec=".0f"),
            *_fit_cells(record),
            _number(record["tsnr_optcom"], spec=".1f"),
            _number(record["tsnr_best_echo"], spec=".1f")
            + (f" (echo {int(best)})" if _number(best) != "n/a" else ""),
            _number(record["tsnr_ratio"], spec=".2f"),
        ]

    return _flagged_rows(frame, output_dir, cells_of)


def _run_plot(frame: pd.DataFrame, t2_outlier: np.ndarray) -> Figure:
    """The box plot of the runs' median T2*, by task."""
    return Figure(
        figures.data_uri(_strip(frame, t2_outlier, "task", "no task")),
        "median T2* per BOLD run",
        "Median T2* over the voxels of each BOLD run whose fit did not fail, one point per run, "
        "by task; boxes: quartiles; the axis starts at 0 ms. Red diamonds: T2* outliers among "
        f"the runs (robust z-score beyond ±{ROBUST_Z_THRESHOLD:g}).",
    )


def group_page(table: GroupTable, output_dir: Path) -> str:
    """The group report's HTML. Links point at participant pages beside it."""
    published = table.published.reset_index(drop=True)
    is_run = _is_run(published)
    frame = published[~is_run].reset_index(drop=True)
    run_frame = published[is_run].reset_index(drop=True)
    runs, run_outlier = _run_rows(run_frame, output_dir)
    rows, t2_outlier = _rows(frame, output_dir)
    plots = _plots(frame, rows, t2_outlier) if rows else []
    return render(
        "group.html",
        title="T2* group report · t2starmap",
        rows=rows,
        failed=_failed_rows(table, output_dir),
        caveats=_caveats(frame, output_dir),
        header=HEADER,
        plots=plots,
        runs=runs,
        run_header=RUN_HEADER,
        run_plot=_run_plot(run_frame, run_outlier) if runs else None,
        runs_enough=len(runs) >= MIN_ROWS,
        failed_heading=(
            "Echo sets and BOLD runs that failed"
            if _is_run(table.failed).any()
            else "Echo sets that failed"
        ),
        n_participants=table.frame["participant_id"].nunique(),
        enough=len(rows) >= MIN_ROWS,
        min_rows=MIN_ROWS,
        threshold=f"{ROBUST_Z_THRESHOLD:g}",
        failed_floor=f"{100 * FAILED_FLOOR:g}",
    )


def write_group_report(output_dir: Path, table: GroupTable) -> Path:
    """Write ``OUTPUT_DIR/group_report.html`` from the group table; return its path."""
    target = Path(output_dir) / GROUP_REPORT
    write_text(target, group_page(table, Path(output_dir)))
    log.info("group report: %s", target)
    return target
