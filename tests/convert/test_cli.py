"""``t2starmap convert`` end to end on synthetic DICOM: every vendor, skipped series, PHI,
overwrite, sessions, and every bad input with its exit code (input left untouched)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.cli.run import main
from t2starmap.sim.phantoms import Phantom
from tests.convert.helpers import VOXEL, LogRecords, checksums
from tests.support import synthetic_dicom

# --- one synthetic session with every vendor and some series that are not ME-GRE -------------

EXPECTED_ACQ = {
    "gremet2star": ("mag", "phase"),
    "mfgrekidney": ("mag", "real", "imag"),
    "FFEMET2star": ("mag", "phase"),
    "gremexa": ("mag",),
}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, small_phantom: Phantom):
    """DICOM of all vendors in one folder, converted once; (dicom, bids, log, before, rc)."""
    root = tmp_path_factory.mktemp("session")
    dicom = root / "dicom"
    synthetic_dicom.write_siemens_classic(dicom, small_phantom, series_number=2, voxel=VOXEL)
    synthetic_dicom.write_siemens_enhanced(dicom, small_phantom, series_number=8, voxel=VOXEL)
    synthetic_dicom.write_ge_classic(dicom, small_phantom, series_number=17, voxel=VOXEL)
    synthetic_dicom.write_philips_classic(dicom, small_phantom, series_number=501, voxel=VOXEL)
    for number, kind in [(20, "epi"), (21, "spin_echo"), (22, "single_echo"), (23, "derived")]:
        synthetic_dicom.write_other_series(dicom, kind, series_number=number)
    (dicom / "README.txt").write_text("exported from the scanner\n")
    before = checksums(dicom)
    handler = LogRecords()
    logger = logging.getLogger("t2starmap.convert")
    logger.addHandler(handler)
    try:
        rc = main(["convert", str(dicom), str(root / "bids"), "--participant-label", "01"])
    finally:
        logger.removeHandler(handler)
    return dicom, root / "bids", handler, before, rc


def _files(bids: Path, pattern: str = "*.nii.gz") -> list[Path]:
    return sorted((bids / "sub-01" / "anat").glob(pattern))


def test_all_vendors_convert_with_expected_names(session):
    _, bids, _, _, rc = session
    assert rc == 0
    names = {p.name for p in _files(bids)}
    expected = {
        f"sub-01_acq-{acq}_echo-{k}_part-{part}_MEGRE.nii.gz"
        for acq, parts in EXPECTED_ACQ.items()
        for part in parts
        for k in range(1, 5)
    }
    assert names == expected
    assert {p.name for p in _files(bids, "*.json")} == {
        n.replace(".nii.gz", ".json") for n in expected
    }


def test_skipped_series_are_logged_with_number_and_reason(session):
    log = session[2].text()
    assert "skipped series 20 'epi_series': single-echo EPI (TE 5 ms)" in log
    assert "skipped series 21 'spin_echo_series': spin echo" in log
    assert "skipped series 22 'single_echo_series': single echo time (5 ms)" in log
    assert "skipped series 23 'derived_series': derived image" in log
    assert "ignored 1 file(s) that are not DICOM images" in log
    assert "series 501 'FFE_ME T2star': ME-GRE, 4 echoes" in log
    assert "4 scanner-made map image(s) left out" in log


@pytest.mark.parametrize("acq", sorted(EXPECTED_ACQ))
def test_converted_data_equal_the_phantom(session, small_phantom, acq):
    """Every vendor path gives the phantom back: right echo order, geometry and scaling
    (Philips: a different rescale slope in every file)."""
    bids = session[1]
    ph = small_phantom
    assert ph.phase is not None
    for path in _files(bids, f"sub-01_acq-{acq}_*.nii.gz"):
        echo = int(path.name.split("_echo-")[1].split("_")[0]) - 1
        part = path.name.split("_part-")[1].split("_")[0]
        image = nib.Nifti1Image.from_filename(path)
        data = np.asarray(image.dataobj, dtype=np.float64)
        i, j, k = synthetic_dicom.phantom_index(image.affine, image.shape, VOXEL)
        complex_truth = ph.magnitude[i, j, k, echo] * np.exp(1j * ph.phase[i, j, k, echo])
        if part == "phase":
            error = np.abs(np.angle(np.exp(1j * (data - ph.phase[i, j, k, echo]))))
            assert error.max() < 2e-3, path.name
            continue
        truth = {
            "mag": np.abs(complex_truth),
            "real": complex_truth.real,
            "imag": complex_truth.imag,
        }[part]
        assert np.abs(data - truth).max() <= 0.55, path.name


def test_sidecars_have_numeric_echo_time_and_phase_units(session, small_phantom):
    for sidecar in _files(session[1], "*.json"):
        meta = json.loads(sidecar.read_text())
        echo = int(sidecar.name.split("_echo-")[1].split("_")[0])
        assert isinstance(meta["EchoTime"], float)
        assert math.isclose(meta["EchoTime"], small_phantom.echo_times[echo - 1], rel_tol=1e-6)
        if "_part-phase_" in sidecar.name:
            assert meta["Units"] == "rad"
            image = nib.Nifti1Image.from_filename(
                sidecar.with_name(sidecar.name.replace(".json", ".nii.gz"))
            )
            data = np.asarray(image.dataobj)
            assert data.min() >= -math.pi and data.max() < math.pi


def test_no_identifying_text_anywhere_in_the_output(session):
    bids = session[1]
    text = "\n".join(
        p.read_text()
        for p in sorted(bids.rglob("*"))
        if p.is_file() and p.suffix in (".json", ".tsv", "")
    )
    for value in synthetic_dicom.FAKE_PATIENT.values():
        for word in value.replace("^", " ").replace(",", " ").split():
            if len(word) > 3:
                assert word not in text, word
    for key in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "AcquisitionDateTime",
        "StudyDate",
    ):
        assert f'"{key}"' not in text


def test_dataset_files_and_participant(session):
    bids = session[1]
    description = json.loads((bids / "dataset_description.json").read_text())
    assert description["BIDSVersion"] and description["DatasetType"] == "raw"
    assert (bids / "README").exists()
    assert (bids / "participants.tsv").read_text() == "participant_id\nsub-01\n"
    assert not [p for p in bids.parent.iterdir() if p.name.startswith(".t2starmap")]


def test_input_left_untouched(session):
    dicom, _, _, before, _ = session
    assert checksums(dicom) == before


def test_result_passes_bids_validator(session):
    from t2starmap.bids.validate import validate_bids

    report = validate_bids(session[1])
    assert report.ok, [str(e) for e in report.errors]


# --- re-runs, sessions, overwrite -------------------------------------------------------------


def test_rerun_refuses_then_overwrite_replaces(tmp_path, siemens_dicom):
    bids = tmp_path / "bids"
    args = ["convert", str(siemens_dicom), str(bids), "--participant-label", "sub-01"]
    assert main(args) == 0
    stale = bids / "sub-01" / "anat" / "stale.txt"
    stale.write_text("from before")
    before = checksums(bids)
    assert main(args) == 64
    assert checksums(bids) == before
    assert main([*args, "--overwrite"]) == 0
    assert not stale.exists()
    assert (bids / "participants.tsv").read_text() == "participant_id\nsub-01\n"
    assert not [p for p in bids.iterdir() if p.name.startswith(".")]


def test_second_participant_and_sessions_extend_the_dataset(tmp_path, siemens_dicom):
    bids = tmp_path / "bids"
    base = ["convert", str(siemens_dicom), str(bids)]
    assert main([*base, "--participant-label", "01", "--session-label", "1"]) == 0
    description = (bids / "dataset_description.json").read_text()
    readme = (bids / "README").read_text() + "edited by the user\n"
    (bids / "README").write_text(readme)
    assert main([*base, "--participant-label", "01", "--session-label", "ses-2"]) == 0
    assert main([*base, "--participant-label", "02", "--session-label", "1"]) == 0
    assert (bids / "participants.tsv").read_text() == "participant_id\nsub-01\nsub-02\n"
    assert (bids / "README").read_text() == readme
    assert (bids / "dataset_description.json").read_text() == description
    names = sorted(p.name for p in (bids / "sub-01" / "ses-2" / "anat").glob("*.nii.gz"))
    assert names[0] == "sub-01_ses-2_echo-1_part-mag_MEGRE.nii.gz"
    assert len(names) == 6
    # a session-less conversion beside sessions is refused
    assert main([*base, "--participant-label", "01"]) == 64


def test_empty_existing_folder_becomes_a_dataset(tmp_path, siemens_dicom):
    bids = tmp_path / "bids"
    bids.mkdir()
    assert main(["convert", str(siemens_dicom), str(bids), "--participant-label", "01"]) == 0
    assert (bids / "dataset_description.json").exists()


def test_help_says_how_to_chain(capsys):
    assert main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert "t2starmap BIDS_DIR OUTPUT_DIR participant" in out
    assert "t2starmap convert DICOM_DIR BIDS_DIR --participant-label" in out


# --- bad inputs ----------------------------------------------------------------------------


def _run_bad(dicom: Path, bids: Path, code: int, capsys, *options: str) -> str:
    """Run ``convert DICOM BIDS *options``; check the exit code, that neither folder changed and
    that no temporary folder is left; return stderr."""
    before = checksums(dicom) if dicom.exists() else None
    bids_before = checksums(bids) if bids.exists() else None
    assert main(["convert", str(dicom), str(bids), *options]) == code
    if before is not None:
        assert checksums(dicom) == before
    assert (checksums(bids) if bids.exists() else None) == bids_before
    if bids.parent.exists():
        assert not [p for p in bids.parent.iterdir() if p.name.startswith(".t2starmap")]
    return capsys.readouterr().err


def test_missing_dicom_dir(tmp_path, capsys):
    err = _run_bad(tmp_path / "nope", tmp_path / "bids", 66, capsys, "--participant-label", "01")
    assert "nope does not exist" in err


def test_empty_dicom_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _run_bad(tmp_path / "empty", tmp_path / "bids", 66, capsys, "--participant-label", "01")
    assert "is empty" in err


def test_folder_without_dicom(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.dcm").write_bytes(b"not really DICOM")
    err = _run_bad(tmp_path / "docs", tmp_path / "bids", 66, capsys, "--participant-label", "01")
    assert "no readable DICOM image" in err


def test_no_megre_series_lists_what_was_found(tmp_path, capsys):
    dicom = tmp_path / "dicom"
    synthetic_dicom.write_other_series(dicom, "epi", series_number=5)
    synthetic_dicom.write_other_series(dicom, "single_echo", series_number=6)
    err = _run_bad(dicom, tmp_path / "bids", 66, capsys, "--participant-label", "01")
    assert "no multi-echo gradient-echo series" in err
    assert (
        "series 5 'epi_series': single-echo EPI" in err and "series 6 'single_echo_series'" in err
    )


@pytest.mark.parametrize("label", ["../x", "a_b", "01 02", ""])
def test_bad_labels(tmp_path, siemens_dicom, capsys, label):
    err = _run_bad(siemens_dicom, tmp_path / "bids", 64, capsys, "--participant-label", label)
    assert "letters and digits" in err


def test_bad_session_label(tmp_path, siemens_dicom, capsys):
    _run_bad(
        siemens_dicom,
        tmp_path / "bids",
        64,
        capsys,
        "--participant-label",
        "01",
        "--session-label",
        "../../etc",
    )


def test_missing_participant_label_is_a_usage_error(tmp_path, siemens_dicom, capsys):
    _run_bad(siemens_dicom, tmp_path / "bids", 64, capsys)


def test_bids_dir_inside_dicom_dir(siemens_dicom, capsys):
    err = _run_bad(siemens_dicom, siemens_dicom / "bids", 64, capsys, "--participant-label", "01")
    assert "must not be inside" in err


def test_dicom_in_sourcedata_of_the_dataset_is_fine(tmp_path, tiny_phantom):
    bids = tmp_path / "bids"
    dicom = bids / "sourcedata" / "sub-01"
    synthetic_dicom.write_siemens_classic(dicom, tiny_phantom)
    bids.joinpath("dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    before = checksums(dicom)
    assert main(["convert", str(dicom), str(bids), "--participant-label", "01"]) == 0
    assert checksums(dicom) == before
    assert len(list((bids / "sub-01" / "anat").glob("*.nii.gz"))) == 6


def test_dicom_inside_the_participant_folder_is_refused(tmp_path, tiny_phantom, capsys):
    bids = tmp_path / "bids"
    dicom = bids / "sub-01" / "dicom"
    synthetic_dicom.write_siemens_classic(dicom, tiny_phantom)
    bids.joinpath("dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    err = _run_bad(dicom, bids, 64, capsys, "--participant-label", "01", "--overwrite")
    assert "which would be written" in err


def test_existing_non_bids_folder(tmp_path, siemens_dicom, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("...")
    err = _run_bad(siemens_dicom, other, 64, capsys, "--participant-label", "01")
    assert "no dataset_description.json" in err


def test_bids_dir_is_a_file(tmp_path, siemens_dicom, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    _run_bad(siemens_dicom, target, 73, capsys, "--participant-label", "01")


def test_corrupt_file_is_named_and_the_rest_converts(tmp_path, tiny_phantom, capsys):
    dicom = tmp_path / "dicom"
    files = synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, series_number=2)
    synthetic_dicom.write_siemens_classic(
        dicom, tiny_phantom, series_number=10, protocol="other", with_phase=False
    )
    broken = files[4]  # one slice of series 2's magnitude
    broken.write_bytes(broken.read_bytes()[:-100])  # truncated pixel data
    garbage = dicom / "02_gre_me_t2star" / "garbage.IMA"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xffbroken")
    before = checksums(dicom)
    bids = tmp_path / "bids"
    assert main(["convert", str(dicom), str(bids), "--participant-label", "01"]) == 0
    err = capsys.readouterr().err
    assert f"corrupt DICOM file {broken}: pixel data truncated" in err
    assert "garbage.IMA" in err
    assert "refused series 2 'gre_me_t2star': ME-GRE but mag echo at 10 ms lacks 1 of 3" in err
    # series 2's phase lost its magnitude partner: skipped, not converted alone
    assert "skipped series 3 'gre_me_t2star'" in err
    names = sorted(p.name for p in (bids / "sub-01" / "anat").glob("*.nii.gz"))
    assert names == [f"sub-01_echo-{k}_part-mag_MEGRE.nii.gz" for k in (1, 2, 3)]
    assert checksums(dicom) == before


def test_only_incomplete_series_is_bad_data(tmp_path, tiny_phantom, capsys):
    dicom = tmp_path / "dicom"
    files = synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, with_phase=False)
    files[1].unlink()  # echo 1, slice 2: the series lacks a slice
    err = _run_bad(dicom, tmp_path / "bids", 65, capsys, "--participant-label", "01")
    assert "no complete multi-echo gradient-echo series" in err
    assert "lacks 1 of 3 slices" in err


def test_dcm2niix_failure_leaves_nothing_behind(tmp_path, siemens_dicom, capsys, monkeypatch):
    from t2starmap.convert import dcm2niix

    bids = tmp_path / "bids"
    assert main(["convert", str(siemens_dicom), str(bids), "--participant-label", "01"]) == 0
    monkeypatch.setattr(dcm2niix, "DCM2NIIX_FLAGS", ("--no-such-flag",))
    err = _run_bad(siemens_dicom, bids, 65, capsys, "--participant-label", "02")
    assert "dcm2niix could not convert series 2" in err
    assert not (bids / "sub-02").exists()


def test_dcm2niix_is_the_packaged_binary_even_off_path(monkeypatch):
    import dcm2niix as package

    from t2starmap.convert import dcm2niix

    monkeypatch.setenv("PATH", "/nonexistent")
    assert Path(dcm2niix.dcm2niix_command()) == Path(package.bin_path)


def test_dcm2niix_falls_back_to_the_script_beside_the_interpreter(monkeypatch, tmp_path):
    import sys

    import dcm2niix as package

    from t2starmap.convert import dcm2niix

    beside = Path(sys.executable).parent / "dcm2niix"
    if not beside.exists():
        pytest.skip("dcm2niix is not installed beside this interpreter (no virtual environment)")
    monkeypatch.setattr(package, "bin_path", tmp_path / "missing")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert dcm2niix.dcm2niix_command() == str(beside)


def test_readonly_input_is_fine(tmp_path, siemens_dicom):
    for path in [siemens_dicom, *siemens_dicom.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        assert (
            main(
                ["convert", str(siemens_dicom), str(tmp_path / "bids"), "--participant-label", "01"]
            )
            == 0
        )
    finally:
        for path in [siemens_dicom, *siemens_dicom.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(tmp_path / "bids")


def test_parallel_conversions_into_one_new_dataset(tmp_path, siemens_dicom):
    """One job per participant at once (a SLURM array): every row lands, nothing is lost."""
    from concurrent.futures import ThreadPoolExecutor

    bids = tmp_path / "bids"
    labels = ["01", "02", "03", "04", "05", "06"]
    with ThreadPoolExecutor(len(labels)) as pool:
        codes = list(
            pool.map(
                lambda label: main(
                    ["convert", str(siemens_dicom), str(bids), "--participant-label", label, "-q"]
                ),
                labels,
            )
        )
    assert codes == [0] * len(labels)
    rows = (bids / "participants.tsv").read_text().splitlines()
    assert rows[0] == "participant_id" and sorted(rows[1:]) == [f"sub-{x}" for x in labels]
    assert sorted(p.name for p in bids.iterdir() if p.name.startswith("sub-")) == [
        f"sub-{x}" for x in labels
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".t2starmap")]
    assert not [p for p in bids.iterdir() if p.name.startswith(".")]


def test_repeated_protocol_becomes_runs(tmp_path, tiny_phantom):
    from t2starmap.bids.validate import validate_bids

    dicom, bids = tmp_path / "dicom", tmp_path / "bids"
    synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, series_number=2)
    synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, series_number=4)
    assert main(["convert", str(dicom), str(bids), "--participant-label", "01"]) == 0
    names = sorted(p.name for p in (bids / "sub-01" / "anat").glob("*.nii.gz"))
    assert names == sorted(
        f"sub-01_run-{r}_echo-{k}_part-{p}_MEGRE.nii.gz"
        for r in (1, 2)
        for k in (1, 2, 3)
        for p in ("mag", "phase")
    )
    report = validate_bids(bids)
    assert report.ok, [str(e) for e in report.errors]


def test_series_missing_an_echo_is_refused_and_others_convert(tmp_path, tiny_phantom, capsys):
    dicom = tmp_path / "dicom"
    files = synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, series_number=2)
    synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, series_number=10, protocol="other")
    n_slices = tiny_phantom.magnitude.shape[2]
    for path in files[n_slices : 2 * n_slices]:  # every slice of echo 2 of the magnitude
        path.unlink()
    before = checksums(dicom)
    assert main(["convert", str(dicom), str(tmp_path / "bids"), "--participant-label", "01"]) == 0
    err = capsys.readouterr().err
    assert "refused series 2 'gre_me_t2star': ME-GRE but echo number(s) 2 missing" in err
    names = sorted(p.name for p in (tmp_path / "bids" / "sub-01" / "anat").glob("*.nii.gz"))
    assert len(names) == 6 and all("_acq-" not in n for n in names)
    assert checksums(dicom) == before


def test_unwritable_bids_parent_is_exit_73(tmp_path, siemens_dicom, capsys, monkeypatch):
    from t2starmap.convert import workflow

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(workflow.tempfile, "mkdtemp", refuse)
    err = _run_bad(siemens_dicom, tmp_path / "bids", 73, capsys, "--participant-label", "01")
    assert f"cannot write in {tmp_path}: Permission denied" in err


def test_enhanced_file_mixing_magnitude_and_phase_is_refused(tmp_path, tiny_phantom, capsys):
    """A known limit: dcm2niix stacks such frames into one volume; refuse, never mislabel."""
    dicom = tmp_path / "dicom"
    synthetic_dicom.write_siemens_enhanced(dicom, tiny_phantom, with_phase_frames=True)
    err = _run_bad(dicom, tmp_path / "bids", 65, capsys, "--participant-label", "01")
    assert "series 8 'gre_me_xa': ME-GRE, 3 echoes (4, 10, 16 ms), mag/phase" in err
    assert "dcm2niix wrote 6 slices for one echo of series 8 'gre_me_xa' (mag)" in err


def test_acquisition_failing_in_dcm2niix_is_left_out_whole(
    tmp_path, tiny_phantom, capsys, monkeypatch
):
    from t2starmap.convert import staging
    from t2starmap.errors import BadDataError

    dicom, bids = tmp_path / "dicom", tmp_path / "bids"
    synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, series_number=2, protocol="first")
    synthetic_dicom.write_siemens_classic(dicom, tiny_phantom, series_number=10, protocol="second")
    real = staging.run_dcm2niix

    def flaky(source, out_dir, *, label, **kwargs):
        if label == "series 11 'second' (phase)":  # after its magnitude was converted
            raise BadDataError(f"dcm2niix could not convert {label} (exit 1): simulated")
        return real(source, out_dir, label=label, **kwargs)

    monkeypatch.setattr(staging, "run_dcm2niix", flaky)
    assert main(["convert", str(dicom), str(bids), "--participant-label", "01"]) == 0
    assert "dcm2niix could not convert series 11 'second' (phase)" in capsys.readouterr().err
    names = sorted(p.name for p in (bids / "sub-01" / "anat").iterdir())
    assert len(names) == 12 and all(n.startswith("sub-01_acq-first_") for n in names)
