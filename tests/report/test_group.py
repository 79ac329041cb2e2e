"""Group page: robust z-scores, outlier flags, links."""

from __future__ import annotations

import io
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from t2starmap.bids.summary import GROUP_COLUMNS, GroupTable
from t2starmap.report import figures, group
from tests.report.helpers import assert_self_contained, parse


def rows(
    medians: list[float], failed: list[float] | None = None, sessions: list[str] | None = None
) -> GroupTable:
    failed = failed or [0.0] * len(medians)
    sessions = sessions or ["n/a"] * len(medians)
    frame = pd.DataFrame(
        [
            {
                "participant_id": f"sub-{i:02d}",
                "session_id": s if s != "n/a" else np.nan,
                "echo_set": np.nan,
                "n_voxels": 500,
                "failed_fraction": f,
                "t2star_median": m,
                "t2star_iqr": 0.01,
                "noise_sigma": 10.0,
                "snr": 50.0,
                "status": "published",
            }
            for i, (m, f, s) in enumerate(zip(medians, failed, sessions, strict=True), start=1)
        ],
        columns=list(GROUP_COLUMNS),
    )
    return GroupTable(frame)


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
    _, _, reasons = group.flag_outliers(rows(medians, failed).frame)
    assert "median T2*" in reasons[5]
    assert "failed fraction" in reasons[3]
    assert reasons[4] == ""  # tiny failed fractions are not flagged, whatever their z
    assert sum(bool(r) for r in reasons) == 2


def test_too_few_rows_flag_nothing() -> None:
    _, _, reasons = group.flag_outliers(rows([0.02, 0.5]).frame)
    assert reasons == ["", ""]


def test_group_page(tmp_path: Path) -> None:
    table = rows([0.020, 0.021, 0.022, 0.045], sessions=["ses-1", "ses-2", "ses-1", "n/a"])
    (tmp_path / "sub-01_ses-1.html").write_text("x")
    text = group.group_page(table, tmp_path)
    found = assert_self_contained(text)
    assert len(found.images) == 2
    # the flagged set first, in its own table, then every set
    assert found.links == [
        "sub-04.html",
        "sub-01_ses-1.html",
        "sub-02_ses-2.html",
        "sub-03_ses-1.html",
        "sub-04.html",
    ]
    assert text.count("(page missing)") == 4
    assert text.index("<h2>Distributions") < text.index("<h2>Outliers") < text.index("<details")
    assert "exceeds 3.5" in text and "by session" in text
    assert "1 of 4 echo set(s) flagged." in text
    assert 'class="flag"' in text


def test_missing_values_are_shown_as_n_a(tmp_path: Path) -> None:
    table = rows([0.02, np.nan], failed=[0.0, np.nan])
    page = group.write_group_report(tmp_path, table)
    text = page.read_text(encoding="utf-8")
    assert page.name == "group_report.html"
    assert [a for a in parse(text).links] == ["sub-01.html", "sub-02.html"]
    assert "none flagged" in text
    cells = table_cells(text)
    second = next(row for row in cells if row[0].startswith("sub-02"))
    assert second[2:5] == ["n/a", "10.0", "n/a"]  # median T2*, IQR, failed: n/a, not "nan"
    assert all("nan" not in cell.lower() for row in cells for cell in row)


