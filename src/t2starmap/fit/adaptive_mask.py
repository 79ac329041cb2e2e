"""The adaptive mask of multi-echo BOLD: how many echoes, counted from the first, carry signal
in each voxel. tedana's rules (``tedana.utils.make_adaptive_mask``, 26.0.3), written anew.

Pure numpy: no I/O, no logging. Voxels on the first axis, echoes on the last, echoes ascending.

* ``base`` (always): the echoes before the first one with a NaN or a non-positive sample
  (at any time point) are good;
* ``dropout``: the voxel whose first-echo temporal mean is the 33rd percentile ("higher") of
  the non-zero first-echo means is the exemplar (of several, the one with the largest sum of
  echo means); a third of its echo means are the thresholds; a voxel's count is the last echo
  whose |mean| exceeds its threshold (earlier echoes below it count as good);
* ``decay``: the echoes up to the first one whose mean does not fall below the previous one's;
* ``none``: only the base rule.

The count is the smallest of the rules applied; 0 means no good echo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MASK_TYPES = ("dropout", "decay", "none")
#: Percentile of the first echo's means that picks the exemplar voxel, and the fraction of its
#: echo means below which an echo has dropped out (both tedana's).
EXEMPLAR_PERCENTILE = 33
DROPOUT_FRACTION = 1.0 / 3.0


def check_mask_types(methods: Sequence[str]) -> tuple[str, ...]:
    """The mask types, checked; ValueError naming an unknown one."""
    unknown = [m for m in methods if m.lower() not in MASK_TYPES]
    if unknown:
        raise ValueError(f"unknown mask type(s) {unknown}; choose from {', '.join(MASK_TYPES)}")
    return tuple(m.lower() for m in methods)


def base_count(bad: np.ndarray) -> np.ndarray:
    """Leading echoes without a NaN or non-positive sample. ``bad`` (V, E) bool -> (V,) int16."""
    good = ~np.asarray(bad, dtype=bool)
    return np.asarray(np.cumprod(good, axis=1).sum(axis=1), dtype=np.int16)


def dropout_thresholds(means: np.ndarray) -> np.ndarray:
    """The echo-wise thresholds of the dropout rule, (E,): a third of the exemplar's means."""
    first = means[:, 0]
    nonzero = first[first != 0]
    if nonzero.size == 0:
        return np.full(means.shape[1], np.inf)
    perc = np.percentile(nonzero, EXEMPLAR_PERCENTILE, method="higher")
    rows = means[first == perc] * DROPOUT_FRACTION
    return np.asarray(rows[int(np.argmax(rows.sum(axis=1)))], dtype=np.float64)


def dropout_count(means: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The last echo whose |mean| exceeds its threshold, (V,) int16 (0: none)."""
    above = np.abs(means) > thresholds[None, :]
    n_echoes = means.shape[1]
    last = n_echoes - np.argmax(above[:, ::-1], axis=1)
    return np.where(above.any(axis=1), last, 0).astype(np.int16)


def decay_count(means: np.ndarray) -> np.ndarray:
    """Echoes up to the first one whose mean is not below the previous echo's, (V,) int16."""
    rising = np.diff(means, axis=1) >= 0
    first_rise = np.argmax(rising, axis=1) + 1
    return np.asarray(np.where(rising.any(axis=1), first_rise, means.shape[1]), dtype=np.int16)


def adaptive_mask(means: np.ndarray, bad: np.ndarray, methods: Sequence[str]) -> np.ndarray:
    """The adaptive mask (V,) int16 from the temporal means (V, E) and the bad-sample flags
    (V, E) of the voxels inside the given mask, by the rules ``methods`` (see the module)."""
    kinds = check_mask_types(methods)
    counts = [base_count(bad)]
    if "dropout" in kinds:
        counts.append(dropout_count(means, dropout_thresholds(means)))
    if "decay" in kinds:
        counts.append(decay_count(means))
    return np.asarray(np.minimum.reduce(counts), dtype=np.int16)


def echoes_used(count: np.ndarray) -> np.ndarray:
    """Echoes each voxel is fitted and combined with: its count, but 2 where it is 1 (tedana
    fits a voxel with one good echo from the first two), 0 where it is 0."""
    return np.where(count == 1, 2, count).astype(np.int16)
