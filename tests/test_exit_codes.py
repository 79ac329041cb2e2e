"""Every documented exit code, each triggered by a real bad input.

Each case checks: the exit code, a one-line message naming the problem (no traceback), the
input dataset byte-for-byte unchanged, and no map left in the output.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from t2starmap.cli.run import main
from t2starmap.workflows import participant as workflow
from tests.support.files import checksums, failure_reasons, files_below, images_below

ANAT = Path("sub-01") / "anat"


def echo(bids: Path, k: int, ext: str = ".json") -> Path:
    return bids / ANAT / f"sub-01_echo-{k}_part-mag_MEGRE{ext}"


def drop_echo_time(bids: Path) -> str:
    meta = json.loads(echo(bids, 2).read_text())
    del meta["EchoTime"]
    echo(bids, 2).write_text(json.dumps(meta))
    return "no EchoTime"


def echo_time_in_ms(bids: Path) -> str:
    for k in range(1, 9):
        meta = json.loads(echo(bids, k).read_text())
        meta["EchoTime"] = meta["EchoTime"] * 1000
        echo(bids, k).write_text(json.dumps(meta))
    return "milliseconds"


def only_one_echo(bids: Path) -> str:
    for k in range(2, 9):
        echo(bids, k).unlink()
        echo(bids, k, ".nii.gz").unlink()
    return "only one echo"


def mismatched_shapes(bids: Path) -> str:
    path = echo(bids, 4, ".nii.gz")
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), path)
    return "shape"


def mismatched_affine(bids: Path) -> str:
    path = echo(bids, 4, ".nii.gz")
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine * 2), path)
    return "affine"


def corrupt_gzip(bids: Path) -> str:
    path = echo(bids, 5, ".nii.gz")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return "sub-01_echo-5_part-mag_MEGRE.nii.gz"


def not_an_image(bids: Path) -> str:
    echo(bids, 5, ".nii.gz").write_bytes(gzip.compress(b"this is not a nifti file"))
    return "not a readable NIfTI"


def all_nan(bids: Path) -> str:
    for k in range(1, 9):
        path = echo(bids, k, ".nii.gz")
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.full(img.shape, np.nan, np.float32), img.affine), path)
    return "no usable signal"


def no_megre(bids: Path) -> str:
    for path in bids.rglob("*_MEGRE.*"):
        path.unlink()
    return "no MEGRE"


def no_description(bids: Path) -> str:
    (bids / "dataset_description.json").unlink()
    return "dataset_description.json"


def invalid_bids(bids: Path) -> str:
    (bids / "sub-01" / "anat" / "notes.txt").write_text("not a BIDS file")
    return "bids-validator"


#: Damage to one echo set (sub-01's): that set fails with the code, the others go on.
BAD_SET: list[tuple[Callable[[Path], str], int]] = [
    (drop_echo_time, 65),
    (echo_time_in_ms, 65),
    (only_one_echo, 65),
    (mismatched_shapes, 65),
    (mismatched_affine, 65),
    (corrupt_gzip, 65),
    (not_an_image, 65),
    (all_nan, 65),
]
#: Damage that stops the run before any set: (how, exit code, run the validator?).
BAD_INPUT: list[tuple[Callable[[Path], str], int, bool]] = [
    (no_megre, 66, False),
    (no_description, 66, False),
    (invalid_bids, 16, True),
]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "ERROR" in line]


@pytest.mark.parametrize(("breaker", "code"), BAD_SET, ids=[b[0].__name__ for b in BAD_SET])
def test_a_bad_set_fails_alone(
    example: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breaker: Callable[[Path], str],
    code: int,
) -> None:
    """The damaged set is recorded with its reason and left out; the two others are
    published with their pages; one error line sums it up; the input is untouched."""
    expected = breaker(example)
    before = checksums(example)
    out = tmp_path / "out"
    assert main([str(example), str(out), "participant", "--skip-bids-validation"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [error] = error_lines(err)
    assert "3 echo set(s): 2 published, 1 failed: sub-01: " in error and expected in error
    assert checksums(example) == before
    assert expected in failure_reasons(out)["sub-01"]
    images = images_below(out)
    assert not [f for f in images if f.startswith("sub-01/")]
    assert len([f for f in images if f.startswith("sub-02/")]) == 2 * 11  # chisq too
    assert {"sub-01.html", "sub-02_ses-1.html", "sub-02_ses-2.html"} <= files_below(out)
    assert "Echo sets that failed" in (out / "sub-01.html").read_text()


@pytest.mark.parametrize(("breaker", "code"), BAD_SET, ids=[b[0].__name__ for b in BAD_SET])
def test_stop_on_first_crash_publishes_nothing(
    example: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breaker: Callable[[Path], str],
    code: int,
) -> None:
    expected = breaker(example)
    out = tmp_path / "out"
    argv = [str(example), str(out), "participant", "--skip-bids-validation"]
    assert main([*argv, "--stop-on-first-crash"]) == code
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(error_lines(err)) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("breaker", "code", "validate"), BAD_INPUT, ids=[b[0].__name__ for b in BAD_INPUT]
)
def test_bad_input(
    example: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breaker: Callable[[Path], str],
    code: int,
    validate: bool,
) -> None:
    expected = breaker(example)
    before = checksums(example)
    out = tmp_path / "out"
    argv = [str(example), str(out), "participant"]
    assert main(argv if validate else [*argv, "--skip-bids-validation"]) == code
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert len(error_lines(err)) == 1
    assert checksums(example) == before
    if code == 16:  # the validator's full report is kept in the logs
        assert [f for f in files_below(out) if f.startswith("logs/bids-validator_")]
        assert not [f for f in files_below(out) if not f.startswith("logs/")]
    else:  # nothing published: the output folder this run created is gone again
        assert not out.exists()


@pytest.mark.parametrize("parents", [0, 2])
def test_a_failed_run_leaves_no_folder_it_created(
    example: Path, tmp_path: Path, parents: int
) -> None:
    drop_echo_time(example)
    out = tmp_path.joinpath(*["p"] * parents, "out")
    argv = [str(example), str(out), "participant", "--skip-bids-validation", "-q"]
    assert main([*argv, "--stop-on-first-crash"]) == 65
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids"]
    assert main([*argv, "--participant-label", "01"]) == 65  # only the failure to record
    assert images_below(out) == set() and list(failure_reasons(out)) == ["sub-01"]


def test_a_failed_run_keeps_an_existing_output_folder(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    drop_echo_time(example)
    argv = [str(example), str(out), "participant", "--skip-bids-validation", "-q"]
    assert main([*argv, "--stop-on-first-crash"]) == 65
    assert files_below(out) == {"mine.txt"}


def test_validator_failure_is_a_few_lines_naming_the_field(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A string EchoTime: one line per distinct problem, the field named, the way out given."""
    for k in (2, 3, 5):
        meta = json.loads(echo(example, k).read_text())
        meta["EchoTime"] = str(meta["EchoTime"])
        echo(example, k).write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert main([str(example), str(out), "participant"]) == 16
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "INFO" not in line]
    assert len(lines) <= 7, err
    assert "JSON_SCHEMA_VALIDATION_ERROR (EchoTime): sub-01/anat/sub-01_echo-2" in err
    assert "(and 2 more)" in err and "--skip-bids-validation" in err
    assert "Field description" not in err
    [log] = [f for f in files_below(out) if f.startswith("logs/bids-validator_")]
    assert "EchoTime" in (out / log).read_text()


