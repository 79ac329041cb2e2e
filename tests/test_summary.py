"""Group-level numbers: the per-set statistics kept in the records, and the group table."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from t2starmap.bids.records import PublishedSet, SetStatistics, Source
from t2starmap.bids.summary import GROUP_COLUMNS, group_table, set_statistics


def record(
    subject: str, session: str | None, stats: SetStatistics, sigma: float | None
) -> PublishedSet:
    entities = {"subject": subject, **({"session": session} if session else {}), "run": "1"}
    return PublishedSet(
        entities=entities,
        files={},
        sources=(Source("x.nii.gz", 0.005),),
        n_voxels=100,
        failed_fraction=0.25,
        noise_sigma=sigma,
        noise_model="rician",
        noise_coils=1.0,
        noise_method="given",
        status_counts={},
        fit_method="nlls",
        algorithm="",
        device="cpu",
        statistics=stats,
    )


def test_statistics_of_the_good_voxels_only() -> None:
    t2 = np.array([0.01, 0.02, 0.03, 0.04, 9.0])
    good = np.array([True, True, True, True, False])
    stats = set_statistics(t2, 1.0 / t2, np.array([10.0, 20.0, 30.0, 40.0, 1e9]), good)
    assert stats.t2star == (0.0175, 0.025, 0.0325)
    assert stats.r2star is not None and stats.r2star[1] == np.median(1.0 / t2[:4])
    assert stats.s0_median == 25.0
    assert set_statistics(t2, t2, t2, np.zeros(5, bool)) == SetStatistics()


def test_group_table_one_row_per_set_with_na_where_unknown(tmp_path: Path) -> None:
    full = SetStatistics((0.02, 0.03, 0.05), (20.0, 33.0, 50.0), 600.0)
    table = group_table([record("01", None, full, 20.0), record("02", "b", SetStatistics(), None)])
    frame = table.frame
    assert list(frame.columns) == list(GROUP_COLUMNS)
    assert frame["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert frame["echo_set"].tolist() == ["run-1", "run-1"]
    assert frame.loc[0, "t2star_iqr"] == 0.05 - 0.02 and frame.loc[0, "snr"] == 30.0
    assert np.isnan(frame.loc[1, "snr"]) and np.isnan(frame.loc[1, "t2star_median"])
    text = table.write(tmp_path / "group.tsv")
    back = pd.read_csv(io.StringIO(text), sep="\t", na_values="n/a")
    assert back["session_id"].isna()[0] and back["session_id"][1] == "ses-b"
    assert back["noise_sigma"].isna()[1] and back["n_voxels"].dtype.kind == "i"
    assert "\tn/a\t" in text.splitlines()[2]


def test_the_noise_caveat_reaches_the_group_table(tmp_path: Path) -> None:
    """Issue 27: a set's caveat on its noise sigma is a column of the group table."""
    flagged = replace(record("01", None, SetStatistics(), 20.0), noise_caveat="ghosts; off")
    table = group_table([flagged, record("02", None, SetStatistics(), 20.0)])
    back = pd.read_csv(io.StringIO(table.write(tmp_path / "g.tsv")), sep="\t", na_values="n/a")
    assert back["noise_caveat"][0] == "ghosts; off" and back["noise_caveat"].isna()[1]
