"""``t2starmap t2smap`` end to end on a synthetic run with known truth: every option, the
files under tedana's names in both conventions, and the real data when present."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.bids.t2smap_outputs import OUTPUTS, file_name
from t2starmap.cli import main as app_main
from t2starmap.cli.t2smap import main
from t2starmap.fit.status import level_named
from t2starmap.sim.bold import g_factor_map, make_bold_run, write_bold_run
from tests.support.bold import Synthetic, t2smap_args, written_run
from tests.support.files import SHARED_DATA, checksums

BIDS_CORE = [
    "T2starmap",
    "S0map",
    "desc-optcom_bold",
    "desc-adaptiveGoodSignal_mask",
    "desc-limited_T2starmap",
    "desc-limited_S0map",
    "desc-rmse_statmap",
    "R2starmap",
    "desc-stderr_T2starmap",
    "desc-stderr_S0map",
    "desc-fitstatus_dseg",
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return written_run(tmp_path_factory, (20, 20, 10), 40, seed=2)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.parametrize("fittype", ["loglin", "curvefit", "nlls"])
def test_each_fittype_writes_tedanas_files_and_finds_t2star(
    synthetic: Synthetic, tmp_path: Path, fittype: str
) -> None:
    run = synthetic[0]
    before = checksums(synthetic[1][0].parent)
    assert main(t2smap_args(synthetic, tmp_path, "--fittype", fittype, "--verbose")) == 0
    assert checksums(synthetic[1][0].parent) == before  # the input is never modified
    names = {p.name for p in tmp_path.iterdir()}
    for stem in BIDS_CORE:
        assert f"{stem}.nii.gz" in names
    assert {
        "desc-confounds_timeseries.tsv",
        "dataset_description.json",
        "desc-tedana_registry.json",
        "stat-variance_desc-t2star_statmap.nii.gz",
    } <= names
    assert ("desc-decayFitFailures_mask.nii.gz" in names) == (fittype != "loglin")
    assert not [n for n in names if n.startswith(".")]  # the stage is gone
    t2 = _load(tmp_path / "T2starmap.nii.gz")
    good = run.brain & ~run.dropout & (_load(tmp_path / "desc-adaptiveGoodSignal_mask.nii.gz") > 1)
    assert np.median(np.abs(t2[good] / run.t2star[good] - 1)) < 0.03
    r2 = _load(tmp_path / "R2starmap.nii.gz")
    np.testing.assert_allclose(r2[good], 1 / t2[good], rtol=1e-5)
    optcom = _load(tmp_path / "desc-optcom_bold.nii.gz")
    assert optcom.shape == (*run.brain.shape, 40)
    assert nib.load(str(tmp_path / "desc-optcom_bold.nii.gz")).header.get_zooms()[3] == 2.0
    registry = json.loads((tmp_path / "desc-tedana_registry.json").read_text())
    assert registry["t2star img"] == "T2starmap.nii.gz"
    assert all((tmp_path / name).exists() for name in registry.values())


def test_nlls_gives_t2star_where_tedanas_mask_drops_it(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    run = synthetic[0]
    assert main(t2smap_args(synthetic, tmp_path / "l")) == 0
    assert main(t2smap_args(synthetic, tmp_path / "n", "--fittype", "nlls")) == 0
    drop = run.dropout
    assert np.mean(_load(tmp_path / "l" / "T2starmap.nii.gz")[drop] == 0) > 0.5
    t2 = _load(tmp_path / "n" / "T2starmap.nii.gz")[drop]
    assert np.mean(t2 > 0) > 0.9
    # every fit ends in a converged minimum: inside the range, or flagged on its upper end
    # (echo 2 dark: the data bound T2* from above only); the ones inside are near the truth
    status = _load(tmp_path / "n" / "desc-fitstatus_dseg.nii.gz")[drop]
    at_bound = status == level_named("r2star_at_upper_bound").index
    inside = np.isin(status, [level_named(n).index for n in ("good", "refitted")])
    assert np.mean(inside | at_bound) > 0.95
    assert np.all(t2[at_bound] < 0.0011)
    assert np.median(np.abs(t2[inside] / run.t2star[drop][inside] - 1)) < 0.2
    assert not np.any(status == level_named("not_converged").index)


def test_orig_convention_and_prefix(synthetic: Synthetic, tmp_path: Path) -> None:
    assert main(t2smap_args(synthetic, tmp_path, "--convention", "orig", "--prefix", "sub-01")) == 0
    for key in ("t2star img", "s0 img", "combined img", "adaptive mask img", "registry json"):
        assert (tmp_path / file_name(key, "sub-01", "orig")).exists()
    assert (tmp_path / "sub-01_t2svG.nii.gz").exists()
    assert (tmp_path / "sub-01_ts_OC.nii.gz").exists()


def test_ts_mode_writes_4d_maps_equal_to_per_volume_fits(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    run = synthetic[0]
    assert main(t2smap_args(synthetic, tmp_path, "--fitmode", "ts", "--fittype", "curvefit")) == 0
    t2 = _load(tmp_path / "T2starmap.nii.gz")
    assert t2.shape == (*run.brain.shape, 40)
    good = run.brain & ~run.dropout
    per_volume = np.median(np.abs(t2[good] / run.t2star[good][:, None] - 1))
    assert per_volume < 0.1
    assert _load(tmp_path / "desc-decayFitFailures_mask.nii.gz").ndim == 4


def test_paid_dummy_scans_exclude_and_masktypes(synthetic: Synthetic, tmp_path: Path) -> None:
    args = t2smap_args(
        synthetic,
        tmp_path,
        "--combmode",
        "paid",
        "--dummy-scans",
        "3",
        "--exclude",
        "0,5:8",
        "--masktype",
        "dropout",
        "decay",
        "--n-threads",
        "-1",
    )
    assert main(args) == 0
    optcom = _load(tmp_path / "desc-optcom_bold.nii.gz")
    assert optcom.shape[3] == 37  # dummy scans removed, excluded volumes kept
    table = (tmp_path / "desc-confounds_timeseries.tsv").read_text().splitlines()
    assert table[0].split("\t")[0] == "rmse_mean" and len(table) == 38


def test_exclusion_changes_the_fit_not_the_combined_length(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    assert main(t2smap_args(synthetic, tmp_path / "a")) == 0
    assert main(t2smap_args(synthetic, tmp_path / "b", "--exclude", "0:20")) == 0
    a, b = (_load(tmp_path / x / "T2starmap.nii.gz") for x in "ab")
    assert not np.array_equal(a, b)
    assert _load(tmp_path / "b" / "desc-optcom_bold.nii.gz").shape[3] == 40


def test_without_mask_and_milliseconds(synthetic: Synthetic, tmp_path: Path) -> None:
    run, paths, _ = synthetic
    args = [
        "-d",
        *map(str, paths),
        "-e",
        *(str(1000 * t) for t in run.te),
        "--out-dir",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 0
    count = _load(tmp_path / "desc-adaptiveGoodSignal_mask.nii.gz")
    assert (count > 0).sum() > 0.8 * (run.brain & ~run.dropout).sum()
    assert ((count > 0) & ~run.brain).sum() < 0.05 * (count > 0).sum()  # in the right place
    t2 = _load(tmp_path / "T2starmap.nii.gz")
    good = (count > 1) & run.brain & ~run.dropout
    assert np.median(np.abs(t2[good] / run.t2star[good] - 1)) < 0.03


def test_z_concatenated_single_file(synthetic: Synthetic, tmp_path: Path) -> None:
    run, paths, mask = synthetic
    img = nib.load(str(paths[0]))
    stacked = np.concatenate([_load(p) for p in paths], axis=2)
    zcat = tmp_path / "zcat.nii.gz"
    nib.save(nib.Nifti1Image(stacked, img.affine, img.header), str(zcat))
    assert (
        main(
            [
                "-d",
                str(zcat),
                "-e",
                *map(str, run.te),
                "--mask",
                str(mask),
                "--out-dir",
                str(tmp_path / "z"),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(t2smap_args(synthetic, tmp_path / "s")) == 0
    np.testing.assert_array_equal(
        _load(tmp_path / "z" / "T2starmap.nii.gz"), _load(tmp_path / "s" / "T2starmap.nii.gz")
    )


def test_dispatched_from_the_app_and_version(
    synthetic: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert app_main(["t2smap", *t2smap_args(synthetic, tmp_path)]) == 0
    assert (tmp_path / "T2starmap.nii.gz").exists()
    assert main(["-v"]) == 0
    assert "t2smap" in capsys.readouterr().out


def test_outputs_table_names_every_registry_key() -> None:
    assert file_name("t2star img", "", "bids") == "T2starmap.nii.gz"
    assert file_name("confounds tsv", "x_", "orig") == "x_confounds.tsv"
    assert len({o.bids + o.ext for o in OUTPUTS.values()}) == len(OUTPUTS)


@pytest.mark.realdata
def test_real_me_epi_loglin_is_tedanas_definition(tmp_path: Path) -> None:
    """tedana's own 3-echo data: our loglin T2* equals lstsq of log(|S| + 1) over every
    echo x time sample (tedana's definition), computed here independently."""
    folder = SHARED_DATA / "me-epi"
    paths = [folder / f"echo{k}.nii.gz" for k in (1, 2, 3)]
    te = np.array([0.0145, 0.0385, 0.0625])
    assert (
        main(
            [
                "-d",
                *map(str, paths),
                "-e",
                *map(str, te),
                "--mask",
                str(folder / "mask.nii.gz"),
                "--out-dir",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    mask = _load(folder / "mask.nii.gz") > 0
    count = _load(tmp_path / "desc-adaptiveGoodSignal_mask.nii.gz")[mask]
    data = [np.asarray(_load(p), dtype=np.float32)[mask] for p in paths]
    t2 = _load(tmp_path / "T2starmap.nii.gz")[mask]
    rng = np.random.default_rng(0)
    for v in rng.choice(np.flatnonzero(count == 3), 50, replace=False):
        y = np.log(np.abs(np.stack([d[v] for d in data])) + 1).reshape(-1)
        x = np.repeat(np.stack([np.ones(3), -te], 1), data[0].shape[1], axis=0)
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
        if beta[1] > 0:
            assert t2[v] == pytest.approx(1 / beta[1], rel=1e-4)


def test_nlls_leaves_voxels_without_signal_empty(synthetic: Synthetic, tmp_path: Path) -> None:
    """Voxels whose every sample is 0 (outside the scanner's field, masked by a converter)
    are not fitted: T2* 0 and status 'not fitted', not a floor value."""
    run, paths, mask = synthetic
    zeroed = []
    for k, path in enumerate(paths):
        img = nib.load(str(path))
        data = np.asarray(img.dataobj).copy()
        data[:4] = 0
        zeroed.append(tmp_path / f"echo{k}.nii.gz")
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(zeroed[-1]))
    everything = tmp_path / "fov.nii.gz"
    mask_img = nib.load(str(mask))
    nib.save(nib.Nifti1Image(np.ones(run.brain.shape, np.uint8), mask_img.affine), str(everything))
    args = [
        "-d",
        *map(str, zeroed),
        "-e",
        *map(str, run.te),
        "--mask",
        str(everything),
        "--out-dir",
        str(tmp_path / "o"),
        "--fittype",
        "nlls",
        "--quiet",
    ]
    assert main(args) == 0
    assert np.all(_load(tmp_path / "o" / "T2starmap.nii.gz")[:4] == 0)
    assert np.all(_load(tmp_path / "o" / "desc-fitstatus_dseg.nii.gz")[:4] == 0)
    assert np.all(_load(tmp_path / "o" / "T2starmap.nii.gz")[8:][run.brain[8:]] > 0)


@pytest.mark.parametrize("fittype", ["loglin", "nlls"])
def test_ts_mode_other_fit_types(synthetic: Synthetic, tmp_path: Path, fittype: str) -> None:
    run = synthetic[0]
    args = t2smap_args(synthetic, tmp_path, "--fitmode", "ts", "--fittype", fittype)
    assert main(args) == 0
    t2 = _load(tmp_path / "T2starmap.nii.gz")
    good = run.brain & ~run.dropout
    assert t2.shape == (*run.brain.shape, 40)
    assert np.median(np.abs(t2[good] / run.t2star[good][:, None] - 1)) < 0.15
    assert not (tmp_path / "R2starmap.nii.gz").exists()  # not written in ts mode


def test_nlls_records_its_sigma_per_voxel_under_a_g_factor(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    """Under a g-factor-like noise map the nlls run takes sigma per voxel and says so in
    dataset_description.json; without one it keeps one sigma for the run and says that."""
    shape = (24, 24, 12)
    folder = tmp_path / "in"
    folder.mkdir()
    run = make_bold_run(shape, 40, seed=7, g_factor=g_factor_map(shape))
    amplified = (run, write_bold_run(folder, run), folder / "mask.nii.gz")
    assert main(t2smap_args(amplified, tmp_path / "g", "--fittype", "nlls")) == 0
    made = json.loads((tmp_path / "g" / "dataset_description.json").read_text())
    assert made["GeneratedBy"][0]["NoiseSigmaPerVoxel"] is True
    t2 = _load(tmp_path / "g" / "T2starmap.nii.gz")
    low = run.dropout & (g_factor_map(shape) > 2)
    assert np.median(t2[low] / run.t2star[low] - 1) < 2.0  # one sigma leaves it near 10
    assert main(t2smap_args(synthetic, tmp_path / "p", "--fittype", "nlls")) == 0
    plain = json.loads((tmp_path / "p" / "dataset_description.json").read_text())
    assert plain["GeneratedBy"][0]["NoiseSigmaPerVoxel"] is False
    assert plain["GeneratedBy"][0]["NoiseSigma"] == pytest.approx(40.0, rel=0.1)
