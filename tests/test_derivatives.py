"""Output names from the table and the set's entities; sidecar contents."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from t2starmap.bids.dataset_files import dataset_description
from t2starmap.bids.layout import Echo, EchoSet
from t2starmap.bids.outputs import (
    OUTPUTS,
    bids_path,
    common_acquisition,
    map_sidecar,
    output_files,
    output_path,
)
from t2starmap.bids.records import PublishedSet, SetStatistics, Source, load_published, record_path


def echo_set(**entities: str) -> EchoSet:
    echoes = tuple(
        Echo(
            Path(f"/bids/sub-01/anat/sub-01_echo-{k}_MEGRE.nii.gz"),
            0.01 * k,
            {"EchoTime": 0.01 * k, "MagneticFieldStrength": 3, "RepetitionTime": 0.05 + k},
        )
        for k in (1, 2)
    )
    return EchoSet(entities={"subject": "01", **entities}, echoes=echoes)


def test_names_follow_entity_order_and_drop_echo_level_entities() -> None:
    s = echo_set(session="a", run="2", acquisition="hi", flip="1")
    names = {spec.key: output_path(Path("/o"), s.entities, spec, ".nii.gz") for spec in OUTPUTS}
    assert names["t2star"] == Path(
        "/o/sub-01/ses-a/anat/sub-01_ses-a_acq-hi_run-2_T2starmap.nii.gz"
    )
    assert names["t2star_se"].name == "sub-01_ses-a_acq-hi_run-2_desc-stderr_T2starmap.nii.gz"
    assert names["rmse"].name.endswith("_desc-rmse_statmap.nii.gz")
    assert names["failed"].name.endswith("_desc-failed_mask.nii.gz")
    assert len(set(names.values())) == len(OUTPUTS)


def test_common_acquisition_keeps_only_agreeing_fields() -> None:
    s = echo_set()
    common = common_acquisition([e.metadata for e in s.echoes])
    assert common == {"MagneticFieldStrength": 3}


def test_sidecar_has_sources_echo_times_and_units() -> None:
    spec = OUTPUTS[0]
    sidecar = map_sidecar(
        spec, echo_set(), Path("/bids"), {"EstimationAlgorithm": "x", "ComputeDevice": "cpu"}
    )
    assert sidecar["Sources"] == [
        "bids:raw:sub-01/anat/sub-01_echo-1_MEGRE.nii.gz",
        "bids:raw:sub-01/anat/sub-01_echo-2_MEGRE.nii.gz",
    ]
    assert sidecar["EchoTime"] == [0.01, 0.02]
    assert sidecar["Units"] == "s" and sidecar["SkullStripped"] is False
    assert sidecar["ComputeDevice"] == "cpu"


def test_dataset_description_is_deterministic(tmp_path: Path) -> None:
    assert dataset_description(tmp_path) == dataset_description(tmp_path)
    description = dataset_description(tmp_path)
    assert description["DatasetLinks"]["raw"] == tmp_path.resolve().as_uri()
    assert description["SourceDatasets"] == [{"URL": "bids:raw:"}]


def record(subject: str = "01", session: str | None = None, run: str | None = None) -> PublishedSet:
    entities = {"subject": subject}
    if session:
        entities["session"] = session
    if run:
        entities["run"] = run
    return PublishedSet(
        entities=entities,
        files=output_files(entities),
        sources=(Source("sub-01/anat/x_echo-1_MEGRE.nii.gz", 0.003, {"Manufacturer": "GE"}),),
        n_voxels=10,
        failed_fraction=0.1,
        noise_sigma=None,
        noise_model="gaussian",
        noise_coils=1.0,
        noise_method="none",
        status_counts={"good": 9, "r2star_at_lower_bound": 1},
        fit_method="nlls",
        algorithm="LM",
        device="cpu",
        statistics=SetStatistics((0.01, 0.02, 0.03), (33.0, 50.0, 100.0), 1e3),
        seconds=1.5,
        warnings=("a <warning>",),
        part_sources=("sub-01/anat/x_echo-1_part-phase_MEGRE.nii.gz",),
    )


def test_a_record_round_trips_through_its_file(tmp_path: Path) -> None:
    original = record(session="a", run="2")
    path = record_path(tmp_path, original.entities)
    assert path == tmp_path / "sub-01/ses-a/anat/sub-01_ses-a_run-2_record.json"
    path.parent.mkdir(parents=True)
    path.write_text(original.to_json())
    assert load_published(tmp_path) == [original]
    assert original.path(tmp_path, "t2star") == tmp_path / (
        "sub-01/ses-a/anat/sub-01_ses-a_run-2_T2starmap.nii.gz"
    )
    assert original.name == "sub-01_ses-a_run-2"
    # a record written before part_sources existed reads as one without parts
    data = json.loads(original.to_json())
    del data["part_sources"]
    path.write_text(json.dumps(data))
    assert load_published(tmp_path) == [replace(original, part_sources=())]
    # the noise level's caveat has its own field; a record without it has none
    caveated = replace(original, noise_caveat="magnitude only: sigma may be off")
    path.write_text(caveated.to_json())
    assert load_published(tmp_path) == [caveated]
    del data["noise_caveat"]
    path.write_text(json.dumps(data))
    assert load_published(tmp_path)[0].noise_caveat == ""


def test_load_published_selects_participants_and_sessions(tmp_path: Path) -> None:
    records = [record("01"), record("02", "a"), record("02", "b"), record("03", "a")]
    for r in records:
        path = record_path(tmp_path, r.entities)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(r.to_json())
    assert [r.name for r in load_published(tmp_path)] == [
        "sub-01",
        "sub-02_ses-a",
        "sub-02_ses-b",
        "sub-03_ses-a",
    ]
    assert [r.name for r in load_published(tmp_path, ["02"])] == ["sub-02_ses-a", "sub-02_ses-b"]
    assert [r.name for r in load_published(tmp_path, None, ["a"])] == [
        "sub-02_ses-a",
        "sub-03_ses-a",
    ]
    assert load_published(tmp_path, ["04"]) == []


def test_an_unreadable_record_is_named(tmp_path: Path) -> None:
    path = record_path(tmp_path, {"subject": "01"})
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"sub-01_record\.json: not a readable t2starmap record"):
        load_published(tmp_path)


def test_source_paths_keep_the_datasets_own_names(tmp_path: Path) -> None:
    """A DataLad image is a link into the annex: its BIDS name is the link's, not the target's."""
    annex = tmp_path / "bids" / ".git" / "annex" / "objects" / "MD5E-s1.nii.gz"
    annex.parent.mkdir(parents=True)
    annex.write_bytes(b"x")
    link = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_echo-1_MEGRE.nii.gz"
    link.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(annex, link.parent), link)
    assert bids_path(tmp_path / "bids", link) == "sub-01/anat/sub-01_echo-1_MEGRE.nii.gz"


def test_the_field_map_is_described_as_the_field_map_not_as_the_correction() -> None:
    """With the through-slice correction, the corrected maps say so; the field map says it is
    the complex fit's frequency; the uncorrected R2* and the magnitude do not claim the
    correction either."""
    from t2starmap.bids.outputs import ESTIMATION_ALGORITHMS

    complex_fit = ESTIMATION_ALGORITHMS[("complex", "gaussian")]
    info = {
        "EstimationAlgorithm": complex_fit + "; then corrected for the through-slice field "
        "gradient: S(TE) = ...",
        "FitMethod": "complex",
        "NoiseModel": "gaussian",
    }
    spec = {s.key: s for s in OUTPUTS}

    def algorithm(key: str) -> str:
        return str(map_sidecar(spec[key], echo_set(), Path("/bids"), info)["EstimationAlgorithm"])

    assert "corrected for the through-slice" in algorithm("r2star")
    assert algorithm("frequency").startswith("Off-resonance frequency f, a parameter of")
    assert "corrected" not in algorithm("frequency") and complex_fit in algorithm("frequency")
    assert algorithm("r2star_uncorrected") == complex_fit
    assert algorithm("magnitude").startswith("None: the first echo's magnitude")
    assert algorithm("gradz").startswith("Central differences of the field map")


def test_failure_records_round_trip_and_are_selected_by_label(tmp_path: Path) -> None:
    from t2starmap.bids.atomic import write_text
    from t2starmap.bids.records import SetFailure, failure_path, load_failures

    failures = [
        SetFailure({"subject": s, **({"session": x} if x else {})}, "why", 65, "E", None, "t")
        for s, x in (("01", None), ("02", "1"), ("02", "2"))
    ]
    for failure in failures:
        write_text(failure_path(tmp_path, failure.entities), failure.to_json())
    assert failure_path(tmp_path, failures[1].entities) == (
        tmp_path / "logs" / "failures" / "sub-02_ses-1_failure.json"
    )
    assert load_failures(tmp_path) == failures
    assert [f.name for f in load_failures(tmp_path, ["02"], ["2"])] == ["sub-02_ses-2"]
    (tmp_path / "logs" / "failures" / "sub-03_failure.json").write_text("{}")
    with pytest.raises(ValueError, match=r"sub-03_failure\.json: not a readable"):
        load_failures(tmp_path)
