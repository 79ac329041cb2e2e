"""tedana's floors and limited maps, the optimal combination and the RMSE."""

from __future__ import annotations

import numpy as np
import pytest

from t2starmap.fit import combine

TE = np.array([0.015, 0.039, 0.063])


def test_floors_replace_inf_nonpositive_and_underflow() -> None:
    t2 = np.array([np.inf, 0.0, -0.02, np.nan, 1e-6, 0.03])
    s0 = np.array([1.0, np.nan, 2.0, 3.0, 4.0, 5.0])
    maps = combine.floor_maps(t2, s0, TE)
    floor = 0.063 / -np.log(np.finfo(np.float64).eps)
    np.testing.assert_allclose(maps.t2star, [0.5, 0.001, 0.001, 0.001, floor, 0.03])
    assert maps.s0[1] == 0.0
    assert np.all(np.exp(-TE[-1] / maps.t2star) > 0)


def test_limited_maps_zero_one_echo_voxels_and_cap_outliers() -> None:
    t2 = np.linspace(0.02, 0.06, 1000)
    t2[7] = 50.0  # > 10 x the 99.5th percentile: capped to it
    count = np.full(1000, 3)
    count[:5] = 1
    lim = combine.limited(combine.FinalMaps(t2, np.ones(1000)), count)
    assert np.all(lim.t2star[:5] == 0) and np.all(lim.s0[:5] == 0)
    cap = np.percentile(np.delete(lim.t2star, 7), 99.5)
    assert lim.t2star[7] == pytest.approx(cap, rel=1e-2)
    assert t2[7] == 50.0  # the full map is left alone


def _echoes(n: int = 5, t: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(100, 1000, (n, t)).astype(np.float32) for _ in TE]


def test_t2s_combination_weights() -> None:
    echoes = _echoes()
    t2 = np.array([0.03, 0.05, 0.02, 0.04, 0.01])
    used = np.array([3, 3, 2, 0, 3])
    out = combine.combine(echoes, TE, used, t2star=t2)
    for v in range(5):
        k = used[v]
        if k == 0:
            assert np.all(out[v] == 0)
            continue
        w = TE[:k] * np.exp(-TE[:k] / t2[v])
        expected = sum(w[j] * echoes[j][v] for j in range(k)) / w.sum()
        np.testing.assert_allclose(out[v], expected, rtol=1e-5)


def test_per_volume_weights_and_the_plain_mean_where_they_vanish() -> None:
    echoes = _echoes(2, 3)
    t2 = np.array([[0.03, 0.02, 1e-9], [0.05, 0.05, 0.05]])
    out = combine.combine(echoes, TE, np.array([3, 3]), t2star=t2)
    w = TE * np.exp(-TE / 0.02)
    expected = sum(w[j] * echoes[j][0, 1] for j in range(3)) / w.sum()
    assert out[0, 1] == pytest.approx(expected, rel=1e-5)
    assert out[0, 2] == pytest.approx(np.mean([e[0, 2] for e in echoes]), rel=1e-5)


def test_paid_weights_are_snr_times_te() -> None:
    echoes = _echoes(3, 8)
    mean = np.stack([e.mean(1) for e in echoes], 1).astype(np.float64)
    sq = np.stack([((e - e.mean(1, keepdims=True)) ** 2).sum(1) for e in echoes], 1)
    snr = combine.temporal_snr(mean, sq, 8)
    np.testing.assert_allclose(snr[:, 1], echoes[1].mean(1) / echoes[1].std(1), rtol=1e-4)
    out = combine.combine(echoes, TE, np.array([3, 3, 3]), snr=snr)
    w = snr[1] * TE
    np.testing.assert_allclose(
        out[1], sum(w[j] * echoes[j][1] for j in range(3)) / w.sum(), rtol=1e-5
    )


def test_rmse_of_an_exact_decay_is_zero_and_its_table() -> None:
    t2, s0 = np.array([0.03, 0.05]), np.array([1000.0, 500.0])
    echoes = [np.repeat((s0 * np.exp(-te / t2))[:, None], 4, 1).astype(np.float32) for te in TE]
    echoes[0][1] += 3.0  # voxel 1 off by 3 at echo 1 of its 2 used echoes: RMSE 3 / sqrt(2)
    per_volume = combine.rmse(echoes, TE, np.array([3, 2]), combine.FinalMaps(t2, s0))
    np.testing.assert_allclose(per_volume[0], 0.0, atol=1e-3)
    np.testing.assert_allclose(per_volume[1], 3 / np.sqrt(2), rtol=1e-4)
    table = combine.rmse_table(per_volume)
    assert table.shape == (4, len(combine.RMSE_COLUMNS))
    assert table[0, 0] == pytest.approx(per_volume[:, 0].mean(), rel=1e-5)
    assert table[0, -1] == pytest.approx(per_volume[:, 0].max(), rel=1e-5)
    assert np.isnan(combine.rmse(echoes, TE, np.array([0, 2]), combine.FinalMaps(t2, s0))[0]).all()


def test_rmse_table_in_several_steps_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    per_volume = rng.uniform(0, 10, (5000, 1000)).astype(np.float32)  # 2 steps of volumes
    per_volume[3] = np.nan  # a voxel without an RMSE is left out of every column
    table = combine.rmse_table(per_volume)
    good = np.delete(per_volume, 3, axis=0).astype(np.float64)
    np.testing.assert_allclose(table[:, 0], good.mean(0), rtol=1e-6)
    np.testing.assert_allclose(table[:, 5], np.median(good, 0), rtol=1e-6)
    np.testing.assert_allclose(table[:, -1], good.max(0), rtol=1e-6)
