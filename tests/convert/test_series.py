"""Series detection and acquisition planning: pure functions on headers, no dcm2niix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from t2starmap.convert.plan import plan_acquisitions, sanitize_label
from t2starmap.convert.series import (
    ImageHeader,
    classify_series,
    derived_reason,
    group_series,
    part_from_headers,
    sequence_kind,
)
from tests.convert.helpers import header


def images(
    uid: str = "1.2.3",
    number: int = 2,
    tes: tuple[float, ...] = (4.0, 8.0, 12.0),
    n_slices: int = 3,
    part: str = "mag",
    protocol: str = "gre_me",
    **fields: object,
) -> list[ImageHeader]:
    """One header per (echo, slice), like a classic series."""

    def one(e: int, te: float, k: int) -> ImageHeader:
        own = {
            "scanning_sequence": ("GR",),
            "sequence_names": ("*fl3d6r",),
            "echo_time": te,
            "echo_number": e + 1,
            "position": (0.0, 0.0, 2.0 * k),
        }
        return header(uid, number, protocol, part, f"{e}_{k}", **{**own, **fields})

    return [one(e, te, k) for e, te in enumerate(tes) for k in range(n_slices)]


def decide(ims: list[ImageHeader]):
    (series,) = group_series(ims)
    return classify_series(series)


@pytest.mark.parametrize(
    ("image_type", "component", "ge", "expected"),
    [
        (("ORIGINAL", "PRIMARY", "M", "ND"), "", None, "mag"),
        (("ORIGINAL", "PRIMARY", "P", "ND"), "", None, "phase"),
        (("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"), "", None, "mag"),
        (("ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"), "", None, "phase"),
        (("ORIGINAL", "PRIMARY", "R_FFE", "R", "FFE"), "", None, "real"),
        (("ORIGINAL", "PRIMARY", "OTHER"), "", 0, "mag"),
        (("ORIGINAL", "PRIMARY", "OTHER"), "", 2, "real"),
        (("ORIGINAL", "PRIMARY", "OTHER"), "", 3, "imag"),
        (("ORIGINAL", "PRIMARY", "OTHER"), "", 1, "phase"),
        (("ORIGINAL", "PRIMARY", "M", "NONE"), "PHASE", None, "phase"),
        (("ORIGINAL", "PRIMARY", "OTHER"), "IMAGINARY", None, "imag"),
        ((), "", None, "mag"),
    ],
)
def test_part_from_headers(image_type, component, ge, expected):
    assert part_from_headers(image_type, component, ge) == expected


@pytest.mark.parametrize(
    ("image_type", "derived"),
    [
        (("ORIGINAL", "PRIMARY", "M", "ND"), False),
        (("ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"), False),
        (("DERIVED", "PRIMARY", "T2_STAR", "ND"), True),
        (("ORIGINAL", "PRIMARY", "R2_STAR", "UNSPECIFIED"), True),
        (("ORIGINAL", "PRIMARY", "B0 MAP", "B0"), True),
    ],
)
def test_derived_reason(image_type, derived):
    assert bool(derived_reason(image_type)) is derived


@pytest.mark.parametrize(
    ("scanning", "pulse", "names", "expected"),
    [
        (("GR",), "", ("*fl3d6r",), "gre"),
        (("EP",), "", ("*epfid2d1_64",), "epi"),
        (("GR",), "", ("*epfid2d1_64",), "epi"),
        (("SE",), "", ("*tse2d1_5",), "se"),
        (("RM",), "", ("cuhpsd/mfgre_BOLD", "FGRE"), "gre"),
        (("RM",), "", ("EPI",), "epi"),
        ((), "GRADIENT", ("*fm2d2r",), "gre"),
        ((), "SPIN", (), "se"),
        (("RM",), "", ("mystery",), "unknown"),
    ],
)
def test_sequence_kind(scanning, pulse, names, expected):
    assert sequence_kind(scanning, pulse, names) == expected


def test_multi_echo_gre_is_accepted():
    d = decide(images())
    assert d.accepted, d.reason
    assert d.echo_times == (4.0, 8.0, 12.0)
    assert d.parts == ("mag",)
    assert d.n_slices == 3


def test_echo_times_are_sorted_whatever_the_file_order():
    d = decide(images(tes=(12.0, 4.0, 8.0)))
    assert d.echo_times == (4.0, 8.0, 12.0)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"scanning_sequence": ("EP",), "sequence_names": ("*epfid2d1",), "tes": (30.0,)},
            "single-echo EPI (TE 30 ms)",
        ),
        ({"scanning_sequence": ("SE",), "sequence_names": ("*tse2d1",)}, "spin echo"),
        ({"image_type": ("DERIVED", "PRIMARY", "T2_STAR")}, "derived"),
        ({"modality": "CT"}, "not MR"),
        ({"echo_time": None}, "no EchoTime"),
    ],
)
def test_non_megre_series_are_skipped_with_reason(changes, reason):
    d = decide(images(**changes))
    assert not d.accepted
    assert not d.refused
    assert reason in d.reason


def test_single_echo_is_skipped():
    d = decide(images(tes=(5.0,)))
    assert not d.accepted and "single echo time (5 ms)" in d.reason
    assert "field map" not in d.reason


def test_a_phase_difference_map_is_a_field_map_by_its_sequence_name():
    d = decide(images(tes=(7.65,), part="phase", sequence_names=("*fm2d2r",)))
    assert d.accepted and d.datatype == "fmap" and d.kind == "field map"
    assert d.echo_times == (7.65,) and d.n_slices == 3
    magnitude = decide(images(tes=(5.19, 7.65), sequence_names=("*fm2d2r",)))
    assert magnitude.accepted and magnitude.datatype == "fmap"
    # the protocol name alone does not make a field map: a single echo time is skipped
    named = decide(images(tes=(7.65,), part="phase", protocol="gre_field_mapping"))
    assert not named.accepted and named.reason == "single echo time (7.65 ms)"
    assert decide(images()).datatype == "anat"


def test_maps_inside_a_series_are_dropped_not_the_series():
    ims = images()
    maps = [
        dataclasses.replace(
            im, image_type=("DERIVED", "PRIMARY", "T2_STAR"), path=Path(f"/dicom/map{i}.dcm")
        )
        for i, im in enumerate(ims[:3])
    ]
    d = decide(ims + maps)
    assert d.accepted and d.dropped == 3
    assert all("map" not in str(p) for p in d.files_for("mag"))


def test_mag_and_phase_in_one_series():
    ims = images() + images(part="phase")
    ims = [dataclasses.replace(im, path=Path(f"/dicom/{i}.dcm")) for i, im in enumerate(ims)]
    d = decide(ims)
    assert d.accepted and d.parts == ("mag", "phase")
    assert len(d.files_for("mag")) == len(d.files_for("phase")) == 9


def test_missing_slice_at_one_echo_is_refused():
    ims = images()
    del ims[4]  # echo 2, slice 2
    d = decide(ims)
    assert not d.accepted and d.refused
    assert "lacks 1 of 3 slices" in d.reason


def test_missing_slice_inside_the_stack_is_refused():
    ims = [im for im in images(n_slices=5) if im.position != (0.0, 0.0, 4.0)]
    d = decide(ims)
    assert d.refused and "inside the stack" in d.reason


def test_missing_echo_number_is_refused():
    ims = [im for im in images(tes=(4.0, 8.0, 12.0, 16.0)) if im.echo_number != 3]
    d = decide(ims)
    assert d.refused and "echo number(s) 3 missing" in d.reason


def test_ge_echo_count_is_checked():
    d = decide(images(expected_echoes=4))
    assert d.refused and "3 of 4 echoes" in d.reason


def test_phase_lacking_an_echo_of_its_own_series_is_refused():
    ims = images() + [im for im in images(part="phase") if im.echo_time != 12.0]
    ims = [dataclasses.replace(im, path=Path(f"/dicom/{i}.dcm")) for i, im in enumerate(ims)]
    d = decide(ims)
    assert d.refused and "phase images lack echo time(s) 12 ms" in d.reason


def test_enhanced_frames_count_as_images():
    ims = [
        dataclasses.replace(
            im, path=Path(f"/dicom/echo{im.echo_number}.dcm"), frame=i % 3, echo_number=None
        )
        for i, im in enumerate(images())
    ]
    d = decide(ims)
    assert d.accepted and d.n_slices == 3 and len(d.files_for("mag")) == 3


# --- planning -----------------------------------------------------------------------------------


def plan(*series: list[ImageHeader]):
    return plan_acquisitions(
        [classify_series(s) for s in group_series([im for ims in series for im in ims])]
    )


def test_siemens_magnitude_and_phase_series_share_entities():
    p = plan(images(uid="m", number=2), images(uid="p", number=3, part="phase"))
    (acq,) = p.acquisitions
    assert acq.parts == ("mag", "phase")
    assert acq.acq is None and acq.run is None


def test_repeated_protocol_becomes_runs_and_phase_pairs_with_nearest():
    p = plan(
        images(uid="m1", number=2),
        images(uid="p1", number=3, part="phase"),
        images(uid="m2", number=4),
        images(uid="p2", number=5, part="phase"),
    )
    assert [(a.run, a.acq) for a in p.acquisitions] == [(1, None), (2, None)]
    assert [[m.decision.series.uid for m in a.members] for a in p.acquisitions] == [
        ["m1", "p1"],
        ["m2", "p2"],
    ]


def test_different_protocols_become_acq_labels_sanitised():
    p = plan(
        images(uid="a", number=2, protocol="GRE ME/high-res"),
        images(uid="b", number=4, protocol="gre_me_low"),
        images(uid="c", number=6, protocol="gre_me_low"),
    )
    assert [(a.acq, a.run) for a in p.acquisitions] == [
        ("GREMEhighres", None),
        ("gremelow", 1),
        ("gremelow", 2),
    ]


def test_phase_pairs_even_when_it_sorts_before_its_magnitude():
    # same series number; the phase series' UID sorts first
    p = plan(images(uid="2.b", number=5), images(uid="2.a", number=5, part="phase"))
    (acq,) = p.acquisitions
    assert acq.parts == ("mag", "phase")


def test_phase_without_magnitude_is_skipped():
    p = plan(images(uid="p", number=3, part="phase"))
    assert not p.acquisitions
    assert "without a matching magnitude" in p.skipped[0][1]


def test_phase_with_other_echo_times_is_not_paired():
    p = plan(images(uid="m", number=2), images(uid="p", number=3, part="phase", tes=(4.0, 8.0)))
    (acq,) = p.acquisitions
    assert acq.parts == ("mag",)
    assert "echo times differ" in p.skipped[0][1]


@pytest.mark.parametrize(
    ("text", "label"), [("gre_me t2*", "gremet2"), ("../x", "x"), ("Ünï", "n")]
)
def test_sanitize_label(text, label):
    assert sanitize_label(text) == label
