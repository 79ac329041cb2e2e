"""The participant level on multi-echo BOLD (issue 28 section 2): runs found beside MEGRE and
fitted with the t2smap numerics, their func/ outputs and sidecars, a single-echo run skipped,
a bad run failing alone, fMRIPrep's desc-preproc echoes as input, the bids-validator, and the
real me-epi data."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from markupsafe import escape

from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.nifti_write import write_image
from t2starmap.bids.records import load_failures, load_published
from t2starmap.bids.summary import group_table
from t2starmap.cli.run import main
from t2starmap.cli.t2smap import main as t2smap_main
from t2starmap.fit.status import LEVELS
from t2starmap.report.func_section import PREPROC_STATEMENT, RAW_STATEMENT
from t2starmap.sim.bold import BoldRun, make_bold_run, write_bold_bids
from tests.report.test_browser import CHROMIUM, load_and_probe
from tests.support.files import EXAMPLE, SHARED_DATA, checksums

SHAPE = (20, 20, 10)
N_VOLUMES = 12
GOOD = "sub-01/func/sub-01_task-rest"
#: Every image a fitted run publishes (each with a JSON sidecar), and the status levels.
IMAGES = (
    "T2starmap",
    "R2starmap",
    "S0map",
    "desc-stderr_T2starmap",
    "desc-stderr_R2starmap",
    "desc-stderr_S0map",
    "desc-adaptiveGoodSignal_mask",
    "desc-decayFitFailures_mask",
    "desc-fitstatus_dseg",
    "desc-optcom_bold",
)


def _files(out: Path, run: str) -> set[str]:
    folder = out / Path(run).parent
    stem = Path(run).name
    return {p.name for p in folder.glob(f"{stem}_*")} if folder.is_dir() else set()


def _expected(run: str) -> set[str]:
    stem = Path(run).name
    names = {f"{stem}_{m}.nii.gz" for m in IMAGES} | {f"{stem}_{m}.json" for m in IMAGES}
    return names | {f"{stem}_desc-fitstatus_dseg.tsv", f"{stem}_record.json"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, BoldRun, int]:
    """MEGRE (the example) + a good 4-echo BOLD run + a single-echo run + a run whose second
    echo has another shape; one validated participant run: (input, output, truth, exit)."""
    root = tmp_path_factory.mktemp("mixed") / "bids"
    shutil.copytree(EXAMPLE, root)
    truth = make_bold_run(SHAPE, N_VOLUMES, seed=1)
    write_bold_bids(root, "sub-01_task-rest", truth, "rest")
    write_bold_bids(root, "sub-02_ses-1_task-single", make_bold_run(SHAPE, 6, te=(0.03,)), "single")
    bad = write_bold_bids(root, "sub-02_ses-2_task-bad", make_bold_run(SHAPE, 6, seed=3), "bad")
    small = nib.load(bad[1]).get_fdata()[:-2].astype(np.int16)
    write_image(bad[1], small, np.diag([3.0, 3.0, 3.0, 1.0]), (3.0, 3.0, 3.0, 2.0))
    before = checksums(root)
    out = root.parent / "out"
    code = main([str(root), str(out), "participant", "-q"])
    assert checksums(root) == before, "the input dataset was modified"
    return root, out, truth, code


def test_bad_run_fails_alone(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    _, out, _, code = mixed
    assert code == 65  # the worst failure: bad data
    failure = json.loads(
        (out / "logs" / "failures" / "sub-02_ses-2_task-bad_failure.json").read_text()
    )
    assert "sub-02_ses-2_task-bad_echo-2_bold.nii.gz" in failure["reason"]
    assert "shape" in failure["reason"]
    assert failure["exit_code"] == 65
    assert _files(out, "sub-02/ses-2/func/sub-02_ses-2_task-bad") == set()
    # the others went on: the good run and every MEGRE set
    assert _files(out, GOOD) == _expected(GOOD)
    for anat in ("sub-01/anat", "sub-02/ses-1/anat", "sub-02/ses-2/anat"):
        assert list((out / anat).glob("*_T2starmap.nii.gz")), anat


def test_single_echo_run_is_skipped(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    _, out, _, _ = mixed
    assert not (out / "sub-02" / "ses-1" / "func").exists()
    assert not list((out / "logs" / "failures").glob("*single*"))


def test_maps_match_the_truth(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    _, out, truth, _ = mixed
    t2 = np.asarray(nib.load(out / f"{GOOD}_T2starmap.nii.gz").get_fdata())
    r2 = np.asarray(nib.load(out / f"{GOOD}_R2starmap.nii.gz").get_fdata())
    count = np.asarray(nib.load(out / f"{GOOD}_desc-adaptiveGoodSignal_mask.nii.gz").get_fdata())
    judged = (count == 4) & truth.brain & ~truth.dropout & (t2 > 0)
    assert judged.sum() > 500
    error = np.abs(t2[judged] - truth.t2star[judged]) / truth.t2star[judged]
    assert np.median(error) < 0.05
    np.testing.assert_allclose(r2[judged] * t2[judged], 1.0, rtol=1e-4)


def test_optcom_is_the_series(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    _, out, truth, _ = mixed
    img = nib.load(out / f"{GOOD}_desc-optcom_bold.nii.gz")
    assert img.shape == (*SHAPE, N_VOLUMES)
    assert img.header.get_zooms()[3] == pytest.approx(truth.tr)
    data = np.asarray(img.dataobj, dtype=np.float64)
    first = truth.echoes[..., 0].astype(np.float64)
    last = truth.echoes[..., -1].astype(np.float64)
    inside = data[..., 0] > 0
    # a weighted mean of the echoes: between the last and the first echo in every voxel
    assert np.all(data[inside] <= first[inside] + 1e-3)
    assert np.all(data[inside] >= last[inside] - 1e-3)


def test_sidecars(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    _, out, truth, _ = mixed
    t2 = json.loads((out / f"{GOOD}_T2starmap.json").read_text())
    assert t2["Units"] == "s"
    assert t2["SkullStripped"] is False
    assert t2["MotionCorrected"] is False
    assert "not motion-corrected" in t2["Description"]
    assert t2["Sources"] == [
        f"bids:raw:sub-01/func/sub-01_task-rest_echo-{k}_bold.nii.gz" for k in range(1, 5)
    ]
    assert t2["EchoTime"] == pytest.approx(list(truth.te))
    assert t2["FitType"] == "nlls"
    assert t2["NoiseSigmaPerVoxel"] is False  # no g-factor in this run: one sigma
    assert t2["NoiseSigma"] == pytest.approx(truth.sigma, rel=0.1)
    assert json.loads((out / f"{GOOD}_R2starmap.json").read_text())["Units"] == "1/s"
    assert json.loads((out / f"{GOOD}_S0map.json").read_text())["Units"] == "arbitrary"
    optcom = json.loads((out / f"{GOOD}_desc-optcom_bold.json").read_text())
    assert optcom["RepetitionTime"] == pytest.approx(truth.tr)  # inherited from the root
    assert optcom["TaskName"] == "rest"
    for name in IMAGES:
        assert "SkullStripped" in json.loads((out / f"{GOOD}_{name}.json").read_text()), name


def test_output_passes_the_validator(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    from t2starmap.bids.validate import validate_bids

    report = validate_bids(mixed[1])
    assert report.ok, [str(e) for e in report.errors]


def test_preprocessed_echoes_are_fitted_instead_of_raw(tmp_path: Path) -> None:
    """A BOLD-only dataset (no MEGRE) with fMRIPrep's desc-preproc echoes beside the raw ones."""
    root = tmp_path / "bids"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("sub-*"))
    write_bold_bids(root, "sub-03_task-rest", make_bold_run(SHAPE, 6, seed=4), "rest")
    write_bold_bids(root, "sub-03_task-rest", make_bold_run(SHAPE, 6, seed=5), "rest", "preproc")
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "-q", "--skip-bids-validation"]) == 0
    run = "sub-03/func/sub-03_task-rest"
    assert _files(out, run) == _expected(run)
    sidecar = json.loads((out / f"{run}_T2starmap.json").read_text())
    assert sidecar["MotionCorrected"] is True
    assert all("desc-preproc" in s for s in sidecar["Sources"])


