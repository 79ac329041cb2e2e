"""The adaptive mask of multi-echo BOLD (tedana's rules), on hand-made echo means."""

from __future__ import annotations

import numpy as np
import pytest

from t2starmap.fit import adaptive_mask as am


def _means() -> np.ndarray:
    """Ten voxels, three echoes, decaying; the first echo's 33rd percentile ("higher") of
    1..10 x 100 is 400, so voxel 3 (means 400, 200, 100) is the exemplar: thresholds 133,
    67, 33."""
    first = np.arange(1, 11, dtype=float) * 100
    return np.stack([first, first / 2, first / 4], axis=1)


def test_base_count_stops_at_the_first_bad_echo() -> None:
    bad = np.array([[False, False, False], [False, True, False], [True, False, False]])
    assert am.base_count(bad).tolist() == [3, 1, 0]


def test_dropout_thresholds_are_a_third_of_the_exemplar() -> None:
    np.testing.assert_allclose(am.dropout_thresholds(_means()), np.array([400, 200, 100]) / 3)


def test_dropout_keeps_the_highest_exemplar_when_several_tie() -> None:
    means = _means()
    means[5, 0] = 400.0  # a second voxel at the percentile, with larger later echoes
    means[5, 1:] = [300.0, 300.0]
    np.testing.assert_allclose(am.dropout_thresholds(means), np.array([400, 300, 300]) / 3)


def test_dropout_counts_the_last_echo_above_its_threshold() -> None:
    means = _means()
    means[0] = [100.0, 10.0, 50.0]  # echo 2 below, echo 3 above: 3, as tedana counts
    means[1] = [200.0, 10.0, 10.0]
    means[2] = [10.0, 10.0, 10.0]
    count = am.dropout_count(means, am.dropout_thresholds(means))
    assert count[:4].tolist() == [3, 1, 0, 3]


def test_decay_stops_where_the_signal_rises() -> None:
    means = np.array([[3.0, 2.0, 1.0], [3.0, 3.0, 1.0], [3.0, 2.0, 2.5]])
    assert am.decay_count(means).tolist() == [3, 1, 2]


@pytest.mark.parametrize(
    ("methods", "expected"),
    [(["none"], [3, 1, 3]), (["dropout"], [3, 1, 0]), (["decay"], [1, 1, 3]),
     (["dropout", "decay"], [1, 1, 0])],
)  # fmt: skip
def test_the_smallest_count_of_the_rules_applied(methods: list[str], expected: list[int]) -> None:
    means = np.vstack([_means(), [[300.0, 400.0, 50.0], [10.0, 5.0, 1.0]]])
    bad = np.zeros(means.shape, dtype=bool)
    bad[1, 1] = True
    count = am.adaptive_mask(means, bad, methods)
    assert count[[10, 1, 11]].tolist() == expected


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mask type"):
        am.adaptive_mask(_means(), np.zeros((10, 3), bool), ["brightness"])


def test_one_good_echo_is_fitted_with_two() -> None:
    assert am.echoes_used(np.array([0, 1, 2, 3])).tolist() == [0, 2, 2, 3]
