"""Which files dcm2niix converts together, from headers alone (no dcm2niix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from t2starmap.convert.plan import plan_acquisitions
from t2starmap.convert.series import classify_series, group_series
from t2starmap.convert.staging import dcm2niix_groups
from t2starmap.errors import BadDataError
from tests.convert.helpers import header


def enhanced_run(times: list[str], per_volume: bool = True):
    """An enhanced ME-EPI series, 2 echoes x len(times) volumes x 2 slices, one file per volume
    and echo (``per_volume``) or one per echo; file names run backwards in time."""
    images = []
    n = len(times)
    for v, when in enumerate(times):
        for e, te in enumerate((12.0, 30.0)):
            name = f"{n - v}_e{e}" if per_volume else f"e{e}"
            for k in range(2):
                images.append(
                    header(
                        "x",
                        20,
                        "ep2d_me",
                        "mag",
                        name,
                        scanning_sequence=("EP",),
                        echo_time=te,
                        position=(0.0, 0.0, 2.0 * k),
                        frame=k,
                        acquired=when,
                    )
                )
    (series,) = group_series(images)
    (acquisition,) = plan_acquisitions([classify_series(series)]).acquisitions
    return acquisition.members[0]


def test_volumes_of_one_echo_are_grouped_in_time_order():
    member = enhanced_run(["20240102101010.0", "20240102101011.5", "20240102101013.0"])
    groups = dcm2niix_groups(member)
    assert [[p.name for p in g] for g in groups] == [
        ["3_e0.dcm", "2_e0.dcm", "1_e0.dcm"],
        ["3_e1.dcm", "2_e1.dcm", "1_e1.dcm"],
    ]
    assert [[p.name for p in g] for g in dcm2niix_groups(enhanced_run(["1"], False))] == [
        ["e0.dcm"],
        ["e1.dcm"],
    ]


def test_volumes_without_distinct_times_are_refused():
    member = enhanced_run(["20240102101010.0"] * 3)
    with pytest.raises(BadDataError, match="without distinct acquisition times"):
        dcm2niix_groups(member)


def test_classic_files_go_together():
    images = [
        header(
            "c",
            5,
            "epi",
            "mag",
            f"{v}_{e}_{k}",
            scanning_sequence=("EP",),
            echo_time=te,
            position=(0.0, 0.0, 2.0 * k),
        )
        for v in range(2)
        for e, te in enumerate((12.0, 30.0))
        for k in range(2)
    ]
    (series,) = group_series(images)
    (acquisition,) = plan_acquisitions([classify_series(series)]).acquisitions
    (group,) = dcm2niix_groups(acquisition.members[0])
    assert len(group) == 8 and all(isinstance(p, Path) for p in group)
