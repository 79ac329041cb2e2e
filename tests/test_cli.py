"""The command line through ``main([...])``: help, version, verbosity, usage errors before
anything is touched, duplicate echo times, and a start-up that imports no torch."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from t2starmap import __version__
from t2starmap.cli.parser import METHOD_HELP
from t2starmap.cli.run import main

from .conftest import REPO, checksums, files_below

LOGGER = logging.getLogger("t2starmap")


def flat(text: str) -> str:
    """argparse wraps help lines: compare with whitespace runs as single spaces."""
    return " ".join(text.split())


def test_help_lists_every_method_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = flat(capsys.readouterr().out)
    for method, text in METHOD_HELP.items():
        assert flat(text) in out, method
        assert f"{method} (default):" in out or f"{method}:" in out, method
    for group in ("required arguments", "BIDS filtering", "fit options", "performance", "other"):
        assert group in out, group


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"t2starmap {__version__}"


def test_the_version_is_the_one_packaging_reads() -> None:
    """``__version__`` is a literal (importlib.metadata's import is slow); pyproject.toml reads
    it from there, so the built package's metadata says the same."""
    from setuptools.config.pyprojecttoml import read_configuration

    from tests.support.files import REPO

    assert read_configuration(REPO / "pyproject.toml")["project"]["version"] == __version__


def test_convert_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--help"]) == 0
    assert "--participant-label" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "level"),
    [
        ([], logging.INFO),
        (["-v"], logging.DEBUG),
        (["-vv"], logging.DEBUG),
        (["-q"], logging.WARNING),
    ],
)
def test_verbosity_maps_to_a_log_level(tmp_path: Path, flags: list[str], level: int) -> None:
    assert main([str(tmp_path / "none"), str(tmp_path / "o"), "participant", *flags]) == 66
    assert LOGGER.level == level


def test_convert_verbosity_maps_to_a_log_level(tmp_path: Path) -> None:
    argv = ["convert", str(tmp_path / "none"), str(tmp_path / "b"), "--participant-label", "01"]
    assert main([*argv, "-q"]) == 66
    assert LOGGER.level == logging.WARNING
    assert main([*argv, "-v"]) == 66
    assert LOGGER.level == logging.DEBUG


