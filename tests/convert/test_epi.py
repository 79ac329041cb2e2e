"""Multi-echo EPI and field maps end to end: synthetic DICOM of each vendor's layout ->
``t2starmap convert`` (dcm2niix) -> func/ and fmap/, validator clean, the values kept."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.cli.run import main
from t2starmap.sim.phantoms import Phantom, make_phantom
from tests.convert.helpers import VOXEL, LogRecords
from tests.support import synthetic_dicom, synthetic_epi
from tests.support.synthetic_dicom import FAKE_PATIENT

VOLUMES = 3
ECHO_TIMES = (0.012, 0.030, 0.048)

# participant label -> (writer, its options, task label, protocol, tolerance of the values)
VENDORS: dict[str, tuple[Callable[..., list[Path]], dict, str, str, float]] = {
    "mosaic": (
        synthetic_epi.write_siemens_mosaic, {"phase": True}, "cmrrmbep2dMErest",
        "cmrr_mbep2d_ME_rest", 0.0,
    ),
    "enhanced": (
        synthetic_epi.write_enhanced_epi, {}, "FEEPIMEenhanced", "FEEPI ME enhanced", 0.0
    ),
    "xa": (
        synthetic_epi.write_enhanced_epi, {"per_volume": True, "protocol": "ep2d_me_xa"},
        "ep2dmexa", "ep2d_me_xa", 0.0,
    ),
    "ge": (synthetic_epi.write_ge_epi, {}, "MEEPIrest", "ME-EPI rest", 0.0),
    # Philips stores value / slope rounded, with a slope of 0.5 to 0.7 per file
    "philips": (synthetic_epi.write_philips_epi, {}, "FEEPImultiecho", "FE_EPI multiecho", 0.5),
}  # fmt: skip


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(
        (12, 10, 5), ECHO_TIMES, t2star_range=(0.02, 0.08), seed=21, with_phase=True
    )


@pytest.fixture(scope="module")
def fmap_phantom() -> Phantom:
    return make_phantom((12, 10, 5), (0.00519, 0.00765), seed=22, with_phase=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, phantom: Phantom, fmap_phantom: Phantom):
    """One dataset: a participant per EPI layout (the mosaic with its phase series), one
    with ME-GRE, two EPI runs and a field map side by side, the field map shimmed as run 1."""
    root = tmp_path_factory.mktemp("epi")
    bids, logs = root / "bids", {}
    for label, (writer, options, _, _, _) in VENDORS.items():
        writer(root / label, phantom, n_volumes=VOLUMES, voxel=VOXEL, **options)
    mixed = root / "mixed"
    synthetic_dicom.write_siemens_classic(mixed, phantom, voxel=VOXEL)
    shim, other = (-2204, 1453, 3300, 186, -49, 3, 9, 290), (-2204, 1453, 3300, 180, -49, 3, 9, 0)
    for number, setting in ((10, shim), (12, other)):
        run = synthetic_epi.write_siemens_mosaic(
            mixed, phantom, n_volumes=VOLUMES, voxel=VOXEL, series_number=number
        )
        synthetic_epi.set_shim(run, setting)
    fmap = synthetic_epi.write_siemens_fieldmap(mixed, fmap_phantom, voxel=VOXEL)
    synthetic_epi.set_shim(fmap, shim)
    for label in (*VENDORS, "mixed"):
        handler = LogRecords()
        logger = logging.getLogger("t2starmap.convert")
        logger.addHandler(handler)
        try:
            rc = main(["convert", str(root / label), str(bids), "--participant-label", label])
        finally:
            logger.removeHandler(handler)
        assert rc == 0, handler.text()
        logs[label] = handler.text()
    return bids, logs


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


@pytest.mark.parametrize("label", sorted(VENDORS))
def test_every_layout_becomes_one_4d_run_per_echo_with_its_values(converted, phantom, label):
    bids, _ = converted
    _, _, task, protocol, tolerance = VENDORS[label]
    func = bids / f"sub-{label}" / "func"
    part = "_part-mag" if label == "mosaic" else ""
    names = sorted(p.name for p in func.glob("*_bold.nii.gz"))
    expected = [f"sub-{label}_task-{task}_echo-{k}{part}_bold.nii.gz" for k in (1, 2, 3)]
    if label == "mosaic":
        expected += [n.replace("_part-mag", "_part-phase") for n in expected]
    assert names == sorted(expected)
    for k, te in enumerate(ECHO_TIMES, start=1):
        path = func / f"sub-{label}_task-{task}_echo-{k}{part}_bold.nii.gz"
        image = nib.Nifti1Image.from_filename(path)
        assert image.shape == (12, 10, 5, VOLUMES)
        data = np.asarray(image.dataobj, dtype=np.float64)
        i, j, kk = synthetic_dicom.phantom_index(image.affine, image.shape, VOXEL)
        for v in range(VOLUMES):
            truth = synthetic_epi.expected_volume(phantom, v, k - 1, VOLUMES)[i, j, kk]
            assert np.max(np.abs(data[..., v] - truth)) <= tolerance + 1e-3, (label, k, v)
        meta = _sidecar(path)
        assert math.isclose(meta["EchoTime"], te, abs_tol=1e-7)
        assert meta["RepetitionTime"] == pytest.approx(synthetic_epi.TR_MS / 1000)
        assert meta["TaskName"] == protocol
        text = json.dumps(meta)
        assert not [v for v in FAKE_PATIENT.values() if len(v) > 3 and v in text]


def test_epi_phase_is_in_radians_and_matches_the_phantom(converted, phantom):
    func = converted[0] / "sub-mosaic" / "func"
    for k in (1, 2, 3):
        path = func / f"sub-mosaic_task-cmrrmbep2dMErest_echo-{k}_part-phase_bold.nii.gz"
        image = nib.Nifti1Image.from_filename(path)
        data = np.asarray(image.dataobj, dtype=np.float64)
        assert data.shape[3] == VOLUMES and np.abs(data).max() <= math.pi
        assert _sidecar(path)["Units"] == "rad"
        i, j, kk = synthetic_dicom.phantom_index(image.affine, image.shape, VOXEL)
        assert phantom.phase is not None
        truth = phantom.phase[..., k - 1][i, j, kk]
        error = np.angle(np.exp(1j * (data[..., 0] - truth)))
        assert np.max(np.abs(error)) <= 2 * math.pi / 4096 + 1e-4


def test_fieldmap_goes_to_fmap_beside_megre_and_bold(converted, fmap_phantom):
    bids, logs = converted
    sub = bids / "sub-mixed"
    assert sorted(p.name for p in (sub / "fmap").glob("*.nii.gz")) == [
        "sub-mixed_magnitude1.nii.gz",
        "sub-mixed_magnitude2.nii.gz",
        "sub-mixed_phasediff.nii.gz",
    ]
    assert len(list((sub / "anat").glob("*_MEGRE.nii.gz"))) == 6
    assert len(list((sub / "func").glob("*_bold.nii.gz"))) == 6
    phasediff = sub / "fmap" / "sub-mixed_phasediff.nii.gz"
    meta = _sidecar(phasediff)
    assert (meta["EchoTime1"], meta["EchoTime2"], meta["Units"]) == (0.00519, 0.00765, "rad")
    # intended for run 1 only: run 2 was acquired with another shim
    run1 = [f"bids::sub-mixed/func/sub-mixed_task-cmrrmbep2dMErest_run-1_echo-{k}_bold.nii.gz"
            for k in (1, 2, 3)]  # fmt: skip
    assert meta["IntendedFor"] == run1
    assert all((bids / uri[len("bids::") :]).is_file() for uri in run1)
    image = nib.Nifti1Image.from_filename(phasediff)
    data = np.asarray(image.dataobj, dtype=np.float64)
    i, j, k = synthetic_dicom.phantom_index(image.affine, image.shape, VOXEL)
    truth = synthetic_epi.fieldmap_difference(fmap_phantom)[i, j, k]
    assert np.max(np.abs(np.angle(np.exp(1j * (data - truth))))) <= 2 * math.pi / 4096 + 1e-4
    for n, te in ((1, 0.00519), (2, 0.00765)):
        magnitude = _sidecar(sub / "fmap" / f"sub-mixed_magnitude{n}.nii.gz")
        assert magnitude["EchoTime"] == te and magnitude["IntendedFor"] == run1
    assert "a dual-echo field map (magnitude1/2 + phasediff), written to fmap/" in logs["mixed"]
    assert (
        "sub-mixed: IntendedFor the 3 BOLD image(s) acquired with the same shim "
        "(ShimSetting -2204, 1453, 3300, 186, -49, 3, 9, 290)"
    ) in logs["mixed"]


def test_the_validator_accepts_the_dataset(converted):
    from t2starmap.bids.validate import validate_bids

    report = validate_bids(converted[0])
    assert report.ok, [str(e) for e in report.errors]


@pytest.mark.slow
def test_participant_level_fits_the_megre_and_the_bold_runs(converted, tmp_path):
    """The converted dataset end to end: the ME-GRE set into anat/, both multi-echo BOLD
    runs into func/ (issue 28 part 2), the input's field maps left alone."""
    out = tmp_path / "out"
    argv = [str(converted[0]), str(out), "participant", "--participant-label", "mixed"]
    assert main([*argv, "--skip-bids-validation", "-q"]) == 0
    anat = [p.name for p in out.rglob("anat/*_T2starmap.nii.gz") if "_desc-" not in p.name]
    assert anat == ["sub-mixed_T2starmap.nii.gz"]
    inputs = sorted((converted[0] / "sub-mixed" / "func").glob("*_echo-1_bold.nii.gz"))
    runs = [p.name.replace("_echo-1_bold.nii.gz", "") for p in inputs]
    assert len(runs) == 2
    func = sorted(
        p.name
        for p in (out / "sub-mixed" / "func").glob("*_T2starmap.nii.gz")
        if "_desc-" not in p.name
    )
    assert func == [f"{run}_T2starmap.nii.gz" for run in runs]
    # the input's field maps are not fitted; the field map the ME-GRE fit's through-slice
    # correction used is published in fmap/ as its own (issue 27)
    made = [p.name for p in out.rglob("*") if p.parent.name == "fmap"]
    assert all(n.startswith("sub-mixed_desc-megre_") for n in made), made


