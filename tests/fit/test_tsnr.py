"""tSNR of multi-echo BOLD (issue 28): the per-voxel ratio, and the comparison of the optimal
combination with the best single echo on series with known noise."""

from __future__ import annotations

import numpy as np
import pytest

from t2starmap.fit.tsnr import MIN_VOLUMES, compare_tsnr, temporal_snr


def test_temporal_snr_is_mean_over_sample_sd() -> None:
    series = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [2.0, np.nan, 2.0, 4.0]])
    snr = temporal_snr(series)
    assert snr[0] == pytest.approx(2.5 / np.std([1, 2, 3, 4], ddof=1))
    assert np.isnan(snr[1])  # no variation: no tSNR
    assert np.isnan(snr[2])  # a NaN sample: none either


def test_temporal_snr_needs_two_volumes() -> None:
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_snr(np.ones((3, MIN_VOLUMES - 1)))


def _series(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Three echoes of 2000 voxels x 200 volumes, independent noise of SD 10 on means that
    fall with TE (so tSNR falls too), and their optimal combination with known weights."""
    rng = np.random.default_rng(seed)
    te = np.array([0.012, 0.03, 0.048])
    s0, t2 = 1000.0, 0.03
    means = s0 * np.exp(-te / t2)
    echoes = [m + rng.normal(0, 10.0, size=(2000, 200)) for m in means]
    weights = te * np.exp(-te / t2)
    weights /= weights.sum()
    optcom = sum(w * e for w, e in zip(weights, echoes, strict=True))
    return optcom, echoes, weights


def test_combination_against_the_best_echo_on_known_noise() -> None:
    optcom, echoes, weights = _series()
    summary = compare_tsnr(optcom, echoes)
    assert summary is not None
    expected = [float(np.mean(e)) / 10.0 for e in echoes]  # mean / noise SD per echo
    np.testing.assert_allclose(summary.echo_medians, expected, rtol=0.03)
    assert summary.best_echo == 1  # the shortest echo has the most signal
    # independent noise: SD of the combination is 10 * |w|, its mean sum(w * means)
    mean = sum(w * float(np.mean(e)) for w, e in zip(weights, echoes, strict=True))
    combined = mean / (10.0 * np.sqrt(np.sum(weights**2)))
    assert summary.optcom_median == pytest.approx(combined, rel=0.03)
    assert summary.ratio == pytest.approx(combined / expected[0], rel=0.04)
    assert summary.n_voxels == 2000
    assert sum(summary.optcom_counts) == 2000 and sum(summary.best_counts) == 2000
    assert len(summary.edges) == len(summary.optcom_counts) + 1


def test_the_best_echo_is_the_highest_median_not_the_first() -> None:
    optcom, echoes, _ = _series(1)
    swapped = [echoes[2], echoes[0], echoes[1]]
    summary = compare_tsnr(optcom, swapped)
    assert summary is not None and summary.best_echo == 2
    assert summary.best_median == max(summary.echo_medians)


def test_one_volume_or_no_varying_voxel_gives_none() -> None:
    assert compare_tsnr(np.ones((5, 1)), [np.ones((5, 1))]) is None
    assert compare_tsnr(np.ones((5, 4)), [np.ones((5, 4))]) is None
