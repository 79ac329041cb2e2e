"""The torch-free rules: echo times of files and of the fit, fit methods, BIDS conventions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from t2starmap.bids.conventions import LABEL_RE, sidecar_path
from t2starmap.bids.echo_times import (
    DUPLICATE_ECHO_TIME,
    check_distinct_echo_times,
    echo_time_of,
    echo_time_seconds,
)
from t2starmap.bids.outputs import ESTIMATION_ALGORITHMS
from t2starmap.cli.parser import METHOD_HELP
from t2starmap.errors import BadDataError
from t2starmap.fit import check_echo_times as fit_check_echo_times
from t2starmap.fit import limits
from t2starmap.fit.limits import check_echo_times
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize(("raw", "seconds"), [(0.02, 0.02), ("0.02", 0.02), ("2e-3", 0.002)])
def test_sidecar_echo_time_accepts_numbers_and_numeric_strings(raw: object, seconds: float) -> None:
    assert echo_time_seconds(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "not a number"),
        ("abc", "not a number"),
        ([0.01], "not a number"),
        (0, "not a positive number"),
        (-0.01, "not a positive number"),
        (math.nan, "not a positive number"),
        (math.inf, "not a positive number"),
        (20, "milliseconds"),
        (limits.MAX_ECHO_TIME * 1.001, "milliseconds"),
    ],
)
def test_sidecar_echo_time_refusals(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        echo_time_seconds(raw)


def test_the_longest_echo_time_is_accepted() -> None:
    assert echo_time_seconds(limits.MAX_ECHO_TIME) == limits.MAX_ECHO_TIME


def test_echo_time_of_names_the_file() -> None:
    path = Path("sub-01_echo-3_MEGRE.nii.gz")
    for meta in ({}, {"EchoTime": "0,02"}):
        with pytest.raises(BadDataError, match=r"sub-01_echo-3_MEGRE\.nii\.gz"):
            echo_time_of(path, meta)


def paths(n: int) -> list[Path]:
    return [Path(f"sub-01_echo-{k + 1}_MEGRE.nii.gz") for k in range(n)]


def test_echoes_sorted_by_echo_time_then_path() -> None:
    assert check_distinct_echo_times("s", paths(3), [0.03, 0.01, 0.02]) == [1, 2, 0]


@pytest.mark.parametrize("gap", [0.0, 0.5e-6, DUPLICATE_ECHO_TIME])
def test_duplicate_echo_times_are_refused_naming_both_files(gap: float) -> None:
    te = [0.004, 0.010 + gap, 0.016, 0.010]
    with pytest.raises(BadDataError, match="same EchoTime") as err:
        check_distinct_echo_times("sub-01", paths(4), te)
    message = str(err.value)
    assert "sub-01_echo-2_MEGRE.nii.gz" in message and "sub-01_echo-4_MEGRE.nii.gz" in message
    assert "sub-01_echo-1_" not in message and "sub-01_echo-3_" not in message
    assert "\n" not in message


def test_echo_times_just_over_the_tolerance_are_distinct() -> None:
    te = [0.010, 0.010 + 2 * DUPLICATE_ECHO_TIME]
    assert check_distinct_echo_times("s", paths(2), te) == [0, 1]


def test_a_single_echo_is_refused() -> None:
    with pytest.raises(BadDataError, match="only one echo"):
        check_distinct_echo_times("sub-01", paths(1), [0.01])


@pytest.mark.parametrize(
    ("te", "message"),
    [
        ([2.0, 4.0], "milliseconds"),
        ([0.002, 0.002], "two distinct"),
        ([[0.001, 0.002]], "1-D"),
        ([0.001, -0.002], "non-negative"),
        ([0.001, float("nan")], "finite"),
    ],
)
@pytest.mark.parametrize("check", [check_echo_times, fit_check_echo_times], ids=["limits", "fit"])
def test_fit_echo_time_refusals(te: list[float], message: str, check: Any) -> None:
    """The same rule, for arrays (limits) and tensors too (fit)."""
    with pytest.raises(ValueError, match=message):
        check(te)


def test_fit_echo_times_allow_zero_and_repeats() -> None:
    """The fit API takes arrays, where TE = 0 and repeated echoes are meaningful."""
    np.testing.assert_array_equal(check_echo_times([0.0, 0.01, 0.01]), [0.0, 0.01, 0.01])


def test_every_method_has_help_and_estimation_algorithm_text() -> None:
    assert limits.DEFAULT_METHOD == limits.METHODS[0] == "nlls"
    assert set(limits.METHODS) == {"nlls", "nlls-gaussian", "wls", "loglin", "arlo", "complex"}
    assert all(METHOD_HELP[m].strip() for m in limits.METHODS)
    assert set(METHOD_HELP) == set(limits.METHODS)
    for method in limits.METHODS:
        assert ESTIMATION_ALGORITHMS[(method, "gaussian")]
    assert "Rician" in ESTIMATION_ALGORITHMS[("nlls", "rician")]
    assert "noncentral chi" in ESTIMATION_ALGORITHMS[("nlls", "noncentral-chi")]
    assert (*limits.METHODS, "auto") == limits.FIT_CHOICES


def test_fit_uses_the_same_constants() -> None:
    from t2starmap import fit

    for name in ("T2STAR_MIN", "T2STAR_MAX", "MAX_ECHO_TIME", "SPACING_RTOL", "METHODS"):
        assert getattr(fit, name) is getattr(limits, name), name


@pytest.mark.parametrize(
    ("image", "sidecar"),
    [
        ("a/sub-01_echo-1_MEGRE.nii.gz", "a/sub-01_echo-1_MEGRE.json"),
        ("sub-01_echo-1_MEGRE.nii", "sub-01_echo-1_MEGRE.json"),
        ("dcm2niix_out_e2.v1.nii.gz", "dcm2niix_out_e2.v1.json"),
    ],
)
def test_sidecar_path(image: str, sidecar: str) -> None:
    assert sidecar_path(Path(image)) == Path(sidecar)


@pytest.mark.parametrize("name", ["x.json", "x.nii.gz.bak", ".nii.gz"])
def test_sidecar_path_refuses_other_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a NIfTI"):
        sidecar_path(Path(name))


def test_label_rule() -> None:
    assert LABEL_RE.match("01a") and not LABEL_RE.match("0_1") and not LABEL_RE.match("")


@pytest.mark.realdata
def test_real_sidecars_pass_the_file_rules() -> None:
    """The bids-examples qmri_megre sidecars: 8 distinct echo times, 20..160 ms, in seconds."""
    folder = SHARED_DATA / "sidecars" / "bids-examples-qmri_megre" / "sub-01" / "anat"
    sidecars = sorted(folder.glob("*_MEGRE.json"))
    assert len(sidecars) == 8
    times = [echo_time_of(p, json.loads(p.read_text())) for p in sidecars]
    order = check_distinct_echo_times("sub-01", sidecars, times)
    assert [times[k] for k in order] == pytest.approx(np.arange(1, 9) * 0.02)