@pytest.mark.realdata
def test_real_me_epi_equals_the_t2smap_command(tmp_path: Path) -> None:
    """tedana's three-echo test data put into a BIDS dataset: the participant level's maps are
    those of ``t2starmap t2smap --fittype nlls`` (no mask) on the same echoes, and plausible."""
    folder = SHARED_DATA / "me-epi"
    te = (0.0145, 0.0385, 0.0625)
    root = tmp_path / "bids"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("sub-*"))
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    for k, echo_time in enumerate(te, start=1):
        shutil.copy(folder / f"echo{k}.nii.gz", func / f"sub-01_task-rest_echo-{k}_bold.nii.gz")
        sidecar = func / f"sub-01_task-rest_echo-{k}_bold.json"
        sidecar.write_text(json.dumps({"EchoTime": echo_time}))
    shared = {"RepetitionTime": 2.0, "TaskName": "rest"}
    (root / "task-rest_bold.json").write_text(json.dumps(shared))
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "-q"]) == 0
    echoes = [str(folder / f"echo{k}.nii.gz") for k in (1, 2, 3)]
    command = tmp_path / "t2smap"
    args = ["-d", *echoes, "-e", *map(str, te), "--fittype", "nlls", "--out-dir", str(command)]
    assert t2smap_main([*args, "--quiet"]) == 0
    run = out / "sub-01" / "func" / "sub-01_task-rest"
    for ours, theirs in (("T2starmap", "T2starmap"), ("desc-optcom_bold", "desc-optcom_bold")):
        a = np.asarray(nib.load(f"{run}_{ours}.nii.gz").get_fdata())
        b = np.asarray(nib.load(command / f"{theirs}.nii.gz").get_fdata())
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    t2 = np.asarray(nib.load(f"{run}_T2starmap.nii.gz").get_fdata())
    mask = np.asarray(nib.load(folder / "mask.nii.gz").get_fdata()) > 0
    fitted = mask & (t2 > 0)
    assert fitted.sum() > 0.3 * mask.sum()  # the first-echo mask is tighter than tedana's
    assert 0.03 < float(np.median(t2[fitted])) < 0.09  # brain with CSF at 3 T
    # the record and the page section (5 volumes: a tSNR, noisy)
    record = _record(out, "sub-01/func/sub-01_task-rest")
    count = np.asarray(nib.load(f"{run}_desc-adaptiveGoodSignal_mask.nii.gz").dataobj)
    assert record.n_voxels == int((count >= 1).sum())
    assert record.tsnr is not None and record.tsnr.n_voxels > 0.9 * record.n_voxels
    assert 0.5 < record.tsnr.ratio < 2.0
    page = (out / "sub-01.html").read_text()
    assert "<h2>BOLD run sub-01_task-rest</h2>" in page and 'alt="tSNR histogram"' in page
    if CHROMIUM is not None:  # the real run's page in a browser, where one is installed
        probed, requests, console = load_and_probe(out / "sub-01.html", tmp_path)
        n = page.count("<img ")
        assert probed.get("images") == f"{n}/{n}" and probed.get("overflow") == "0"
        assert requests == [] and console == []


