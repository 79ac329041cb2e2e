"""Noise level (sigma and effective coils) from seeded synthetic data with known truth, from the
real scanner data (skipped without it), and the signal mask."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap import fit_t2star, noise
from t2starmap.cli.run import main
from t2starmap.fit import Failure, NoiseModel
from t2starmap.noise import (
    MIN_BACKGROUND,
    NoiseEstimate,
    cross_check,
    estimate_noise,
    noise_candidates,
    noise_for_fit,
    noise_from_echo_differences,
    noise_from_residuals,
    otsu_threshold,
    signal_mask,
)
from t2starmap.sim.phantoms import decay, make_coil_phantom, make_phantom
from tests.conftest import SHARED_DATA
from tests.support.megre_parts import echo_parts

TE_12 = np.linspace(0.003, 0.060, 12)


def check(estimate: NoiseEstimate, sigma: float, rel: float) -> None:
    assert estimate.sigma is not None, estimate.reason
    assert estimate.sigma == pytest.approx(sigma, rel=rel), estimate


# --- Rician air (one coil) ---------------------------------------------------------------------


@pytest.mark.parametrize("snr", [10.0, 50.0, 200.0])
def test_sigma_recovered_from_rayleigh_background(snr: float) -> None:
    ph = make_phantom((48, 48, 8), snr=snr, seed=1)
    estimate = estimate_noise(ph.magnitude[..., 0])
    check(estimate, ph.sigma, 0.05)
    assert estimate.coils == pytest.approx(1.0, abs=0.1)
    assert estimate.method == "background-quantiles"
    assert estimate.n_background >= MIN_BACKGROUND
    assert estimate.reason == ""


def test_integer_valued_background_of_a_few_units() -> None:
    """DICOM magnitudes are integers: sigma 1.5 rounded is still found (within 10 %)."""
    ph = make_phantom((48, 48, 8), s0=150.0, snr=100.0, seed=2)
    estimate = estimate_noise(np.round(ph.magnitude[..., 0]))
    check(estimate, ph.sigma, 0.10)


def test_nan_voxels_ignored() -> None:
    ph = make_phantom((48, 48, 8), seed=4)
    first = ph.magnitude[..., 0].copy()
    first[0, 0, :] = np.nan
    check(estimate_noise(first), ph.sigma, 0.05)


def test_too_few_voxels() -> None:
    estimate = estimate_noise(np.ones(10))
    assert estimate.sigma is None and estimate.n_background == 10 and estimate.reason


def test_bad_coils_argument() -> None:
    with pytest.raises(ValueError, match="coils"):
        estimate_noise(np.ones(200), coils=0.5)


# --- noncentral chi: root-sum-of-squares of L coils ------------------------------------------


@pytest.mark.parametrize("coils", [1, 4, 8, 32])
@pytest.mark.parametrize("seed", [1, 2])
def test_sigma_and_coils_of_a_root_sum_of_squares(coils: int, seed: int) -> None:
    """sigma within 10 %, L within 20 %, the noise floor 2 L sigma^2 within 6 %."""
    ph = make_coil_phantom((48, 48, 4), TE_12[:2], coils=coils, snr=10.0, seed=seed)
    estimate = estimate_noise(ph.magnitude[..., 0])
    check(estimate, ph.sigma, 0.10)
    assert estimate.coils == pytest.approx(coils, rel=0.20), estimate
    floor = estimate.coils * estimate.sigma**2  # type: ignore[operator]
    assert floor == pytest.approx(coils * ph.sigma**2, rel=0.06), estimate
    assert estimate.method == "background-quantiles"


def test_known_coil_count_is_kept() -> None:
    ph = make_coil_phantom((48, 48, 4), TE_12[:2], coils=8, snr=20.0, seed=3)
    estimate = estimate_noise(ph.magnitude[..., 0], coils=8)
    assert estimate.coils == 8.0
    check(estimate, ph.sigma, 0.03)


@pytest.mark.parametrize(("coils", "snr"), [(1, 10.0), (1, 50.0), (8, 10.0), (8, 50.0)])
def test_ghosted_background(coils: int, snr: float) -> None:
    """An N/2 ghost at 15 % of the object over the air: sigma within 15 %. At SNR 50 the
    ghost stands out of the noise and is counted as outliers."""
    ph = make_coil_phantom((48, 48, 4), TE_12[:2], coils=coils, snr=snr, seed=5, ghost=0.15)
    estimate = estimate_noise(ph.magnitude[..., 0])
    check(estimate, ph.sigma, 0.15)
    assert estimate.coils == pytest.approx(coils, rel=0.25)
    if coils == 8 and snr == 50.0:
        assert estimate.outlier_fraction > 0.05, estimate


@pytest.mark.parametrize("coils", [1, 8])
def test_zero_filled_corners(coils: int) -> None:
    ph = make_coil_phantom((48, 48, 4), TE_12[:2], coils=coils, snr=10.0, seed=6, zero_corners=True)
    estimate = estimate_noise(ph.magnitude[..., 0])
    check(estimate, ph.sigma, 0.08)
    assert estimate.zero_fraction == pytest.approx(float(np.mean(ph.magnitude[..., 0] == 0)))
    assert 0.2 < estimate.zero_fraction < 0.3


def test_small_air_region() -> None:
    """Air as a 10 x 10 x 4 corner (400 voxels, 4 % of the volume) of an image otherwise full
    of object: sigma within 10 %."""
    ph = make_coil_phantom((48, 48, 4), TE_12[:2], coils=1, snr=20.0, seed=7, air=False)
    rng = np.random.default_rng(7)
    first = ph.magnitude[..., 0].astype(np.float64)
    first[:10, :10] = np.abs(
        ph.sigma * (rng.standard_normal((10, 10, 4)) + 1j * rng.standard_normal((10, 10, 4)))
    )
    estimate = estimate_noise(first)
    assert estimate.method == "background-quantiles"
    check(estimate, ph.sigma, 0.10)


# --- no air -----------------------------------------------------------------------------------


@pytest.mark.parametrize("coils", [1, 8])
def test_no_air_falls_back_on_the_local_variance(coils: int) -> None:
    ph = make_coil_phantom((48, 48, 4), TE_12[:2], coils=coils, snr=50.0, seed=8, air=False)
    estimate = estimate_noise(ph.magnitude[..., 0])
    assert estimate.method == "local-variance", estimate
    check(estimate, ph.sigma, 0.08)
    assert "local variance" in estimate.reason and estimate.coils == 1.0


def test_masked_image_is_not_taken_for_air() -> None:
    """Everything outside the object zeroed: the darkest tissue must not pass for air."""
    ph = make_phantom((32, 32, 6), seed=2)
    first = np.where(ph.mask, ph.magnitude[..., 0], 0.0)
    estimate = estimate_noise(first)
    assert estimate.method == "local-variance", estimate
    assert "not air" in estimate.reason
    check(estimate, ph.sigma, 0.10)


def test_no_air_refused_without_local_variance() -> None:
    ph = make_phantom((32, 32, 6), seed=2)
    first = np.where(ph.mask, ph.magnitude[..., 0], 0.0)
    estimate = estimate_noise(first, local_variance=False)
    assert estimate.sigma is None and estimate.method == ""
    assert "not air" in estimate.reason


def test_non_noise_background_refused() -> None:
    rng = np.random.default_rng(3)
    # A flat, filtered-looking dark class (far narrower than any chi of <= 64 coils), no air.
    image = rng.uniform(500.0, 510.0, size=(40, 40, 4))
    image[10:30, 10:30] = 1000.0 + rng.uniform(-300.0, 300.0, size=(20, 20, 4))
    estimate = estimate_noise(image, local_variance=False)
    assert estimate.sigma is None and estimate.reason


@pytest.mark.parametrize("coils", [1, 8])
def test_sigma_from_fit_residuals(coils: int) -> None:
    ph = make_coil_phantom((32, 32, 4), TE_12, coils=coils, snr=200.0, seed=9, air=False)
    estimate = noise_from_residuals(ph.magnitude, TE_12)
    assert estimate.method == "residuals" and estimate.coils == 1.0
    check(estimate, ph.sigma, 0.10)


def test_residuals_need_three_echoes_and_bright_voxels() -> None:
    ph = make_coil_phantom((16, 16, 2), TE_12, coils=1, snr=200.0, seed=9, air=False)
    assert noise_from_residuals(ph.magnitude[..., :2], TE_12[:2]).sigma is None
    dark = make_coil_phantom((16, 16, 2), TE_12, coils=1, snr=2.0, seed=9, air=False)
    refused = noise_from_residuals(dark.magnitude, TE_12)
    assert refused.sigma is None and refused.reason
    with pytest.raises(ValueError, match="echo"):
        noise_from_residuals(ph.magnitude, TE_12[:5])


# --- the real channel --------------------------------------------------------------------------


def test_real_channel_gives_sigma() -> None:
    ph = make_phantom((48, 48, 8), snr=20.0, seed=10, with_phase=True)
    assert ph.phase is not None
    real = ph.magnitude[..., 0] * np.cos(ph.phase[..., 0])
    estimate = estimate_noise(ph.magnitude[..., 0], real=real)
    assert estimate.method == "real-channel" and estimate.coils == 1.0
    check(estimate, ph.sigma, 0.05)
    with pytest.raises(ValueError, match="shape"):
        estimate_noise(ph.magnitude[..., 0], real=real[:3])


# --- the default fit on the estimate (issue 11 target) ---------------------------------------


@pytest.mark.parametrize("coils", [8, 32])
def test_default_fit_unbiased_with_estimated_sigma_and_coils(coils: int) -> None:
    """RSS of L coils, SNR 10 (S0 / per-coil sigma), 12 echoes TE 3-60 ms, T2* 20-60 ms:
    |median relative bias| of T2* <= 2 % with sigma and L estimated from the air; the Gaussian
    fit of the same data is far off (the noise floor 2 L sigma^2 is large)."""
    ph = make_coil_phantom(
        (64, 64, 8), TE_12, coils=coils, t2star_range=(0.020, 0.060), snr=10.0, seed=11
    )
    estimate = estimate_noise(ph.magnitude[..., 0])
    assert estimate.sigma is not None, estimate.reason
    aware = fit_t2star(
        ph.magnitude,
        TE_12,
        mask=ph.mask,
        noise=NoiseModel(sigma=estimate.sigma, coils=estimate.coils),
    )
    plain = fit_t2star(ph.magnitude, TE_12, mask=ph.mask, method="nlls-gaussian")
    assert aware.noise_model == "noncentral-chi"
    bias = float(np.median(aware.t2star.numpy()[ph.mask] / ph.t2star[ph.mask] - 1.0))
    gauss = float(np.median(plain.t2star.numpy()[ph.mask] / ph.t2star[ph.mask] - 1.0))
    shown = (
        f"L {estimate.coils:.2f} sigma {estimate.sigma:.2f}: bias {bias:+.2%}, gauss {gauss:+.2%}"
    )
    assert abs(bias) <= 0.02, shown
    assert gauss > 0.3, shown


# --- signal mask -------------------------------------------------------------------------------


def test_signal_mask_covers_object_not_air() -> None:
    ph = make_phantom((32, 32, 6), seed=5)
    mask = signal_mask(ph.magnitude, ph.sigma)
    assert mask[ph.mask].mean() > 0.99
    assert mask[~ph.mask].mean() < 1e-3


def test_signal_mask_of_many_coils_leaves_the_air_out() -> None:
    """L = 32: the air sits near 8 sigma, so the threshold is its 1 - 4e-6 point, not 5 sigma."""
    ph = make_coil_phantom((48, 48, 4), TE_12[:2], coils=32, snr=30.0, seed=12)
    mask = signal_mask(ph.magnitude, ph.sigma, coils=32)
    assert mask[ph.mask].mean() > 0.99
    assert mask[~ph.mask].mean() < 1e-3
    assert signal_mask(ph.magnitude, ph.sigma)[~ph.mask].mean() > 0.9  # as if L were 1


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


# --- real scanner data ---------------------------------------------------------------------------

REAL_SETS = {
    "ge": "ge-mr750-kidney-megre",
    "prisma": "siemens-prisma-megre-phantom",
    "fmap": "siemens-fieldmap-dual-echo",
    "xa30": "siemens-xa30-enhanced-dual-echo",
}


def first_echo(bids: Path, label: str, part: str) -> np.ndarray | None:
    """The shortest-TE image of ``part`` of participant ``label``, or None. The dual-echo field
    maps are converted to fmap/: their first magnitude is ``magnitude1``."""
    files = sorted((bids / f"sub-{label}" / "anat").glob(f"*_part-{part}_MEGRE.nii.gz"))
    if not files and part == "mag":
        files = sorted((bids / f"sub-{label}" / "fmap").glob("*_magnitude1.nii.gz"))
    if not files:
        return None
    times = [
        float(json.loads(Path(str(f).replace(".nii.gz", ".json")).read_text())["EchoTime"])
        for f in files
    ]
    return np.asarray(nib.load(files[int(np.argmin(times))]).dataobj, dtype=np.float64)


@pytest.fixture(scope="module")
def real_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bids = tmp_path_factory.mktemp("noise-real") / "bids"
    for label, folder in REAL_SETS.items():
        source = SHARED_DATA / "dicom" / folder
        rc = main(["convert", str(source), str(bids), "--participant-label", label, "-q"])
        assert rc == 0, f"convert {source} failed"
    return bids


@pytest.mark.realdata
@pytest.mark.parametrize("label", sorted(REAL_SETS))
def test_real_sets_are_not_refused(real_bids: Path, label: str) -> None:
    magnitude = first_echo(real_bids, label, "mag")
    assert magnitude is not None
    estimate = estimate_noise(magnitude)
    assert estimate.sigma is not None and estimate.sigma > 0, estimate.reason
    assert estimate.method == "background-quantiles", estimate


@pytest.mark.realdata
@pytest.mark.parametrize("label", ["ge", "prisma"])
def test_real_sigma_matches_the_real_channel(real_bids: Path, label: str) -> None:
    """sigma from the magnitude alone within 25 % of 1.4826 MAD of the background's real
    channel (GE: part-real; Siemens: magnitude * cos(phase in rad))."""
    magnitude = first_echo(real_bids, label, "mag")
    real = first_echo(real_bids, label, "real")
    if real is None:
        phase = first_echo(real_bids, label, "phase")
        assert phase is not None and np.abs(phase).max() <= math.pi + 1e-3
        real = magnitude * np.cos(phase)
    assert magnitude is not None
    reference = estimate_noise(magnitude, real=real)
    alone = estimate_noise(magnitude)
    assert reference.method == "real-channel" and reference.sigma is not None
    assert alone.sigma is not None, alone.reason
    ratio = alone.sigma / reference.sigma
    assert 0.75 <= ratio <= 1.25, (
        f"{label}: {alone.sigma:.4g} / {reference.sigma:.4g} = {ratio:.3f}"
    )


# --- the sigma to fit with: background or tissue ----------------------------------------------


def test_noise_for_fit_prefers_clearly_quieter_tissue() -> None:
    background = NoiseEstimate(50.0, 1000, coils=4.0, method="background-quantiles")
    quieter = NoiseEstimate(30.0, 500, "tissue", coils=1.0, method="residuals")
    close = NoiseEstimate(48.0, 500, "tissue", coils=1.0, method="residuals")
    chosen = noise_for_fit(background, quieter)
    assert (chosen.sigma, chosen.coils, chosen.method) == (30.0, 4.0, "residuals")
    assert "not uniform" in chosen.reason
    assert noise_for_fit(background, close) is background
    assert noise_for_fit(background, NoiseEstimate(None, 0, "none")) is background
    refused = NoiseEstimate(None, 0, "no air")
    assert noise_for_fit(refused, quieter) is quieter


def test_noise_for_fit_keeps_a_uniform_background() -> None:
    """Uniform noise, high SNR: the residuals agree with the air, so the air's estimate stays."""
    ph = make_coil_phantom((48, 48, 4), TE_12, coils=4, snr=200.0, seed=13)
    background = estimate_noise(ph.magnitude[..., 0])
    residuals = noise_from_residuals(ph.magnitude, TE_12)
    check(residuals, ph.sigma, 0.10)
    assert noise_for_fit(background, residuals) is background


