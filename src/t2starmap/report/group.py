"""The group page: per-participant median T2* by session, failed fractions, outliers.

Built from the group table (:class:`t2starmap.summary.GroupTable`, made from the records of
every published set), so it covers every participant output in the folder, whichever runs
wrote them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from t2starmap.atomic import write_text
from t2starmap.report import figures
from t2starmap.report.html import Figure, render
from t2starmap.report.participant import page_name
from t2starmap.summary import GroupTable

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
    """Robust z of median T2* and of the failed fraction per row, and why each row is flagged
    ("" when it is not)."""
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
HEADER = ("Voxels", "Median T2* (ms)", "IQR (ms)", "Failed (%)", "Noise σ", "SNR", "z (T2*)")


def group_page(table: GroupTable, output_dir: Path) -> str:
    """The group report's HTML. Links point at participant pages beside it."""
    frame = table.frame
    z_t2, _, reasons = flag_outliers(frame)
    records = frame.to_dict("records")
    has_sessions = any(_present(r["session_id"]) for r in records)
    groups: dict[str, list[float]] = {}
    flagged: dict[str, list[bool]] = {}
    rows = []
    for record, z, reason in zip(records, z_t2, reasons, strict=True):
        session = record["session_id"] if _present(record["session_id"]) else None
        key = (session or "no session") if has_sessions else "all"
        groups.setdefault(key, []).append(float(record["t2star_median"]) * 1e3)
        flagged.setdefault(key, []).append(bool(reason))
        label = " ".join(
            [
                record["participant_id"],
                *(record[k] for k in ("session_id", "echo_set") if _present(record[k])),
            ]
        )
        name = page_name(
            str(record["participant_id"]).removeprefix("sub-"),
            session.removeprefix("ses-") if session else None,
        )
        cells = [
            str(record["n_voxels"]),
            _number(record["t2star_median"], 1e3, ".1f"),
            _number(record["t2star_iqr"], 1e3, ".1f"),
            _number(record["failed_fraction"], 100, ".2f"),
            _number(record["noise_sigma"], spec=".6g"),
            _number(record["snr"]),
            f"{z:+.2f}" if np.isfinite(z) else "n/a",
            reason or "-",
        ]
        rows.append(Row(label, name, (output_dir / name).exists(), cells, bool(reason)))
    strip = figures.group_strip_png(groups, flagged)
    bars = figures.failed_bar_png(
        [r.label for r in rows], frame["failed_fraction"].to_numpy(dtype=np.float64).tolist()
    )
    plots = [
        Figure(
            figures.data_uri(strip),
            "median T2* per echo set",
            "Median T2* within the signal mask, one point per echo set"
            + (", by session" if has_sessions else "")
            + "; boxes: quartiles; red diamonds: flagged.",
        ),
        Figure(
            figures.data_uri(bars),
            "failed fraction per echo set",
            "Fraction of signal-mask voxels whose fit failed"
            + (
                f" (the {figures.MAX_BARS} highest of {len(rows)} echo sets)."
                if len(rows) > figures.MAX_BARS
                else "."
            ),
        ),
    ]
    return render(
        "group.html",
        title="T2* group report · t2starmap",
        rows=rows,
        header=HEADER,
        plots=plots,
        n_participants=frame["participant_id"].nunique(),
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