def _bold_only(tmp_path: Path) -> Path:
    """A BOLD-only dataset: a good run (rest) and one whose echo 2 lacks EchoTime (motor)."""
    root = tmp_path / "bids"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("sub-*"))
    write_bold_bids(root, "sub-01_task-rest", make_bold_run(SHAPE, 6, seed=6), "rest")
    write_bold_bids(root, "sub-01_task-motor", make_bold_run(SHAPE, 6, seed=7), "motor")
    (root / "sub-01" / "func" / "sub-01_task-motor_echo-2_bold.json").write_text("{}")
    return root


def test_run_without_echo_time_fails_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _bold_only(tmp_path)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "-q", "--skip-bids-validation"]) == 65
    err = capsys.readouterr().err
    assert "run sub-01_task-motor failed, the other sets and runs go on" in err
    assert "echo set sub-01_task-motor" not in err  # a run is called a run
    assert "2 BOLD run(s): 1 published, 1 failed: sub-01_task-motor" in err
    assert "echo set(s)" not in err  # there is none
    failure = json.loads((out / "logs" / "failures" / "sub-01_task-motor_failure.json").read_text())
    assert "sub-01_task-motor_echo-2_bold.nii.gz" in failure["reason"]
    assert "EchoTime" in failure["reason"]
    assert _files(out, "sub-01/func/sub-01_task-rest") == _expected("sub-01/func/sub-01_task-rest")
    assert _files(out, "sub-01/func/sub-01_task-motor") == set()


