"""The BIDS-App end to end through ``cli.main`` on copies of the bundled example."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from t2starmap.bids.outputs import REQUIRED_KEYS
from t2starmap.cli.run import main

from .conftest import EXAMPLE, checksums, files_below

SETS = ("sub-01/anat/sub-01", "sub-02/ses-1/anat/sub-02_ses-1", "sub-02/ses-2/anat/sub-02_ses-2")
MAP_NAMES = (
    "T2starmap",
    "R2starmap",
    "S0map",
    "desc-stderr_T2starmap",
    "desc-stderr_R2starmap",
    "desc-stderr_S0map",
    "desc-rmse_statmap",
    "desc-signal_mask",
    "desc-failed_mask",
    "desc-fitstatus_dseg",
)
#: Written where the fit can be judged against the noise (noise level, LM fit, 3+ echoes).
ASSESSED = ("desc-chisq_statmap",)


def participant(bids: Path, out: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "--skip-bids-validation", "-q", *extra])


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One validated participant + group run on the example, shared by read-only tests."""
    out = tmp_path_factory.mktemp("run") / "out"
    before = checksums(EXAMPLE)
    assert main([str(EXAMPLE), str(out), "participant", "-q"]) == 0
    assert main([str(EXAMPLE), str(out), "group", "-q"]) == 0
    assert checksums(EXAMPLE) == before, "the input dataset was modified"
    return out


def test_exact_output_files(example_run: Path) -> None:
    names = MAP_NAMES + ASSESSED
    maps = {f"{s}_{m}{ext}" for s in SETS for m in names for ext in (".nii.gz", ".json")}
    maps |= {f"{s}_record.json" for s in SETS} | {f"{s}_desc-fitstatus_dseg.tsv" for s in SETS}
    top = {"dataset_description.json", ".bidsignore", "README.md"}
    top |= {"group_T2starmap.tsv", "group_T2starmap.json"}
    found = files_below(example_run)
    logs = {f for f in found if f.startswith("logs/")}
    pages = {"sub-01.html", "sub-02_ses-1.html", "sub-02_ses-2.html", "group_report.html"}
    assert found - logs == maps | top | pages
    citations = {
        f"logs/CITATION{label}{ext}"
        for label in ("", "_sub-01", "_sub-02_ses-1", "_sub-02_ses-2")
        for ext in (".md", ".bib", ".html")
    }
    assert citations <= logs
    assert len(logs - citations) == 2 and all(f.endswith(".json") for f in logs - citations)
    assert len(MAP_NAMES) == len(REQUIRED_KEYS)


