"""The through-slice correction in a participant run (``--b0-correction``), on BIDS mag + phase
data from the project's integrating simulator, and its refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from t2starmap.cli.run import main
from t2starmap.fit.result import misfit_limit
from t2starmap.fit.status import GOOD, NOT_CORRECTED, level_named
from t2starmap.sim.failures import bipolar
from t2starmap.sim.slices import make_slice_phantom, write_slice_megre
from tests.support.files import checksums, failure_reasons, images_below

ANAT = Path("sub-01") / "anat"


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("slices") / "bids"
    phantom = make_slice_phantom((24, 24, 6), snr=100.0, seed=3)
    write_slice_megre(root, phantom)
    return root, phantom


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def run(bids: Path, out: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "--skip-bids-validation", "-q", *extra])


def test_auto_corrects_where_the_field_changes_across_the_slice(
    sliced: tuple[Path, object], tmp_path: Path
) -> None:
    bids, phantom = sliced
    out = tmp_path / "out"
    assert run(bids, out) == 0
    r2 = load(out / ANAT / "sub-01_R2starmap.nii.gz")
    raw = load(out / ANAT / "sub-01_desc-uncorrected_R2starmap.nii.gz")
    gradient = load(out / ANAT / "sub-01_desc-gradz_statmap.nii.gz")
    truth = phantom.r2star  # type: ignore[attr-defined]
    change = np.abs(phantom.field_change_hz)  # type: ignore[attr-defined]
    inner = np.zeros(truth.shape, dtype=bool)
    inner[:, :, 1:-1] = True  # edge slices have no central difference: left uncorrected
    steep, flat = inner & (change >= 12.0), inner & (change < 1.0)
    assert steep.sum() > 50 and flat.sum() > 50

    def error(values: np.ndarray, where: np.ndarray) -> float:
        return float(np.median(np.abs(values[where] / truth[where] - 1)))

    assert error(raw, steep) >= 0.15 and error(r2, steep) <= 0.05
    assert error(r2, flat) <= 0.03
    np.testing.assert_allclose(
        gradient[inner],
        phantom.gradient_hz_per_mm[inner],
        atol=0.2,  # type: ignore[attr-defined]
    )
    sidecar = json.loads((out / ANAT / "sub-01_R2starmap.json").read_text())
    assert sidecar["B0Correction"] == "through-slice"
    assert sidecar["FitMethod"] == "nlls" and "through-slice" in sidecar["EstimationAlgorithm"]
    assert sidecar["B0CorrectionThreshold"] == 0.3 and len(sidecar["B0CorrectionReference"]) == 2
    assert sidecar["B0SliceThickness"] == 3.0
    gradz = json.loads((out / ANAT / "sub-01_desc-gradz_statmap.json").read_text())
    assert gradz["Units"] == "Hz/mm"
    page = (out / "sub-01.html").read_text()
    assert "R2* correction (1/s) montage" in page and "gradient (Hz/mm) montage" in page
    assert "corrected minus uncorrected R2*" in page
    # what the run checked and concluded, on the page: the rectangle this phantom excites is
    # what the estimate finds, drawn as F(TE)
    assert sidecar["B0SliceProfile"] == "rect" or sidecar["B0SliceProfile"].startswith("sinc:")
    assert "strong-gradient voxels" in sidecar["B0SliceProfileEstimate"]
    for row in ("Noise level candidates", "Goodness of fit", "Phase", "Field-gradient correction"):
        assert f"<th>{row}</th>" in page or f">{row}<" in page, row
    assert "dephasing factor" in page and "reduced χ² montage" in page


def test_a_slice_profile_given_is_used_and_recorded(
    sliced: tuple[Path, object], tmp_path: Path
) -> None:
    bids, _ = sliced
    out = tmp_path / "out"
    assert run(bids, out, "--slice-profile", "sinc:2.7") == 0
    sidecar = json.loads((out / ANAT / "sub-01_R2starmap.json").read_text())
    assert sidecar["B0SliceProfile"] == "sinc:2.7" and "B0SliceProfileEstimate" not in sidecar
    assert "source: option" in sidecar["B0SliceProfileSource"]
    table = tmp_path / "profile.tsv"
    table.write_text("position\tamplitude\n-0.5\t1\n0\t1\n0.5\t1\n")
    assert run(bids, tmp_path / "out2", "--slice-profile", str(table)) == 0
    assert run(bids, tmp_path / "out3", "--slice-profile", "sinc:-1") == 64
    assert run(bids, tmp_path / "out4", "--slice-profile", str(tmp_path / "none.tsv")) == 66
    assert not (tmp_path / "out3").exists() and not (tmp_path / "out4").exists()


def test_none_leaves_the_fit_uncorrected(sliced: tuple[Path, object], tmp_path: Path) -> None:
    bids, _ = sliced
    out = tmp_path / "out"
    assert run(bids, out, "--b0-correction", "none") == 0
    names = {p.name for p in (out / ANAT).iterdir()}
    assert not [n for n in names if "uncorrected" in n or "gradz" in n]
    sidecar = json.loads((out / ANAT / "sub-01_R2starmap.json").read_text())
    assert sidecar["B0Correction"] == "none"


def test_through_slice_without_phase_is_a_usage_error(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each set without phase fails with the reason (exit 64), nothing of it published; with
    --stop-on-first-crash the run stops at the first and leaves no output folder."""
    before = checksums(example)
    out = tmp_path / "out"
    assert run(example, out, "--b0-correction", "through-slice") == 64
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if "ERROR" in line]
    assert "3 echo set(s): 0 published, 3 failed" in error
    assert "--b0-correction through-slice" in error and "phase" in error
    assert images_below(out) == set() and len(failure_reasons(out)) == 3
    stopped = tmp_path / "stopped"
    assert run(example, stopped, "--b0-correction", "through-slice", "--stop-on-first-crash") == 64
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "phase" in err
    assert not stopped.exists() and checksums(example) == before