def test_stop_on_first_crash_publishes_nothing(tmp_path: Path) -> None:
    root = _bold_only(tmp_path)
    out = tmp_path / "out"
    args = [str(root), str(out), "participant", "-q", "--skip-bids-validation"]
    assert main([*args, "--stop-on-first-crash"]) == 65
    assert not out.exists()


# --- the run's record, its page section, its group row (issue 28 part 2) --------------------


def _image(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _tsnr(series: np.ndarray) -> np.ndarray:
    """mean / sample SD over the last axis, computed here apart from t2starmap.fit.tsnr."""
    series = series.astype(np.float64)
    sd = series.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, series.mean(axis=-1) / sd, np.nan)


def _record(out: Path, run: str) -> PublishedRun:
    return PublishedRun.from_json((out / f"{run}_record.json").read_text())


def test_run_record_holds_the_numbers_of_its_maps(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    _, out, truth, _ = mixed
    record = _record(out, GOOD)
    assert record.name == "sub-01_task-rest" and record.entities["task"] == "rest"
    assert record.echo_times == pytest.approx(tuple(truth.te))
    assert (record.n_volumes, record.fit_type, record.preprocessed) == (N_VOLUMES, "nlls", False)
    assert record.repetition_time == pytest.approx(truth.tr)
    for path in record.files.values():
        assert (out / path).is_file(), path
    count = _image(out / f"{GOOD}_desc-adaptiveGoodSignal_mask.nii.gz").astype(int)
    fitted = count >= 1
    assert record.n_voxels == int(fitted.sum()) > 1000
    assert record.mask_counts == {str(k): int((count == k).sum()) for k in range(5)}
    status = _image(out / f"{GOOD}_desc-fitstatus_dseg.nii.gz")
    failed = np.isin(status, [lv.index for lv in LEVELS if lv.failure]) & fitted
    assert record.failed_fraction == pytest.approx(failed.sum() / fitted.sum())
    assert sum(record.status_counts.values()) == record.n_voxels
    t2 = _image(out / f"{GOOD}_T2starmap.nii.gz")
    assert record.statistics.t2star is not None
    assert record.statistics.t2star[1] == pytest.approx(np.median(t2[fitted & ~failed]), rel=1e-5)


def test_run_record_tsnr_is_of_the_combination_and_the_echoes(
    mixed: tuple[Path, Path, BoldRun, int],
) -> None:
    """Computed here from the published optcom series and the raw echoes, over the voxels with
    a good echo; on the simulator (thermal noise, 1 % physiology) the combination gains."""
    _, out, truth, _ = mixed
    tsnr = _record(out, GOOD).tsnr
    assert tsnr is not None
    fitted = _image(out / f"{GOOD}_desc-adaptiveGoodSignal_mask.nii.gz") >= 1
    optcom = _tsnr(_image(out / f"{GOOD}_desc-optcom_bold.nii.gz")[fitted])
    keep = np.isfinite(optcom)
    echoes = [_tsnr(truth.echoes[..., k][fitted])[keep] for k in range(truth.te.size)]
    medians = [float(np.nanmedian(e)) for e in echoes]
    assert tsnr.n_voxels == int(keep.sum())
    assert tsnr.optcom_median == pytest.approx(float(np.median(optcom[keep])), rel=1e-4)
    np.testing.assert_allclose(tsnr.echo_medians, medians, rtol=1e-4)
    assert tsnr.best_echo == int(np.argmax(medians)) + 1
    assert tsnr.ratio == pytest.approx(tsnr.optcom_median / max(medians), rel=1e-6)
    assert tsnr.ratio > 1.05  # the optimal combination beats every single echo here


def test_page_shows_sets_and_runs_together(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    _, out, _, _ = mixed
    assert sorted(p.name for p in out.glob("*.html")) == [
        "sub-01.html",
        "sub-02_ses-1.html",
        "sub-02_ses-2.html",
    ]  # one page per participant/session; no page of its own for a run
    page = (out / "sub-01.html").read_text()
    assert 'id="sub-01"' in page and "<h2>Echo set sub-01</h2>" in page
    assert "<h2>BOLD run sub-01_task-rest</h2>" in page
    assert page.index("<h2>Echo set sub-01</h2>") < page.index("<h2>BOLD run sub-01_task-rest")
    section = page[page.index('<section id="sub-01_task-rest">') :]
    section = section[: section.index("</section>")]
    assert escape(RAW_STATEMENT) in section
    for alt in ("fit-status map", "adaptive mask", "T2* (ms) montage", "S0 (input units) montage"):
        assert f'alt="{alt}"' in section, alt
    assert 'alt="tSNR histogram"' in section and 'alt="T2* histogram"' in section
    tsnr = _record(out, GOOD).tsnr
    assert tsnr is not None and f"{tsnr.ratio:.2f}" in section
    assert "tSNR median, optimal combination" in section
    assert "number of echoes with good signal" in section  # the adaptive mask's caption
    failed = (out / "sub-02_ses-2.html").read_text()
    assert "<h2>BOLD runs that failed</h2>" in failed
    assert "sub-02_ses-2_task-bad" in failed and "differs from" in failed
    assert "Echo set sub-02_ses-2" in failed  # the page's MEGRE set is there too


def test_preprocessed_run_page_says_motion_corrected(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("sub-*"))
    write_bold_bids(root, "sub-03_task-rest", make_bold_run(SHAPE, 6, seed=5), "rest", "preproc")
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "-q", "--skip-bids-validation"]) == 0
    page = (out / "sub-03.html").read_text()
    assert escape(PREPROC_STATEMENT) in page and escape(RAW_STATEMENT) not in page
    assert _record(out, "sub-03/func/sub-03_task-rest").preprocessed is True


