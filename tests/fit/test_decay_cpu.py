"""The torch-free CPU engine of the Gaussian decay fit (:mod:`t2starmap.fit.decay_cpu`)
against the torch solver it mirrors: the same maps to rounding and the same Failure bits, on
the special cases, a synthetic BOLD run, hard decays and tedana's real test data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from t2starmap.fit import adaptive_mask as am
from t2starmap.fit import bold
from t2starmap.fit.decay_cpu import fit_gaussian
from t2starmap.fit.limits import T2STAR_MIN
from t2starmap.fit.lm_policy import AMPLITUDE_MAX
from t2starmap.fit.status import Failure
from t2starmap.sim.bold import make_bold_run
from tests.support.files import SHARED_DATA

TE = np.array([0.012, 0.028, 0.044, 0.060])
NUMPY, TORCH = bold.Compute("cpu", 1, engine="numpy"), bold.Compute("cpu", 1, engine="torch")

LOW, HIGH = int(Failure.R2STAR_LOW), int(Failure.R2STAR_HIGH)
BAD = int(Failure.BAD_INPUT)

#: (name, echoes, expected Failure bits).
CASES = [
    ("decay", 1000 * np.exp(-TE / 0.03), 0),
    ("flat", np.full(4, 500.0), LOW),
    ("rising", 100.0 * np.arange(1, 5), LOW),
    ("a NaN", [900.0, np.nan, 400.0, 300.0], BAD),
    ("an inf", [900.0, np.inf, 400.0, 300.0], BAD),
    ("a negative sample", [900.0, -1.0, 400.0, 300.0], BAD),
    ("one positive echo", [900.0, 0.0, 0.0, 0.0], BAD),
    ("zeros", np.zeros(4), BAD),
    ("two positive echoes, zeros after", [900.0, 300.0, 0.0, 0.0], 0),
]


def _both(y: np.ndarray, te: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    return bold.gaussian_fit(y, te, NUMPY), bold.gaussian_fit(y, te, TORCH)


def _relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-30)


def test_the_special_cases_get_the_torch_solvers_bits() -> None:
    y = np.array([np.asarray(c[1], dtype=np.float64) for c in CASES], dtype=np.float32)
    (s0, r2, reason), (s0_t, r2_t, reason_t) = _both(y, TE)
    for k, (name, _, bits) in enumerate(CASES):
        assert reason[k] == bits, name
    np.testing.assert_array_equal(reason, reason_t)
    np.testing.assert_allclose(r2, r2_t, rtol=1e-5)
    np.testing.assert_allclose(s0, s0_t, rtol=1e-5)
    assert r2[0] == pytest.approx(1 / 0.03, rel=1e-4) and s0[0] == pytest.approx(1000, rel=1e-4)
    bad = reason == BAD
    assert (s0[bad] == 0).all() and (r2[bad] == 0).all()  # the maps are 0 where unusable


def test_a_decay_faster_than_the_range_hits_the_upper_bound() -> None:
    te = np.array([0.001, 0.002, 0.003, 0.004])
    y = (1000 * np.exp(-te / 5e-4))[None].astype(np.float32)  # R2* 2000 1/s
    (_, r2, reason), (_, r2_t, reason_t) = _both(y, te)
    assert reason[0] == reason_t[0] == HIGH
    assert r2[0] == r2_t[0] == pytest.approx(1 / T2STAR_MIN)


def test_a_start_beyond_the_step_bound_is_held_at_it() -> None:
    """Echoes 0.1 ms apart falling 1000-fold: the log-linear start (R2* ~ 7e4 1/s) lies
    beyond the bound on a step, R2_MAX; both engines start and stay there, with the same S0
    (without the bound it runs to the amplitude bound), reported clamped to 1/T2STAR_MIN with
    R2STAR_HIGH."""
    te = np.array([0.001, 0.0011, 0.0012])
    y = np.array([[1000.0, 1.0, 1e-3]], dtype=np.float32)
    (s0, r2, reason), (s0_t, r2_t, reason_t) = _both(y, te)
    assert reason[0] == reason_t[0] and reason[0] & HIGH
    assert r2[0] == r2_t[0] == pytest.approx(1 / T2STAR_MIN)
    assert s0[0] == pytest.approx(s0_t[0], rel=1e-4)
    assert s0[0] < 0.01 * AMPLITUDE_MAX * 1000  # 1000: the data's scale


def test_repeated_echo_times_need_two_distinct_positive_ones() -> None:
    te = np.array([0.01, 0.01, 0.03])
    y = np.array([[800.0, 790.0, 0.0], [800.0, 790.0, 300.0]], dtype=np.float32)
    (_, _, reason), (_, _, reason_t) = _both(y, te)
    assert reason.tolist() == reason_t.tolist()
    assert reason[0] == BAD and reason[1] != BAD


def test_the_engines_agree_on_a_synthetic_run() -> None:
    run = make_bold_run((24, 24, 12), 20, seed=4)
    inside = run.brain
    m = bold.echo_moments(
        [run.echoes[..., k][inside].astype(np.float32) for k in range(run.te.size)]
    )
    used = am.echoes_used(am.adaptive_mask(m.mean, m.bad, ["dropout"]))
    for k in (2, 3, 4):
        sel = used == k
        if not sel.any():
            continue
        (s0, r2, reason), (s0_t, r2_t, reason_t) = _both(m.mean[sel, :k], TE[:k])
        np.testing.assert_array_equal(reason, reason_t)
        assert np.median(_relative(r2, r2_t)) <= 1e-4
        assert np.median(_relative(s0, s0_t)) <= 1e-4
        assert np.quantile(_relative(r2, r2_t), 0.99) <= 1e-3


def test_on_hard_decays_only_voxels_at_the_iteration_cap_may_differ() -> None:
    """Fast decays over an offset: a flat valley where some voxels still creep at the cap; a
    rounding difference can put a step on either side of the tolerance there, nowhere else."""
    rng = np.random.default_rng(1)
    t2 = rng.uniform(0.001, 0.01, (6000, 1))
    y = (1000 * np.exp(-TE / t2) + rng.uniform(0, 30, (6000, 4))).astype(np.float32)
    (_, r2, reason), (_, r2_t, reason_t) = _both(y, TE)
    differ = reason != reason_t
    assert differ.mean() <= 0.005
    assert np.all((reason[differ] ^ reason_t[differ]) == int(Failure.NOT_CONVERGED))
    same = ~differ
    assert np.median(_relative(r2[same], r2_t[same])) <= 1e-4


def test_the_curvefit_of_moments_is_the_same_with_either_engine() -> None:
    rng = np.random.default_rng(3)
    t2 = rng.uniform(0.02, 0.08, 300)
    echoes = [
        (1000 * np.exp(-te / t2)[:, None] + rng.normal(0, 15, (300, 12))).astype(np.float32)
        for te in TE
    ]
    m = bold.echo_moments(echoes)
    used = np.array([4] * 200 + [3] * 50 + [2] * 50)
    a, b = bold.fit_curvefit(m, TE, used, NUMPY), bold.fit_curvefit(m, TE, used, TORCH)
    np.testing.assert_array_equal(a.reason, b.reason)
    np.testing.assert_array_equal(a.failed, b.failed)
    for field in ("t2star", "s0", "t2star_var", "s0_var", "covar"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-4, err_msg=field)


def test_the_default_engine_is_numpy_on_the_cpu_only() -> None:
    assert bold.Compute("cpu").numpy_engine
    assert not bold.Compute("cuda").numpy_engine
    assert not bold.Compute("auto").numpy_engine  # the caller resolves auto first
    assert not bold.Compute("cpu", engine="torch").numpy_engine


def test_unsorted_echo_times_are_refused() -> None:
    with pytest.raises(ValueError, match="ascending"):
        fit_gaussian(np.ones((2, 3), np.float32), np.array([0.03, 0.01, 0.02]))


def _me_epi() -> tuple[bold.EchoMoments, np.ndarray, np.ndarray]:
    import nibabel as nib

    folder: Path = SHARED_DATA / "me-epi"
    inside = np.asarray(nib.load(str(folder / "mask.nii.gz")).dataobj) > 0
    echoes = [
        np.asarray(nib.load(str(folder / f"echo{k}.nii.gz")).dataobj, dtype=np.float32)[inside]
        for k in (1, 2, 3)
    ]
    m = bold.echo_moments(echoes)
    used = am.echoes_used(am.adaptive_mask(m.mean, m.bad, ["dropout"]))
    return m, used, np.array([0.0145, 0.0385, 0.0625])


@pytest.mark.realdata
def test_the_engines_agree_on_tedanas_test_data() -> None:
    m, used, te = _me_epi()
    seen = set()
    for k in (2, 3):
        sel = used == k
        (s0, r2, reason), (s0_t, r2_t, reason_t) = _both(m.mean[sel, :k], te[:k])
        np.testing.assert_array_equal(reason, reason_t)
        seen |= set(reason.tolist())
        assert np.median(_relative(r2, r2_t)) <= 1e-4
        assert np.median(_relative(s0, s0_t)) <= 1e-4
    assert {0, LOW, int(Failure.NOT_CONVERGED)} <= seen  # labels other than "good" compared
    a, b = bold.fit_curvefit(m, te, used, NUMPY), bold.fit_curvefit(m, te, used, TORCH)
    np.testing.assert_array_equal(a.reason, b.reason)
    fitted = (used >= 2) & np.isfinite(b.t2star)  # inf: an unusable voxel's 1 / 0, in both
    np.testing.assert_array_equal(np.isfinite(a.t2star), np.isfinite(b.t2star))
    assert np.median(_relative(a.t2star[fitted], b.t2star[fitted])) <= 1e-4
