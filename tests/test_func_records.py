"""The record of a published multi-echo BOLD run (bids/func_records): its JSON round trip, its
own format version, the loader's selection, and MEGRE records of the earlier format still
loading beside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from t2starmap.bids.atomic import write_text
from t2starmap.bids.func_records import (
    PublishedRun,
    load_published_runs,
    run_record_files,
    run_record_path,
)
from t2starmap.bids.records import SetStatistics, Source, load_published
from t2starmap.fit.tsnr import TsnrSummary
from tests.support.files import EXAMPLE

REFERENCE = Path(__file__).parent / "data" / "reference_run"


def _run(subject: str = "01", session: str | None = None, tsnr: bool = True) -> PublishedRun:
    entities = {"subject": subject, "task": "rest", "run": "2", "datatype": "func"}
    if session:
        entities["session"] = session
    name = "_".join([f"sub-{subject}", *([f"ses-{session}"] if session else []), "task-rest_run-2"])
    folder = f"sub-{subject}/" + (f"ses-{session}/" if session else "") + "func"
    return PublishedRun(
        entities=entities,
        files={
            "t2star img": f"{folder}/{name}_T2starmap.nii.gz",
            "fit status tsv": f"{folder}/{name}_desc-fitstatus_dseg.tsv",
        },
        sources=(Source(f"{folder}/{name}_echo-1_bold.nii.gz", 0.012, {"Manufacturer": "X"}),),
        n_volumes=100,
        repetition_time=2.0,
        fit_type="nlls",
        algorithm="text",
        preprocessed=False,
        n_voxels=10,
        mask_counts={"0": 5, "1": 10},
        failed_fraction=0.1,
        misfit_fraction=0.2,
        status_counts={"good": 7, "not_converged": 1},
        statistics=SetStatistics((0.02, 0.03, 0.04), (25.0, 33.0, 50.0), 1000.0),
        tsnr=TsnrSummary(10, 60.0, (50.0, 40.0), 1, 1.2, (0.0, 1.0, 2.0), (3, 7), (4, 6))
        if tsnr
        else None,
        seconds=1.5,
        warnings=("w",),
        software={"t2starmap": "0"},
    )


@pytest.mark.parametrize("tsnr", [True, False])
def test_round_trip(tsnr: bool) -> None:
    record = _run(tsnr=tsnr)
    again = PublishedRun.from_json(record.to_json())
    assert again == record
    assert json.loads(record.to_json())["run_record_version"] == 1


def test_another_version_is_refused() -> None:
    data = json.loads(_run().to_json())
    data["run_record_version"] = 99
    with pytest.raises(ValueError, match="another version"):
        PublishedRun.from_json(json.dumps(data))


def test_loader_finds_and_selects(tmp_path: Path) -> None:
    runs = [_run("01"), _run("02", "b"), _run("02", "a")]
    for record in runs:
        write_text(run_record_path(tmp_path, record.entities), record.to_json())
    names = [r.name for r in load_published_runs(tmp_path)]
    assert names == sorted(r.name for r in runs)
    assert [r.name for r in load_published_runs(tmp_path, ["02"], ["a"])] == [
        "sub-02_ses-a_task-rest_run-2"
    ]
    assert load_published(tmp_path) == []  # not MEGRE records


def test_unreadable_record_is_named(tmp_path: Path) -> None:
    path = run_record_path(tmp_path, _run().entities)
    write_text(path, "{")
    with pytest.raises(ValueError, match=str(path)):
        load_published_runs(tmp_path)


def test_files_of_a_record() -> None:
    files = run_record_files(_run())
    assert files == [
        "sub-01/func/sub-01_task-rest_run-2_T2starmap.nii.gz",
        "sub-01/func/sub-01_task-rest_run-2_T2starmap.json",
        "sub-01/func/sub-01_task-rest_run-2_desc-fitstatus_dseg.tsv",
        "sub-01/func/sub-01_task-rest_run-2_record.json",
    ]


def test_megre_records_of_the_unchanged_format_still_load(tmp_path: Path) -> None:
    """The MEGRE records kept in the repository (tests/data/reference_run, format 1, written
    before BOLD runs had records) load as before, and the group level reads them beside
    none of the new run records."""
    from t2starmap.cli.run import main

    out = tmp_path / "out"
    shutil.copytree(REFERENCE, out)
    for record in out.glob("sub-*/**/anat/*_record.json"):
        assert json.loads(record.read_text())["record_version"] == 1
    names = [r.name for r in load_published(out)]
    assert names == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    assert load_published_runs(out) == []
    (out / "group_T2starmap.tsv").unlink()
    assert main([str(EXAMPLE), str(out), "group", "-q", "--skip-bids-validation"]) == 0
    lines = (out / "group_T2starmap.tsv").read_text().splitlines()
    assert len(lines) == 4 and all("\tanat\t" in line for line in lines[1:])