def test_group_level_has_a_row_per_run(
    mixed: tuple[Path, Path, BoldRun, int], tmp_path: Path
) -> None:
    root, published, _, _ = mixed
    out = tmp_path / "out"
    shutil.copytree(published, out)
    assert main([str(root), str(out), "group", "-q"]) == 0
    table = pd.read_csv(out / "group_T2starmap.tsv", sep="\t", dtype={"run": str})
    runs = table[table["datatype"] == "func"]
    assert list(runs["status"]) == ["published", "failed"]
    good = runs.iloc[0]
    record = _record(out, GOOD)
    assert (good["task"], good["n_echoes"], good["n_volumes"]) == ("rest", 4, N_VOLUMES)
    assert good["n_voxels"] == record.n_voxels
    assert good["failed_fraction"] == pytest.approx(record.failed_fraction, rel=1e-5)
    assert record.tsnr is not None and record.statistics.t2star is not None
    assert good["tsnr_optcom"] == pytest.approx(record.tsnr.optcom_median, rel=1e-3)
    assert good["tsnr_ratio"] == pytest.approx(record.tsnr.ratio, rel=1e-3)
    assert good["best_echo"] == record.tsnr.best_echo
    assert good["t2star_median"] == pytest.approx(record.statistics.t2star[1], rel=1e-5)
    assert runs.iloc[1]["task"] == "bad" and "differs from" in runs.iloc[1]["failure_reason"]
    # the MEGRE rows are those of a group table without runs, column for column up to the
    # columns of runs
    lines = (out / "group_T2starmap.tsv").read_text().splitlines()
    width = lines[0].split("\t").index("datatype")
    alone = group_table(
        load_published(out), [f for f in load_failures(out) if "task" not in f.name]
    )
    expected = [line.split("\t")[:width] for line in alone.write(Path("x")).splitlines()]
    megre = [line.split("\t")[:width] for line in lines if "\tanat\t" in line]
    assert len(megre) == 3 and megre == expected[1:]
    page = (out / "group_report.html").read_text()
    assert "<h2>Multi-echo BOLD runs</h2>" in page and "sub-01 task-rest" in page
    assert 'alt="failed and misfit fractions per echo set"' in page
    assert "<h2>Echo sets and BOLD runs that failed</h2>" in page
    from t2starmap.bids.validate import validate_bids

    report = validate_bids(out)
    assert report.ok, [str(e) for e in report.errors]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_page_with_runs_renders_in_chromium(
    mixed: tuple[Path, Path, BoldRun, int], tmp_path: Path
) -> None:
    page = mixed[1] / "sub-01.html"
    probed, requests, console = load_and_probe(page, tmp_path)
    n = page.read_text(encoding="utf-8").count("<img ")
    assert probed.get("images") == f"{n}/{n}"
    assert probed.get("overflow") == "0", "wider than the window"
    assert requests == [] and console == []