def run_code(argv: list[str]) -> int:
    return main([*argv, "-q"])


def participant_code(example: Path, out: Path, *extra: str) -> int:
    return run_code([str(example), str(out), "participant", "--skip-bids-validation", *extra])


def remove_sub01_megre(bids: Path) -> None:
    for path in (bids / "sub-01").rglob("*_MEGRE.*"):
        path.unlink()


SELECTS_NOTHING = [
    ("unknown participant", ["--participant-label", "07"], None),
    ("unknown session", ["--session-label", "9"], None),
    ("participant without MEGRE", ["--participant-label", "01"], remove_sub01_megre),
]


@pytest.mark.parametrize(
    ("extra", "prepare"), [c[1:] for c in SELECTS_NOTHING], ids=[c[0] for c in SELECTS_NOTHING]
)
def test_selecting_nothing_is_18(
    example: Path, tmp_path: Path, extra: list[str], prepare: Callable[[Path], None] | None
) -> None:
    if prepare is not None:
        prepare(example)
    assert participant_code(example, tmp_path / "o", *extra) == 18


def test_output_inside_input_is_64(example: Path) -> None:
    before = checksums(example)
    assert run_code([str(example), str(example / "sourcedata" / "t2"), "participant"]) == 64
    assert run_code([str(example), str(example), "participant"]) == 64
    assert run_code([str(example), str(example / "derivatives"), "participant"]) == 64
    assert checksums(example) == before


