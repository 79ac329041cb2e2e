"""BIDS names, sidecar cleaning, phase units and participants.tsv: no dcm2niix needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from t2starmap.convert import bids


def test_entities_in_bids_order():
    stem = bids.bids_stem("01", session="2", acq="gre", run=3, echo=4, part="phase")
    assert stem == "sub-01_ses-2_acq-gre_run-3_echo-4_part-phase_MEGRE"
    assert bids.bids_stem("01", echo=1, part="mag") == "sub-01_echo-1_part-mag_MEGRE"


@pytest.mark.parametrize("bad", ["../x", "a_b", "a-b", "", "x y", "sub-"])
def test_labels_must_be_alphanumeric(bad):
    with pytest.raises(ValueError):
        bids.check_label(bad, "participant")


def test_label_prefix_is_stripped():
    assert bids.check_label("sub-01", "participant") == "01"
    assert bids.check_label("ses-pre", "session") == "pre"


def test_entity_values_are_checked_again_when_naming():
    with pytest.raises(ValueError):
        bids.bids_stem("01", acq="a/b", echo=1, part="mag")


def test_sidecar_loses_identifying_fields_and_gets_numbers():
    meta = {
        "EchoTime": "0.004",
        "PatientName": "Doe",
        "PatientID": "1",
        "PatientBirthDate": "19700101",
        "InstitutionName": "X",
        "InstitutionAddress": "Y",
        "StationName": "S",
        "DeviceSerialNumber": "D",
        "AcquisitionDateTime": "2020",
        "BidsGuess": ["anat", "x"],
        "PatientPosition": "HFS",
        "FlipAngle": 15,
    }
    out = bids.clean_sidecar(meta, part="mag")
    assert out == {"EchoTime": 0.004, "PatientPosition": "HFS", "FlipAngle": 15}
    assert bids.clean_sidecar(meta, part="phase")["Units"] == "rad"


@pytest.mark.parametrize("te", [None, "abc", 0, -0.01, float("nan")])
def test_sidecar_without_valid_echo_time_is_refused(te):
    meta = {} if te is None else {"EchoTime": te}
    with pytest.raises(ValueError):
        bids.clean_sidecar(meta, part="mag")


def test_siemens_phase_to_radians():
    stored = np.array([-4096.0, 0.0, 2048.0, 4094.0])
    rad = bids.phase_to_radians(stored, "Siemens")
    np.testing.assert_allclose(rad, [-math.pi, 0.0, math.pi / 2, 4094 * math.pi / 4096], atol=1e-6)
    assert rad.dtype == np.float32


def test_phase_already_in_radians_is_kept():
    values = np.array([-3.0, 0.5, 3.1])
    np.testing.assert_allclose(bids.phase_to_radians(values, "Philips"), values, atol=1e-6)


def test_ge_phase_in_milliradians():
    np.testing.assert_allclose(
        bids.phase_to_radians(np.array([-3141.0, 1000.0]), "GE"), [-3.141, 1.0], atol=1e-5
    )


def test_unknown_phase_units_are_refused():
    with pytest.raises(ValueError):
        bids.phase_to_radians(np.array([0.0, 70000.0]), "Acme")


def test_participant_row_added_once(tmp_path):
    bids.write_dataset_files(tmp_path)
    assert bids.add_participant(tmp_path, "01")
    assert not bids.add_participant(tmp_path, "01")
    assert bids.add_participant(tmp_path, "02")
    assert (tmp_path / "participants.tsv").read_text() == "participant_id\nsub-01\nsub-02\n"


def test_participant_row_keeps_other_columns(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t30")
    bids.add_participant(tmp_path, "02")
    assert (tmp_path / "participants.tsv").read_text() == (
        "participant_id\tage\nsub-01\t30\nsub-02\tn/a\n"
    )
