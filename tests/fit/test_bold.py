"""The decay fits of multi-echo BOLD against their definitions over all echo x time samples
(numpy's lstsq for loglin, scipy's curve_fit for curvefit) and against the truth (nlls)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from t2starmap.fit import bold
from t2starmap.fit.status import Failure
from t2starmap.sim.bold import BoldRun, make_bold_run

TE = np.array([0.012, 0.028, 0.044, 0.060])


def _series(
    n_vox: int = 200, n_vol: int = 30, seed: int = 3
) -> tuple[list[np.ndarray], np.ndarray]:
    """Noisy decays (V, T) per echo with true T2* 20-80 ms, S0 800-1500; and the truth."""
    rng = np.random.default_rng(seed)
    t2 = rng.uniform(0.02, 0.08, n_vox)
    s0 = rng.uniform(800, 1500, n_vox)
    fluct = 1 + 0.01 * rng.standard_normal(n_vol)
    echoes = [
        (
            s0[:, None] * np.exp(-te / t2[:, None]) * fluct + rng.normal(0, 15, (n_vox, n_vol))
        ).astype(np.float32)
        for te in TE
    ]
    return echoes, t2


def test_moments_are_those_of_the_samples() -> None:
    echoes, _ = _series(20, 7)
    keep = np.array([True, False, True, True, True, False, True])
    m = bold.echo_moments(echoes, keep)
    x = echoes[2][:, keep].astype(np.float64)
    np.testing.assert_allclose(m.mean[:, 2], x.mean(1), rtol=1e-6)
    np.testing.assert_allclose(m.sq_dev[:, 2], ((x - x.mean(1)[:, None]) ** 2).sum(1), rtol=1e-4)
    np.testing.assert_allclose(m.log_mean[:, 2], np.log(np.abs(x) + 1).mean(1), rtol=1e-6)
    assert m.n_volumes == 5


def test_loglin_is_least_squares_over_all_samples() -> None:
    """tedana's definition: lstsq of log(|S| + 1) on (1, -TE) repeated for every volume."""
    echoes, _ = _series(50, 9)
    used = np.array([4] * 30 + [3] * 10 + [2] * 10)
    fit = bold.fit_loglin(bold.echo_moments(echoes), TE, used)
    for v in (0, 35, 45):
        k = used[v]
        y = np.log(np.abs(np.stack([e[v] for e in echoes[:k]])) + 1).reshape(-1)
        x = np.repeat(np.stack([np.ones(k), -TE[:k]], 1), 9, axis=0)
        beta, ssr, *_ = np.linalg.lstsq(x, y, rcond=None)
        assert fit.t2star[v] == pytest.approx(1 / beta[1], rel=1e-6)
        assert fit.s0[v] == pytest.approx(np.exp(beta[0]), rel=1e-6)
        cov = ssr[0] / (y.size - 2) * np.linalg.inv(x.T @ x)
        assert fit.t2star_var[v] == pytest.approx(cov[1, 1] / beta[1] ** 4, rel=1e-4)


def test_curvefit_matches_scipy_over_all_samples() -> None:
    """tedana's curvefit: curve_fit of S0 exp(-TE/T2*) over every sample; our fit of the
    temporal means gives the same point and the same covariance (right way round)."""
    echoes, truth = _series(40, 12)
    used = np.full(40, 4)
    fit = bold.fit_curvefit(bold.echo_moments(echoes), TE, used, bold.Compute("cpu", 1))
    assert not fit.failed.any()
    for v in range(0, 40, 7):
        y = np.stack([e[v] for e in echoes]).reshape(-1).astype(np.float64)
        t = np.repeat(TE, 12)
        popt, pcov = curve_fit(lambda t, s0, t2: s0 * np.exp(-t / t2), t, y, p0=(1000, 0.04))
        assert fit.t2star[v] == pytest.approx(popt[1], rel=2e-3)
        assert fit.s0[v] == pytest.approx(popt[0], rel=2e-3)
        assert fit.t2star_var[v] == pytest.approx(pcov[1, 1], rel=2e-2)
        assert fit.s0_var[v] == pytest.approx(pcov[0, 0], rel=2e-2)
        assert fit.covar[v] == pytest.approx(pcov[0, 1], rel=2e-2)
    assert np.median(np.abs(fit.t2star / truth - 1)) < 0.02


