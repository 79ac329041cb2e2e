"""The failure-mode simulators make what they say."""

from __future__ import annotations

import numpy as np
import pytest

from t2starmap.sim.failures import (
    bipolar,
    decays,
    fat_signal,
    ghosted,
    incoherent_phase,
    spatial_offset,
)

TE = np.linspace(0.002, 0.027, 12)


def test_fat_spectrum_at_3t_dephases_from_water_and_starts_in_phase() -> None:
    f = fat_signal(TE)
    assert fat_signal([0.0])[0] == pytest.approx(1.0)
    assert np.abs(f).min() < 0.7  # its peaks beat
    # the main peak (-3.4 ppm, -435 Hz at 3 T) is out of phase with water near 1.15 ms
    assert np.real(fat_signal([1 / (2 * 3.4 * 42.577 * 3)])[0]) < -0.5


@pytest.mark.parametrize("kind", ["mono", "two_pools", "fat", "dark_first_echo"])
def test_decays_are_seeded_and_noisy_as_asked(kind: str) -> None:
    a, mag, _ = decays(kind, 200, TE, seed=4)
    b, _, _ = decays(kind, 200, TE, seed=4)
    np.testing.assert_array_equal(a, b)
    assert mag.dtype == np.float32 and mag.shape == (200, 12)
    clean, _, _ = decays(kind, 200, TE, seed=4, sigma=0.0)
    assert np.std((a - clean).real) == pytest.approx(5.0, rel=0.1)


def test_two_pools_and_dark_first_echo_shapes() -> None:
    two, _, t2 = decays("two_pools", 3, TE, sigma=0.0)
    expected = 1000 * (0.5 * np.exp(-TE / 0.003) + 0.5 * np.exp(-TE / 0.05))
    np.testing.assert_allclose(np.abs(two[0]), expected)
    assert np.isnan(t2).all()
    dark, _, t2 = decays("dark_first_echo", 3, TE, sigma=0.0)
    np.testing.assert_allclose(np.abs(dark[:, 0]), 850 * np.exp(-TE[0] / t2))
    np.testing.assert_allclose(np.abs(dark[:, 1]), 1000 * np.exp(-TE[1] / t2))


def test_bipolar_shifts_the_even_echoes_only() -> None:
    x = np.ones((2, 3, 6), complex)
    out = bipolar(x, 0.7)
    np.testing.assert_allclose(np.angle(out[..., 0::2]), 0.0)
    np.testing.assert_allclose(np.angle(out[..., 1::2]), 0.7)
    offset = spatial_offset((2, 3), amplitude=1.5, seed=1)
    assert np.abs(offset).max() == pytest.approx(1.5) and offset.std() > 0.1
    varying = bipolar(x, offset)
    np.testing.assert_allclose(np.angle(varying[..., 3]), offset)


def test_incoherent_phase_is_smooth_in_space_but_jumps_between_echoes() -> None:
    x = np.ones((16, 16, 4, 8), complex)
    out = incoherent_phase(x, seed=2)
    steps = np.angle(out[..., 1:] * np.conj(out[..., :-1]))
    centre = steps[8, 8, 2]
    assert np.all(np.abs(centre) > 0.5) and np.std(np.diff(centre)) > 0.5  # no one frequency
    neighbours = np.angle(out[1:] * np.conj(out[:-1]))
    assert np.abs(neighbours).max() < 0.2  # each echo's map is smooth


def test_ghosts_spread_along_the_phase_encoding_axis_and_keep_the_energy() -> None:
    image = np.zeros((8, 32, 1, 2), complex)
    image[2:6, 12:20] = 100.0
    out = ghosted(image, axis=1, error_rad=0.5, seed=1)
    np.testing.assert_allclose(np.sum(np.abs(out) ** 2), np.sum(np.abs(image) ** 2))
    assert np.abs(out[2:6, :8]).mean() > 5.0  # outside the object, same rows
    assert np.abs(out[:2]).max() < 1e-9  # not along the other axis
    np.testing.assert_allclose(out[..., 1], out[..., 0])  # the same errors for every echo