def test_auto_without_phase_says_so_and_fits(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(example, out, "--participant-label", "01") == 0
    sidecar = json.loads((out / ANAT / "sub-01_T2starmap.json").read_text())
    assert sidecar["B0Correction"] == "none"
    assert "no phase" in sidecar["B0CorrectionNote"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_thickness", "SliceThickness"),
        ("one_slice", "at least 3 slices"),
    ],
)
def test_what_the_correction_cannot_use_is_a_warning_under_auto_and_64_when_asked(
    tmp_path: Path, damage: str, message: str
) -> None:
    shape = (16, 16, 1) if damage == "one_slice" else (16, 16, 5)
    bids = tmp_path / "bids"
    write_slice_megre(bids, make_slice_phantom(shape, snr=100.0, seed=1))
    if damage == "no_thickness":
        for sidecar in (bids / ANAT).glob("*.json"):
            meta = json.loads(sidecar.read_text())
            meta.pop("SliceThickness", None)
            sidecar.write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert run(bids, out) == 0
    sidecar = json.loads((out / ANAT / "sub-01_T2starmap.json").read_text())
    assert sidecar["B0Correction"] == "none" and message in sidecar["B0CorrectionNote"]
    assert any("no field-gradient correction" in w for w in sidecar["Warnings"])
    assert run(bids, tmp_path / "out2", "--b0-correction", "through-slice") == 64
    assert images_below(tmp_path / "out2") == set()
    assert message in failure_reasons(tmp_path / "out2")["sub-01"]


def test_phase_is_not_read_when_nothing_needs_it(tmp_path: Path) -> None:
    """Given sigma, a magnitude fit and no correction: the phase files are not even opened
    (a damaged one does not stop the run); when the correction needs them, it does."""
    bids = tmp_path / "bids"
    write_slice_megre(bids, make_slice_phantom((12, 12, 5), snr=100.0, seed=2))
    next((bids / ANAT).glob("*part-phase*.nii.gz")).write_bytes(b"not an image")
    out = tmp_path / "out"
    assert run(bids, out, "--noise-sigma", "10", "--b0-correction", "none") == 0
    assert run(bids, tmp_path / "out2", "--noise-sigma", "10") == 65


def test_phase_that_follows_no_frequency_under_auto_and_asked(tmp_path: Path) -> None:
    """auto: the run fits, does not correct, and says why in the sidecar and the page;
    through-slice asked for on such phase: the set fails with exit 65 (bad data) and its
    reason, and no map is published."""
    import dataclasses

    from t2starmap.sim.failures import incoherent_phase

    ph = make_slice_phantom((20, 20, 5), snr=100.0, seed=5)
    signal = incoherent_phase(ph.magnitude * np.exp(1j * ph.phase), seed=1)
    bids = tmp_path / "bids"
    write_slice_megre(bids, dataclasses.replace(ph, phase=np.angle(signal).astype(np.float32)))
    out = tmp_path / "out"
    assert run(bids, out) == 0
    sidecar = json.loads((out / ANAT / "sub-01_T2starmap.json").read_text())
    assert sidecar["B0Correction"] == "none" and sidecar["PhaseVerdict"] == "incoherent"
    assert "follows no frequency" in sidecar["B0CorrectionNote"]
    assert not (out / ANAT / "sub-01_desc-uncorrected_R2starmap.nii.gz").exists()
    out2 = tmp_path / "out2"
    assert run(bids, out2, "--b0-correction", "through-slice") == 65
    assert not list(out2.rglob("*.nii.gz"))
    (failure,) = (out2 / "logs" / "failures").glob("*.json")
    assert "follows no frequency" in json.loads(failure.read_text())["reason"]