def test_two_echo_voxels_use_the_first_two() -> None:
    echoes, _ = _series(10, 5)
    echoes[2][:5] = echoes[3][:5] = 1e4  # garbage beyond echo 2, which used = 2 ignores
    used = np.array([2] * 5 + [4] * 5)
    m = bold.echo_moments(echoes)
    clean = bold.fit_loglin(bold.echo_moments([e[:5] for e in echoes[:2]]), TE[:2], used[:5])
    np.testing.assert_allclose(bold.fit_loglin(m, TE, used).t2star[:5], clean.t2star)
    curve = bold.fit_curvefit(m, TE, used, bold.Compute("cpu", 1))
    assert np.all(curve.t2star[:5] < 0.2)


def test_loglin_flags_rising_signal() -> None:
    echoes = [np.full((1, 4), 100.0 * (k + 1), np.float32) for k in range(4)]
    fit = bold.fit_loglin(bold.echo_moments(echoes), TE, np.array([4]))
    assert fit.t2star[0] < 0
    assert fit.reason[0] & Failure.R2STAR_LOW


def test_volume_moments_are_one_volume_each() -> None:
    echoes, _ = _series(6, 4)
    m = bold.volume_moments(echoes, 1, 3)
    assert m.mean.shape == (12, 4)
    assert m.mean[5, 2] == pytest.approx(echoes[2][2, 1 + 1])  # row v * 2 + t: v 2, volume 1 + 1
    assert m.n_volumes == 1


@pytest.fixture(scope="module")
def dropout_run() -> BoldRun:
    return make_bold_run((24, 24, 12), 200, seed=5)


def test_temporal_noise_finds_sigma(dropout_run: BoldRun) -> None:
    run = dropout_run
    echoes = [run.echoes[..., k][run.brain].astype(np.float32) for k in range(4)]
    m = bold.echo_moments(echoes)
    sigma = bold.temporal_noise(m, np.ones(m.mean.shape[0], bool))
    assert sigma == pytest.approx(run.sigma, rel=0.05)


def test_nlls_fits_the_dropout_region(dropout_run: BoldRun) -> None:
    """Where echo 2 sits on the noise floor, the noise-aware fit of the second moment still
    gives T2*, and elsewhere it is within 1 % (median)."""
    run = dropout_run
    echoes = [run.echoes[..., k][run.brain].astype(np.float32) for k in range(4)]
    m = bold.echo_moments(echoes)
    fit = bold.fit_nlls(m, run.te, np.ones(m.mean.shape[0], bool), run.sigma, bold.Compute())
    truth = run.t2star[run.brain]
    err = np.abs(fit.t2star / truth - 1)
    drop = run.dropout[run.brain]
    assert np.median(err[drop]) < 0.2
    assert np.median(err[~drop]) < 0.01
    loglin = bold.fit_loglin(m, run.te, np.full(truth.size, 4))
    assert np.median(np.abs(loglin.t2star[drop] / truth[drop] - 1)) > 0.5  # what nlls fixes


def test_moments_in_row_blocks_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    echoes, _ = _series(50, 6)
    whole = bold.echo_moments(echoes)
    monkeypatch.setattr(bold, "ROWS", 7)
    blocks = bold.echo_moments(echoes)
    for name in ("mean", "log_mean", "sq_dev", "log_sq_dev", "mean_square", "diff_var", "bad"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name))


def test_echo_means_are_those_of_the_moments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bold, "ROWS", 16)  # several blocks of rows
    echoes, _ = _series(50, 9)
    echoes[1][3, 4] = np.nan
    echoes[2][7, 0] = -1.0
    keep = np.array([True, True, False, True, True, True, False, True, True])
    for volumes in (None, keep):
        m = bold.echo_moments(echoes, volumes)
        mean, bad = bold.echo_means(echoes, volumes)
        np.testing.assert_array_equal(mean, m.mean)
        np.testing.assert_array_equal(bad, m.bad)
