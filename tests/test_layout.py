"""Echo-set discovery and EchoTime reading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from t2starmap.bids.layout import Echo, SetProblem, build_echo_set, echo_time_of, find_echo_sets
from t2starmap.errors import BadDataError, InputMissingError, NothingSelectedError
from tests.support.files import SHARED_DATA


@pytest.mark.parametrize("raw", [0.02, "0.02", 2e-2, "2e-2"])
def test_echo_time_numbers_and_numeric_strings(raw: object) -> None:
    assert echo_time_of(Path("x.nii.gz"), {"EchoTime": raw}) == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({}, "no EchoTime"),
        ({"EchoTime": "abc"}, "not a number"),
        ({"EchoTime": None}, "not a number"),
        ({"EchoTime": -0.01}, "not a positive number"),
        ({"EchoTime": 0}, "not a positive number"),
        ({"EchoTime": 20}, "milliseconds"),
    ],
)
def test_bad_echo_times_name_the_file(meta: dict[str, object], message: str) -> None:
    with pytest.raises(BadDataError, match=message) as err:
        echo_time_of(Path("sub-01_echo-1_MEGRE.nii.gz"), meta)
    assert "sub-01_echo-1_MEGRE.nii.gz" in str(err.value)


def test_echo_set_is_sorted_by_echo_time_not_index() -> None:
    echoes = [Echo(Path(f"e{k}.nii.gz"), te, {}) for k, te in ((1, 0.03), (2, 0.01), (3, 0.02))]
    echo_set = build_echo_set({"subject": "01"}, echoes)
    assert echo_set.echo_times == (0.01, 0.02, 0.03)
    assert [e.path.name for e in echo_set.echoes] == ["e2.nii.gz", "e3.nii.gz", "e1.nii.gz"]


def test_echo_set_needs_two_distinct_echo_times() -> None:
    with pytest.raises(BadDataError, match="same EchoTime"):
        build_echo_set({"subject": "01"}, [Echo(Path("a"), 0.01, {}), Echo(Path("b"), 0.01, {})])
    with pytest.raises(BadDataError, match="only one echo"):
        build_echo_set({"subject": "01"}, [Echo(Path("a"), 0.01, {})])


def test_sets_group_by_entities_and_ignore_phase(example: Path) -> None:
    anat = example / "sub-01" / "anat"
    for path in sorted(anat.glob("sub-01_echo-*_part-mag_MEGRE.*")):
        # a second run without `part`, and phase files that must be ignored
        shutil.copy(
            path, anat / path.name.replace("_echo-", "_run-2_echo-").replace("_part-mag", "")
        )
        phase = anat / path.name.replace("part-mag", "part-phase")
        shutil.copy(path, phase)
        if phase.suffix == ".json":
            meta = json.loads(phase.read_text())
            phase.write_text(json.dumps({**meta, "Units": "rad"}))
    sets = find_echo_sets(example, ["01"])
    assert [s.name for s in sets] == ["sub-01", "sub-01_run-2"]
    assert all(len(s.echoes) == 8 for s in sets)
    assert all("part-phase" not in str(e.path) for s in sets for e in s.echoes)


def test_sessions_and_labels(example: Path) -> None:
    sets = find_echo_sets(example)
    assert [(s.subject, s.session) for s in sets] == [("01", None), ("02", "1"), ("02", "2")]
    assert [s.name for s in find_echo_sets(example, None, ["2"])] == ["sub-02_ses-2"]
    with pytest.raises(
        NothingSelectedError, match=r"sub-05 in the dataset; it has sub-01, sub-02$"
    ):
        find_echo_sets(example, ["05"])
    with pytest.raises(NothingSelectedError, match=r"session 9 \(there are ses-1, ses-2\)"):
        find_echo_sets(example, None, ["9"])
    with pytest.raises(NothingSelectedError):
        find_echo_sets(example, ["01"], ["1"])


def test_a_long_list_of_labels_is_cut_short(tmp_path: Path) -> None:
    (tmp_path / "dataset_description.json").write_text("{}")
    for k in range(30):
        (tmp_path / f"sub-{k:02d}").mkdir()
    with pytest.raises(NothingSelectedError, match=r"sub-11 \(and 18 more\)$"):
        find_echo_sets(tmp_path, ["99"])


def test_sets_that_cannot_be_fitted_are_collected_when_asked(example: Path) -> None:
    """A set with an echo without EchoTime raises, unless a problems list is given: then it
    is recorded there and the others are returned."""
    sidecar = example / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_echo-3_part-mag_MEGRE.json"
    meta = json.loads(sidecar.read_text())
    del meta["EchoTime"]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(BadDataError, match="no EchoTime"):
        find_echo_sets(example)
    problems: list[SetProblem] = []
    assert [s.name for s in find_echo_sets(example, problems=problems)] == [
        "sub-01",
        "sub-02_ses-2",
    ]
    [problem] = problems
    assert problem.name == "sub-02_ses-1" and (problem.subject, problem.session) == ("02", "1")
    assert problem.first_file.name == "sub-02_ses-1_echo-1_part-mag_MEGRE.nii.gz"
    assert "no EchoTime" in str(problem.error)


def test_no_megre_is_input_missing(example: Path) -> None:
    for path in example.rglob("*_MEGRE.*"):
        path.unlink()
    with pytest.raises(InputMissingError, match="no MEGRE"):
        find_echo_sets(example)


@pytest.mark.realdata
def test_real_sidecars_with_string_echo_times() -> None:
    """The bids-examples qmri_megre sidecars (8 echoes, 20-160 ms) read as seconds, in order.

    shared/data/README.md says they store EchoTime as strings; the copies here hold numbers,
    so the string form is covered by the synthetic tests above."""
    folder = SHARED_DATA / "sidecars" / "bids-examples-qmri_megre" / "sub-01" / "anat"
    sidecars = sorted(folder.glob("*_MEGRE.json"))
    assert len(sidecars) == 8
    times = [echo_time_of(p, json.loads(p.read_text())) for p in sidecars]
    assert times == sorted(times)
    assert times[0] == pytest.approx(0.02) and times[-1] == pytest.approx(0.16)
