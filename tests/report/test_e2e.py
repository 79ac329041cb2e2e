"""The reports as the command line writes them for the bundled example (two participant runs
merged into one output folder, then the group level)."""

from __future__ import annotations

import re
from pathlib import Path

from t2starmap.cli.run import main
from tests.report.helpers import assert_self_contained

PARTICIPANT_PAGES = ("sub-01.html", "sub-02_ses-1.html", "sub-02_ses-2.html")


def test_participant_pages(demo_output: Path) -> None:
    for name in PARTICIPANT_PAGES:
        text = (demo_output / name).read_text(encoding="utf-8")
        found = assert_self_contained(text)
        # the fit-status map, 7 montages (T2*, R2*, S0, RMSE, chi-square, SE, echo 1),
        # histogram, decay curves
        assert len(found.images) == 10, name
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), name
        title = name.removesuffix(".html").replace("_", " ")
        assert f"<h1>{title}: T2* quality report</h1>" in text
        for needle in (
            "3, 7.5, 12, 16.5, 21, 25.5, 30, 34.5 (8 echoes)",
            "3 T",
            "Siemens Simulated",
            "2 × 2 × 2",
            "nlls: Noise-aware least squares",
            "(background-quantiles, coils 1)",
            '<th scope="row">Compute device</th><td>cpu</td>',
            "fixed window 0–100 ms",
            "No warnings were raised.",
            "fit-status map",
            "Fit failed (no usable estimate)",
            "Decay not following the model (estimate kept, SE inflated)",
        ):
            assert needle in text, (name, needle)


def test_group_page_links_every_participant(demo_output: Path) -> None:
    text = (demo_output / "group_report.html").read_text(encoding="utf-8")
    found = assert_self_contained(text)
    assert found.links == list(PARTICIPANT_PAGES)
    assert all((demo_output / link).is_file() for link in found.links)
    assert "(page missing)" not in text
    assert "by session" in text and "exceeds 3.5" in text
    assert "3 echo set(s) published, from 2 participant(s)" in text
    assert "Echo sets that failed" not in text


def test_group_without_participant_outputs_exits_66(tmp_path: Path) -> None:
    bids = Path(__file__).resolve().parents[2] / "bids_example"
    out = tmp_path / "empty"
    assert main([str(bids), str(out), "group", "-q"]) == 66
    assert not (out / "group_report.html").exists()
