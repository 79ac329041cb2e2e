"""The seeded phantom the other tests rely on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from t2starmap.sim.phantoms import DEFAULT_ECHO_TIMES, add_rician_noise, decay, make_phantom


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


# --- multi-coil root-sum-of-squares phantoms (issue 11) --------------------------------------

from t2starmap.sim.phantoms import coil_sensitivities, make_coil_phantom  # noqa: E402


def test_coil_phantom_seeded_and_shaped() -> None:
    a = make_coil_phantom((12, 10, 2), coils=4, seed=3)
    b = make_coil_phantom((12, 10, 2), coils=4, seed=3)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    assert a.magnitude.shape == (12, 10, 2, len(DEFAULT_ECHO_TIMES))
    assert a.magnitude.dtype == np.float32 and a.coils == 4 and a.phase is None
    assert a.sigma == pytest.approx(1000.0 / 50.0)
    with pytest.raises(ValueError, match="coils"):
        make_coil_phantom((4, 4, 1), coils=0)


def test_coil_sensitivities_are_normalised() -> None:
    sens = coil_sensitivities((9, 7, 2), 6)
    assert sens.shape == (6, 9, 7, 2)
    np.testing.assert_allclose(np.sum(np.abs(sens) ** 2, axis=0), 1.0)
    assert np.abs(sens).std(axis=0).mean() > 0.01  # the coils do see different things


@pytest.mark.parametrize("coils", [1, 8])
def test_coil_phantom_moments_are_noncentral_chi(coils: int) -> None:
    """Air: E[M^2] = 2 L sigma^2; object: E[M^2] = S^2 + 2 L sigma^2 (each within 3 %)."""
    ph = make_coil_phantom((48, 48, 4), (0.002, 0.004), coils=coils, snr=5.0, seed=4)
    m2 = ph.magnitude[..., 0].astype(np.float64) ** 2
    floor = 2.0 * coils * ph.sigma**2
    assert np.mean(m2[~ph.mask]) == pytest.approx(floor, rel=0.03)
    clean = ph.s0 * np.exp(-0.002 / np.where(ph.mask, ph.t2star, 1.0))
    excess = np.mean(m2[ph.mask] - floor) / np.mean(clean[ph.mask] ** 2)
    assert excess == pytest.approx(1.0, rel=0.03)


def test_ghost_zero_corners_and_no_air() -> None:
    plain = make_coil_phantom((32, 32, 4), (0.002,), coils=2, snr=20.0, seed=5)
    ghosted = make_coil_phantom((32, 32, 4), (0.002,), coils=2, snr=20.0, seed=5, ghost=0.2)
    # Same noise draws: the ghost changes exactly the voxels half a field of view along y
    # from the object, air among them, and lifts that air well above the noise.
    changed = np.abs(ghosted.magnitude[..., 0] - plain.magnitude[..., 0]) > 1e-3
    ghost_site = np.roll(plain.mask, 16, axis=1)
    np.testing.assert_array_equal(changed, ghost_site)
    lifted = (ghosted.magnitude[..., 0] - plain.magnitude[..., 0])[ghost_site & ~plain.mask]
    assert lifted.size > 0 and np.median(lifted) > plain.sigma
    cornered = make_coil_phantom((32, 32, 4), (0.002,), coils=2, seed=5, zero_corners=True)
    zeros = cornered.magnitude[..., 0] == 0
    assert 0.15 < zeros.mean() < 0.3 and not (zeros & cornered.mask).any()
    full = make_coil_phantom((16, 16, 2), (0.002, 0.01), coils=2, seed=5, air=False)
    assert full.mask.all() and np.all(full.t2star > 0)


# --- the through-slice simulator ---------------------------------------------------------------


def test_slice_phantom_is_seeded_and_has_its_truth() -> None:
    from t2starmap.sim.slices import make_slice_phantom

    a = make_slice_phantom((8, 6, 4), seed=2, samples=16)
    b = make_slice_phantom((8, 6, 4), seed=2, samples=16)
    c = make_slice_phantom((8, 6, 4), seed=3, samples=16)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    assert not np.array_equal(a.magnitude, c.magnitude)
    assert a.magnitude.shape == a.phase.shape == (8, 6, 4, len(DEFAULT_ECHO_TIMES))
    assert a.sigma == pytest.approx(10.0)
    np.testing.assert_allclose(a.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    # No gradient on the first quarter of X, the largest at the last voxel.
    assert not a.gradient_hz_per_mm[:2].any()
    slice_centres = np.array([-4.5, -1.5, 1.5, 4.5])  # mm
    np.testing.assert_allclose(a.gradient_hz_per_mm[-1, 0], 8.0 + 0.2 * slice_centres, rtol=1e-6)
    np.testing.assert_allclose(a.field_change_hz, 3.0 * a.gradient_hz_per_mm, rtol=1e-6)
    assert a.r2star.min() == pytest.approx(20.0) and a.r2star.max() == pytest.approx(60.0)


def test_slice_phantom_without_gradient_is_the_plain_decay() -> None:
    from t2starmap.sim.slices import make_slice_phantom

    ph = make_slice_phantom((8, 3, 3), snr=None, samples=32, offset_hz=40.0)
    te = ph.echo_times
    flat = ph.gradient_hz_per_mm == 0
    decay_ = ph.s0[..., None] * np.exp(-te * ph.r2star[..., None])
    np.testing.assert_allclose(ph.magnitude[flat], decay_[flat], rtol=1e-5)
    # Phase: phi0 + 2 pi f TE, wrapped.
    expected = np.angle(np.exp(1j * (0.3 + 2 * np.pi * ph.frequency_hz[..., None] * te)))
    np.testing.assert_allclose(ph.phase[flat], expected[flat], atol=1e-5)
    # With a gradient the integral loses signal, more at late echoes.
    steep = ph.magnitude[-1] / decay_[-1]
    assert np.all(steep[..., -1] < steep[..., 0]) and np.all(steep[..., -1] < 0.9)


def test_gaussian_profile_differs_from_the_rectangle() -> None:
    from t2starmap.sim.slices import make_slice_phantom

    rect = make_slice_phantom((6, 2, 3), snr=None, samples=64)
    gauss = make_slice_phantom((6, 2, 3), snr=None, samples=256, profile="gaussian")
    np.testing.assert_allclose(rect.magnitude[0], gauss.magnitude[0], rtol=1e-4)
    assert np.abs(rect.magnitude[-1] - gauss.magnitude[-1]).max() > 1.0
    with pytest.raises(ValueError, match="profile"):
        make_slice_phantom(profile="sinc")


def test_slice_dataset_is_found_with_its_phase(tmp_path: Path) -> None:
    from t2starmap.bids.layout import find_echo_sets
    from t2starmap.bids.nifti import check_geometry, load_magnitude
    from t2starmap.bids.parts import find_parts, load_complex, sidecar_of
    from t2starmap.sim.slices import make_slice_phantom, write_slice_megre

    ph = make_slice_phantom((6, 5, 4), seed=4, samples=8, echo_times=(0.004, 0.009, 0.014))
    written = write_slice_megre(tmp_path, ph, "07")
    assert len(written) == 6
    (echo_set,) = find_echo_sets(tmp_path)
    parts = find_parts(echo_set)
    assert parts is not None and parts.kind == "phase" and set(parts.units) == {"rad"}
    sidecar = sidecar_of(parts.files[0][0])
    assert sidecar["MRAcquisitionType"] == "2D" and sidecar["SliceThickness"] == 3.0
    assert sidecar["SpacingBetweenSlices"] == 3.0
    geometry = check_geometry(echo_set.paths)
    magnitude = load_magnitude(echo_set.paths, geometry)
    z = load_complex(parts, geometry, magnitude)
    np.testing.assert_allclose(z, ph.magnitude * np.exp(1j * ph.phase), rtol=1e-5, atol=1e-3)