def test_task_label_option_and_single_echo_epi_skipped(tmp_path, phantom, convert_log):
    dicom, bids = tmp_path / "dicom", tmp_path / "bids"
    synthetic_epi.write_ge_epi(dicom, phantom, n_volumes=2, voxel=VOXEL)
    single = make_phantom((12, 10, 5), (0.030,), seed=3)
    synthetic_epi.write_ge_epi(dicom, single, n_volumes=2, series_number=9, protocol="sbref")
    argv = ["convert", str(dicom), str(bids), "--participant-label", "01"]
    assert main([*argv, "--task-label", "rest"]) == 0
    names = sorted(p.name for p in (bids / "sub-01" / "func").glob("*.nii.gz"))
    assert names == [f"sub-01_task-rest_echo-{k}_bold.nii.gz" for k in (1, 2, 3)]
    assert _sidecar(bids / "sub-01" / "func" / names[0])["TaskName"] == "rest"
    log = convert_log.text()
    assert "skipped series 9 'sbref': single-echo EPI (TE 30 ms): one echo time gives no T2*" in log
    assert main([*argv, "--task-label", "rest_1", "--overwrite"]) == 64


def test_a_run_stopped_early_is_refused_and_nothing_written(tmp_path, phantom, capsys):
    dicom, bids = tmp_path / "dicom", tmp_path / "bids"
    files = synthetic_epi.write_siemens_mosaic(dicom, phantom, n_volumes=2, voxel=VOXEL)
    files[-1].unlink()  # the last echo of the last volume never arrived
    assert main(["convert", str(dicom), str(bids), "--participant-label", "01"]) == 65
    err = capsys.readouterr().err
    assert "refused series 10 'cmrr_mbep2d_ME_rest': ME-EPI but echoes hold different" in err
    assert not bids.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dicom"]


