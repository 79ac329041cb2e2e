"""The group page: per-participant median T2* by session, failed fractions, outliers.

Built from ``group_T2starmap.tsv`` alone, so it covers every participant output in the folder,
whichever runs wrote them.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from t2starmap import __version__
from t2starmap.atomic import write_text
from t2starmap.report import figures
from t2starmap.report.html import esc, figure, page, table
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


def read_group_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "n/a") else float("nan")
    except ValueError:
        return float("nan")


def flag_outliers(rows: Sequence[Mapping[str, str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Robust z of median T2* and of the failed fraction per row, and why each row is flagged
    ("" when it is not)."""
    t2 = np.array([_number(r.get("t2star_median")) for r in rows])
    failed = np.array([_number(r.get("failed_fraction")) for r in rows])
    z_t2, z_failed = robust_z(t2), robust_z(failed)
    reasons = []
    for i in range(len(rows)):
        why = []
        if len(rows) >= MIN_ROWS:
            if abs(z_t2[i]) > ROBUST_Z_THRESHOLD:
                why.append(f"median T2* (z = {z_t2[i]:+.1f})")
            if z_failed[i] > ROBUST_Z_THRESHOLD and failed[i] > FAILED_FLOOR:
                why.append(f"failed fraction (z = {z_failed[i]:+.1f})")
        reasons.append("; ".join(why))
    return z_t2, z_failed, reasons


def _scaled(text: str | None, factor: float, spec: str) -> str:
    value = _number(text) * factor
    return f"{value:{spec}}" if np.isfinite(value) else "n/a"


def _row_label(row: Mapping[str, str]) -> str:
    parts = [row.get("participant_id", "?")]
    for key in ("session_id", "echo_set"):
        if row.get(key) not in (None, "", "n/a"):
            parts.append(row[key])
    return " ".join(parts)


def group_page(rows: Sequence[Mapping[str, str]], output_dir: Path) -> str:
    """The group report's HTML. Links point at participant pages beside it."""
    z_t2, _, reasons = flag_outliers(rows)
    t2_ms = np.array([_number(r.get("t2star_median")) * 1e3 for r in rows])
    sessions = [r.get("session_id", "n/a") for r in rows]
    has_sessions = any(s not in ("", "n/a") for s in sessions)
    groups: dict[str, list[float]] = {}
    flagged: dict[str, list[bool]] = {}
    for value, session, reason in zip(t2_ms, sessions, reasons, strict=True):
        name = (session if session not in ("", "n/a") else "no session") if has_sessions else "all"
        groups.setdefault(name, []).append(float(value))
        flagged.setdefault(name, []).append(bool(reason))
    strip = figures.group_strip_png(groups, flagged)
    labels = [_row_label(r) for r in rows]
    bars = figures.failed_bar_png(labels, [_number(r.get("failed_fraction")) for r in rows])

    table_rows = []
    classes = []
    for row, z, reason in zip(rows, z_t2, reasons, strict=True):
        subject = (row.get("participant_id") or "sub-?").removeprefix("sub-")
        session_id = row.get("session_id") or "n/a"
        label = None if session_id == "n/a" else session_id.removeprefix("ses-")
        name = page_name(subject, label)
        link = f'<a href="{esc(name)}">{esc(_row_label(row))}</a>'
        if not (output_dir / name).exists():
            link += " (page missing)"
        table_rows.append(
            [
                link,
                row.get("n_voxels", ""),
                _scaled(row.get("t2star_median"), 1e3, ".1f"),
                _scaled(row.get("t2star_iqr"), 1e3, ".1f"),
                _scaled(row.get("failed_fraction"), 100, ".2f"),
                row.get("noise_sigma", "n/a"),
                row.get("snr", "n/a"),
                f"{z:+.2f}" if np.isfinite(z) else "n/a",
                reason or "-",
            ]
        )
        classes.append("flag" if reason else "")
    n_flagged = sum(bool(r) for r in reasons)
    summary = (
        f"{n_flagged} of {len(rows)} echo set(s) flagged."
        if len(rows) >= MIN_ROWS
        else f"Only {len(rows)} echo set(s): outliers need at least {MIN_ROWS}, none flagged."
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        "<h1>T2* group report</h1>\n"
        f'<p class="meta">t2starmap {esc(__version__)}, {esc(stamp)}; {len(rows)} echo set(s) '
        f"from {len({r.get('participant_id') for r in rows})} participant(s), read from "
        "group_T2starmap.tsv.</p>\n"
        "<h2>Outliers</h2>\n"
        f"<p>An echo set is flagged when the robust z-score of its median T2* exceeds "
        f"{ROBUST_Z_THRESHOLD:g} in absolute value, or that of its failed fraction exceeds "
        f"{ROBUST_Z_THRESHOLD:g} with more than {100 * FAILED_FLOOR:g} % of voxels failed. "
        "Robust z = 0.6745 (x − median) / MAD over all echo sets (sessions pooled). "
        f"{esc(summary)}</p>\n"
        + table(
            [
                "Echo set (report)",
                "Voxels",
                "Median T2* (ms)",
                "IQR (ms)",
                "Failed (%)",
                "Noise σ",
                "SNR",
                "z (T2*)",
                "Flagged for",
            ],
            table_rows,
            numeric=[False, True, True, True, True, True, True, True, False],
            row_classes=classes,
            raw_columns=(0,),
        )
        + '\n<h2>Distributions</h2>\n<div class="pair">'
        + figure(
            figures.data_uri(strip),
            "median T2* per echo set",
            "Median T2* within the signal mask, one point per echo set"
            + (", by session" if has_sessions else "")
            + "; boxes: quartiles; red diamonds: flagged.",
        )
        + figure(
            figures.data_uri(bars),
            "failed fraction per echo set",
            "Fraction of signal-mask voxels whose fit failed.",
        )
        + "</div>"
    )
    return page("T2* group report · t2starmap", body)


def write_group_report(output_dir: Path, table_path: Path) -> Path:
    """Write ``OUTPUT_DIR/group_report.html`` from the group table; return its path."""
    rows = read_group_table(table_path)
    target = Path(output_dir) / GROUP_REPORT
    write_text(target, group_page(rows, Path(output_dir)))
    log.info("group report: %s", target)
    return target
