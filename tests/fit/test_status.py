"""The one table of fit-status codes: Failure bits, correction outcomes and dseg labels."""

from __future__ import annotations

import re

import numpy as np
import pytest

from t2starmap.fit import status
from t2starmap.fit.status import GOOD, LEVELS, NOT_CORRECTED, NOT_FITTED, Correction, Failure


def test_every_failure_bit_and_correction_outcome_has_its_label() -> None:
    bits = [level.bit for level in LEVELS if level.bit]
    assert sorted(bits) == sorted(int(f) for f in Failure), "a Failure bit without a label"
    outcomes = {c for level in LEVELS for c in level.corrections}
    assert outcomes == set(Correction) - {Correction.OUTSIDE, Correction.CORRECTED}
    assert set(status.CORRECTION_REASONS) == outcomes


def test_labels_are_numbered_from_zero_with_bids_names() -> None:
    assert [level.index for level in LEVELS] == list(range(len(LEVELS)))
    assert (NOT_FITTED.index, GOOD.index) == (0, 1)  # dseg: 0 is background
    names = [level.name for level in LEVELS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in names)
    assert status.level_named("good") is GOOD
    with pytest.raises(KeyError, match="known: not_fitted, good"):
        status.level_named("fine")


def test_levels_tsv_lists_every_label() -> None:
    lines = status.levels_tsv().splitlines()
    assert lines[0] == "index\tname\tdescription"
    assert [line.split("\t")[:2] for line in lines[1:]] == [
        [str(level.index), level.name] for level in LEVELS
    ]


def test_labels_follow_the_priority_and_the_mask() -> None:
    mask = np.array([False, True, True, True, True, True, True])
    reason = np.array(
        [
            Failure.BAD_INPUT,  # outside the mask: not fitted whatever its bits
            0,
            Failure.NOT_CONVERGED | Failure.R2STAR_LOW,
            Failure.BAD_INPUT,
            Failure.PHASE_MODEL | Failure.NOT_CONVERGED,
            0,
            Failure.S0_NONPOSITIVE,
        ],
        dtype=np.uint8,
    )
    correction = np.array([0, 1, 1, 1, 1, Correction.EDGE_SLICE, Correction.FIELD_UNTRUSTED])
    got = status.labels(reason, mask, correction)
    name = {level.index: level.name for level in LEVELS}
    assert [name[int(k)] for k in got] == [
        "not_fitted",
        "good",
        "r2star_at_lower_bound",
        "unusable_input",
        "phase_not_following_model",
        "not_gradient_corrected",
        "nonpositive_s0",  # a failure outranks "not corrected"
    ]
    assert status.labels(None, mask).tolist() == [0] + [GOOD.index] * 6
    assert status.counts(got, mask)["good"] == 1
    assert "not_fitted" not in status.counts(got, mask)


def test_a_label_shared_by_five_percent_of_the_mask_warns() -> None:
    shares = {"not_converged": 0.05, "unusable_input": 0.049, "good": 0.9}
    shares[NOT_CORRECTED.name] = 0.5  # not a failure: no warning
    warned = status.warnings(shares)
    assert len(warned) == 1 and warned[0].startswith("5 % of the mask: the fit did not converge")
    advice = status.warnings({"r2star_at_lower_bound": 0.2})[0]
    assert "check the echo order" in advice


def test_a_refitted_fit_is_labelled_as_such_unless_a_failure_applies() -> None:
    reason = np.array(
        [
            Failure.REFITTED,
            Failure.REFITTED | Failure.R2STAR_HIGH,  # the refit's minimum on the bound
            Failure.REFITTED | Failure.MISFIT,
            Failure.NOT_CONVERGED,
        ],
        dtype=np.uint8,
    )
    got = status.labels(reason, np.ones(4, bool))
    names = [status.LEVELS[int(k)].name for k in got]
    assert names == [
        "refitted",
        "r2star_at_upper_bound",
        "decay_not_following_model",
        "not_converged",
    ]
    assert not status.level_named("refitted").failure
    assert not status.fit_failed(reason[:1]).any()


def test_the_map_labels_a_voxel_failed_exactly_when_the_failed_mask_does() -> None:
    """Every combination of Failure bits: the label is a failure label iff ``fit_failed``
    counts the voxel failed, and the misfit label iff ``misfit`` counts it misfit, so the
    fit-status map, the failed mask and the Failed/Misfit fractions agree (a GE run had 333
    voxels both not converged and misfit under the misfit label, counted failed elsewhere)."""
    reason = np.arange(256, dtype=np.uint8)
    got = status.labels(reason, np.ones(256, dtype=bool))
    labelled = [LEVELS[int(k)] for k in got]
    failed = status.fit_failed(reason)
    misfit = status.misfit(reason)
    assert [level.failure for level in labelled] == failed.tolist()
    assert [level.name == "decay_not_following_model" for level in labelled] == misfit.tolist()
