"""The seeded phantom the other tests rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from t2starmap.simulate import DEFAULT_ECHO_TIMES, add_rician_noise, decay, make_phantom


def test_seeded_and_reproducible() -> None:
    a = make_phantom((12, 12, 3), seed=5)
    b = make_phantom((12, 12, 3), seed=5)
    c = make_phantom((12, 12, 3), seed=6)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    assert not np.array_equal(a.magnitude, c.magnitude)


def test_shapes_units_and_truth() -> None:
    ph = make_phantom((16, 12, 4), t2star_range=(0.01, 0.05), snr=25.0, s0=500.0)
    assert ph.magnitude.shape == (16, 12, 4, len(DEFAULT_ECHO_TIMES))
    assert ph.magnitude.dtype == np.float32
    assert ph.sigma == pytest.approx(20.0)
    inside = ph.t2star[ph.mask]
    assert inside.min() >= 0.01 * 0.999 and inside.max() <= 0.05 * 1.001
    assert not ph.t2star[~ph.mask].any() and not ph.s0[~ph.mask].any()
    assert np.all(np.diff(ph.echo_times) > 0) and ph.echo_times.max() < 1.0


def test_decay_is_the_model() -> None:
    te = np.array([0.001, 0.01, 0.02])
    out = decay(np.array([100.0, 5.0]), np.array([0.01, 0.0]), te)
    np.testing.assert_allclose(out[0], 100.0 * np.exp(-te / 0.01))
    np.testing.assert_array_equal(out[1], 0.0)


def test_noise_is_rician() -> None:
    rng = np.random.default_rng(0)
    sigma = 3.0
    air, _ = add_rician_noise(np.zeros(200_000), sigma, rng)
    assert air.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2.0), rel=0.01)
    strong, _ = add_rician_noise(np.full(200_000, 300.0), sigma, rng)
    assert strong.mean() == pytest.approx(300.0 + sigma**2 / 600.0, rel=1e-3)
    assert strong.std() == pytest.approx(sigma, rel=0.02)
    # E[M^2] = A^2 + 2 sigma^2 at any SNR: what the noise-aware fit relies on.
    weak, _ = add_rician_noise(np.full(200_000, 2.0), sigma, rng)
    assert np.mean(weak.astype(np.float64) ** 2) == pytest.approx(4.0 + 2 * sigma**2, rel=0.01)


def test_rejects_unsorted_echo_times() -> None:
    with pytest.raises(ValueError, match="ascending"):
        make_phantom((4, 4, 2), (0.01, 0.005))


def test_phase_when_asked() -> None:
    ph = make_phantom((8, 8, 2), with_phase=True)
    assert ph.phase is not None and ph.phase.shape == ph.magnitude.shape
    assert np.all(np.abs(ph.phase) <= np.pi)
