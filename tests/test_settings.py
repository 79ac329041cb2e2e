"""Argument checks that argparse cannot do, frozen into Settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2starmap.cli.run import build_parser
from t2starmap.config import clean_labels, read_filter_file, settings_from_args
from t2starmap.errors import InputMissingError, UsageError
from t2starmap.resources import SOURCE_COMMAND_LINE, SOURCE_SLURM, available_cpus


def settings(example: Path, out: Path, *extra: str, environ: dict[str, str] | None = None):
    args = build_parser().parse_args([str(example), str(out), "participant", *extra])
    return settings_from_args(args, environ=environ or {})


def test_labels_strip_prefix_and_deduplicate() -> None:
    assert clean_labels(["sub-01", "02", "01"], "sub-") == ("01", "02")
    assert clean_labels(None, "sub-") is None
    with pytest.raises(UsageError, match="not alphanumeric"):
        clean_labels(["sub-0_1"], "sub-")


def test_settings_are_frozen_and_serialisable(example: Path, tmp_path: Path) -> None:
    s = settings(example, tmp_path / "o", "--participant_label", "sub-01", "--nprocs", "3")
    assert s.participant_labels == ("01",) and s.nprocs == 3
    with pytest.raises(AttributeError):
        s.nprocs = 4  # type: ignore[misc]
    data = json.loads(s.to_json())
    assert data["participant_labels"] == ["01"] and data["bids_dir"] == str(example.resolve())


def test_nprocs_follows_slurm_and_records_its_source(example: Path, tmp_path: Path) -> None:
    slurm = settings(example, tmp_path, environ={"SLURM_CPUS_PER_TASK": "2"})
    assert (slurm.nprocs, slurm.nprocs_source) == (2, SOURCE_SLURM)
    given = settings(example, tmp_path, "--nprocs", "3", environ={"SLURM_CPUS_PER_TASK": "2"})
    assert (given.nprocs, given.nprocs_source) == (3, SOURCE_COMMAND_LINE)
    plain = settings(example, tmp_path)
    assert (plain.nprocs, plain.nprocs_source) == available_cpus({})
    logged = json.loads(slurm.to_json())
    assert (logged["nprocs"], logged["nprocs_source"]) == (2, SOURCE_SLURM)
    with pytest.raises(UsageError, match="nprocs"):
        settings(example, tmp_path, "--nprocs", "0")


def test_noise_sigma_must_be_positive(example: Path, tmp_path: Path) -> None:
    assert settings(example, tmp_path, "--noise-sigma", "3.5").noise_sigma == 3.5
    with pytest.raises(UsageError, match="noise-sigma"):
        settings(example, tmp_path, "--noise-sigma", "-1")


def test_output_inside_input_is_refused(example: Path) -> None:
    with pytest.raises(UsageError, match="inside the input"):
        settings(example, example / "derivatives")


@pytest.mark.parametrize(
    ("content", "expected"),
    [({"megre": {"acquisition": "hi"}}, {"acquisition": "hi"}), ({"run": 1}, {"run": 1})],
)
def test_filter_file_forms(
    tmp_path: Path, content: dict[str, object], expected: dict[str, object]
) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps(content))
    assert read_filter_file(path) == expected


def test_filter_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputMissingError):
        read_filter_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for content in ("[1, 2]", "{", json.dumps({"subject": "01"})):
        bad.write_text(content)
        with pytest.raises(UsageError):
            read_filter_file(bad)