def test_run_record_counts_failed_voxels(tmp_path: Path) -> None:
    """A block whose signal rises with TE (the echoes reversed there) fails its fit: the
    record's failed fraction and failure counts are those of the published status map."""
    truth = make_bold_run(SHAPE, 6, seed=8)
    echoes = truth.echoes.copy()
    echoes[6:12, 6:12, 3:7] = echoes[6:12, 6:12, 3:7, :, ::-1]
    root = tmp_path / "bids"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("sub-*"))
    write_bold_bids(root, "sub-04_task-rest", replace(truth, echoes=echoes), "rest")
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "-q", "--skip-bids-validation"]) == 0
    run = "sub-04/func/sub-04_task-rest"
    record = _record(out, run)
    fitted = _image(out / f"{run}_desc-adaptiveGoodSignal_mask.nii.gz") >= 1
    status = _image(out / f"{run}_desc-fitstatus_dseg.nii.gz")
    failed = np.isin(status, [lv.index for lv in LEVELS if lv.failure]) & fitted
    assert failed[6:12, 6:12, 3:7].sum() > 20  # the reversed block
    assert record.failed_fraction == pytest.approx(failed.sum() / fitted.sum())
    assert record.status_counts["r2star_at_lower_bound"] == int((status == 3).sum()) > 20
    page = (out / "sub-04.html").read_text()
    assert "r2star_at_lower_bound: " in page  # the failure reasons, counted


def test_pages_rewritten_from_the_output_keep_their_runs(
    mixed: tuple[Path, Path, BoldRun, int], tmp_path: Path
) -> None:
    """write_participant_reports (pages from what the output folder holds) draws the BOLD
    runs recorded there beside the MEGRE sets, as the participant run did."""
    from t2starmap.report.participant import write_participant_reports

    root, published, _, _ = mixed
    out = tmp_path / "out"
    shutil.copytree(published, out)
    (out / "sub-01.html").unlink()
    [page] = write_participant_reports(
        out, root, [r for r in load_published(out) if r.subject == "01"]
    )
    text = page.read_text()
    assert "<h2>Echo set sub-01</h2>" in text and "<h2>BOLD run sub-01_task-rest</h2>" in text
    assert 'alt="tSNR histogram"' in text


def test_rerun_replaces_runs_and_clears_their_failures(tmp_path: Path) -> None:
    """A second run after the failed run's sidecar is fixed: both runs on the one page, each
    once; the failure record gone; the first run's files replaced, none left over."""
    root = _bold_only(tmp_path)
    out = tmp_path / "out"
    args = [str(root), str(out), "participant", "-q", "--skip-bids-validation"]
    assert main(args) == 65
    assert "sub-01_task-motor" in (out / "sub-01.html").read_text()  # listed as failed
    sidecar = root / "sub-01" / "func" / "sub-01_task-motor_echo-2_bold.json"
    sidecar.write_text(json.dumps({"EchoTime": 0.028}))
    assert main(args) == 0
    assert not list((out / "logs" / "failures").glob("*motor*"))
    page = (out / "sub-01.html").read_text()
    for name in ("sub-01_task-motor", "sub-01_task-rest"):
        assert page.count(f"<h2>BOLD run {name}</h2>") == 1, name
        assert _files(out, f"sub-01/func/{name}") == _expected(f"sub-01/func/{name}")
    assert "that failed" not in page


def test_the_runs_are_in_the_methods_to_cite(mixed: tuple[Path, Path, BoldRun, int]) -> None:
    """Issue 29 item 10 for BOLD runs: the run's paragraph in logs/CITATION.md, in its page's
    citation file and on its page, next to the echo sets'."""
    _, out, _, _ = mixed
    text = (out / "logs" / "CITATION.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## sub")]
    assert "## sub-01_task-rest" in headings and "## sub-01" in headings
    assert "3 echoes of a multi-echo BOLD run" in text or "4 echoes of a multi-echo BOLD" in text
    page_file = (out / "logs" / "CITATION_sub-01.md").read_text()
    assert "## sub-01_task-rest" in page_file and "weights TE exp(-TE/T2\\*)" in page_file
    assert "## sub-02" not in page_file
    assert "multi-echo BOLD run (TE" in (out / "sub-01.html").read_text()