def test_ge_research_echoes_without_echo_times_are_refused(tmp_path, phantom, capsys):
    """GE research multi-echo EPI: every image says the first TE and echo number 1, only the
    private echo count (0019,107E) says there were three: refused (exit 65), not 'single echo'."""
    import pydicom

    dicom = tmp_path / "dicom"
    for path in synthetic_epi.write_ge_epi(dicom, phantom, n_volumes=2, voxel=VOXEL):
        ds = pydicom.dcmread(path)
        ds.EchoTime, ds.EchoNumbers = 12.0, 1
        ds.private_block(0x0019, "GEMS_ACQU_01").add_new(0x7E, "SS", 3)
        ds.save_as(path, enforce_file_format=True)
    assert main(["convert", str(dicom), str(tmp_path / "bids"), "--participant-label", "1"]) == 65
    assert "GE says 3 echoes but every image has TE 12 ms" in capsys.readouterr().err
    assert not (tmp_path / "bids").exists()


@pytest.mark.parametrize(
    ("fmap_shim", "run_shim", "said"),
    [
        (None, None, "its sidecars carry no single ShimSetting"),
        ((1, 2, 3, 4, 5, 6, 7, 8), (1, 2, 3, 4, 5, 6, 7, 9), "no BOLD run of this conversion"),
    ],
)
def test_no_intended_for_without_a_shared_shim(
    tmp_path, phantom, fmap_phantom, convert_log, fmap_shim, run_shim, said
):
    dicom, bids = tmp_path / "dicom", tmp_path / "bids"
    run = synthetic_epi.write_siemens_mosaic(dicom, phantom, n_volumes=2, voxel=VOXEL)
    fmap = synthetic_epi.write_siemens_fieldmap(dicom, fmap_phantom, voxel=VOXEL)
    if fmap_shim is not None:
        synthetic_epi.set_shim(fmap, fmap_shim)
        synthetic_epi.set_shim(run, run_shim)
    assert main(["convert", str(dicom), str(bids), "--participant-label", "01"]) == 0
    for path in (bids / "sub-01" / "fmap").glob("*.json"):
        assert "IntendedFor" not in json.loads(path.read_text())
    assert f"sub-01: no IntendedFor: {said}" in convert_log.text()


def test_help_names_the_new_outputs(capsys):
    assert main(["convert", "--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("--task-label", "func/*_task-<label>", "fmap/*_magnitude1", "ShimSetting"):
        assert needle in text, needle
