"""Multi-echo BOLD runs found with pybids (t2starmap.bids.func_layout) and the filter file's
``bold`` key (t2starmap.config.read_filter_sections)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from t2starmap.bids.func_layout import find_bold_runs
from t2starmap.bids.outputs import set_name
from t2starmap.config import read_filter_sections
from t2starmap.errors import UsageError
from t2starmap.sim.bold import make_bold_run, write_bold_bids
from tests.support.files import EXAMPLE

SHAPE = (6, 6, 4)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Two 3-echo runs (rest, motor), a single-echo run and the MEGRE example."""
    root = tmp_path / "bids"
    shutil.copytree(EXAMPLE, root)
    run = make_bold_run(SHAPE, 3, te=(0.015, 0.035, 0.055))
    write_bold_bids(root, "sub-01_task-rest_run-1", run, "rest")
    write_bold_bids(root, "sub-01_task-motor_dir-AP", run, "motor")
    write_bold_bids(root, "sub-01_task-single", make_bold_run(SHAPE, 3, te=(0.03,)), "single")
    return root


def test_runs_with_inherited_metadata(dataset: Path) -> None:
    found = find_bold_runs(dataset)
    assert [r.name for r in found.runs] == ["sub-01_task-motor_dir-AP", "sub-01_task-rest_run-1"]
    rest = found.runs[1]
    assert rest.echo_times == (0.015, 0.035, 0.055)
    assert rest.repetition_time == 2.0  # from the dataset's task-rest_bold.json
    assert rest.entities["datatype"] == "func"
    assert not rest.preprocessed
    assert [s.name for s in found.skipped] == ["sub-01_task-single"]
    assert "one echo" in found.skipped[0].reason
    assert found.problems == []


def test_echoes_sorted_by_echo_time_not_index(dataset: Path) -> None:
    func = dataset / "sub-01" / "func"
    for k, te in ((1, 0.055), (3, 0.015)):  # swap the first and last echo times
        (func / f"sub-01_task-rest_run-1_echo-{k}_bold.json").write_text(
            json.dumps({"EchoTime": te})
        )
    rest = find_bold_runs(dataset).runs[1]
    assert rest.echo_times == (0.015, 0.035, 0.055)
    assert rest.echoes[0].path.name == "sub-01_task-rest_run-1_echo-3_bold.nii.gz"


def test_echo_without_echo_time_is_a_problem(dataset: Path) -> None:
    (dataset / "sub-01" / "func" / "sub-01_task-motor_dir-AP_echo-2_bold.json").write_text("{}")
    found = find_bold_runs(dataset)
    assert [r.name for r in found.runs] == ["sub-01_task-rest_run-1"]
    assert [p.name for p in found.problems] == ["sub-01_task-motor_dir-AP"]
    assert "EchoTime" in str(found.problems[0].error)


def test_phase_files_are_not_echoes(dataset: Path) -> None:
    func = dataset / "sub-01" / "func"
    for source in sorted(func.glob("sub-01_task-rest_run-1_echo-*_bold.*")):
        target = source.name.replace("_bold", "_part-phase_bold")
        shutil.copy(source, func / target)
    rest = find_bold_runs(dataset).runs[1]
    assert len(rest.echoes) == 3
    assert all("part-phase" not in e.path.name for e in rest.echoes)


def test_labels_and_bold_filters_select(dataset: Path) -> None:
    assert [r.name for r in find_bold_runs(dataset, filters={"task": "rest"}).runs] == [
        "sub-01_task-rest_run-1"
    ]
    assert find_bold_runs(dataset, participant_labels=["02"]).runs == []


def test_filter_file_sections(tmp_path: Path) -> None:
    path = tmp_path / "filters.json"
    path.write_text(json.dumps({"bold": {"task": "rest"}}))
    assert read_filter_sections(path) == {"megre": {}, "bold": {"task": "rest"}}
    path.write_text(json.dumps({"megre": {"acquisition": "hi"}}))
    assert read_filter_sections(path) == {"megre": {"acquisition": "hi"}, "bold": {}}
    path.write_text(json.dumps({"run": 1}))
    assert read_filter_sections(path) == {"megre": {"run": 1}, "bold": {"run": 1}}
    path.write_text(json.dumps({"bold": {"subject": "01"}}))
    with pytest.raises(UsageError, match="subject"):
        read_filter_sections(path)


def test_failure_names_of_runs_carry_task_and_direction() -> None:
    entities = {"subject": "01", "task": "motor", "direction": "AP", "datatype": "func"}
    assert set_name(entities) == "sub-01_task-motor_dir-AP"
    assert set_name({"subject": "01", "task": "motor"}) == "sub-01"  # MEGRE: as before


def test_no_bold_echo_no_index(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The participants selected hold no BOLD echo (the MEGRE example; sub-02 here): nothing
    is indexed for BOLD, and nothing is found. With BOLD echoes the index is made."""
    from t2starmap.bids import func_layout

    calls: list[Path] = []
    real = func_layout._index

    def counted(bids_dir: Path, *args: object) -> object:
        calls.append(bids_dir)
        return real(bids_dir, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(func_layout, "_index", counted)
    found = find_bold_runs(EXAMPLE)
    assert (found.runs, found.problems, found.skipped, calls) == ([], [], [], [])
    assert find_bold_runs(dataset, participant_labels=["02"]).runs == [] and calls == []
    assert len(find_bold_runs(dataset, participant_labels=["01"]).runs) == 2
    assert calls == [dataset]
