"""Group page: robust z-scores, outlier flags, links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from report_helpers import assert_self_contained, parse

from t2starmap.report import group


def rows(
    medians: list[float], failed: list[float] | None = None, sessions: list[str] | None = None
) -> list[dict[str, str]]:
    failed = failed or [0.0] * len(medians)
    sessions = sessions or ["n/a"] * len(medians)
    return [
        {
            "participant_id": f"sub-{i:02d}",
            "session_id": s,
            "echo_set": "n/a",
            "n_voxels": "500",
            "failed_fraction": f"{f}",
            "t2star_median": f"{m}",
            "t2star_iqr": "0.01",
            "noise_sigma": "10",
            "snr": "50",
        }
        for i, (m, f, s) in enumerate(zip(medians, failed, sessions, strict=True), start=1)
    ]


def test_robust_z_values() -> None:
    z = group.robust_z([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, MAD 1
    assert np.allclose(z[:4], 0.6745 * np.array([-2, -1, 0, 1]))
    assert z[4] == pytest.approx(0.6745 * 97)


def test_robust_z_special_cases() -> None:
    assert np.array_equal(group.robust_z([5.0, 5.0, 5.0]), [0.0, 0.0, 0.0])
    mad_zero = group.robust_z([0.0, 0.0, 0.0, 0.0, 1.0])  # MAD 0: mean absolute deviation
    assert mad_zero[-1] == pytest.approx(1 / (1.253314 * 0.2))
    with_nan = group.robust_z([1.0, np.nan, 2.0, 3.0])
    assert np.isnan(with_nan[1]) and np.isfinite(with_nan[[0, 2, 3]]).all()
    assert np.isnan(group.robust_z([np.nan])).all()


def test_outliers_flagged() -> None:
    medians = [0.020, 0.021, 0.022, 0.0215, 0.0205, 0.045, 0.0212]
    failed = [0.0, 0.0, 0.0, 0.30, 0.001, 0.0, 0.0]
    _, _, reasons = group.flag_outliers(rows(medians, failed))
    assert "median T2*" in reasons[5]
    assert "failed fraction" in reasons[3]
    assert reasons[4] == ""  # tiny failed fractions are not flagged, whatever their z
    assert sum(bool(r) for r in reasons) == 2


def test_too_few_rows_flag_nothing() -> None:
    _, _, reasons = group.flag_outliers(rows([0.02, 0.5]))
    assert reasons == ["", ""]


def test_group_page(tmp_path: Path) -> None:
    table = rows([0.020, 0.021, 0.022, 0.045], sessions=["ses-1", "ses-2", "ses-1", "n/a"])
    (tmp_path / "sub-01_ses-1.html").write_text("x")
    text = group.group_page(table, tmp_path)
    found = assert_self_contained(text)
    assert len(found.images) == 2
    assert found.links == [
        "sub-01_ses-1.html",
        "sub-02_ses-2.html",
        "sub-03_ses-1.html",
        "sub-04.html",
    ]
    assert text.count("(page missing)") == 3
    assert "exceeds 3.5" in text and "by session" in text
    assert "1 of 4 echo set(s) flagged." in text
    assert 'class="flag"' in text


def test_write_group_report_reads_the_table(tmp_path: Path) -> None:
    header = "participant_id\tsession_id\techo_set\tn_voxels\tfailed_fraction\tt2star_median"
    (tmp_path / "group_T2starmap.tsv").write_text(
        header + "\nsub-01\tn/a\tn/a\t10\t0\t0.02\nsub-02\tn/a\tn/a\t10\tn/a\tn/a\n"
    )
    page = group.write_group_report(tmp_path, tmp_path / "group_T2starmap.tsv")
    text = page.read_text(encoding="utf-8")
    assert page.name == "group_report.html"
    assert [a for a in parse(text).links] == ["sub-01.html", "sub-02.html"]
    assert "none flagged" in text
    assert "nan" not in text.lower().replace("nanum", "")  # n/a cells stay n/a
