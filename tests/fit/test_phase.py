"""Can the phase give a field map? Coherent, bipolar and incoherent phase on the integrating
simulator (its field wraps), each recognised, and the field map each allows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from t2starmap.fit import NoiseModel, fit_complex, frequency_limit
from t2starmap.fit.phase import BIPOLAR, COHERENT, INCOHERENT, analyse_phase
from t2starmap.sim.failures import bipolar, incoherent_phase, spatial_offset
from t2starmap.sim.slices import SlicePhantom, make_slice_phantom


@pytest.fixture(scope="module")
def phantom() -> SlicePhantom:
    return make_slice_phantom((24, 24, 6), snr=100.0, seed=4, samples=32)


def complex_of(ph: SlicePhantom) -> np.ndarray:
    return (ph.magnitude * np.exp(1j * ph.phase)).astype(np.complex64)


def wrapped(difference: np.ndarray, period: float) -> np.ndarray:
    return (difference + period / 2) % period - period / 2


def test_coherent_phase_gives_the_field_from_consecutive_echoes(phantom: SlicePhantom) -> None:
    assert phantom.frequency_hz.max() > frequency_limit(phantom.echo_times)  # it wraps
    found = analyse_phase(complex_of(phantom), phantom.echo_times, noise_sigma=phantom.sigma)
    assert found.verdict == COHERENT and found.coherence > 0.95 and found.trusted_share > 0.9
    assert not found.bipolar and found.offset_rad < 0.05
    field = found.field_map()
    assert field is not None and field.method == "phase differences"
    error = wrapped(field.frequency_hz - phantom.frequency_hz, field.wrap_period_hz or 0.0)
    assert np.median(np.abs(error[~field.untrusted])) < 2.0


@pytest.mark.parametrize(("offset", "verdict"), [(0.12, COHERENT), (0.45, BIPOLAR)])
def test_a_small_odd_even_offset_is_not_a_bipolar_read_out(
    phantom: SlicePhantom, offset: float, verdict: str
) -> None:
    """Real monopolar GE phase shows odd/even offsets of 0.11-0.13 rad (noise and fat folded
    into |psi|): coherent, not bipolar; 0.45 rad is (``BIPOLAR_OFFSET`` 0.3; issue 27)."""
    signal = bipolar(complex_of(phantom), offset).astype(np.complex64)
    found = analyse_phase(signal, phantom.echo_times, noise_sigma=phantom.sigma)
    assert found.verdict == verdict, (found.offset_rad, found.reason)


@pytest.mark.parametrize("offset", ["constant", "varying"])
def test_bipolar_read_out_detected_and_its_field_from_same_parity_echoes(
    phantom: SlicePhantom, offset: str
) -> None:
    psi = 1.0 if offset == "constant" else spatial_offset(phantom.mask.shape, 1.5, seed=2)
    signal = bipolar(complex_of(phantom), psi).astype(np.complex64)
    te = phantom.echo_times
    found = analyse_phase(signal, te, noise_sigma=phantom.sigma)
    assert found.verdict == BIPOLAR, found.reason
    assert "bipolar read-out detected" in found.reason
    assert found.coherence < found.parity_coherence and found.parity_coherence > 0.95
    field = found.field_map()
    assert field is not None and "same-parity" in field.method
    assert field.wrap_period_hz == pytest.approx(frequency_limit(te))  # 1 / (2 dTE)
    odd_even = fit_complex(signal, te, bipolar=True, noise=NoiseModel(sigma=phantom.sigma))
    assert odd_even.frequency is not None
    error = wrapped(field.frequency_hz - odd_even.frequency.numpy(), field.wrap_period_hz)
    assert np.median(np.abs(error[~field.untrusted])) <= 2.0
    truth = wrapped(field.frequency_hz - phantom.frequency_hz, field.wrap_period_hz)
    assert np.median(np.abs(truth[~field.untrusted])) <= 2.0


def test_phase_that_follows_no_frequency_gives_no_field_map(phantom: SlicePhantom) -> None:
    signal = incoherent_phase(complex_of(phantom), seed=3).astype(np.complex64)
    found = analyse_phase(signal, phantom.echo_times, noise_sigma=phantom.sigma)
    assert found.verdict == INCOHERENT and found.field_map() is None
    assert "follows no frequency" in found.reason and found.coherence < 0.8


def test_the_bipolar_complex_model_fits_a_bipolar_train(phantom: SlicePhantom) -> None:
    """A monopolar complex fit of a bipolar train flags its phase almost everywhere and biases
    R2*; the bipolar model frees the even echoes' offset and fits it."""
    signal = bipolar(complex_of(phantom), 1.0).astype(np.complex64)
    te, sigma = phantom.echo_times, phantom.sigma
    flat = phantom.field_change_hz == 0.0  # no through-slice dephasing: a clean decay
    mono = fit_complex(signal, te, noise=NoiseModel(sigma=sigma))
    odd_even = fit_complex(signal, te, bipolar=True, noise=NoiseModel(sigma=sigma))
    assert np.mean(mono.failed.numpy()[flat]) > 0.9
    assert np.mean(odd_even.failed.numpy()[flat]) < 0.05
    error = np.abs(odd_even.r2star.numpy() / phantom.r2star - 1.0)[flat]
    assert np.median(error) < 0.02


def test_three_echoes_cannot_judge_a_bipolar_train(phantom: SlicePhantom) -> None:
    ph3 = dataclasses.replace(
        phantom, magnitude=phantom.magnitude[..., :3], phase=phantom.phase[..., :3]
    )
    found = analyse_phase(complex_of(ph3), phantom.echo_times[:3], noise_sigma=phantom.sigma)
    assert found.verdict == COHERENT and found.offset_rad == 0.0