def table_cells(text: str) -> list[list[str]]:
    """The text of every data row's cells in the page's tables."""
    found: list[list[str]] = []

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag == "tr":
                found.append([])
            if tag == "td":
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag == "td" and self.cell is not None:
                found[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    Cells().feed(text)
    return [row for row in found if row]


def test_a_study_of_1000_opens_with_the_plots_and_folds_the_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    medians = list(0.02 + 0.002 * rng.standard_normal(1000))
    medians[17] = 0.06
    text = group.group_page(rows(medians), tmp_path)
    assert text.index("<h2>Distributions") < text.index("<h2>Outliers") < text.index("<details")
    assert "<details>" in text  # folded (not open) at this size
    assert "the 40 highest of 1000 echo sets" in text
    assert len(text) < 3_000_000


def test_only_t2star_outliers_get_a_diamond_on_the_t2star_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set flagged for its failed fraction alone is listed as flagged, but its median T2*
    is ordinary: no red diamond on the T2* box plot."""
    drawn: dict[str, object] = {}

    def capture(groups: object, flagged: object = None, **kwargs: object) -> bytes:
        drawn["flagged"] = flagged
        return figures.to_png(figures.Figure(figsize=(1, 1)))

    monkeypatch.setattr(figures, "group_strip_png", capture)
    medians = [0.020, 0.021, 0.022, 0.0215, 0.0205, 0.045, 0.0212]
    failed = [0.0, 0.0, 0.0, 0.30, 0.001, 0.0, 0.0]
    text = group.group_page(rows(medians, failed), tmp_path)
    assert "2 of 7 echo set(s) flagged." in text
    assert drawn["flagged"] == {"all": [False, False, False, False, False, True, False]}


def test_noise_sigma_is_shown_to_4_significant_digits(tmp_path: Path) -> None:
    table = rows([0.02, 0.021])
    table.frame["noise_sigma"] = [16.476712, 1234.5678]
    cells = table_cells(group.group_page(table, tmp_path))
    assert [row[6] for row in cells] == ["16.48", "1235"]


def test_a_sigma_with_a_caveat_is_marked_and_listed_with_its_reason(tmp_path: Path) -> None:
    """Issue 27: a set whose noise sigma the data could not separate says so on the group
    page too: "(caveat)" beside its sigma, and a list of such sets with the reason."""
    table = rows([0.02, 0.021, 0.022])
    reason = "magnitude only: 31 % of the residual variance changes with the signal"
    table.frame["noise_caveat"] = [np.nan, reason, np.nan]
    text = group.group_page(table, tmp_path)
    assert [row[6] for row in table_cells(text) if len(row) > 6] == ["10", "10 (caveat)", "10"]
    assert "Noise σ with a caveat" in text and "1 echo set(s)" in text
    listed = text.split("Noise σ with a caveat")[1]
    assert reason in listed and "sub-02" in listed and "sub-01" not in listed


def test_no_caveat_no_list(tmp_path: Path) -> None:
    assert "with a caveat" not in group.group_page(rows([0.02, 0.021]), tmp_path)


def test_the_echo_set_table_gives_misfit_beside_failed(tmp_path: Path) -> None:
    """Issue 27: the table says how much of each set is misfit, in its own column, in %."""
    table = rows([0.02, 0.021], failed=[0.001, 0.0])
    table.frame["misfit_fraction"] = [0.4215, np.nan]
    cells = table_cells(group.group_page(table, tmp_path))
    assert [row[4:6] for row in cells] == [["0.10", "42.15"], ["0.00", "n/a"]]


def test_the_box_plot_axis_starts_at_zero() -> None:
    """A 0.6 ms spread around 25 ms must look small: the axis runs from 0, not from 24 ms."""
    fig = figures.group_strip_figure({"all": [24.3, 24.9, 24.6]})
    low, high = fig.axes[0].get_ylim()
    assert low == 0.0 and 25.0 < high < 30.0
    assert figures.strip_limits(np.array([24.3, 24.9])) == (0.0, pytest.approx(1.12 * 24.9))


def test_failed_sets_are_rows_of_the_table_and_a_table_of_the_page(tmp_path: Path) -> None:
    from t2starmap.bids.records import SetFailure
    from t2starmap.bids.summary import group_table

    from .helpers import synthetic_output

    record = synthetic_output(tmp_path / "a", subject="01")
    failure = SetFailure(
        {"subject": "02", "session": "2"},
        "/data/sub-02_ses-2_echo-8_part-mag_MEGRE.nii.gz: image data could not be read",
        65,
        "BadDataError",
        "sub-02/ses-2/anat/sub-02_ses-2_echo-8_part-mag_MEGRE.nii.gz",
        "2026-12-02 10:00:00",
    )
    table = group_table([record], [failure])
    frame = table.frame
    assert list(frame["status"]) == ["published", "failed"]
    assert frame["failure_reason"].iloc[1].endswith("could not be read")
    assert pd.isna(frame["t2star_median"].iloc[1]) and pd.isna(frame["n_voxels"].iloc[1])
    tsv = table.write(tmp_path / "t.tsv").splitlines()
    assert tsv[0].endswith("\tstatus\tfailure_reason")
    assert tsv[2].startswith("sub-02\tses-2\tn/a\tn/a\t") and "\tfailed\t/data/" in tsv[2]
    text = group.group_page(table, tmp_path)
    assert "Echo sets that failed" in text and "echo-8_part-mag_MEGRE.nii.gz: image" in text
    assert "1 echo set(s) published, 1 failed" in text
    assert parse(text).links[0] == "sub-02_ses-2.html"
    assert len(table_cells(text)) == 2  # the failed set's row, then the published set's


def _fractions_uri(text: str) -> str:
    """The data URI of the failed-and-misfit chart."""
    import re

    found = re.search(r'<img src="([^"]+)" alt="failed and misfit fractions per echo set"', text)
    assert found, "no failed-and-misfit chart"
    return found.group(1)


def test_misfit_is_charted_beside_failed(tmp_path: Path) -> None:
    """Issue 27: misfit kept apart from failure on the group page too. The chart changes when
    only the misfit fractions change, and does not when misfit is a copy of nothing."""
    table = rows([0.02, 0.021, 0.022], failed=[0.01, 0.0, 0.02])
    plain = group.group_page(table, tmp_path)
    assert "whose decay does not follow the model" in plain
    frame = table.frame.copy()
    frame["misfit_fraction"] = [0.3, 0.05, 0.0]
    with_misfit = group.group_page(GroupTable(frame), tmp_path)
    assert _fractions_uri(with_misfit) != _fractions_uri(plain)
    frame["misfit_fraction"] = [0.0, 0.0, 0.0]
    assert _fractions_uri(group.group_page(GroupTable(frame), tmp_path)) == _fractions_uri(plain)


def test_fraction_chart_keeps_the_highest_sets() -> None:
    from matplotlib.image import imread

    from t2starmap.report.charts import fraction_bars_png

    n = figures.MAX_BARS + 10
    labels = [f"sub-{i:02d}" for i in range(n)]
    png = fraction_bars_png(labels, [0.01] * n, [0.001 * i for i in range(n)])
    few = fraction_bars_png(labels[:3], [0.01] * 3, [0.0] * 3)
    tall, short = imread(io.BytesIO(png)), imread(io.BytesIO(few))
    assert tall.shape[0] > short.shape[0]  # one bar pair per set, at most MAX_BARS
    assert (
        tall.shape[0]
        == imread(
            io.BytesIO(
                fraction_bars_png(
                    labels[: figures.MAX_BARS], [0.01] * figures.MAX_BARS, [0.0] * figures.MAX_BARS
                )
            )
        ).shape[0]
    )


def test_bold_runs_have_a_table_of_their_own(tmp_path: Path) -> None:
    table = rows([0.02, 0.021, 0.022])
    run = {
        "participant_id": "sub-09",
        "session_id": np.nan,
        "echo_set": "task-rest",
        "datatype": "func",
        "task": "rest",
        "n_echoes": 3,
        "n_volumes": 200,
        "n_voxels": 1000,
        "failed_fraction": 0.01,
        "misfit_fraction": 0.02,
        "t2star_median": 0.045,
        "t2star_iqr": 0.01,
        "tsnr_optcom": 61.5,
        "tsnr_best_echo": 50.2,
        "best_echo": 2,
        "tsnr_ratio": 1.225,
        "status": "published",
    }
    frame = pd.concat([table.frame, pd.DataFrame([run])], ignore_index=True)
    text = group.group_page(GroupTable(frame[list(GROUP_COLUMNS)]), tmp_path)
    assert "3 echo set(s) and 1 BOLD run(s) published" in text
    cells = table_cells(text)
    bold = [c for c in cells if c and c[0].startswith("sub-09")]
    assert bold == [
        [
            "sub-09 task-rest (page missing)",
            "3",
            "200",
            "1000",
            "45.0",
            "10.0",
            "1.00",
            "2.00",
            "61.5",
            "50.2 (echo 2)",
            "1.23",
            "+0.00",
            "-",
        ]
    ]
    # the run is not among the MEGRE outliers and distributions
    assert sum(1 for c in cells if c and c[0].startswith("sub-0")) == 3 + 1


def _with_runs(table: GroupTable, medians: Sequence[float], tasks: Sequence[str]) -> GroupTable:
    """``table`` with one published BOLD run per median T2* (s), of the given tasks."""
    runs = pd.DataFrame(
        [
            {
                "participant_id": f"sub-{20 + i}",
                "echo_set": f"task-{task}",
                "datatype": "func",
                "task": task,
                "n_echoes": 3,
                "n_volumes": 100,
                "n_voxels": 1000,
                "failed_fraction": 0.0,
                "misfit_fraction": 0.0,
                "t2star_median": median,
                "t2star_iqr": 0.01,
                "status": "published",
            }
            for i, (median, task) in enumerate(zip(medians, tasks, strict=True))
        ]
    )
    frame = pd.concat([table.frame, runs], ignore_index=True)
    return GroupTable(frame.reindex(columns=list(GROUP_COLUMNS)))


def test_bold_runs_are_flagged_among_runs_and_charted_by_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28: a run whose median T2* stands out among the runs is flagged and drawn as a
    red diamond on the runs' own box plot, by task; the MEGRE sets are compared among
    themselves (runs at 45 ms flag no MEGRE set at 20 ms, and the reverse)."""
    drawn: list[tuple[object, object]] = []
    real = figures.group_strip_png

    def capture(groups: object, flagged: object = None, **kwargs: object) -> bytes:
        drawn.append((groups, flagged))
        return real(groups, flagged, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(figures, "group_strip_png", capture)
    table = _with_runs(
        rows([0.020, 0.021, 0.022, 0.0215]),
        [0.045, 0.046, 0.044, 0.090, 0.0455],
        ["rest", "rest", "nback", "nback", "rest"],
    )
    text = group.group_page(table, tmp_path)
    assert "0 of 4 echo set(s) flagged." in text
    assert "1 of 5 run(s) flagged." in text
    cells = table_cells(text)
    flagged = [c for c in cells if c and c[0].startswith("sub-23") and c[-1] != "-"]
    assert flagged and flagged[0][-1].startswith("median T2* (z = +")
    assert 'alt="median T2* per BOLD run"' in text
    sets, runs = drawn
    assert runs == (
        {"rest": [45.0, 46.0, 45.5], "nback": [44.0, 90.0]},
        {"rest": [False, False, False], "nback": [False, True]},
    )
    assert sets[1] == {"all": [False] * 4}


def test_two_runs_flag_nothing(tmp_path: Path) -> None:
    table = _with_runs(rows([0.020, 0.021, 0.022]), [0.045, 0.090], ["rest", "rest"])
    assert "Only 2 run(s): outliers need at least 3, none flagged." in group.group_page(
        table, tmp_path
    )
