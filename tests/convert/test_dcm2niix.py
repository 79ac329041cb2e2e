"""Running dcm2niix (t2starmap.convert.dcm2niix): the argument list, the outputs returned,
failures carrying dcm2niix's own words, the executable looked up. A fake executable stands in
where our handling is under test; the real dcm2niix converts one synthetic series."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.convert import dcm2niix as d2n
from t2starmap.convert.dcm2niix import DCM2NIIX_FLAGS, Output, dcm2niix_command, run_dcm2niix
from t2starmap.errors import BadDataError
from t2starmap.sim.phantoms import Phantom
from tests.convert.helpers import VOXEL, LogRecords, checksums
from tests.support import synthetic_dicom


def fake_dcm2niix(
    tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch, *, name: str = "dcm2niix"
) -> Path:
    """A Python script used as the dcm2niix executable. ``body`` runs with ``argv``, ``out``
    (the folder after ``-o``) and ``record`` (argv.json beside the script) at hand."""
    script = tmp_path / "fake-bin" / name
    script.parent.mkdir(parents=True, exist_ok=True)
    header = textwrap.dedent(
        f"""\
        #!{sys.executable}
        import json, sys
        from pathlib import Path
        argv = sys.argv[1:]
        out = Path(argv[argv.index("-o") + 1])
        record = Path({str(script.parent / "argv.json")!r})
        """
    )
    script.write_text(header + textwrap.dedent(body))
    script.chmod(0o755)
    monkeypatch.setattr(d2n, "dcm2niix_command", lambda: str(script))
    return script


WRITE_ONE = """
record.write_text(json.dumps(argv))
(out / "2_1.nii.gz").write_bytes(b"image")
(out / "2_1.json").write_text("{}")
(out / "2_2.nii.gz").write_bytes(b"image")
(out / "2_2.json").write_text("{}")
print("Chris Rorden's dcm2niiX version v1.0 (fake)")
print("Warning: Unable to determine slice direction")
"""


# --- the command ---------------------------------------------------------------------------


def test_flags_are_the_documented_ones() -> None:
    pairs = dict(zip(DCM2NIIX_FLAGS[::2], DCM2NIIX_FLAGS[1::2], strict=True))
    assert pairs == {
        "-b": "y",
        "-ba": "y",
        "-z": "y",
        "-f": "%s_%e",
        "-i": "n",
        "-m": "n",
        "-l": "o",
    }


def test_argument_list_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One argument per item, no shell: a source folder with spaces and shell syntax is passed
    through as it is. The output folder is created; outputs come back sorted, with sidecars."""
    fake_dcm2niix(tmp_path, WRITE_ONE, monkeypatch)
    source = tmp_path / "my dicom $(touch pwned); rm -rf x"
    source.mkdir()
    out = tmp_path / "work" / "series-2"
    outputs = run_dcm2niix(source, out, label="series 2")
    argv = json.loads((tmp_path / "fake-bin" / "argv.json").read_text())
    assert argv == [*DCM2NIIX_FLAGS, "-o", str(out), str(source)]
    assert outputs == [
        Output(out / "2_1.nii.gz", out / "2_1.json"),
        Output(out / "2_2.nii.gz", out / "2_2.json"),
    ]
    assert not (Path.cwd() / "pwned").exists() and not (source / "pwned").exists()


def test_dcm2niix_output_is_logged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    convert_log: LogRecords,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its warnings at INFO (shown by default with -v), everything else at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="t2starmap.convert")
    fake_dcm2niix(tmp_path, WRITE_ONE, monkeypatch)
    run_dcm2niix(tmp_path, tmp_path / "out", label="series 2")
    records = [r for r in convert_log.records if "on series 2" in r.getMessage()]
    levels = {r.getMessage(): r.levelno for r in records}
    assert levels == {
        "dcm2niix on series 2: Chris Rorden's dcm2niiX version v1.0 (fake)": logging.DEBUG,
        "dcm2niix on series 2: Warning: Unable to determine slice direction": logging.INFO,
    }


# --- failures ------------------------------------------------------------------------------


def test_non_zero_exit_carries_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit code, the series' label and the last three lines of stderr, on one line, even
    when dcm2niix wrote an image before failing."""
    fake_dcm2niix(
        tmp_path,
        """
        (out / "2_1.nii.gz").write_bytes(b"image")
        (out / "2_1.json").write_text("{}")
        print("Converting series", flush=True)
        for line in ("one", "two", "three", "Error: slices not stacked", "Error: bye"):
            print(line, file=sys.stderr)
        sys.exit(4)
        """,
        monkeypatch,
    )
    with pytest.raises(BadDataError) as caught:
        run_dcm2niix(tmp_path, tmp_path / "out", label="series 7 (gre)")
    assert str(caught.value) == (
        "dcm2niix could not convert series 7 (gre) (exit 4): "
        "three | Error: slices not stacked | Error: bye"
    )


def test_stdout_used_when_stderr_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dcm2niix(tmp_path, "print('No valid DICOM images were found')\nsys.exit(2)\n", monkeypatch)
    with pytest.raises(BadDataError, match=r"\(exit 2\): No valid DICOM images were found$"):
        run_dcm2niix(tmp_path, tmp_path / "out", label="series 3")


def test_success_without_images_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dcm2niix exits 0 when it finds nothing to convert: that is no success here."""
    fake_dcm2niix(tmp_path, "", monkeypatch)
    with pytest.raises(BadDataError, match=r"could not convert series 3 \(exit 0\): no output$"):
        run_dcm2niix(tmp_path, tmp_path / "out", label="series 3")


