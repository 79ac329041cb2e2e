"""Multi-echo EPI and field maps: the decision and the planning from headers alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from t2starmap.convert.plan import plan_acquisitions
from t2starmap.convert.series import ImageHeader, classify_series, group_series
from tests.convert.helpers import header


def epi(
    uid: str = "e",
    number: int = 10,
    tes: tuple[float, ...] = (12.0, 30.0, 48.0),
    volumes: int = 4,
    part: str = "mag",
    protocol: str = "cmrr_mbep2d_ME_rest",
    mosaic: int | None = 36,
    n_slices: int = 3,
) -> list[ImageHeader]:
    """Headers of an EPI run: with ``mosaic``, one image per (volume, echo) tiling every
    slice (Siemens); without, one image per (volume, echo, slice) (GE, Philips)."""
    slices = [0] if mosaic else list(range(n_slices))
    return [
        header(
            uid,
            number,
            protocol,
            part,
            f"{v}_{e}_{k}",
            scanning_sequence=("EP",),
            sequence_names=("epfid2d1_64",),
            echo_time=te,
            echo_number=e + 1,
            position=(0.0, 0.0, 2.0 * k),
            mosaic_slices=mosaic,
        )
        for v in range(volumes)
        for e, te in enumerate(tes)
        for k in slices
    ]


def gre(uid: str, number: int, tes: tuple[float, ...], part: str, name: str) -> list[ImageHeader]:
    """A classic GRE series: one image per (echo, slice), 3 slices."""
    return [
        header(
            uid,
            number,
            name,
            part,
            f"{e}_{k}",
            scanning_sequence=("GR",),
            echo_time=te,
            position=(0.0, 0.0, 3.0 * k),
            sequence_names=("*fm2d2r" if "field" in name else "*fl3d6r",),
        )
        for e, te in enumerate(tes)
        for k in range(3)
    ]


def decide(ims: list[ImageHeader]):
    (series,) = group_series(ims)
    return classify_series(series)


def plan(*series: list[ImageHeader], task_label: str | None = None):
    decisions = [classify_series(s) for s in group_series([i for ims in series for i in ims])]
    return plan_acquisitions(decisions, task_label=task_label)


# --- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(("mosaic", "slices"), [(36, 36), (None, 3)])
def test_multi_echo_epi_is_func_with_its_volumes_and_slices(mosaic, slices):
    d = decide(epi(mosaic=mosaic))
    assert d.accepted and d.datatype == "func" and d.kind == "ME-EPI"
    assert d.echo_times == (12.0, 30.0, 48.0)
    assert d.n_volumes == 4 and d.n_slices == slices


def test_philips_fe_epi_is_recognised_by_its_technique_name():
    ims = [
        dataclasses.replace(im, scanning_sequence=("GR",), sequence_names=("FEEPI",))
        for im in epi(mosaic=None)
    ]
    assert decide(ims).datatype == "func"


def test_single_echo_epi_is_skipped_with_its_reason():
    d = decide(epi(tes=(30.0,)))
    assert not d.accepted and not d.refused
    assert d.reason == "single-echo EPI (TE 30 ms): one echo time gives no T2*"


def test_ge_research_multi_echo_epi_without_echo_times_is_refused():
    # GE's research multi-echo EPI writes the first echo's EchoTime and echo number 1 in every
    # image; only its private echo count (0019,107E) says there were three
    ims = [
        dataclasses.replace(im, echo_time=12.0, echo_number=1, expected_echoes=3)
        for im in epi(mosaic=None)
    ]
    d = decide(ims)
    assert d.refused and not d.accepted
    assert "GE says 3 echoes but every image has TE 12 ms" in d.reason


@pytest.mark.parametrize("mosaic", [36, None])
def test_a_run_stopped_in_the_middle_of_a_volume_is_refused(mosaic):
    ims = epi(mosaic=mosaic)[:-1]  # the last echo of the last volume is missing
    d = decide(ims)
    assert d.refused and not d.accepted
    assert "echoes hold different numbers of volumes" in d.reason
    assert "mag 48 ms: 3" in d.reason


def test_epi_phase_lacking_an_echo_is_refused():
    ims = epi() + [im for im in epi(uid="e", part="phase") if im.echo_time != 48.0]
    ims = [dataclasses.replace(im, path=Path(f"/d/{i}.dcm")) for i, im in enumerate(ims)]
    d = decide(ims)
    assert d.refused and "phase images lack echo time(s) 48 ms" in d.reason


# --- planning ----------------------------------------------------------------------------------


def test_task_label_from_the_protocol_and_phase_paired():
    p = plan(epi(), epi(uid="p", number=11, part="phase"))
    (run,) = p.acquisitions
    assert run.datatype == "func" and run.parts == ("mag", "phase")
    assert run.task == "cmrrmbep2dMErest" and run.task_name == "cmrr_mbep2d_ME_rest"
    assert run.acq is None and run.run is None


def test_a_repeated_task_becomes_runs_and_the_user_label_wins():
    p = plan(
        epi(uid="a", number=10), epi(uid="b", number=12), epi(uid="c", number=14, protocol="x")
    )
    assert [(a.task, a.run) for a in p.acquisitions] == [
        ("cmrrmbep2dMErest", 1),
        ("cmrrmbep2dMErest", 2),
        ("x", None),
    ]
    named = plan(epi(uid="a", number=10), epi(uid="c", number=14, protocol="x"), task_label="rest")
    assert [(a.task, a.run, a.task_name) for a in named.acquisitions] == [
        ("rest", 1, "rest"),
        ("rest", 2, "rest"),
    ]


def test_phase_of_another_volume_count_is_not_paired():
    p = plan(epi(), epi(uid="p", number=11, part="phase", volumes=3))
    (run,) = p.acquisitions
    assert run.parts == ("mag",)
    assert "without a matching magnitude series" in p.skipped[0][1]


def test_megre_bold_and_fieldmap_side_by_side():
    p = plan(
        gre("g", 2, (4.0, 8.0, 12.0), "mag", "gre_me"),
        epi(uid="e", number=5),
        gre("fm", 7, (5.19, 7.65), "mag", "gre_field_mapping"),
        gre("fp", 8, (7.65,), "phase", "gre_field_mapping"),
    )
    assert [a.datatype for a in p.acquisitions] == ["anat", "func", "fmap"]
    fmap = p.acquisitions[2]
    assert fmap.echo_times == (5.19, 7.65) and fmap.parts == ("mag", "phase")
    assert fmap.is_phasediff(fmap.members[1]) and not fmap.is_phasediff(fmap.members[0])
    assert not p.skipped


def test_fieldmap_with_the_phase_of_both_echoes_is_phase1_and_phase2():
    p = plan(
        gre("fm", 7, (5.19, 7.65), "mag", "gre_field_mapping"),
        gre("fp", 8, (5.19, 7.65), "phase", "gre_field_mapping"),
    )
    (fmap,) = p.acquisitions
    assert fmap.parts == ("mag", "phase") and not fmap.is_phasediff(fmap.members[1])


def test_fieldmap_halves_alone_are_skipped_with_reasons():
    alone = plan(gre("fm", 7, (5.19, 7.65), "mag", "gre_field_mapping"))
    assert not alone.acquisitions
    assert alone.skipped[0][1] == "field-map magnitude without its phase-difference series"
    phase = plan(gre("fp", 8, (7.65,), "phase", "gre_field_mapping"))
    assert not phase.acquisitions and "without a matching magnitude" in phase.skipped[0][1]
    other = plan(
        gre("fm", 7, (5.19, 7.65), "mag", "gre_field_mapping"),
        gre("fp", 8, (6.0,), "phase", "gre_field_mapping"),
    )
    assert not other.acquisitions
    assert {why.split(" ")[0] for _, why in other.skipped} == {"phase", "field-map"}


def test_two_fieldmap_protocols_get_acq_labels():
    p = plan(
        gre("a", 7, (5.19, 7.65), "mag", "gre_field_mapping_a"),
        gre("b", 8, (7.65,), "phase", "gre_field_mapping_a"),
        gre("c", 9, (5.19, 7.65), "mag", "gre_field_mapping_b"),
        gre("d", 10, (7.65,), "phase", "gre_field_mapping_b"),
    )
    assert [(a.acq, a.run) for a in p.acquisitions] == [
        ("grefieldmappinga", None),
        ("grefieldmappingb", None),
    ]
