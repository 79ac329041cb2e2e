"""Noise level from background air, and the signal mask."""

from __future__ import annotations

import math

import numpy as np
import pytest

from t2starmap.noise import MIN_BACKGROUND, estimate_noise, otsu_threshold, signal_mask
from t2starmap.simulate import make_phantom


@pytest.mark.parametrize("snr", [10.0, 50.0, 200.0])
def test_sigma_recovered_from_rayleigh_background(snr: float) -> None:
    ph = make_phantom((48, 48, 8), snr=snr, seed=1)
    estimate = estimate_noise(ph.magnitude[..., 0])
    assert estimate.sigma is not None, estimate.reason
    assert estimate.sigma == pytest.approx(ph.sigma, rel=0.05)
    assert estimate.n_background >= MIN_BACKGROUND
    assert estimate.reason == ""


def test_zero_filled_background_refused() -> None:
    ph = make_phantom((32, 32, 6), seed=2)
    first = np.where(ph.mask, ph.magnitude[..., 0], 0.0)
    estimate = estimate_noise(first)
    assert estimate.sigma is None
    assert "background" in estimate.reason


def test_non_rayleigh_background_refused() -> None:
    rng = np.random.default_rng(3)
    # A smooth, filtered-looking background: uniform values, not Rayleigh.
    image = rng.uniform(50.0, 60.0, size=(40, 40, 4))
    image[10:30, 10:30] = 1000.0
    estimate = estimate_noise(image)
    assert estimate.sigma is None
    assert estimate.reason


def test_too_few_voxels() -> None:
    estimate = estimate_noise(np.ones(10))
    assert estimate.sigma is None and estimate.n_background == 10


def test_nan_voxels_ignored() -> None:
    ph = make_phantom((48, 48, 8), seed=4)
    first = ph.magnitude[..., 0].copy()
    first[0, 0, :] = np.nan
    estimate = estimate_noise(first)
    assert estimate.sigma == pytest.approx(ph.sigma, rel=0.05)


def test_signal_mask_covers_object_not_air() -> None:
    ph = make_phantom((32, 32, 6), seed=5)
    mask = signal_mask(ph.magnitude, ph.sigma)
    assert mask[ph.mask].mean() > 0.99
    assert mask[~ph.mask].mean() < 1e-3


def test_signal_mask_without_noise_level_and_nonfinite_voxels() -> None:
    ph = make_phantom((32, 32, 6), seed=6)
    magnitude = ph.magnitude.copy()
    magnitude[0, 0, 0, 3] = np.nan
    mask = signal_mask(magnitude, None)
    assert mask[ph.mask].mean() > 0.99
    assert mask[0, 0, 0]  # the fit flags it, rather than the mask hiding it


def test_otsu_separates_two_modes() -> None:
    values = np.concatenate([np.full(100, 1.0), np.full(100, 9.0)])
    assert 1.0 < otsu_threshold(values) < 9.0
    assert math.isfinite(otsu_threshold(values, bins=1))