def test_image_without_sidecar_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dcm2niix(
        tmp_path,
        '(out / "5_1.nii.gz").write_bytes(b"x")\n(out / "5_1.json").write_text("{}")\n'
        '(out / "5_2.nii.gz").write_bytes(b"x")\n',
        monkeypatch,
    )
    with pytest.raises(BadDataError, match=r"^dcm2niix wrote 5_2.nii.gz for series 5 without"):
        run_dcm2niix(tmp_path, tmp_path / "out", label="series 5")


# --- finding the executable ------------------------------------------------------------------


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_dcm2niix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """An environment with no dcm2niix: the package's binary missing, nothing beside the
    interpreter, nothing on PATH. Returns the stand-in package to put a binary into."""
    package = types.ModuleType("dcm2niix")
    package.bin_path = str(tmp_path / "package" / "dcm2niix")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dcm2niix", package)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    return package


def test_missing_binary(no_dcm2niix: types.ModuleType) -> None:
    with pytest.raises(RuntimeError, match=r"^dcm2niix is not installed \(pip install dcm2niix\)"):
        dcm2niix_command()


def test_lookup_order(tmp_path: Path, no_dcm2niix: types.ModuleType) -> None:
    """The package's binary first, then the one beside the interpreter, then PATH."""
    on_path = executable(tmp_path / "path" / "dcm2niix")
    assert dcm2niix_command() == str(on_path)
    beside = executable(tmp_path / "venv" / "bin" / "dcm2niix")
    assert dcm2niix_command() == str(beside)
    packaged = executable(Path(no_dcm2niix.bin_path))
    assert dcm2niix_command() == str(packaged)


def test_package_binary_that_is_not_executable_is_passed_over(
    tmp_path: Path, no_dcm2niix: types.ModuleType
) -> None:
    packaged = Path(no_dcm2niix.bin_path)
    packaged.parent.mkdir(parents=True)
    packaged.write_text("not a program")
    on_path = executable(tmp_path / "path" / "dcm2niix")
    assert dcm2niix_command() == str(on_path)


def test_missing_binary_while_running(no_dcm2niix: types.ModuleType, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        run_dcm2niix(tmp_path, tmp_path / "out", label="series 2")


# --- the real dcm2niix -----------------------------------------------------------------------


def test_real_dcm2niix_on_synthetic_series(tmp_path: Path, tiny_phantom: Phantom) -> None:
    """Nine Siemens magnitude files (3 slices x 3 echoes): three gzipped images named by
    series and echo, anonymised sidecars with EchoTime in seconds, the phantom's signal."""
    files = synthetic_dicom.write_siemens_classic(
        tmp_path / "dicom", tiny_phantom, with_phase=False, voxel=VOXEL
    )
    series_dir = files[0].parent
    before = checksums(tmp_path / "dicom")
    outputs = run_dcm2niix(series_dir, tmp_path / "out", label="series 2")
    assert [o.nifti.name for o in outputs] == ["2_1.nii.gz", "2_2.nii.gz", "2_3.nii.gz"]
    echo_times = []
    for output in outputs:
        text = output.sidecar.read_text()
        sidecar = json.loads(text)
        # -ba y drops the patient fields; institution and station are for the BIDS step.
        patient = {k: v for k, v in synthetic_dicom.FAKE_PATIENT.items() if k.startswith("Patient")}
        assert not set(patient) & set(sidecar), sorted(sidecar)
        for value in patient.values():
            assert len(value) <= 4 or value not in text, value
        assert "Jane" not in text
        echo_times.append(sidecar["EchoTime"])
    assert echo_times == pytest.approx(list(tiny_phantom.echo_times))
    first = nib.Nifti1Image.from_filename(outputs[0].nifti)
    assert first.shape == tiny_phantom.t2star.shape
    i, j, k = synthetic_dicom.phantom_index(first.affine, first.shape, VOXEL)
    data = np.asarray(first.dataobj, dtype=np.float64)
    truth = tiny_phantom.magnitude[i, j, k, 0].astype(np.float64)
    assert np.corrcoef(data.ravel(), truth.ravel())[0, 1] > 0.999
    assert checksums(tmp_path / "dicom") == before, "dcm2niix changed its input"
