"""One echo set through :func:`t2starmap.estimate.fit_echo_set`: which fits run, how often,
with how many workers, and what the maps, labels, warnings and sidecar fields say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from t2starmap import estimate
from t2starmap.estimate import OptionError, Options, fit_echo_set
from t2starmap.fit import dispatch
from t2starmap.fit.status import GOOD, NOT_CORRECTED, NOT_FITTED, level_named
from t2starmap.layout import EchoSet, find_echo_sets
from t2starmap.nifti import check_geometry
from t2starmap.simulate import (
    make_phantom,
    make_slice_phantom,
    write_megre,
    write_slice_megre,
)

#: Every field the map sidecars get from a corrected fit; a field that disappears is a bug.
CORRECTED_FIT_FIELDS = {
    "EstimationAlgorithm",
    "FitMethod",
    "NoiseModel",
    "NoiseSigma",
    "NoiseSigmaMethod",
    "NoiseSigmaCandidates",
    "NoiseCoils",
    "ComputeDevice",
    "T2starRange",
    "SoftwareName",
    "SoftwareVersion",
    "GoodnessOfFit",
    "StandardErrorInflation",
    "B0Correction",
    "B0CorrectionReference",
    "B0CorrectionThreshold",
    "B0CorrectedFraction",
    "B0FieldMapMethod",
    "B0SliceThickness",
    "B0SliceSpacing",
    "PhaseVerdict",
    "PhaseVerdictNote",
    "PhaseCoherence",
    "PhaseParityCoherence",
    "PhaseTrustedFraction",
    "BipolarReadout",
    "BipolarOffsetMedian",
}


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    return root


def _one_set(root: Path) -> EchoSet:
    (echo_set,) = find_echo_sets(root, None, None, {})
    return echo_set


@pytest.fixture(scope="module")
def magnitude_set(tmp_path_factory: pytest.TempPathFactory) -> EchoSet:
    root = _dataset(tmp_path_factory.mktemp("mag") / "bids")
    write_megre(root, make_phantom((20, 18, 4), seed=2), "01")
    return _one_set(root)


@pytest.fixture(scope="module")
def phase_set(tmp_path_factory: pytest.TempPathFactory) -> EchoSet:
    root = _dataset(tmp_path_factory.mktemp("sliced") / "bids")
    write_slice_megre(root, make_slice_phantom((24, 24, 6), snr=100.0, seed=3))
    return _one_set(root)


def fit(echo_set: EchoSet, **options: object) -> estimate.SetFit:
    return fit_echo_set(echo_set, check_geometry(echo_set), Options(**options))  # type: ignore[arg-type]


def test_a_magnitude_set_takes_one_solver_run(magnitude_set: EchoSet) -> None:
    got = fit(magnitude_set)
    assert got.solver_runs == 1 and got.noise_model == "rician"
    assert list(got.steps) == ["read", "noise", "fit", "maps"]
    assert got.fit_info["B0Correction"] == "none"
    status = got.maps["status"]
    signal = got.maps["signal"]
    assert np.all(status[~signal] == NOT_FITTED.index)
    assert np.mean(status[signal] == GOOD.index) > 0.95
    assert got.status_counts["good"] == int(np.sum(status == GOOD.index))


def test_a_set_with_phase_takes_two_solver_runs_with_default_options(phase_set: EchoSet) -> None:
    got = fit(phase_set)
    assert got.solver_runs == 2  # the fit, then the corrected fit started from it
    assert got.fit_info["B0Correction"] == "through-slice"
    assert got.fit_info["B0FieldMapMethod"] == "phase differences"
    assert list(got.steps) == ["read", "noise", "phase", "fit", "correction", "maps"]
    assert set(got.fit_info) >= CORRECTED_FIT_FIELDS, CORRECTED_FIT_FIELDS - set(got.fit_info)
    assert set(got.fit_info) - CORRECTED_FIT_FIELDS <= {"NoiseSigmaNote", "Warnings"}
    # the edge slices cannot be corrected: their good fits say so (where the dephasing is
    # strong, their uncorrected decays do not follow the model, and say that)
    edge = got.maps["status"][:, :, [0, -1]][got.maps["signal"][:, :, [0, -1]]]
    misfit = level_named("decay_not_following_model").index
    assert set(np.unique(edge).tolist()) == {NOT_CORRECTED.index, misfit}
    assert got.status_counts[NOT_CORRECTED.name] == int(np.sum(edge == NOT_CORRECTED.index))


def test_the_complex_fit_is_the_field_map(phase_set: EchoSet) -> None:
    got = fit(phase_set, fit_method="complex", noise_sigma=10.0)
    assert got.solver_runs == 2 and got.fit_method == "complex"
    assert got.fit_info["B0FieldMapMethod"] == "complex fit"
    assert "frequency" in got.maps and "magnitude" in got.maps
    assert fit(phase_set, b0_correction="none").solver_runs == 1


def test_every_fit_runs_with_the_workers_asked_for(
    phase_set: EchoSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--nprocs reaches the noise estimate, the fit, the field map and the corrected fit."""
    workers: list[int] = []
    original = dispatch.map_chunks

    def recording(func, starts, n):  # type: ignore[no-untyped-def]
        workers.append(n)
        return original(func, starts, n)

    monkeypatch.setattr(dispatch, "map_chunks", recording)
    fit(phase_set, workers=3)
    assert len(workers) == 4 and set(workers) == {3}, workers


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"fit_method": "complex"}, "fit_method"),
        ({"b0_correction": "through-slice"}, "b0_correction"),
    ],
)
def test_what_a_set_cannot_do_is_an_option_error(
    magnitude_set: EchoSet, options: dict[str, str], option: str
) -> None:
    with pytest.raises(OptionError) as raised:
        fit(magnitude_set, **options)
    assert raised.value.option == option and raised.value.value == options[option]
    assert "--" not in str(raised.value)  # the caller words it as a flag
    assert str(magnitude_set.echoes[0].path) == raised.value.where


def test_arlo_on_uneven_echoes_is_an_option_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "bids")
    te = np.array([0.002, 0.005, 0.011, 0.02, 0.031])
    write_megre(root, make_phantom((12, 12, 3), echo_times=te, seed=4), "01")
    with pytest.raises(OptionError, match="evenly spaced") as raised:
        fit(_one_set(root), fit_method="arlo")
    assert raised.value.option == "fit_method"


def test_a_failure_shared_by_five_percent_of_the_mask_is_a_warning(tmp_path: Path) -> None:
    """Rising decays planted in 8 % of the object: each carries its label, and the set warns
    with the label's meaning and advice; the untouched set does not."""
    phantom = make_phantom((20, 20, 4), seed=5)
    magnitude = phantom.magnitude.copy()
    inside = np.argwhere(phantom.mask)
    chosen = inside[np.random.default_rng(0).choice(len(inside), len(inside) * 8 // 100, False)]
    rising = 500.0 * (1.0 + 5.0 * phantom.echo_times)
    magnitude[tuple(chosen.T)] = rising
    root = _dataset(tmp_path / "bids")
    write_megre(root, phantom.__class__(**{**phantom.__dict__, "magnitude": magnitude}), "01")
    got = fit(_one_set(root))
    low = level_named("r2star_at_lower_bound")
    assert np.all(got.maps["status"][tuple(chosen.T)] == low.index)
    assert any(low.meaning in w and low.advice in w for w in got.warnings), got.warnings
    assert got.fit_info["Warnings"] == list(got.warnings)


def test_a_clean_set_has_no_warning(magnitude_set: EchoSet) -> None:
    assert fit(magnitude_set).warnings == ()