def test_noise_for_fit_takes_the_tissue_when_the_air_is_noisier() -> None:
    """Air noise 1.5 x the tissue's (as under intensity correction): sigma of the tissue."""
    ph = make_coil_phantom((48, 48, 4), TE_12, coils=1, snr=200.0, seed=14)
    rng = np.random.default_rng(14)
    magnitude = ph.magnitude.astype(np.float64)
    air = ~ph.mask
    noise = (
        1.5
        * ph.sigma
        * (rng.standard_normal((air.sum(), 12)) + 1j * rng.standard_normal((air.sum(), 12)))
    )
    magnitude[air] = np.abs(noise)
    background = estimate_noise(magnitude[..., 0])
    check(background, 1.5 * ph.sigma, 0.05)
    chosen = noise_for_fit(background, noise_from_residuals(magnitude, TE_12))
    assert chosen.method == "residuals"
    check(chosen, ph.sigma, 0.10)


def complex_r2star(signal: np.ndarray, te: np.ndarray, r2_start: float) -> float:
    """R2* of S0 exp(-TE R2*) exp(i(phi0 + 2 pi f TE)) fitted to complex ``signal`` (E,)."""
    from scipy.optimize import least_squares

    step = np.angle(np.sum(signal[1:] * np.conj(signal[:-1])))
    freq = step / (2.0 * np.pi * float(np.mean(np.diff(te))))
    phi0 = float(np.angle(signal[0] * np.exp(-2j * np.pi * freq * te[0])))
    s0 = float(np.abs(signal[0]) * np.exp(te[0] * r2_start))

    def residual(p: np.ndarray) -> np.ndarray:
        diff = p[0] * np.exp(-te * p[1] + 1j * (p[2] + 2.0 * np.pi * p[3] * te)) - signal
        return np.concatenate([diff.real, diff.imag])

    return float(least_squares(residual, [s0, r2_start, phi0, freq], method="lm").x[1])