def block_output(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    return blocker / "out"


# (id, arguments after BIDS_DIR OUTPUT_DIR; "{tmp}" is the test's temporary folder, exit code)
ARGUMENT_ERRORS = [
    ("bad label", ["participant", "--participant-label", "../x"], 64),
    ("unknown option", ["participant", "--no-such"], 64),
    ("unknown fit method", ["participant", "--fit-method", "magic"], 64),
    ("unknown level", ["session"], 17),
    ("missing filter file", ["participant", "--bids-filter-file", "{tmp}/none.json"], 66),
    ("unparsable filter file", ["participant", "--bids-filter-file", "{tmp}/bad.json"], 64),
]


@pytest.mark.parametrize(
    ("args", "code"), [c[1:] for c in ARGUMENT_ERRORS], ids=[c[0] for c in ARGUMENT_ERRORS]
)
def test_argument_errors(example: Path, tmp_path: Path, args: list[str], code: int) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert run_code([str(example), str(tmp_path / "o"), *argv]) == code
    assert not (tmp_path / "o").exists()


def test_missing_input_is_66(tmp_path: Path) -> None:
    assert run_code([str(tmp_path / "nothing"), str(tmp_path / "o"), "participant"]) == 66


def test_unwritable_output_is_73(example: Path, tmp_path: Path) -> None:
    assert participant_code(example, block_output(tmp_path)) == 73


def test_cuda_without_gpu_is_64(example: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert participant_code(example, tmp_path / "o", "--device", "cuda") == 64


def test_group_without_participant_outputs_is_66(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "o").mkdir()
    assert main([str(tmp_path / "bids"), str(tmp_path / "o"), "group"]) == 66
    assert "run the participant level first" in capsys.readouterr().err


def test_failure_keeps_earlier_outputs_intact(example: Path, tmp_path: Path) -> None:
    """A set that fails in a second run keeps the complete outputs a first run published
    (its page says so), and a third run that succeeds removes the failure record."""
    out = tmp_path / "out"
    assert participant_code(example, out) == 0
    before = checksums(out / "sub-02" / "ses-2")
    corrupt = example / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_echo-5_part-mag_MEGRE.nii.gz"
    good = corrupt.read_bytes()
    corrupt.write_bytes(good[:100])
    assert participant_code(example, out) == 65
    assert checksums(out / "sub-02" / "ses-2") == before
    assert not [p for p in out.rglob(".*tmp*")]
    assert list(failure_reasons(out)) == ["sub-02_ses-2"]
    page = (out / "sub-02_ses-2.html").read_text()
    assert "kept, shown below" in page and 'id="sub-02_ses-2"' in page
    corrupt.write_bytes(good)
    assert participant_code(example, out, "--participant-label", "02") == 0
    assert failure_reasons(out) == {}
    assert "Echo sets that failed" not in (out / "sub-02_ses-2.html").read_text()


def test_an_unexpected_error_in_one_set_is_recorded_with_its_traceback(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug hit by one set (here: the fit raises RuntimeError for sub-01) fails that set
    with exit 1 and a traceback in its failure record; the others are published."""
    import t2starmap.workflows.echo_set

    real = t2starmap.workflows.echo_set.fit_echo_set

    def flaky(echo_set: object, *args: object) -> object:
        if echo_set.name == "sub-01":  # type: ignore[attr-defined]
            raise RuntimeError("boom in the fit")
        return real(echo_set, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(t2starmap.workflows.echo_set, "fit_echo_set", flaky)
    out = tmp_path / "out"
    assert participant_code(example, out) == 1
    record = json.loads((out / "logs" / "failures" / "sub-01_failure.json").read_text())
    assert record["exit_code"] == 1 and "RuntimeError: boom in the fit" in record["reason"]
    assert "Traceback" in record["traceback"]
    assert len([f for f in images_below(out) if f.startswith("sub-02/")]) == 22  # chisq too


def test_unexpected_error_is_1_with_traceback_only_with_vv(
    example: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("t2starmap.workflows.participant.find_echo_sets", boom)
    argv = [str(example), str(tmp_path / "o"), "participant", "--skip-bids-validation"]
    for extra, traceback in (([], False), (["-v"], False), (["-vv"], True), (["-v", "-v"], True)):
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err
        assert "boom" in err and ("Traceback" in err) == traceback, extra


def test_work_dir_is_cleaned(example: Path, tmp_path: Path) -> None:
    work = tmp_path / "scratch"
    work.mkdir()  # the user's: it stays, empty
    assert (
        participant_code(example, tmp_path / "o", "-w", str(work), "--participant-label", "01") == 0
    )
    assert work.is_dir() and not any(work.iterdir())


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--participant-label", "01"], 0),
        (["--participant-label", "07"], 18),
        (["--participant-label", "01", "--fit-method", "complex"], 64),
    ],
    ids=["published", "unknown participant", "set failed"],
)
def test_a_work_dir_the_run_created_is_removed_with_its_parents(
    example: Path, tmp_path: Path, extra: list[str], code: int
) -> None:
    work = tmp_path / "x" / "deep" / "work"
    assert participant_code(example, tmp_path / "o", "-w", str(work), *extra) == code
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["bids", "o"] if code in (0, 64) else ["bids"]
    )


def test_a_work_dir_another_run_uses_keeps_its_files(example: Path, tmp_path: Path) -> None:
    work = tmp_path / "shared" / "work"
    other = work / "t2starmap-other-run"  # made while this run was running
    real_fit = workflow.fit_set

    def fit_beside_another_run(*args: Any) -> Any:
        other.mkdir(exist_ok=True)
        return real_fit(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workflow, "fit_set", fit_beside_another_run)
        assert (
            participant_code(example, tmp_path / "o", "-w", str(work), "--participant-label", "01")
            == 0
        )
    assert [p.name for p in work.iterdir()] == [other.name]


@pytest.mark.parametrize("where", ["work", "derivatives/work", "."])
def test_a_work_dir_inside_the_input_is_64_and_nothing_is_created(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    before = checksums(example)
    out = tmp_path / "o"
    assert participant_code(example, out, "-w", str(example / where)) == 64
    err = capsys.readouterr().err
    assert "work folder" in err and "inside the input dataset" in err
    assert len(err.strip().splitlines()) == 1
    assert checksums(example) == before and not (example / "work").exists()
    assert not (example / "derivatives").exists() and not out.exists()


def test_unknown_labels_are_18_before_the_validator_runs(
    example: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_validator(settings: object) -> None:
        raise AssertionError("the validator ran before the labels were checked")

    monkeypatch.setattr(workflow, "validate_input", no_validator)
    bids, out = str(example), str(tmp_path / "o")
    assert run_code([bids, out, "participant", "--participant-label", "07"]) == 18
    assert "no participant sub-07" in capsys.readouterr().err
    assert run_code([bids, out, "participant", "--session-label", "9"]) == 18
    assert "no session ses-9" in capsys.readouterr().err
    assert (
        run_code([bids, out, "participant", "--participant-label", "01", "--session-label", "1"])
        == 18
    )
    assert not (tmp_path / "o").exists()


def test_a_dicom_folder_as_bids_dir_says_to_convert_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dicom = tmp_path / "dicom" / "series1"
    dicom.mkdir(parents=True)
    (dicom / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    assert main([str(tmp_path / "dicom"), str(tmp_path / "out"), "participant"]) == 66
    err = capsys.readouterr().err
    assert "DICOM" in err and "t2starmap convert" in err and "--participant-label" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