class NoCuda:
    """torch.cuda.is_available() says False, whatever the machine has."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# (id, arguments after BIDS_DIR OUTPUT_DIR, text the one-line message must hold)
USAGE_ERRORS = [
    ("bad label", ["participant", "--participant-label", "../x"], "not alphanumeric"),
    ("bad session label", ["participant", "--session-label", "a_b"], "not alphanumeric"),
    ("unknown option", ["participant", "--no-such"], "--no-such"),
    ("unknown fit method", ["participant", "--fit-method", "magic"], "magic"),
    ("zero nprocs", ["participant", "--nprocs", "0"], "--nprocs"),
    ("negative noise", ["participant", "--noise-sigma", "-1"], "--noise-sigma"),
    ("verbose and quiet", ["participant", "-v", "-q"], "not allowed with"),
    ("filter file not JSON", ["participant", "--bids-filter-file", "{tmp}/bad.json"], "bad.json"),
    ("cuda without a GPU", ["participant", "--device", "cuda"], "no CUDA device"),
    ("missing level", [], "required"),
]


@pytest.mark.parametrize(
    ("args", "expected"), [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS]
)
def test_usage_errors_are_64_before_anything_is_created_or_validated(
    example: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    NoCuda(monkeypatch)
    validated: list[Path] = []
    monkeypatch.setattr("t2starmap.bids.validate.validate_bids", lambda p, **k: validated.append(p))
    (tmp_path / "bad.json").write_text("{not json")
    before = checksums(example)
    out = tmp_path / "o"
    argv = [str(example), str(out), *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not validated
    assert checksums(example) == before


def test_output_inside_input_is_64_and_untouched(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = checksums(example)
    assert main([str(example), str(example / "sourcedata" / "t2"), "participant"]) == 64
    err = capsys.readouterr().err
    assert "inside the input" in err and "derivatives/" in err
    assert checksums(example) == before and not (example / "sourcedata").exists()


def test_duplicate_echo_times_are_65_naming_both_files(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anat = example / "sub-01" / "anat"
    first = json.loads((anat / "sub-01_echo-1_part-mag_MEGRE.json").read_text())
    third = anat / "sub-01_echo-3_part-mag_MEGRE.json"
    meta = json.loads(third.read_text())
    meta["EchoTime"] = first["EchoTime"] + 4e-7
    third.write_text(json.dumps(meta))
    out = tmp_path / "o"
    argv = [str(example), str(out), "participant", "--skip-bids-validation"]
    assert main([*argv, "--participant-label", "01"]) == 65
    err = capsys.readouterr().err
    assert "same EchoTime" in err and len([ln for ln in err.splitlines() if "ERROR" in ln]) == 1
    assert "sub-01_echo-1_part-mag_MEGRE.nii.gz" in err
    assert "sub-01_echo-3_part-mag_MEGRE.nii.gz" in err
    assert not [f for f in files_below(out) if f.endswith(".nii.gz")]


def test_interrupt_is_130(
    example: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("t2starmap.workflows.participant.find_echo_sets", interrupt)
    argv = [str(example), str(tmp_path / "o"), "participant", "--skip-bids-validation"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_is_143_and_the_handler_is_restored(
    example: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real SIGTERM (what SLURM sends before SIGKILL) stops the run like Ctrl-C: exit 143,
    one line, no output folder left; the process's own SIGTERM handler is back afterwards."""
    import os
    import signal

    def terminate(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("t2starmap.workflows.participant.find_echo_sets", terminate)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "o"
    assert main([str(example), str(out), "participant", "--skip-bids-validation"]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before
    assert not out.exists()


def test_a_bare_command_prints_its_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 64
    err = capsys.readouterr().err
    assert err.startswith("usage: t2starmap ")
    assert "BIDS_DIR OUTPUT_DIR participant" in err and "t2starmap --help" in err
    assert main(["convert"]) == 64
    err = capsys.readouterr().err
    assert err.startswith("usage: t2starmap convert ") and "DICOM_DIR BIDS_DIR" in err


def test_the_group_level_names_the_participant_options_it_ignores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    argv = [str(tmp_path / "bids"), str(out), "group"]
    assert main([*argv, "--fit-method", "complex", "--noise-sigma", "3"]) == 66
    warning = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warning) == 1
    assert warning[0].endswith(
        "group level: --fit-method, --noise-sigma change only the participant level; ignored here"
    )
    assert main([*argv, "--fit-method", "complex"]) == 66
    assert "--fit-method changes only the participant level" in capsys.readouterr().err
    assert main(argv) == 66
    assert "WARNING" not in capsys.readouterr().err


def test_help_names_the_run_controls_and_the_default_convention(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = flat(capsys.readouterr().out)
    assert "--stop-on-first-crash" in out and "run control" in out
    assert "radiological (default:" in out and "neurological" in out
    assert "143 terminated (SIGTERM)" in out


# --- start-up: no torch where none is needed ---------------------------------------------------

_NO_TORCH = "; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["convert", "--help"]], ids=lambda a: " ".join(a)
)
def test_help_and_version_import_no_torch(argv: list[str]) -> None:
    code = f"import sys; from t2starmap.cli.run import main; assert main({argv!r}) == 0" + _NO_TORCH
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


@pytest.mark.parametrize(
    "module",
    [
        "t2starmap.bids.layout",
        "t2starmap.fit.limits",
        "t2starmap.config",
        "t2starmap.bids.nifti",
        "t2starmap.bids.outputs",
        "t2starmap.report",
        "t2starmap.cli.convert",
        "t2starmap.convert.workflow",
    ],
)
def test_modules_import_without_torch(module: str) -> None:
    proc = python(f"import sys, {module}" + _NO_TORCH)
    assert proc.returncode == 0, proc.stderr


def test_usage_checks_import_torch_only_for_cuda(example: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from t2starmap.cli.run import build_parser; "
        "from t2starmap.config import settings_from_args; "
        f"a = build_parser().parse_args([{str(example)!r}, {str(tmp_path)!r}, 'participant', "
        "'--device', 'cpu']); settings_from_args(a, environ={})" + _NO_TORCH
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr


def test_a_convert_run_imports_no_torch(tmp_path: Path) -> None:
    argv = [
        "convert",
        str(tmp_path / "no-dicom"),
        str(tmp_path / "bids"),
        "--participant-label",
        "01",
    ]
    code = (
        f"import sys; from t2starmap.cli.run import main; assert main({argv!r}) == 66" + _NO_TORCH
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert "no-dicom" in proc.stderr