@pytest.mark.realdata
def test_ge_default_fit_agrees_with_a_complex_fit(real_bids: Path) -> None:
    """Issue 11 part 3: with noise_for_fit's sigma, the default magnitude fit's R2* on the GE
    kidney agrees with a complex-domain fit (real + imaginary) within 2 % (median signed
    relative difference, R2* 60-400 1/s by the geometric mean of both, first-echo SNR > 10),
    over 600 voxels."""
    parts, te = echo_parts(real_bids / "sub-ge" / "anat", ("mag", "real", "imag"))
    magnitude = parts["mag"]
    chosen = noise_for_fit(estimate_noise(magnitude[..., 0]), noise_from_residuals(magnitude, te))
    assert chosen.sigma is not None
    mask = signal_mask(magnitude, chosen.sigma, chosen.coils)
    fit = fit_t2star(
        magnitude, te, mask=mask, noise=NoiseModel(sigma=chosen.sigma, coils=chosen.coils)
    )
    r2 = fit.r2star.numpy()
    # misfit voxels count too: the comparison is of the maps as published
    failed = (fit.reason.numpy() & np.uint8(0xFF ^ int(Failure.MISFIT))) != 0
    bright = mask & ~failed & (magnitude[..., 0] > 10 * chosen.sigma)
    candidates = np.flatnonzero((bright & (r2 > 40) & (r2 < 600)).ravel())
    picked = candidates[:: max(1, candidates.size // 600)]
    z = (parts["real"] + 1j * parts["imag"]).reshape(-1, te.size)
    r2_complex = np.array([complex_r2star(z[i], te, float(r2.flat[i])) for i in picked])
    r2_mag = r2.flat[picked]
    both = (r2_complex > 0) & (r2_mag > 0)
    geo = np.sqrt(np.where(both, r2_complex * r2_mag, 0.0))
    band = both & (geo >= 60) & (geo <= 400)
    assert band.sum() > 200
    difference = float(np.median(r2_mag[band] / r2_complex[band] - 1.0))
    assert abs(difference) <= 0.02, f"{difference:+.2%} over {band.sum()} voxels"


# --- cross-checks between estimators that fail in opposite ways (issue 18) -------------------


def _ghosted_phantom(seed: int = 6) -> tuple[np.ndarray, np.ndarray, float]:
    """A phantom whose air carries structured signal 6 sigma strong that repeats from echo to
    echo (ghosts, aliasing, as in the GE kidney background, whose first-echo estimate is 4.5
    times its echo differences'): (magnitude, complex, sigma). The noise is complex Gaussian.
    """
    ph = make_phantom((48, 64, 6), TE_12, seed=seed, with_phase=True, background=0.0)
    assert ph.phase is not None
    clean = decay(ph.s0, ph.t2star, ph.echo_times) * np.exp(1j * ph.phase)
    clean = np.where(ph.mask[..., None], clean, 0.0)
    rng = np.random.default_rng(seed)
    shape = ph.mask.shape
    ghost = 6.0 * ph.sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    clean = clean + np.where(ph.mask, 0.0, ghost)[..., None]  # the same at every echo
    noise = rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)
    noisy = clean + ph.sigma * noise
    return np.abs(noisy).astype(np.float32), noisy.astype(np.complex64), ph.sigma


def test_echo_differences_cancel_the_ghosts_a_background_estimate_takes_for_noise() -> None:
    magnitude, signal, sigma = _ghosted_phantom()
    background = estimate_noise(magnitude[..., 0], real=signal[..., 0].real)
    differences = noise_from_echo_differences(magnitude, signal=signal)
    assert background.sigma is not None and background.sigma > 2.5 * sigma  # ghosts
    assert differences.sigma == pytest.approx(sigma, rel=0.1)
    # magnitudes only: exact for air of pure noise (test below), an upper bound where the air
    # carries signal (its differences are then closer to Gaussian than to Rayleigh's)
    magnitude_only = noise_from_echo_differences(magnitude)
    assert magnitude_only.sigma is not None and magnitude_only.sigma < background.sigma / 2
    residuals = noise_from_residuals(magnitude, TE_12)
    chosen = cross_check(background, differences, residuals)
    assert chosen.method == "residuals" and chosen.sigma == pytest.approx(sigma, rel=0.1)
    assert "ghosts, not noise" in chosen.reason
    assert set(chosen.candidates) == {"real-channel", "echo-differences", "residuals"}


def test_a_clean_background_is_kept_and_misfit_does_not_raise_sigma() -> None:
    """A clean background agrees with the echo differences and is used; tissue residuals
    raised by misfit (a dark first echo everywhere) are an upper bound, not the noise."""
    ph = make_phantom((48, 48, 6), TE_12, seed=7)
    dark = ph.magnitude.copy()
    dark[..., 0] = np.where(ph.mask, dark[..., 0] * 0.85, dark[..., 0])
    background = estimate_noise(dark[..., 0])
    chosen = cross_check(
        background, noise_from_echo_differences(dark), noise_from_residuals(dark, TE_12)
    )
    assert chosen.method == "background-quantiles"
    assert chosen.sigma == pytest.approx(ph.sigma, rel=0.1)
    assert chosen.candidates["residuals"] > 1.5 * ph.sigma


@pytest.mark.parametrize("coils", [1, 8])
def test_magnitude_differences_in_air_of_pure_noise(coils: int) -> None:
    ph = make_coil_phantom((48, 48, 4), TE_12, coils=coils, seed=9)
    estimate = noise_from_echo_differences(ph.magnitude, coils=coils)
    assert estimate.sigma == pytest.approx(ph.sigma, rel=0.1)


def test_two_echoes_without_residuals_use_the_differences_when_ghosted() -> None:
    magnitude, signal, sigma = _ghosted_phantom(seed=8)
    background = estimate_noise(magnitude[..., 0], real=signal[..., 0].real)
    differences = noise_from_echo_differences(magnitude[..., :2], signal=signal[..., :2])
    chosen = cross_check(background, differences, NoiseEstimate(None, 0, "2 echoes"))
    assert chosen.method == "echo-differences"
    assert chosen.sigma == pytest.approx(sigma, rel=0.25)  # the first pair: ghosts linger


# --- the same estimates, cheaper: counts of whole numbers, samples of large volumes -------------


def _rounded(magnitude: np.ndarray) -> np.ndarray:
    return np.round(magnitude).astype(np.float32)


@pytest.mark.parametrize("coils", [1, 8])
def test_counting_whole_numbers_changes_no_estimate(
    coils: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Integer images are counted per value (one pass instead of sorting every voxel): every
    field of the estimate equals that of the values themselves."""
    ph = make_coil_phantom((48, 48, 6), TE_12, coils=coils, s0=300.0, snr=60.0, seed=11)
    first = _rounded(ph.magnitude[..., 0])
    counted = estimate_noise(first)
    monkeypatch.setattr(noise.samples, "_WHOLE_LIMIT", 1)  # nothing is counted: the values are used
    assert estimate_noise(first) == counted
    assert counted.sigma == pytest.approx(ph.sigma, rel=0.1)


def test_otsu_of_counts_is_otsu_of_the_values() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.poisson(4, 5000), rng.poisson(300, 3000)]).astype(np.float64)
    levels, counts = np.unique(values, return_counts=True)
    assert otsu_threshold(np.log1p(levels), weights=counts) == otsu_threshold(np.log1p(values))


def test_a_counted_sample_has_the_statistics_of_its_values() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(1, 40, 2000).astype(np.float32)
    counted, plain = noise._Sample.of(values), noise._Sample(values.astype(np.float64))
    assert counted.counts is not None and plain.counts is None
    assert counted.size == plain.size == 2000 and counted.max() == plain.max()
    for top in (0.5, 10.0, 10.5, 39.0, 50.0):
        assert counted.below(top).size == plain.below(top).size
        assert counted.fraction_above(top) == plain.fraction_above(top)
    probabilities = (0.25, 0.5, 0.999)
    assert counted.quantiles(probabilities) == plain.quantiles(probabilities)
    assert counted.below(20.0).quantiles(probabilities) == plain.below(20.0).quantiles(
        probabilities
    )
    assert counted.log_otsu() == plain.log_otsu()


def test_float32_comparisons_are_those_of_float64() -> None:
    rng = np.random.default_rng(6)
    x = rng.uniform(0.0, 100.0, 20000).astype(np.float32)
    for t in (*rng.uniform(0.0, 100.0, 20).tolist(), float(x[7]), float(np.nextafter(x[7], 0))):
        for shifted in (t, float(np.nextafter(t, 0.0)), float(np.nextafter(t, 200.0))):
            wide = x.astype(np.float64)
            np.testing.assert_array_equal(noise._below(x, shifted), wide < shifted)
            np.testing.assert_array_equal(noise._above(x, shifted), wide > shifted)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_integer_comparisons_are_those_of_float64(dtype: type) -> None:
    info = np.iinfo(dtype)
    x = np.arange(info.min, info.max + 1, max(1, (info.max - info.min) // 5000)).astype(dtype)
    x = np.concatenate([x, np.array([info.min, info.max, 0, 1], dtype=dtype)])
    wide = x.astype(np.float64)
    for t in (-1e9, info.min - 0.5, -3.0, -2.5, 0.0, 0.5, 7.0, 7.25, 99.999, info.max, 1e9):
        np.testing.assert_array_equal(noise._below(x, t), wide < t)
        np.testing.assert_array_equal(noise._above(x, t), wide > t)


def test_integer_echoes_are_as_bright_as_their_float32_values() -> None:
    """The residuals' brightness test compares a float32 echo with the threshold rounded to
    float32 (59.99999999 is 60 there): int16 echoes must give the same voxels."""
    column = np.arange(0, 200, dtype=np.int16)
    for t in (59.99999999, 60.0, 60.00000001, 60.5, 0.2, 150.7):
        np.testing.assert_array_equal(
            noise._brighter(column, t), noise._brighter(column.astype(np.float32), t)
        )
    assert noise._brighter(column, 59.99999999)[60] == np.False_


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_rows_finite_and_positive(dtype: type) -> None:
    rows = np.array([[1, 2, 3], [0, 2, 3], [1, -2, 3], [4, 5, 6]], dtype=np.float64)
    if dtype is not np.int16:
        rows = np.vstack([rows, [[1, np.nan, 3], [np.inf, 2, 3], [1, -np.inf, 3]]])
    rows = rows.astype(dtype)
    np.testing.assert_array_equal(
        noise._all_positive(rows), np.all(np.isfinite(rows), axis=1) & np.all(rows > 0, axis=1)
    )
    np.testing.assert_array_equal(noise._all_finite(rows), np.all(np.isfinite(rows), axis=1))


def _candidates_one_by_one(
    magnitude: np.ndarray, signal: np.ndarray | None = None
) -> tuple[NoiseEstimate, NoiseEstimate, NoiseEstimate]:
    real = None if signal is None else signal[..., 0].real
    background = estimate_noise(magnitude[..., 0], real=real)
    differences = noise_from_echo_differences(magnitude, signal=signal, coils=background.coils)
    return background, differences, noise_from_residuals(magnitude, TE_12)


def test_the_candidates_together_are_the_candidates_one_by_one() -> None:
    ph = make_phantom((40, 36, 6), TE_12, s0=400.0, snr=40.0, seed=12)
    assert noise_candidates(ph.magnitude, TE_12) == _candidates_one_by_one(ph.magnitude)
    magnitude, signal, _ = _ghosted_phantom(seed=4)
    together = noise_candidates(magnitude, TE_12, signal=signal)
    assert together == _candidates_one_by_one(magnitude, signal)
    assert together[0].method == "real-channel"


@pytest.mark.parametrize(("dtype", "s0"), [(np.int16, 3000.0), (np.uint8, 200.0)])
def test_integer_echoes_give_the_estimates_of_their_float32_values(dtype: type, s0: float) -> None:
    """The run keeps int16 files as int16: every estimate is that of the same values as
    float32 (no integer overflow in the differences, the same thresholds)."""
    ph = make_phantom((40, 36, 6), TE_12, s0=s0, snr=40.0, seed=13)
    floats = np.minimum(_rounded(ph.magnitude), np.iinfo(dtype).max)
    integers = floats.astype(dtype)
    assert noise_candidates(integers, TE_12) == noise_candidates(floats, TE_12)
    sigma = noise_candidates(floats, TE_12)[0].sigma
    np.testing.assert_array_equal(signal_mask(integers, sigma), signal_mask(floats, sigma))


def test_a_signal_mask_given_its_nonfinite_voxels_is_the_same() -> None:
    ph = make_phantom((20, 18, 4), TE_12, seed=14)
    magnitude = ph.magnitude.copy()
    magnitude[3, 4, 1, 5] = np.nan
    magnitude[0, 0, 0, 2] = np.inf
    nonfinite = ~np.all(np.isfinite(magnitude), axis=-1)
    for sigma in (ph.sigma, None):
        expected = signal_mask(magnitude, sigma)
        assert expected[3, 4, 1] and expected[0, 0, 0]
        np.testing.assert_array_equal(signal_mask(magnitude, sigma, nonfinite=nonfinite), expected)


def test_the_local_variance_of_a_large_volume_uses_every_kth_plane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above LOCAL_WINDOWS windows, every k-th plane along the third axis: the estimate is
    that of those planes, within its spread of the whole volume's."""
    ph = make_phantom((64, 64, 40), TE_12[:3], s0=1000.0, snr=50.0, seed=15, background=0.0)
    first = ph.magnitude[..., 0]
    whole = noise._local_variance_sigma(first)
    monkeypatch.setattr(noise.local, "LOCAL_WINDOWS", 40_000)  # 62 x 62 x 40 windows: every 4th
    sampled = noise._local_variance_sigma(first)
    monkeypatch.setattr(noise.local, "LOCAL_WINDOWS", 1 << 20)
    assert sampled == noise._local_variance_sigma(first[:, :, ::4])
    assert whole[0] is not None and sampled[0] is not None
    assert sampled[1] < whole[1] / 3
    assert sampled[0] == pytest.approx(whole[0], rel=0.03)
    assert whole[0] == pytest.approx(ph.sigma, rel=0.05)


def test_the_echo_differences_of_a_large_air_use_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    ph = make_phantom((64, 64, 8), TE_12, s0=1000.0, snr=50.0, seed=16)
    whole = noise_from_echo_differences(ph.magnitude)
    monkeypatch.setattr(noise.air, "SAMPLE_VOXELS", 4000)
    sampled = noise_from_echo_differences(ph.magnitude)
    assert whole.n_background > 4 * 4000
    assert 2000 <= sampled.n_background <= 4000
    assert sampled.sigma == pytest.approx(whole.sigma, rel=0.05)  # its spread: about 1.5 %
    assert whole.sigma == pytest.approx(ph.sigma, rel=0.05)
