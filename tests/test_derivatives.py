"""Output names from the table and the set's entities; sidecar contents."""

from __future__ import annotations

from pathlib import Path

from t2starmap.derivatives import (
    OUTPUTS,
    common_acquisition,
    dataset_description,
    map_sidecar,
    output_path,
)
from t2starmap.layout import Echo, EchoSet


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
    names = {spec.key: output_path(Path("/o"), s, spec, ".nii.gz") for spec in OUTPUTS}
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
