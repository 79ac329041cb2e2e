"""The magnitude model times a known factor (the through-slice corrected fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2starmap.fit import Compute, NoiseModel, fit_corrected, fit_t2star
from t2starmap.sim.phantoms import DEFAULT_ECHO_TIMES, add_rician_noise
from tests.support.factors import rect_factor

TE = np.asarray(DEFAULT_ECHO_TIMES)


def test_fit_corrected_recovers_the_truth_on_the_model(device: str) -> None:
    rng = np.random.default_rng(3)
    r2 = rng.uniform(10.0, 80.0, 200)
    s0 = rng.uniform(200.0, 2000.0, 200)
    gradient = rng.uniform(0.0, 10.0, 200)
    factor = rect_factor(gradient, 3.0, TE)
    signal = s0[:, None] * np.exp(-TE * r2[:, None]) * factor
    out = fit_corrected(signal, TE, factor, compute=Compute(dtype=torch.float64, device=device))
    assert out.result.device.startswith(device)
    np.testing.assert_allclose(out.result.r2star.cpu().numpy(), r2, rtol=1e-5)
    np.testing.assert_allclose(out.result.s0.cpu().numpy(), s0, rtol=1e-5)
    assert not out.result.failed.any()
    np.testing.assert_array_equal(out.echoes_kept.cpu().numpy(), (factor >= 0.3).sum(-1))


def test_too_few_echoes_fall_back_to_uncorrected() -> None:
    factor = np.ones((3, TE.size))
    factor[1, 1:] = 0.1  # one echo left
    signal = 1000.0 * np.exp(-TE * 30.0) * np.ones((3, 1))
    out = fit_corrected(signal, TE, factor, compute=Compute(dtype=torch.float64))
    np.testing.assert_array_equal(out.too_few.numpy(), [False, True, False])
    np.testing.assert_allclose(out.result.r2star.numpy(), 30.0, rtol=1e-6)
    assert out.echoes_kept[1] == TE.size


def test_start_from_the_uncorrected_fit_reaches_the_same_solution() -> None:
    """Started from the uncorrected fit (where it is closer than the log-linear start of
    M / |F|), the corrected fit reaches the same solution: the start changes the path only."""
    rng = np.random.default_rng(8)
    r2 = rng.uniform(15.0, 60.0, 300)
    factor = rect_factor(rng.uniform(0.0, 8.0, 300), 3.0, TE)
    clean = 1000.0 * np.exp(-TE * r2[:, None]) * factor
    signal, _ = add_rician_noise(clean, 10.0, rng)
    plain = fit_t2star(signal, TE, method="nlls-gaussian", compute=Compute(dtype=torch.float64))
    cold = fit_corrected(signal, TE, factor, compute=Compute(dtype=torch.float64))
    warm = fit_corrected(signal, TE, factor, start=plain, compute=Compute(dtype=torch.float64))
    ok = ~(cold.result.failed | warm.result.failed).numpy()
    assert ok.mean() > 0.95
    np.testing.assert_allclose(
        warm.result.r2star.numpy()[ok], cold.result.r2star.numpy()[ok], rtol=2e-3
    )


def test_noise_aware_corrected_fit_removes_the_floor_bias() -> None:
    """At low SNR the Gaussian corrected fit reads the noise floor as slower decay; the
    noise-aware one (|F|^2 on the second moment) does not."""
    rng = np.random.default_rng(9)
    n = 4000
    r2 = np.full(n, 60.0)
    factor = rect_factor(np.full(n, 4.0), 3.0, TE)
    clean = 150.0 * np.exp(-TE * r2[:, None]) * factor
    signal, _ = add_rician_noise(clean, 10.0, rng)
    gaussian = fit_corrected(signal, TE, factor, noise=NoiseModel(sigma=10.0, floor=False))
    aware = fit_corrected(signal, TE, factor, noise=NoiseModel(sigma=10.0, floor=True))
    bias_gaussian = np.median(gaussian.result.r2star.numpy()) / 60.0 - 1.0
    bias_aware = np.median(aware.result.r2star.numpy()) / 60.0 - 1.0
    assert bias_gaussian < -0.05, bias_gaussian
    assert abs(bias_aware) < 0.02, bias_aware
    assert aware.result.noise_model == "rician"


def test_bad_arguments() -> None:
    mag = np.ones((4, 4, 5, TE.size), np.float32)
    with pytest.raises(ValueError, match="does not match"):
        fit_corrected(mag, TE, np.ones((4, 4, 4, TE.size)))
    with pytest.raises(ValueError, match="threshold"):
        fit_corrected(mag, TE, np.ones(mag.shape), threshold=1.0)
    # the noise floor is modelled where sigma is known, as in fit_t2star: without, Gaussian
    blind = fit_corrected(mag, TE, np.ones(mag.shape), noise=NoiseModel(floor=True))
    assert blind.result.noise_model == "gaussian" and blind.result.noise_sigma is None
    aware = fit_corrected(mag, TE, np.ones(mag.shape), noise=NoiseModel(0.1, floor=True))
    assert aware.result.noise_model == "rician"
