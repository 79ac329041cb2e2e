"""Conversion of the real scanner data in ``../shared/data/dicom`` (skipped without it).

One BIDS dataset, one participant per vendor data set: expected names, echo counts,
EchoTime values, phase in radians, validator clean, the DICOM left as it was. The two
Siemens gre_field_mapping sets are field maps (fmap/), the others ME-GRE (anat/).
"""

from __future__ import annotations

import json
import logging
import math

import nibabel as nib
import numpy as np
import pytest

from t2starmap.cli.run import main
from tests.convert.helpers import SHARED_DICOM, LogRecords, checksums
from tests.support.files import missing_data_reason

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason=missing_data_reason(SHARED_DICOM)),
]

# participant label -> (folder, echo times in s, parts); the field maps' parts are fmap suffixes
CASES = {
    "phantom": ("siemens-prisma-megre-phantom", (0.004, 0.010, 0.016), ("mag", "phase")),
    "ge": (
        "ge-mr750-kidney-megre",
        tuple(round(0.0046 + 0.004612 * k, 6) for k in range(12)),
        ("mag", "real", "imag"),
    ),
    "fmap": ("siemens-fieldmap-dual-echo", (0.00519, 0.00765), ("phasediff",)),
    "xa": ("siemens-xa30-enhanced-dual-echo", (0.010, 0.01246), ("phasediff",)),
}
MEGRE = ("phantom", "ge")
FIELDMAPS = ("fmap", "xa")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    bids = tmp_path_factory.mktemp("real") / "bids"
    logs = {}
    before = {label: checksums(SHARED_DICOM / folder) for label, (folder, _, _) in CASES.items()}
    for label, (folder, _, _) in CASES.items():
        handler = LogRecords()
        logger = logging.getLogger("t2starmap.convert")
        logger.addHandler(handler)
        try:
            rc = main(
                ["convert", str(SHARED_DICOM / folder), str(bids), "--participant-label", label]
            )
        finally:
            logger.removeHandler(handler)
        assert rc == 0, handler.text()
        logs[label] = handler.text()
    return bids, logs, before


@pytest.mark.parametrize("label", sorted(MEGRE))
def test_names_echo_times_and_parts(converted, label):
    bids, _, _ = converted
    _, echo_times, parts = CASES[label]
    anat = bids / f"sub-{label}" / "anat"
    names = sorted(p.name for p in anat.glob("*.nii.gz"))
    assert names == sorted(
        f"sub-{label}_echo-{k}_part-{part}_MEGRE.nii.gz"
        for k in range(1, len(echo_times) + 1)
        for part in parts
    )
    for k, te in enumerate(echo_times, start=1):
        for part in parts:
            meta = json.loads((anat / f"sub-{label}_echo-{k}_part-{part}_MEGRE.json").read_text())
            assert isinstance(meta["EchoTime"], float)
            assert math.isclose(meta["EchoTime"], te, abs_tol=2e-6)
            assert "PatientName" not in meta and "InstitutionName" not in meta
            assert ("Units" in meta) == (part == "phase")


def test_siemens_phase_is_in_radians(converted):
    anat = converted[0] / "sub-phantom" / "anat"
    for k in (1, 2, 3):
        path = anat / f"sub-phantom_echo-{k}_part-phase_MEGRE.nii.gz"
        data = np.asarray(nib.Nifti1Image.from_filename(path).dataobj)
        assert data.dtype == np.float32
        assert -math.pi <= data.min() < -3.0 and 3.0 < data.max() < math.pi
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert meta["Units"] == "rad"


def test_ge_magnitude_matches_real_and_imaginary(converted):
    anat = converted[0] / "sub-ge" / "anat"

    def load(part: str) -> np.ndarray:
        path = anat / f"sub-ge_echo-1_part-{part}_MEGRE.nii.gz"
        return np.asarray(nib.Nifti1Image.from_filename(path).dataobj, dtype=np.float64)

    mag, real, imag = load("mag"), load("real"), load("imag")
    tissue = mag > np.percentile(mag, 75)
    ratio = np.median(np.hypot(real, imag)[tissue] / mag[tissue])
    assert 0.9 < ratio < 1.1


@pytest.mark.parametrize("label", sorted(FIELDMAPS))
def test_dual_echo_field_maps_go_to_fmap(converted, label):
    bids, logs, _ = converted
    _, (te1, te2), _ = CASES[label]
    sub = bids / f"sub-{label}"
    assert not (sub / "anat").exists()
    assert sorted(p.name for p in (sub / "fmap").iterdir()) == sorted(
        f"sub-{label}_{suffix}{ext}"
        for suffix in ("magnitude1", "magnitude2", "phasediff")
        for ext in (".json", ".nii.gz")
    )
    meta = json.loads((sub / "fmap" / f"sub-{label}_phasediff.json").read_text())
    assert math.isclose(meta["EchoTime1"], te1, abs_tol=2e-6)
    assert math.isclose(meta["EchoTime2"], te2, abs_tol=2e-6)
    assert meta["Units"] == "rad" and "IntendedFor" not in meta
    assert "PatientName" not in meta and "InstitutionName" not in meta
    for n, te in ((1, te1), (2, te2)):
        magnitude = json.loads((sub / "fmap" / f"sub-{label}_magnitude{n}.json").read_text())
        assert math.isclose(magnitude["EchoTime"], te, abs_tol=2e-6)
    phase = np.asarray(
        nib.Nifti1Image.from_filename(sub / "fmap" / f"sub-{label}_phasediff.nii.gz").dataobj
    )
    assert (
        phase.dtype == np.float32
        and -math.pi <= phase.min() < -3.0
        and 3.0 < phase.max() <= math.pi
    )
    number = {"fmap": 3, "xa": 9}[label]
    assert (
        f"series {number} " in logs[label]
        and "written to fmap/ and not fitted as ME-GRE" in logs[label]
    )
    assert f"sub-{label}: no IntendedFor: this conversion has no BOLD run" in logs[label]


def test_participants_and_validator(converted):
    from t2starmap.bids.validate import validate_bids

    bids = converted[0]
    rows = (bids / "participants.tsv").read_text().splitlines()
    assert rows == ["participant_id", "sub-phantom", "sub-ge", "sub-fmap", "sub-xa"]
    report = validate_bids(bids)
    assert report.ok, [str(e) for e in report.errors]


def test_dicom_left_untouched(converted):
    _, _, before = converted
    for label, (folder, _, _) in CASES.items():
        assert checksums(SHARED_DICOM / folder) == before[label]


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(MEGRE))
def test_participant_level_runs_on_the_result(converted, tmp_path, label):
    bids = converted[0]
    out = tmp_path / "out"
    rc = main(
        [str(bids), str(out), "participant", "--participant-label", label, "--skip-bids-validation"]
    )
    assert rc == 0
    maps = sorted((out / f"sub-{label}" / "anat").glob("*_T2starmap.nii.gz"))
    assert maps, sorted(p.name for p in out.rglob("*"))
    data = np.asarray(nib.Nifti1Image.from_filename(maps[0]).dataobj, dtype=np.float64)
    assert np.isfinite(data).any()


@pytest.mark.slow
def test_participant_level_refuses_a_field_map_only_participant(converted, tmp_path):
    """Field maps are not MEGRE: a participant with nothing else has no echo set to fit."""
    argv = [str(converted[0]), str(tmp_path / "out"), "participant", "--participant-label"]
    assert main([*argv, "fmap", "--skip-bids-validation", "-q"]) == 18