def test_sidecars_describe_the_maps(example_run: Path) -> None:
    sidecar = json.loads((example_run / f"{SETS[1]}_T2starmap.json").read_text())
    assert sidecar["Units"] == "s"
    assert sidecar["SkullStripped"] is False
    assert sidecar["EchoTime"] == pytest.approx([0.003 + 0.0045 * k for k in range(8)])
    assert (
        sidecar["Sources"][0]
        == "bids:raw:sub-02/ses-1/anat/sub-02_ses-1_echo-1_part-mag_MEGRE.nii.gz"
    )
    assert len(sidecar["Sources"]) == 8
    assert sidecar["MagneticFieldStrength"] == 3 and sidecar["FlipAngle"] == 15
    assert sidecar["ComputeDevice"] == "cpu"
    assert sidecar["NoiseSigma"] == pytest.approx(1000 / 60, rel=0.1)
    for key in ("Description", "EstimationAlgorithm", "EstimationReference", "FitMethod"):
        assert sidecar[key]
    units = {
        m: json.loads((example_run / f"{SETS[0]}_{m}.json").read_text()).get("Units")
        for m in MAP_NAMES
    }
    assert units["R2starmap"] == "1/s" and units["desc-stderr_T2starmap"] == "s"
    assert units["desc-signal_mask"] is None
    description = json.loads((example_run / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "t2starmap"
    assert description["DatasetLinks"]["raw"].startswith("file://")


def test_output_passes_the_validator(example_run: Path) -> None:
    from t2starmap.bids.validate import validate_bids

    report = validate_bids(example_run)
    assert report.ok, [str(e) for e in report.errors]


def test_maps_are_clean_and_match_the_truth(example_run: Path) -> None:
    for s, truth_name in zip(SETS, ("sub-01", "sub-02_ses-1", "sub-02_ses-2"), strict=True):
        maps = {m: np.asarray(nib.load(example_run / f"{s}_{m}.nii.gz").dataobj) for m in MAP_NAMES}
        for name, data in maps.items():
            assert np.all(np.isfinite(data)) and np.all(data >= 0), name
        assert maps["T2starmap"].dtype == np.float32
        assert maps["desc-signal_mask"].dtype == np.uint8
        mask = maps["desc-signal_mask"] > 0
        truth = np.asarray(nib.load(EXAMPLE / "truth" / f"{truth_name}_T2star.nii.gz").dataobj)
        assert np.all(maps["T2starmap"][~mask] == 0)
        inside = mask & (truth > 0)
        assert inside.sum() > 0.9 * (truth > 0).sum()
        error = np.abs(maps["T2starmap"][inside] - truth[inside]) / truth[inside]
        assert np.median(error) < 0.03
        r2 = maps["R2starmap"][mask]
        assert np.allclose(r2 * maps["T2starmap"][mask], 1.0, rtol=1e-5)


def test_group_table(example_run: Path) -> None:
    lines = (example_run / "group_T2starmap.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert [(r["participant_id"], r["session_id"]) for r in rows] == [
        ("sub-01", "n/a"),
        ("sub-02", "ses-1"),
        ("sub-02", "ses-2"),
    ]
    for row in rows:
        assert int(row["n_voxels"]) > 500
        assert 0.015 < float(row["t2star_median"]) < 0.035
        assert float(row["t2star_q1"]) < float(row["t2star_median"]) < float(row["t2star_q3"])
        assert float(row["r2star_median"]) == pytest.approx(
            1 / float(row["t2star_median"]), rel=0.05
        )
        assert float(row["failed_fraction"]) < 0.01
        assert 40 < float(row["snr"]) < 80


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["--session-label", "2"], [("sub-02", "ses-2")]),
        (["--participant-label", "01"], [("sub-01", "n/a")]),
        (["--participant-label", "02", "--session-label", "ses-1"], [("sub-02", "ses-1")]),
    ],
)
def test_group_level_honours_labels(
    example_run: Path, tmp_path: Path, labels: list[str], expected: list[tuple[str, str]]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(example_run, out)
    assert main([str(EXAMPLE), str(out), "group", "-q", *labels]) == 0
    table = pd.read_csv(out / "group_T2starmap.tsv", sep="\t", keep_default_na=False)
    assert list(zip(table["participant_id"], table["session_id"], strict=True)) == expected


def test_group_level_without_selected_outputs_exits_66(example_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(example_run, out)
    assert main([str(EXAMPLE), str(out), "group", "-q", "--session-label", "9"]) == 66


def test_participant_and_session_labels_select(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "sub-02", "--session_label", "2") == 0
    top = {f.split("/")[0] for f in files_below(out) if f.startswith("sub-")}
    assert top == {"sub-02", "sub-02_ses-2.html"}
    assert (out / f"{SETS[2]}_T2starmap.nii.gz").exists()
    assert not (out / f"{SETS[1]}_T2starmap.nii.gz").exists()


def test_filter_file_selects(example: Path, tmp_path: Path) -> None:
    filters = tmp_path / "filter.json"
    filters.write_text(json.dumps({"megre": {"session": "1"}}))
    assert participant(example, tmp_path / "o", "--bids-filter-file", str(filters)) == 64
    filters.write_text(json.dumps({"megre": {"run": 3}}))
    assert participant(example, tmp_path / "o", "--bids-filter-file", str(filters)) == 18
    filters.write_text(json.dumps({"acquisition": None}))
    assert participant(example, tmp_path / "o", "--bids-filter-file", str(filters)) == 0


@pytest.mark.parametrize("method", ["loglin", "wls", "nlls", "nlls-gaussian", "arlo"])
def test_fit_methods_run(example: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "out"
    assert (
        participant(
            example, out, "--participant-label", "01", "--fit-method", method, "--nprocs", "1"
        )
        == 0
    )
    assert json.loads((out / f"{SETS[0]}_T2starmap.json").read_text())["FitMethod"] == method


def test_noise_sigma_option_is_recorded(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01", "--noise-sigma", "20") == 0
    sidecar = json.loads((out / f"{SETS[0]}_T2starmap.json").read_text())
    assert sidecar["NoiseSigma"] == 20 and sidecar["NoiseSigmaMethod"] == "given"


def test_two_echoes_work_with_a_warning(
    example: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anat = example / "sub-01" / "anat"
    for k in range(3, 9):
        for ext in (".nii.gz", ".json"):
            (anat / f"sub-01_echo-{k}_part-mag_MEGRE{ext}").unlink()
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01") == 0
    sidecar = json.loads((out / f"{SETS[0]}_T2starmap.json").read_text())
    assert any("only 2 echoes" in w and "no RMSE map" in w for w in sidecar["Warnings"])
    # the fit is exact: no RMSE map; the noise level is known, so the standard errors stay
    assert not (out / f"{SETS[0]}_desc-rmse_statmap.nii.gz").exists()
    se = np.asarray(nib.load(out / f"{SETS[0]}_desc-stderr_T2starmap.nii.gz").dataobj)
    failed = np.asarray(nib.load(out / f"{SETS[0]}_desc-failed_mask.nii.gz").dataobj) > 0
    assert failed.mean() < 0.05  # rising pairs (noise) hit the R2* >= 0 bound
    signal = np.asarray(nib.load(out / f"{SETS[0]}_desc-signal_mask.nii.gz").dataobj) > 0
    assert (se[signal & ~failed] > 0).all()


def test_two_echoes_without_a_noise_level_publish_no_standard_errors(
    example: Path, tmp_path: Path
) -> None:
    """Two echoes and a zero-filled background: nothing to base an uncertainty on, so no
    all-zero desc-stderr maps claiming perfect precision; the sidecars and page say why."""
    anat = example / "sub-01" / "anat"
    for k in range(3, 9):
        for ext in (".nii.gz", ".json"):
            (anat / f"sub-01_echo-{k}_part-mag_MEGRE{ext}").unlink()
    for path in anat.glob("*_MEGRE.nii.gz"):
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        data[data < 100] = 0
        data[data >= 100] = 1000.0 * (1 + (path.name.count("echo-1") == 0))  # flat, no texture
        nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01") == 0
    written = {p.name for p in (out / "sub-01" / "anat").iterdir()}
    assert not [n for n in written if "stderr" in n or "rmse" in n]
    sidecar = json.loads((out / f"{SETS[0]}_T2starmap.json").read_text())
    assert sidecar["NoiseSigma"] is None
    assert any("no desc-stderr maps are written" in w for w in sidecar["Warnings"])
    page = (out / "sub-01.html").read_text()
    assert "no desc-stderr maps are written" in page and "SE of T2*" not in page


def test_echo_time_as_string_is_accepted(example: Path, tmp_path: Path) -> None:
    for sidecar in (example / "sub-01" / "anat").glob("*.json"):
        meta = json.loads(sidecar.read_text())
        meta["EchoTime"] = str(meta["EchoTime"])
        sidecar.write_text(json.dumps(meta))
    assert participant(example, tmp_path / "out", "--participant-label", "01") == 0


def test_nan_and_negative_voxels_are_flagged(example: Path, tmp_path: Path) -> None:
    path = example / "sub-01" / "anat" / "sub-01_echo-3_part-mag_MEGRE.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[12, 12, 3] = np.nan
    data[11, 12, 3] = -5.0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01") == 0
    failed = np.asarray(nib.load(out / f"{SETS[0]}_desc-failed_mask.nii.gz").dataobj)
    t2 = np.asarray(nib.load(out / f"{SETS[0]}_T2starmap.nii.gz").dataobj)
    assert failed[12, 12, 3] == 1 and failed[11, 12, 3] == 1
    assert t2[12, 12, 3] == 0 and t2[11, 12, 3] == 0
    assert failed[10, 12, 3] == 0 and t2[10, 12, 3] > 0
    assert np.all(np.isfinite(t2))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("t2starmap ")


def test_progress_bar_only_on_a_terminal(
    example: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = [str(example), str(tmp_path / "o"), "participant", "--skip-bids-validation"]
    assert main([*argv, "--participant-label", "01"]) == 0
    plain = capsys.readouterr().err
    assert "echo sets" not in plain and "sub-01: 752 voxels fitted" in plain
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([*argv, "--participant-label", "01"]) == 0
    assert "echo sets: 100%" in capsys.readouterr().err


def test_arlo_refuses_uneven_echo_spacing(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecar = example / "sub-01" / "anat" / "sub-01_echo-8_part-mag_MEGRE.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "EchoTime": 0.04}))
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01", "--fit-method", "arlo") == 64
    assert "spacing" in capsys.readouterr().err
    assert not (out / "sub-01").exists()


def test_default_fit_is_noise_aware_and_says_so(example_run: Path) -> None:
    sidecar = json.loads((example_run / f"{SETS[0]}_T2starmap.json").read_text())
    assert sidecar["FitMethod"] == "nlls" and sidecar["NoiseModel"] == "rician"
    assert "Rician" in sidecar["EstimationAlgorithm"]
    assert sidecar["NoiseSigmaMethod"] == "background-quantiles" and sidecar["NoiseCoils"] == 1


def test_masked_background_takes_sigma_from_the_local_variance(
    example: Path, tmp_path: Path
) -> None:
    for path in (example / "sub-01" / "anat").glob("*_MEGRE.nii.gz"):
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        data[data < 100] = 0  # a skull-stripped / zero-filled background
        nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01") == 0
    sidecar = json.loads((out / f"{SETS[0]}_T2starmap.json").read_text())
    assert sidecar["NoiseModel"] == "rician"
    assert sidecar["NoiseSigmaMethod"] in ("local-variance", "residuals")
    assert sidecar["NoiseSigma"] == pytest.approx(1000 / 60, rel=0.2)  # the simulated sigma
    assert "no air" in sidecar["NoiseSigmaNote"] or "local variance" in sidecar["NoiseSigmaNote"]


def test_output_under_the_inputs_derivatives_folder(example: Path) -> None:
    """BIDS keeps derivatives in ``derivatives/``: allowed, validated as usual, never indexed
    as input on the next run, and the rest of the dataset untouched."""
    before = checksums(example)
    out = example / "derivatives" / "t2starmap"
    assert main([str(example), str(out), "participant", "-q"]) == 0
    assert main([str(example), str(out), "participant", "-q", "--participant-label", "01"]) == 0
    assert main([str(example), str(out), "group", "-q"]) == 0
    after = checksums(example)
    assert {k: v for k, v in after.items() if not k.startswith("derivatives/")} == before
    table = pd.read_csv(out / "group_T2starmap.tsv", sep="\t")
    assert len(table) == 3


def test_fit_status_map_says_why_each_voxel_failed(example: Path, tmp_path: Path) -> None:
    """Reasons planted on purpose in sub-01: a rising block (echo 2 brighter than echo 1), a
    block decaying before the first echo, and NaN samples; each has its own code in the
    desc-fitstatus_dseg map, its level in the .tsv and its count on the page."""
    anat = example / "sub-01" / "anat"
    paths = sorted(anat.glob("*_MEGRE.nii.gz"), key=lambda p: int(p.name.split("echo-")[1][0]))
    images = [nib.load(p) for p in paths]
    data = [np.asarray(i.dataobj, dtype=np.float32) for i in images]
    times = [
        json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())["EchoTime"]
        for p in paths
    ]
    rising, fast, broken = (slice(8, 14), slice(8, 14)), (slice(2, 6), slice(2, 6)), (12, 3)
    for k, (volume, te) in enumerate(zip(data, times, strict=True)):
        volume[rising[0], rising[1], 2] = 800.0 * (1 + 4 * te / times[-1])  # rises with TE
        volume[fast[0], fast[1], 3] = 2e5 * np.exp(-te / 0.0006) + 20.0  # T2* 0.6 ms, on a floor
        if k == 4:
            volume[broken[0], broken[1], :] = np.nan
        nib.save(nib.Nifti1Image(volume, images[k].affine, images[k].header), paths[k])
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01") == 0
    status = np.asarray(nib.load(out / f"{SETS[0]}_desc-fitstatus_dseg.nii.gz").dataobj)
    assert status.dtype == np.uint8
    levels = pd.read_csv(out / f"{SETS[0]}_desc-fitstatus_dseg.tsv", sep="\t")
    code = dict(zip(levels["name"], levels["index"], strict=True))
    assert list(levels.columns[:2]) == ["index", "name"]
    assert code["not_fitted"] == 0 and code["good"] == 1  # BIDS dseg: 0 is background
    assert np.all(status[rising[0], rising[1], 2] == code["r2star_at_lower_bound"])
    assert np.all(status[broken[0], broken[1], :] == code["unusable_input"])
    # decay gone before the second echo: LM pushing at the R2* cap mostly ends as "not
    # converged" rather than exactly on the cap; both say the fit cannot see this T2*
    fast_codes = set(np.unique(status[fast[0], fast[1], 3]).tolist())
    assert fast_codes <= {code["r2star_at_upper_bound"], code["not_converged"]}
    failed = np.asarray(nib.load(out / f"{SETS[0]}_desc-failed_mask.nii.gz").dataobj) > 0
    signal = np.asarray(nib.load(out / f"{SETS[0]}_desc-signal_mask.nii.gz").dataobj) > 0
    # misfit is not failure (issue 27): an estimate exists there
    fine = (
        code["not_fitted"],
        code["good"],
        code["not_gradient_corrected"],
        code["decay_not_following_model"],
    )
    assert np.array_equal(failed, ~np.isin(status, fine) & signal)
    record = json.loads((out / f"{SETS[0]}_record.json").read_text())
    misfit = int((status == code["decay_not_following_model"]).sum())
    assert record["misfit_fraction"] == misfit / signal.sum()
    assert record["failed_fraction"] == failed.sum() / signal.sum()
    assert np.array_equal(status == code["not_fitted"], ~signal)
    assert record["status_counts"]["r2star_at_lower_bound"] >= 36
    page = (out / "sub-01.html").read_text()
    assert "Fit status (desc-fitstatus_dseg)" in page and "signal rising with TE" in page


def truncate(path: Path) -> None:
    """Cut an image in half, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_one_truncated_echo_costs_its_set_only(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: sub-02 ses-2's echo 8 truncated, participant level with
    --skip-bids-validation: sub-01 and ses-1 are published with their pages, exit 65; the
    message, the failure record, the page and the group level name the failed set."""
    truncate(example / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_echo-8_part-mag_MEGRE.nii.gz")
    out = tmp_path / "out"
    assert main([str(example), str(out), "participant", "--skip-bids-validation"]) == 65
    [error] = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
    assert "3 echo set(s): 2 published, 1 failed: sub-02_ses-2: " in error
    assert "sub-02_ses-2_echo-8_part-mag_MEGRE.nii.gz: image data could not be read" in error
    for name in SETS[:2]:
        assert {f"{name}_{m}.nii.gz" for m in MAP_NAMES} <= files_below(out)
        assert (out / f"{name}_record.json").is_file()
    assert not (out / "sub-02" / "ses-2").exists()
    assert {"sub-01.html", "sub-02_ses-1.html", "sub-02_ses-2.html"} <= files_below(out)
    assert "echo-8_part-mag_MEGRE.nii.gz: image data" in (out / "sub-02_ses-2.html").read_text()
    assert main([str(example), str(out), "group", "-q"]) == 0
    table = pd.read_csv(out / "group_T2starmap.tsv", sep="\t", keep_default_na=False)
    assert list(table["status"]) == ["published", "published", "failed"]
    assert table["failure_reason"].iloc[2].endswith("end-of-stream marker was reached)")
    page = (out / "group_report.html").read_text()
    assert "Echo sets that failed" in page and "sub-02 ses-2" in page


def test_the_report_draws_the_maps_the_run_holds(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's own sets are drawn from the maps and echoes it holds: reading maps back or
    echoes again for the report would fail here, and the run does not notice."""
    from t2starmap.report import participant as pages
    from t2starmap.report import sections

    def no(*args: object, **kwargs: object) -> None:
        raise AssertionError("read back for the report")

    monkeypatch.setattr(pages, "load_set_maps", no)  # where the page reads earlier sets' maps
    monkeypatch.setattr(sections, "read_echoes", no)  # where a section reads echoes
    out = tmp_path / "out"
    assert participant(example, out) == 0
    assert "decay curves" in (out / "sub-02_ses-2.html").read_text()


def test_a_rerun_removes_the_outputs_its_record_no_longer_lists(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 echoes give an RMSE map; a rerun on 2 echoes gives none: the old one would sit
    beside maps it does not belong to, so the rerun removes it."""
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01") == 0
    rmse = out / f"{SETS[0]}_desc-rmse_statmap.nii.gz"
    assert rmse.is_file()
    for k in range(3, 9):
        for ext in (".nii.gz", ".json"):
            (example / "sub-01" / "anat" / f"sub-01_echo-{k}_part-mag_MEGRE{ext}").unlink()
    capsys.readouterr()
    argv = [str(example), str(out), "participant", "--skip-bids-validation"]
    assert main([*argv, "--participant-label", "01"]) == 0
    assert "sub-01: replacing the outputs an earlier run published" in capsys.readouterr().err
    assert not rmse.exists() and not rmse.with_name(rmse.name.replace(".nii.gz", ".json")).exists()
    assert (out / f"{SETS[0]}_T2starmap.nii.gz").is_file()
    assert not [p for p in out.rglob(".*.tmp*") if p.is_file()]


@pytest.mark.parametrize(
    ("convention", "side"), [("radiological", "right"), ("neurological", "left")]
)
def test_report_convention_reaches_the_page(
    example: Path, tmp_path: Path, convention: str, side: str
) -> None:
    out = tmp_path / "out"
    argv = ["--participant-label", "01", "--report-convention", convention]
    assert participant(example, out, *argv) == 0
    text = (out / "sub-01.html").read_text()
    assert f"the subject&#39;s {side} on the left ({convention} convention)" in text


def test_an_unreadable_set_of_an_earlier_run_does_not_block_the_page(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two sets on one page, published by two runs (a filter each); the first one's T2* map
    is damaged in between: the second run still publishes its set and the page, warning."""
    anat = example / "sub-01" / "anat"
    for path in sorted(anat.glob("sub-01_echo-*_part-mag_MEGRE.*")):
        shutil.copy(path, anat / path.name.replace("sub-01_echo-", "sub-01_run-2_echo-"))
    filters = tmp_path / "filters.json"
    out = tmp_path / "out"
    filters.write_text(json.dumps({"run": None}))
    assert (
        participant(example, out, "--participant-label", "01", "--bids-filter-file", str(filters))
        == 0
    )
    (out / f"{SETS[0]}_T2starmap.nii.gz").write_bytes(b"damaged")
    filters.write_text(json.dumps({"run": 2}))
    assert (
        participant(example, out, "--participant-label", "01", "--bids-filter-file", str(filters))
        == 0
    )
    assert "sub-01: published earlier, but its maps cannot be read" in capsys.readouterr().err
    page = (out / "sub-01.html").read_text()
    assert 'id="sub-01_run-2"' in page and 'id="sub-01"' not in page


def test_a_map_that_cannot_be_written_costs_its_set_only(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maps are written in threads while the page section is drawn: a write that fails
    still fails its set (unexpected error, exit 1), and nothing of that set is published."""
    from t2starmap.workflows import staging

    original = staging.save_map

    def failing(path: Path, *args: object) -> Path:
        if path.name == "sub-02_ses-1_S0map.nii.gz":  # shown on the page: written last
            raise OSError("disk full")
        return original(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(staging, "save_map", failing)
    out = tmp_path / "out"
    assert participant(example, out) == 1
    for name in (SETS[0], SETS[2]):
        assert {f"{name}_{m}.nii.gz" for m in MAP_NAMES} <= files_below(out)
    assert not (out / "sub-02" / "ses-1").exists()
    failure = json.loads((out / "logs" / "failures" / "sub-02_ses-1_failure.json").read_text())
    assert "disk full" in failure["reason"]


def test_the_maps_the_page_does_not_show_are_written_before_it_is_drawn(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their memory is free before the figures take theirs."""
    from t2starmap.report import participant as pages

    work = tmp_path / "work"
    original = pages.set_section
    seen: list[set[str]] = []

    def checking(*args: object, **kwargs: object) -> pages.Section:
        seen.append({p.name.split("_", 1)[1] for p in work.rglob("sub-01_*.nii.gz")})
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pages, "set_section", checking)
    assert participant(example, tmp_path / "out", "--participant-label", "01", "-w", str(work)) == 0
    assert len(seen) == 1
    assert {"desc-stderr_R2starmap.nii.gz", "desc-stderr_S0map.nii.gz"} <= seen[0]


@pytest.mark.slow
def test_the_output_validates_without_a_warning(example: Path, tmp_path: Path) -> None:
    """bids-validator on the output of both levels: no error and no warning (the fit-status
    levels' description column defined, a README, the input's authors, SpatialReference of
    masks and labels); with one author in the input, only the validator's reminder that
    there is one is left."""
    from t2starmap.bids.validate import validate_bids

    description = json.loads((example / "dataset_description.json").read_text())
    description["Authors"] = ["A. Author", "B. Author"]
    (example / "dataset_description.json").write_text(json.dumps(description))
    out = tmp_path / "out"
    assert participant(example, out) == 0
    assert main([str(example), str(out), "group", "-q"]) == 0
    report = validate_bids(out)
    assert report.errors == () and report.warnings == (), [str(w) for w in report.warnings]
    assert json.loads((out / "dataset_description.json").read_text())["Authors"] == [
        "A. Author",
        "B. Author",
    ]
    description["Authors"] = ["A. Author"]
    (example / "dataset_description.json").write_text(json.dumps(description))
    shutil.rmtree(out)
    assert participant(example, out, "--participant-label", "01") == 0
    assert [w.code for w in validate_bids(out).warnings] == ["TOO_FEW_AUTHORS"]


def test_the_group_table_says_its_units(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert participant(example, out, "--participant-label", "01") == 0
    assert main([str(example), str(out), "group", "-q"]) == 0
    columns = json.loads((out / "group_T2starmap.json").read_text())
    table = pd.read_csv(out / "group_T2starmap.tsv", sep="\t")
    assert list(columns) == list(table.columns)
    assert (
        columns["t2star_median"]["Units"] == "s" and "ms" in columns["t2star_median"]["Description"]
    )
    assert columns["r2star_iqr"]["Units"] == "1/s"
    assert "Units" not in columns["status"]
    t2star, r2star = table.loc[0, "t2star_median"], table.loc[0, "r2star_median"]
    assert 0.005 < t2star < 0.2 and t2star * r2star == pytest.approx(1, rel=0.3)