@pytest.mark.parametrize("step", ["correction", "fit"])
def test_a_bug_in_the_numerics_is_an_unexpected_error_not_bad_data_or_a_note(
    sliced: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Only the data errors the numerics raise where they check the data (NotApplicableError,
    BadDataError) become a note or exit 65; any other ValueError is a bug: exit 1, recorded
    as unexpected with its traceback, never a quiet "no correction" under ``auto``."""
    from t2starmap.workflows import echo_set, set_correction

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("index 7 out of range (a planted bug)")

    if step == "correction":
        monkeypatch.setattr(set_correction, "correct_through_slice", broken)
    else:
        monkeypatch.setattr(echo_set, "fit_t2star", broken)
    bids, _ = sliced
    out = tmp_path / "out"
    assert run(bids, out) == 1
    reason = failure_reasons(out)["sub-01"]
    assert reason.startswith("unexpected error: ValueError: index 7"), reason
    record = json.loads((out / "logs" / "failures" / "sub-01_failure.json").read_text())
    assert "Traceback" in record["traceback"]


def test_every_input_that_shaped_an_output_is_among_its_sources(tmp_path: Path) -> None:
    """The phase files are read for the noise, the phase checks and the field map: the
    sidecars' Sources and the record list them beside the magnitude echoes; a run that does
    not open them (given sigma, magnitude fit, no correction) does not."""
    bids = tmp_path / "bids"
    write_slice_megre(bids, make_slice_phantom((12, 12, 5), snr=100.0, seed=2))
    mags = sorted(p.name for p in (bids / ANAT).glob("*part-mag*.nii.gz"))
    phases = sorted(p.name for p in (bids / ANAT).glob("*part-phase*.nii.gz"))
    assert len(mags) == len(phases) >= 3
    for extra, listed in (([], phases), (["--noise-sigma", "10", "--b0-correction", "none"], [])):
        out = tmp_path / f"out{len(extra)}"
        assert run(bids, out, *extra) == 0
        sidecar = json.loads((out / ANAT / "sub-01_R2starmap.json").read_text())
        names = [uri.rsplit("/", 1)[1] for uri in sidecar["Sources"]]
        assert sorted(names) == sorted(mags + listed), extra
        assert all(uri.startswith("bids:raw:sub-01/anat/") for uri in sidecar["Sources"])
        record = json.loads((out / ANAT / "sub-01_record.json").read_text())
        assert sorted(Path(p).name for p in record["part_sources"]) == listed


def test_nprocs_reaches_the_reading_of_echoes_and_parts(
    sliced: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--nprocs N``: the magnitude echoes and the phase are read in one pool of N threads
    (at most 4), so that reading scales with the fit; the maps are the same bytes."""
    from t2starmap.workflows import echo_set

    seen: list[tuple[str, int]] = []
    read = echo_set.read_echo_set

    def read_echo_set(*args: Any, **kwargs: Any) -> Any:
        seen.append(("parts" if args[1] is not None else "magnitude", args[3]))
        return read(*args, **kwargs)

    monkeypatch.setattr(echo_set, "read_echo_set", read_echo_set)
    bids, _ = sliced
    for n in (1, 2, 7):
        assert run(bids, tmp_path / f"out{n}", "--nprocs", str(n)) == 0
    assert seen == [("parts", n) for n in (1, 2, 4)]  # magnitude and phase in one pool
    t2 = [load(tmp_path / f"out{n}" / ANAT / "sub-01_T2starmap.nii.gz") for n in (1, 2, 7)]
    assert t2[0].tobytes() == t2[1].tobytes() == t2[2].tobytes()


def test_every_map_is_the_same_bytes_at_any_nprocs_with_many_chunks(
    sliced: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With chunks small enough that every per-voxel step runs many at once (the fits, the
    field map, the slice profile's screen, the dephasing factor, the phase combined with the
    magnitude), every published map is the same bytes on 1, 2 and 3 workers."""
    from t2starmap.b0 import correction, profile_fit
    from t2starmap.bids import parts
    from t2starmap.fit import complex as complex_fit
    from t2starmap.fit import corrected, magnitude, phase

    for module in (magnitude, complex_fit, corrected, phase):
        monkeypatch.setattr(module, "DEFAULT_CHUNK", 257)
    monkeypatch.setattr(correction, "FACTOR_CHUNK", 300)
    monkeypatch.setattr(profile_fit, "SCREEN_CHUNK", 500)
    monkeypatch.setattr(parts, "COMBINE_BLOCK", 1)
    bids, _ = sliced
    maps = []
    for n in (1, 2, 3):
        for method in ("auto", "nlls"):
            out = tmp_path / f"out{n}-{method}"
            assert run(bids, out, "--nprocs", str(n), "--fit-method", method) == 0
            found = {k: v for k, v in checksums(out / ANAT).items() if k.endswith(".nii.gz")}
            maps.append(found)
    assert len(maps[0]) >= 10 and len(maps[1]) >= 10
    for k, method in enumerate(("auto", "nlls")):
        for n in (2, 3):
            first, other = tmp_path / f"out1-{method}" / ANAT, tmp_path / f"out{n}-{method}" / ANAT
            assert maps[k] == maps[2 * (n - 1) + k], _differences(first, other)


def _differences(first: Path, other: Path) -> str:
    """Which maps of two runs differ, and how: their values (voxels, largest difference, the
    values' own checksum), or only their files' bytes (the same values, compressed otherwise)."""
    lines = []
    for path in sorted(first.glob("*.nii.gz")):
        a, b = nib.load(path), nib.load(other / path.name)
        x, y = np.asarray(a.dataobj), np.asarray(b.dataobj)
        if path.read_bytes() == (other / path.name).read_bytes():
            continue
        if x.tobytes() != y.tobytes():
            bad = x != y
            lines.append(
                f"{path.name}: {int(bad.sum())} voxels differ, the largest by "
                f"{float(np.max(np.abs(x[bad].astype(float) - y[bad].astype(float)))):.3g}"
            )
        elif a.header.binaryblock != b.header.binaryblock:
            lines.append(f"{path.name}: the same values, different headers")
        else:
            lines.append(f"{path.name}: the same values and header, different gzip bytes")
    return "; ".join(lines)


def test_the_fit_status_map_is_the_corrected_fits(
    sliced: tuple[Path, object], tmp_path: Path
) -> None:
    """Where the field changes across the slice the uncorrected decay is no exponential (its
    fit is misfit there); the corrected one is. The published fit-status map labels misfit
    only where the corrected fit's reduced chi-square (the published desc-chisq map) exceeds
    its limit, and wherever it exceeds the largest limit (a voxel's corrected fit may use
    fewer echoes: its degrees of freedom, so its limit, vary), among the voxels no other
    failure label claims (issue 27)."""
    bids, phantom = sliced
    out = tmp_path / "out"
    assert run(bids, out) == 0
    status = load(out / ANAT / "sub-01_desc-fitstatus_dseg.nii.gz")
    chisq = load(out / ANAT / "sub-01_desc-chisq_statmap.nii.gz")
    dof = len(phantom.echo_times) - 2  # type: ignore[attr-defined]
    misfit = status == level_named("decay_not_following_model").index
    judged = misfit | np.isin(status, [GOOD.index, NOT_CORRECTED.index])
    assert judged.sum() > 500 and misfit.sum() > 20
    assert np.all(chisq[misfit] > misfit_limit(dof) * (1 - 1e-6))
    assert np.all(misfit[judged & (chisq > misfit_limit(1) * (1 + 1e-6))])


@pytest.mark.parametrize("readout", ["monopolar", "bipolar"])
def test_the_field_map_the_correction_used_is_published(tmp_path: Path, readout: str) -> None:
    """Issue 27: the default magnitude fit builds its field map from the phase differences
    (of same-parity echoes for a bipolar read-out); the run publishes it in fmap/ with its
    magnitude, in Hz, and says how it was made."""
    phantom = make_slice_phantom((24, 24, 6), snr=100.0, seed=3)
    if readout == "bipolar":
        signal = bipolar(phantom.magnitude * np.exp(1j * phantom.phase), 1.0)
        phantom = dataclasses.replace(phantom, phase=np.angle(signal).astype(np.float32))
    bids = tmp_path / "bids"
    write_slice_megre(bids, phantom)
    out = tmp_path / "out"
    assert run(bids, out) == 0
    fmap = out / "sub-01" / "fmap"
    [field_path] = sorted(fmap.glob("*_fieldmap.nii.gz"))
    assert sorted(fmap.glob("*_magnitude.nii.gz"))
    sidecar = json.loads(field_path.with_name(field_path.name[:-7] + ".json").read_text())
    assert sidecar["Units"] == "Hz" and sidecar["FitMethod"] == "nlls"
    method = sidecar["B0FieldMapMethod"]
    assert method.startswith("phase differences")
    assert ("same-parity" in method) == (readout == "bipolar")
    assert method in sidecar["EstimationAlgorithm"]
    field = load(field_path)
    period = 2.0 * sidecar["FieldMapWrapLimit"]
    inner = np.zeros(field.shape, dtype=bool)
    inner[4:-4, 4:-4, :] = True
    error = (field - phantom.frequency_hz + period / 2) % period - period / 2
    assert np.median(np.abs(error[inner & phantom.mask])) < 2.0
