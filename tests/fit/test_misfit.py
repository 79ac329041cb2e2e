"""Does the model fit this voxel? The goodness-of-fit statistic and the MISFIT code on decays
that are (and are not) mono-exponential: Rician sigma 5, S0 1000, 12 echoes 2-27 ms, 3 T."""

from __future__ import annotations

import numpy as np
import pytest

from t2starmap.fit import Failure, NoiseModel, fit_complex, fit_t2star
from t2starmap.fit.result import misfit_limit
from t2starmap.sim.failures import decays

TE = np.linspace(0.002, 0.027, 12)
N = 3000


def misfit_share(kind: str, method: str = "nlls") -> float:
    signal, magnitude, _ = decays(kind, N, TE, seed=1)
    if method == "complex":
        result = fit_complex(signal.astype(np.complex64), TE, noise=NoiseModel(sigma=5.0))
    else:
        result = fit_t2star(magnitude, TE, method=method, noise=NoiseModel(sigma=5.0))
    return float(((result.reason.numpy() & Failure.MISFIT) > 0).mean())


@pytest.mark.parametrize("method", ["nlls", "nlls-gaussian", "complex"])
def test_mono_exponential_voxels_are_rarely_flagged(method: str) -> None:
    assert misfit_share("mono", method) <= 0.03


@pytest.mark.parametrize("kind", ["two_pools", "fat", "dark_first_echo"])
@pytest.mark.parametrize("method", ["nlls", "complex"])
def test_decays_that_are_not_mono_exponential_are_flagged(kind: str, method: str) -> None:
    assert misfit_share(kind, method) >= 0.90, kind


def test_standard_errors_stay_calibrated_on_mono_exponential_voxels() -> None:
    """Inflating the SE by sqrt(chisq) where it exceeds 1 keeps the z-scores of good voxels at
    SD 0.9-1.1; on misfit voxels the SE grows with the misfit."""
    _, magnitude, t2 = decays("mono", N, TE, seed=2)
    result = fit_t2star(magnitude, TE, noise=NoiseModel(sigma=5.0))
    z = (result.r2star.numpy() - 1.0 / t2) / result.r2star_se.numpy()
    assert 0.9 <= z.std() <= 1.1, z.std()
    _, fat, _ = decays("fat", N, TE, seed=2)
    misfit = fit_t2star(fat, TE, noise=NoiseModel(sigma=5.0))
    assert np.median(misfit.chisq.numpy()) > 10.0
    plain = fit_t2star(fat, TE, noise=NoiseModel(sigma=5.0))
    assert np.all(misfit.r2star_se.numpy() >= plain.r2star_se.numpy() * 0.999)


def test_chisq_is_about_one_where_the_model_holds_and_zero_where_untested() -> None:
    _, magnitude, _ = decays("mono", N, TE, seed=3)
    result = fit_t2star(magnitude, TE, method="nlls-gaussian", noise=NoiseModel(sigma=5.0))
    assert 0.9 <= float(np.median(result.chisq.numpy())) <= 1.05
    untested = fit_t2star(magnitude, TE, method="nlls-gaussian")  # no noise level
    assert not untested.chisq.any() and not (untested.reason.numpy() & Failure.MISFIT).any()
    closed = fit_t2star(
        magnitude, TE, method="wls", noise=NoiseModel(sigma=5.0)
    )  # does not minimise it
    assert not closed.chisq.any()
    two = fit_t2star(magnitude[:, :2], TE[:2], noise=NoiseModel(sigma=5.0))  # no degree of freedom
    assert not two.chisq.any()


def test_the_limit_is_the_chi_square_point_of_p_one_in_a_thousand() -> None:
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 10, 20):
        assert misfit_limit(dof) == pytest.approx(stats.chi2.isf(1e-3, dof) / dof, rel=1e-6)


@pytest.mark.parametrize("n_echoes", [3, 4, 12])
@pytest.mark.parametrize("method", ["nlls", "nlls-gaussian"])
def test_the_false_alarm_rate_is_one_in_a_thousand_at_every_echo_count(
    n_echoes: int, method: str
) -> None:
    """20 000 mono-exponential voxels: about 20 flagged (p = 1e-3). The limit of a neighbouring
    degree of freedom gives 0.4 (4 echoes: dof 1's) or 90 (dof 3's), and an off-by-one in the
    lookup flags every voxel of a 3-echo set (issue 27)."""
    te = np.linspace(0.002, 0.027, n_echoes)
    _, magnitude, _ = decays("mono", 20_000, te, seed=11)
    result = fit_t2star(magnitude, te, method=method, noise=NoiseModel(sigma=5.0))
    rate = float(((result.reason.numpy() & Failure.MISFIT) > 0).mean())
    assert 0.0003 <= rate <= 0.003, rate
