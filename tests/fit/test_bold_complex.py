"""The complex fit of multi-echo BOLD with phase: each volume's phase offset removed before
the mean over the volumes, then the MEGRE complex fit (seeded run, known S0, T2* and
frequency map, phase that drifts and breathes)."""

from __future__ import annotations

import numpy as np
import pytest

from t2starmap.fit import bold, bold_complex
from t2starmap.fit.phase import COHERENT, INCOHERENT, analyse_phase
from t2starmap.sim.bold_phase import ComplexBoldRun, make_complex_bold_run


def _rows(cr: ComplexBoldRun) -> tuple[list[np.ndarray], list[np.ndarray]]:
    run = cr.magnitude
    mag = [run.echoes[..., k][run.brain].astype(np.float32) for k in range(run.te.size)]
    return mag, [cr.phase[..., k][run.brain] for k in range(run.te.size)]


@pytest.fixture(scope="module")
def coherent() -> ComplexBoldRun:
    return make_complex_bold_run((16, 16, 8), 30, seed=3)


def _fit(cr: ComplexBoldRun, mean: np.ndarray) -> tuple[bold.DecayFit, np.ndarray]:
    inside = np.ones(mean.shape[0], bool)
    sigma = cr.magnitude.sigma / np.sqrt(cr.phase.shape[3])
    return bold_complex.fit_aligned(mean, cr.magnitude.te, inside, sigma, bold.Compute("cpu", 1))


def test_aligned_mean_gives_t2star_and_the_frequency(coherent: ComplexBoldRun) -> None:
    run = coherent.magnitude
    mag, phase = _rows(coherent)
    mean = bold_complex.aligned_mean(mag, phase, run.te)
    fit, frequency = _fit(coherent, mean)
    truth = run.t2star[run.brain]
    keep = ~run.dropout[run.brain]
    assert np.median(np.abs(fit.t2star[keep] / truth[keep] - 1)) < 0.01
    assert np.median(np.abs(frequency - coherent.frequency[run.brain])[keep]) < 0.1  # Hz
    assert np.mean(fit.failed[keep]) < 0.01


def test_without_alignment_the_drifting_phase_loses_signal(coherent: ComplexBoldRun) -> None:
    """What the alignment is for: the plain complex mean over the volumes loses signal to the
    drifting offsets (S0 several per cent low here; SNR with it); the aligned mean keeps it."""
    run = coherent.magnitude
    mag, phase = _rows(coherent)
    plain = np.stack(
        [(m * np.exp(1j * p)).mean(axis=1) for m, p in zip(mag, phase, strict=True)], axis=1
    )
    keep = ~run.dropout[run.brain]
    truth = run.s0[run.brain][keep]
    aligned = _fit(coherent, bold_complex.aligned_mean(mag, phase, run.te))[0].s0[keep]
    assert abs(np.median(aligned / truth - 1)) < 0.01
    assert np.median(_fit(coherent, plain)[0].s0[keep] / truth - 1) < -0.05


def test_volumes_selects_the_volumes(coherent: ComplexBoldRun) -> None:
    run = coherent.magnitude
    mag, phase = _rows(coherent)
    keep = np.zeros(30, bool)
    keep[5:20] = True
    whole = bold_complex.aligned_mean(
        [m[:, 5:20] for m in mag], [p[:, 5:20] for p in phase], run.te
    )
    np.testing.assert_allclose(bold_complex.aligned_mean(mag, phase, run.te, keep), whole)


def test_phase_check_refuses_incoherent_phase(coherent: ComplexBoldRun) -> None:
    """Phase that follows no frequency is refused by the MEGRE phase check (its reason), and
    its complex fit flags PHASE_MODEL in most voxels; coherent phase passes."""
    broken = make_complex_bold_run((16, 16, 8), 30, seed=3, coherent=False)
    for cr, verdict in ((coherent, COHERENT), (broken, INCOHERENT)):
        mag, phase = _rows(cr)
        mean = bold_complex.aligned_mean(mag, phase, cr.magnitude.te)
        sigma = cr.magnitude.sigma / np.sqrt(30)
        analysis = analyse_phase(mean.astype(np.complex64), cr.magnitude.te, noise_sigma=sigma)
        assert analysis.verdict == verdict, analysis.reason
    assert "follows no frequency" in analysis.reason
    fit, _ = _fit(broken, mean)
    assert np.mean(fit.failed) > 0.5
