"""``t2starmap t2smap --phase``: the complex fit of a run with phase echoes end to end, the
refusal of phase that follows no frequency (magnitude fit, with the reason), and the usage
errors (seeded synthetic runs with known S0, T2* and frequency)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.cli.run import main as app_main
from t2starmap.cli.t2smap import main
from t2starmap.sim.bold import write_bold_bids, write_bold_run
from t2starmap.sim.bold_phase import make_complex_bold_run, write_phase
from tests.support.bold import t2smap_args
from tests.support.files import EXAMPLE, checksums


def _written(tmp_path_factory: pytest.TempPathFactory, coherent: bool) -> tuple:
    cr = make_complex_bold_run((16, 16, 8), 30, seed=3, coherent=coherent)
    folder = tmp_path_factory.mktemp("cx")
    mags = write_bold_run(folder, cr.magnitude)
    return cr, (cr.magnitude, mags, folder / "mask.nii.gz"), write_phase(folder, cr)


@pytest.fixture(scope="module")
def coherent(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return _written(tmp_path_factory, True)


def _generated(out: Path) -> dict:
    return json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]


def _t2(out: Path) -> np.ndarray:
    return np.asarray(nib.load(str(out / "T2starmap.nii.gz")).dataobj)


def test_complex_fit_of_a_run_with_phase(coherent: tuple, tmp_path: Path) -> None:
    cr, synthetic, phase = coherent
    before = checksums(phase[0].parent)
    assert main(t2smap_args(synthetic, tmp_path, "--phase", *map(str, phase))) == 0
    assert checksums(phase[0].parent) == before
    made = _generated(tmp_path)
    assert made["ComplexFit"] is True
    assert made["PhaseVerdict"] == "coherent"
    assert made["PhaseFiles"] == [str(p) for p in phase]
    run = cr.magnitude
    keep = run.brain & ~run.dropout
    t2 = _t2(tmp_path)
    assert np.median(np.abs(t2[keep] / run.t2star[keep] - 1)) < 0.01
    # the standard errors are those of the mean of the volumes: they match the errors
    se = np.asarray(nib.load(str(tmp_path / "desc-stderr_T2starmap.nii.gz")).dataobj)[keep]
    z = (t2[keep] - run.t2star[keep]) / se
    assert 0.6 < 1.4826 * np.median(np.abs(z)) < 1.6
    for name in ("R2starmap", "S0map", "desc-optcom_bold", "desc-decayFitFailures_mask"):
        assert (tmp_path / f"{name}.nii.gz").exists()


def test_incoherent_phase_is_refused_and_the_magnitude_fitted(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    cr, synthetic, phase = _written(tmp_path_factory, False)
    args = t2smap_args(synthetic, tmp_path, "--phase", *map(str, phase), "--fittype", "curvefit")
    assert main(args) == 0
    made = _generated(tmp_path)
    assert made["ComplexFit"] is False
    assert "follows no frequency" in made["ComplexFitNote"]
    assert "curvefit" in made["ComplexFitNote"]
    run = cr.magnitude
    good = run.brain & ~run.dropout
    assert np.median(np.abs(_t2(tmp_path)[good] / run.t2star[good] - 1)) < 0.03


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (("--fitmode", "ts"), 64, "--fitmode ts"),
        (("--phase", "ONE"), 64, "--phase gives 1 files"),
        (("--phase", "a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"), 66, "no such file"),
    ],
)
def test_phase_usage_errors(
    coherent: tuple,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    code: int,
    says: str,
) -> None:
    _, synthetic, phase = coherent
    args = list(extra)
    if "--phase" not in args:
        args = ["--phase", *map(str, phase), *args]
    args = [str(phase[0]) if a == "ONE" else a for a in args]
    assert main(t2smap_args(synthetic, tmp_path / "o", *args)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "o").exists()


def test_bids_app_fits_part_phase_runs_with_the_complex_fit(tmp_path: Path) -> None:
    """A func run stored as part-mag and part-phase echoes: the participant level finds the
    phase files, fits the complex echoes, and lists the phase files in the Sources."""
    root = tmp_path / "bids"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("sub-*"))
    cr = make_complex_bold_run((16, 16, 8), 12, seed=4)
    mags = write_bold_bids(root, "sub-04_task-rest", cr.magnitude, "rest")
    phase = write_phase(tmp_path / "phase", cr)
    for k, path in enumerate(mags):
        stem = path.name.replace("_bold.nii.gz", "")
        for src, part in ((path, "mag"), (phase[k], "phase")):
            target = path.with_name(f"{stem}_part-{part}_bold.nii.gz")
            shutil.move(src, target)
            meta = json.loads(src.with_name(src.name.replace(".nii.gz", ".json")).read_text())
            target.with_name(target.name.replace(".nii.gz", ".json")).write_text(json.dumps(meta))
        path.with_name(path.name.replace(".nii.gz", ".json")).unlink()
    out = tmp_path / "out"
    assert app_main([str(root), str(out), "participant", "-q", "--skip-bids-validation"]) == 0
    run = out / "sub-04" / "func" / "sub-04_task-rest"
    sidecar = json.loads(run.with_name(run.name + "_T2starmap.json").read_text())
    assert sidecar["ComplexFit"] is True
    assert sidecar["FitType"] == "complex"
    assert sum("part-phase" in s for s in sidecar["Sources"]) == 4
    assert sum("part-mag" in s for s in sidecar["Sources"]) == 4
    record = json.loads(run.with_name(run.name + "_record.json").read_text())
    assert record["fit_type"] == "complex"  # the page and the methods paragraph say so
    t2 = np.asarray(nib.load(str(run.with_name(run.name + "_T2starmap.nii.gz"))).dataobj)
    keep = cr.magnitude.brain & ~cr.magnitude.dropout & (t2 > 0)
    assert keep.sum() > 0.8 * (cr.magnitude.brain & ~cr.magnitude.dropout).sum()
    assert np.median(np.abs(t2[keep] / cr.magnitude.t2star[keep] - 1)) < 0.02
