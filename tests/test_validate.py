"""bids-validator through t2starmap.bids.validate: the real validator on the bundled example and on
broken copies of it; a fake validator script for the command line, the JSON parsing and the
failures (not installed, crashed, hung)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from t2starmap.bids import validate
from t2starmap.bids.validate import (
    VALIDATOR,
    ValidationIssue,
    ValidationReport,
    validate_bids,
    validator_command,
)
from tests.support.files import EXAMPLE

# --- the real validator ----------------------------------------------------------------------


def test_bundled_example_is_valid(example: Path) -> None:
    report = validate_bids(example)
    assert report.ok, [str(e) for e in report.errors]
    assert report.errors == ()
    # The example is minimal (no authors, no HED): the validator warns, and those are kept.
    assert report.warnings
    assert all(isinstance(w, ValidationIssue) and w.severity == "warning" for w in report.warnings)
    assert "TOO_FEW_AUTHORS" in {w.code for w in report.warnings}


@pytest.fixture(scope="module")
def broken_report(tmp_path_factory: pytest.TempPathFactory) -> ValidationReport:
    """The example with dcm2niix's phase name (``_ph``, not BIDS) and a sidecar without the
    required EchoTime, validated once."""
    root = tmp_path_factory.mktemp("broken") / "bids"
    shutil.copytree(EXAMPLE, root)
    anat = root / "sub-01" / "anat"
    source = anat / "sub-01_echo-1_part-mag_MEGRE.nii.gz"
    (anat / "sub-01_echo-1_ph.nii.gz").write_bytes(source.read_bytes())
    sidecar = anat / "sub-01_echo-3_part-mag_MEGRE.json"
    metadata = json.loads(sidecar.read_text())
    del metadata["EchoTime"]
    sidecar.write_text(json.dumps(metadata))
    return validate_bids(root)


def test_broken_dataset_errors_are_parsed(broken_report: ValidationReport) -> None:
    report = broken_report
    assert not report.ok
    assert all(e.severity == "error" for e in report.errors)
    shown = [str(e) for e in report.errors]
    by_code = {e.code: e for e in report.errors}
    assert "NOT_INCLUDED" in by_code, shown
    assert by_code["NOT_INCLUDED"].location == "/sub-01/anat/sub-01_echo-1_ph.nii.gz"
    assert str(by_code["NOT_INCLUDED"]).startswith(
        "NOT_INCLUDED at /sub-01/anat/sub-01_echo-1_ph.nii.gz"
    )
    assert ("SIDECAR_KEY_REQUIRED", "/sub-01/anat/sub-01_echo-3_part-mag_MEGRE.nii.gz") in {
        (e.code, e.location) for e in report.errors
    }, shown


def test_missing_key_error_is_one_line_naming_the_key(broken_report: ValidationReport) -> None:
    """The validator's JSON names the missing key in ``subCode`` and puts the schema's
    multi-line field description in ``issueMessage``: the issue shown to the user must be one
    line and say which key is missing."""
    issues = [e for e in broken_report.errors if e.code == "SIDECAR_KEY_REQUIRED"]
    assert issues  # the validator reports it once per schema rule that asks for the key
    for issue in issues:
        assert "EchoTime" in str(issue) and "\n" not in str(issue), repr(str(issue))


def test_summary_is_one_line_per_distinct_problem(broken_report: ValidationReport) -> None:
    lines = broken_report.summary()
    assert "SIDECAR_KEY_REQUIRED (EchoTime): sub-01/anat/sub-01_echo-3_part-mag_MEGRE.nii.gz" in (
        lines
    )
    assert "NOT_INCLUDED: sub-01/anat/sub-01_echo-1_ph.nii.gz" in lines
    assert len(lines) == len({(e.code, e.field) for e in broken_report.errors})


def test_summary_counts_files_and_caps_its_length() -> None:
    errors = tuple(
        ValidationIssue(f"CODE_{k % 7}", "error", f"/sub-0{k}/x.json", "a\nlong text", "Key")
        for k in range(20)
    )
    lines = ValidationReport(errors, ()).summary(limit=3)
    assert len(lines) == 4
    assert lines[0] == "CODE_0 (Key): sub-00/x.json (and 2 more)"
    assert lines[-1] == "4 more kind(s) of error, 11 in all"


def test_validator_is_found_in_this_environment() -> None:
    command = Path(validator_command())
    assert command.name == VALIDATOR and os.access(command, os.X_OK)


# --- a fake validator ------------------------------------------------------------------------


def fake_validator(bin_dir: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable ``bids-validator-deno`` (a Python script) first on PATH; ``body`` runs
    with ``argv`` and ``record`` (a file beside the script) at hand."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / VALIDATOR
    header = f"#!{sys.executable}\nimport json, sys, time\nfrom pathlib import Path\n"
    header += f"argv = sys.argv[1:]\nrecord = Path({str(bin_dir / 'argv.json')!r})\n"
    script.write_text(header + textwrap.dedent(body))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


ISSUES = {
    "issues": {
        "issues": [
            {"code": "NOT_INCLUDED", "severity": "error", "location": "/sub-01/anat/x_ph.nii"},
            {
                "code": "SIDECAR_KEY_REQUIRED",
                "subCode": "EchoTime",
                "severity": "error",
                "location": "/sub-01/anat/x_MEGRE.json",
            },
            {"code": "TOO_FEW_AUTHORS", "severity": "warning", "issueMessage": "  add authors  "},
            {"code": "README_FILE_MISSING", "severity": "ignore"},
        ]
    },
    "summary": {},
}


def test_command_line_and_report_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_validator(
        tmp_path / "bin",
        f"record.write_text(json.dumps(argv))\nprint(json.dumps({ISSUES!r}))\nsys.exit(16)\n",
        monkeypatch,
    )
    dataset = tmp_path / "my data"
    report = validate_bids(dataset)
    assert json.loads((tmp_path / "bin" / "argv.json").read_text()) == [
        str(dataset),
        "--format",
        "json",
    ]
    assert not report.ok
    assert [str(e) for e in report.errors] == [
        "NOT_INCLUDED at /sub-01/anat/x_ph.nii",
        "SIDECAR_KEY_REQUIRED at /sub-01/anat/x_MEGRE.json: EchoTime",
    ]
    # Anything that is not an error is a warning; a missing location leaves it out.
    assert [str(w) for w in report.warnings] == [
        "TOO_FEW_AUTHORS: add authors",
        "README_FILE_MISSING",
    ]


def test_report_without_issues_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_validator(tmp_path / "bin", "print(json.dumps({'issues': {'issues': []}}))\n", monkeypatch)
    report = validate_bids(tmp_path)
    assert report.ok and report.errors == () and report.warnings == ()


def test_crashed_validator_raises_with_exit_code_and_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_validator(
        tmp_path / "bin",
        "print('starting', file=sys.stderr)\n"
        "print('error: permission denied reading /data', file=sys.stderr)\nsys.exit(2)\n",
        monkeypatch,
    )
    with pytest.raises(RuntimeError) as caught:
        validate_bids(tmp_path)
    assert str(caught.value) == (
        f"{VALIDATOR} failed (exit 2): error: permission denied reading /data"
    )


def test_silent_crash_says_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_validator(tmp_path / "bin", "sys.exit(3)\n", monkeypatch)
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\): no output"):
        validate_bids(tmp_path)


def test_hung_validator_raises_runtime_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``validate_bids`` promises RuntimeError when the validator cannot run; the workflow
    turns that (not subprocess.TimeoutExpired) into the validation exit code."""
    fake_validator(tmp_path / "bin", "time.sleep(30)\n", monkeypatch)
    with pytest.raises(RuntimeError, match=VALIDATOR):
        validate_bids(tmp_path, timeout=0.5)


def test_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither on PATH nor beside the interpreter: RuntimeError saying how to install it."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(RuntimeError, match="pip install bids-validator-deno"):
        validator_command()


def test_found_beside_the_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtual environment that is not activated: the validator beside sys.executable."""
    beside = tmp_path / "venv" / "bin" / VALIDATOR
    beside.parent.mkdir(parents=True)
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(beside.parent / "python"))
    assert validate.validator_command() == str(beside)


def test_an_issue_reported_twice_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validator may report one issue twice (same code, field and file): it is one
    error, as the summary lists it once."""
    twice = {"issues": {"issues": [ISSUES["issues"]["issues"][1]] * 2}}  # type: ignore[index]
    fake_validator(tmp_path / "bin", f"print(json.dumps({twice!r}))\nsys.exit(16)\n", monkeypatch)
    report = validate_bids(tmp_path)
    assert len(report.errors) == 1
    assert report.summary() == ["SIDECAR_KEY_REQUIRED (EchoTime): sub-01/anat/x_MEGRE.json"]
