"""Which DICOM series are multi-echo gradient echo, and how they become BIDS acquisitions.

Everything here is pure: it works on :class:`ImageHeader` records (one per DICOM image, or
one per frame of an enhanced multi-frame file) that :mod:`t2starmap.convert.scan` reads, and
it never touches a file. Echo times are in milliseconds here, as DICOM stores them.

The decisions, in order (see :func:`classify_series`):

1. scanner-made maps inside a series (``DERIVED`` image types, T2*/R2*/B0 maps) are dropped;
   a series made only of them is skipped;
2. the sequence must be gradient echo: not EPI, not spin echo;
3. two or more distinct echo times;
4. every echo has every slice (no gaps in the slice positions, no echo numbers missing).

:func:`plan_acquisitions` then pairs magnitude with phase/real/imaginary series of one
acquisition (Siemens writes them as two series) and gives each acquisition its BIDS entities.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PARTS = ("mag", "phase", "real", "imag")
"""BIDS ``part`` labels, magnitude first."""

# Echo times are compared after rounding to this many decimals of a millisecond: scanners
# write "4.6" in one file and "4.6000000001" in the next.
_TE_DECIMALS = 3

# Image-type tokens that mark a scanner-made map rather than an image of the signal.
_MAP_TOKENS = frozenset(
    {
        "T2_STAR",
        "T2STAR",
        "T2*",
        "R2_STAR",
        "R2STAR",
        "R2*",
        "T2STAR_MAP",
        "R2STAR_MAP",
        "B0",
        "B0_MAP",
        "B0MAP",
        "FIELD_MAP",
        "FIELDMAP",
        "SWI",
        "MIP",
        "MNIP",
        "QSM",
        "ADC",
        "T1_MAP",
        "T2_MAP",
        "PROTON_DENSITY_MAP",
        "WATER",
        "FAT",
        "FF",
        "FAT_FRACTION",
    }
)
# Tokens that contain "MAP" but describe an acquired image, not a derived map.
_NOT_MAPS = frozenset({"PHASE MAP", "PHASE_MAP"})


@dataclass(frozen=True)
class ImageHeader:
    """What one DICOM image says about itself (one frame of an enhanced file, or one file).

    ``echo_time`` is in ms as in DICOM; ``position`` is ImagePositionPatient in mm and
    ``orientation`` ImageOrientationPatient; ``part`` one of :data:`PARTS`;
    ``sequence_names`` every name the scanner gives the pulse sequence (SequenceName,
    PulseSequenceName, GE's private names), used only to recognise EPI and gradient echo.
    ``expected_echoes`` is a vendor's own count of echoes where it writes one (GE), else None.
    """

    path: Path
    series_uid: str
    series_number: int | None = None
    series_description: str = ""
    protocol_name: str = ""
    manufacturer: str = ""
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    echo_pulse_sequence: str = ""
    sequence_names: tuple[str, ...] = ()
    echo_time: float | None = None
    echo_number: int | None = None
    part: str = "mag"
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    rows: int = 0
    columns: int = 0
    frame: int | None = None
    modality: str = "MR"
    expected_echoes: int | None = None


@dataclass(frozen=True)
class Series:
    """The images of one DICOM series (one SeriesInstanceUID)."""

    uid: str
    images: tuple[ImageHeader, ...]

    @property
    def first(self) -> ImageHeader:
        return self.images[0]

    @property
    def number(self) -> int | None:
        return self.first.series_number

    @property
    def description(self) -> str:
        return self.first.series_description or self.first.protocol_name

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(im.path for im in self.images))

    def label(self) -> str:
        """``series 3 'gre_me'``: how log messages name a series."""
        number = "?" if self.number is None else str(self.number)
        return f"series {number} {self.description!r}"


@dataclass(frozen=True)
class Decision:
    """Outcome of :func:`classify_series`.

    accepted: True for a complete ME-GRE series.
    reason: why it was skipped ('' when accepted).
    refused: True when the series IS ME-GRE but cannot be converted (incomplete): the user
        has to hear about it as a warning, not in the list of ordinary skipped series.
    parts: the parts it holds, in :data:`PARTS` order.
    echo_times: distinct echo times in ms, ascending.
    n_slices: slices per echo.
    images: the images to convert (derived maps inside the series left out).
    dropped: how many images were left out as scanner-made maps.
    """

    series: Series
    accepted: bool
    reason: str = ""
    refused: bool = False
    parts: tuple[str, ...] = ()
    echo_times: tuple[float, ...] = ()
    n_slices: int = 0
    images: tuple[ImageHeader, ...] = ()
    dropped: int = 0

    def files_for(self, part: str) -> tuple[Path, ...]:
        """The files holding ``part`` images (each file once, in series order)."""
        return tuple(dict.fromkeys(im.path for im in self.images if im.part == part))


@dataclass(frozen=True)
class Member:
    """One part of an acquisition and the series it comes from."""

    decision: Decision
    part: str


@dataclass(frozen=True)
class Acquisition:
    """One ME-GRE acquisition: BIDS entities shared by all its files, and its parts.

    ``acq`` and ``run`` are None when not needed; ``echo_times`` (ms, ascending) gives the
    echo index: echo k is ``echo_times[k - 1]``.
    """

    members: tuple[Member, ...]
    echo_times: tuple[float, ...]
    acq: str | None = None
    run: int | None = None
    protocol_label: str = ""

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(m.part for m in self.members)


@dataclass(frozen=True)
class Plan:
    """What :func:`plan_acquisitions` makes of the accepted series."""

    acquisitions: tuple[Acquisition, ...]
    skipped: tuple[tuple[Series, str], ...] = field(default_factory=tuple)


# --- single images -----------------------------------------------------------------------------


def part_from_headers(
    image_type: Sequence[str],
    complex_component: str = "",
    ge_image_type: int | None = None,
) -> str:
    """The BIDS ``part`` of an image from its headers.

    GE says it in private tag (0043,102F) (0 magnitude, 1 phase, 2 real, 3 imaginary);
    enhanced DICOM (and Philips) in ComplexImageComponent; Siemens and Philips classic in the
    third or fourth value of ImageType (``M``, ``P``, ``R``, ``I``). Magnitude by default.
    """
    if ge_image_type is not None and ge_image_type in (0, 1, 2, 3):
        return PARTS[ge_image_type]
    component = complex_component.strip().upper()
    by_word = {"MAGNITUDE": "mag", "PHASE": "phase", "REAL": "real", "IMAGINARY": "imag"}
    if component in by_word:
        return by_word[component]
    tokens = [t.strip().upper() for t in image_type]
    by_letter = {"M": "mag", "P": "phase", "R": "real", "I": "imag"}
    for token in tokens[2:4]:
        if token in by_letter:
            return by_letter[token]
    for token in tokens:
        if token in by_word:
            return by_word[token]
        if token in ("PHASE MAP", "PHASE_MAP"):
            return "phase"
        if token in ("M_FFE", "M_SE", "M_IR"):
            return "mag"
        if token in ("P_FFE", "P_SE"):
            return "phase"
        if token in ("R_FFE", "R_SE"):
            return "real"
        if token in ("I_FFE", "I_SE"):
            return "imag"
    return "mag"


def derived_reason(image_type: Sequence[str]) -> str:
    """Why an image is a scanner-made map rather than acquired signal; '' when it is not."""
    tokens = [t.strip().upper() for t in image_type]
    joined = "\\".join(tokens)
    if tokens[:1] == ["DERIVED"]:
        return f"derived image (ImageType {joined})"
    for token in tokens:
        if token in _NOT_MAPS:
            continue
        if token in _MAP_TOKENS or token.endswith(" MAP") or token.endswith("_MAP"):
            return f"scanner-made map (ImageType {joined})"
    return ""


def sequence_kind(
    scanning_sequence: Sequence[str],
    echo_pulse_sequence: str = "",
    sequence_names: Sequence[str] = (),
) -> str:
    """``'gre'``, ``'epi'``, ``'se'`` or ``'unknown'`` from the sequence headers.

    ScanningSequence (classic DICOM: GR, SE, EP, IR, RM) decides when it says GR/SE/EP;
    enhanced DICOM has EchoPulseSequence (GRADIENT, SPIN, BOTH). GE research sequences say
    ``RM`` and are recognised by their names (``mfgre``, ``FGRE``, ``SPGR``, ``EPI``).
    """
    scan = {s.strip().upper() for s in scanning_sequence}
    names = " ".join(sequence_names).lower()
    if "EP" in scan or re.search(r"epi|epfid|epse|ep2d|ep3d|fe_?epi", names):
        return "epi"
    pulse = echo_pulse_sequence.strip().upper()
    if "GR" in scan or pulse == "GRADIENT":
        return "gre"
    if "SE" in scan or pulse in ("SPIN", "BOTH"):
        return "se"
    if re.search(r"gre|grass|spgr|fgre|fspgr|swan|\bffe|^\*?fl|\*fl|\*fm|medic|flash", names):
        return "gre"
    return "unknown"


def te_key(echo_time: float) -> float:
    return round(float(echo_time), _TE_DECIMALS)


def group_series(images: Iterable[ImageHeader]) -> list[Series]:
    """Images grouped by SeriesInstanceUID, series ordered by number then UID."""
    by_uid: dict[str, list[ImageHeader]] = defaultdict(list)
    for image in images:
        by_uid[image.series_uid].append(image)
    series = [Series(uid, tuple(sorted(ims, key=_image_order))) for uid, ims in by_uid.items()]
    return sorted(series, key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))


def _image_order(image: ImageHeader) -> tuple[str, float, int]:
    return (str(image.path), image.echo_time or 0.0, image.frame or 0)


# --- one series --------------------------------------------------------------------------------


def classify_series(series: Series) -> Decision:
    """Decide whether ``series`` is a complete multi-echo gradient-echo series."""
    first = series.first
    if first.modality and first.modality.upper() != "MR":
        return Decision(series, False, f"modality {first.modality}, not MR")
    images = tuple(im for im in series.images if not derived_reason(im.image_type))
    dropped = len(series.images) - len(images)
    if not images:
        return Decision(series, False, derived_reason(first.image_type), dropped=dropped)
    kind = sequence_kind(first.scanning_sequence, first.echo_pulse_sequence, first.sequence_names)
    if kind != "gre":
        what = {"epi": "EPI", "se": "spin echo", "unknown": "not recognisably gradient echo"}
        detail = "\\".join(first.scanning_sequence) or first.echo_pulse_sequence or "none"
        return Decision(series, False, f"{what[kind]} (ScanningSequence {detail})", dropped=dropped)
    if any(im.echo_time is None for im in images):
        return Decision(series, False, "no EchoTime in the headers", dropped=dropped)
    parts = tuple(p for p in PARTS if any(im.part == p for im in images))
    echo_sets = {
        p: sorted({te_key(im.echo_time or 0.0) for im in images if im.part == p}) for p in parts
    }
    all_tes = sorted({te for tes in echo_sets.values() for te in tes})
    if len(all_tes) < 2:
        te = f"{all_tes[0]:g} ms" if all_tes else "none"
        why = f"single echo time ({te})"
        if parts == ("phase",):  # e.g. Siemens gre_field_mapping's second series
            why += ": a phase-difference field map, not multi-echo data"
        return Decision(series, False, why, dropped=dropped)
    accepted = Decision(
        series, True, parts=parts, echo_times=tuple(all_tes), images=images, dropped=dropped
    )
    problem = _completeness_problem(images, parts, echo_sets, all_tes)
    if problem:
        return Decision(
            series,
            False,
            problem,
            refused=True,
            parts=parts,
            echo_times=tuple(all_tes),
            images=images,
            dropped=dropped,
        )
    n_slices = len({_slice_key(im) for im in images})
    return Decision(
        series,
        True,
        parts=parts,
        echo_times=accepted.echo_times,
        n_slices=n_slices,
        images=images,
        dropped=dropped,
    )


def _slice_key(image: ImageHeader) -> tuple[float, ...]:
    if image.position is None:
        return (float(image.frame or 0),)
    return tuple(round(x, 2) for x in image.position)


def _slice_offset(image: ImageHeader) -> float | None:
    """Position along the slice normal (mm), or None without geometry."""
    if image.position is None or image.orientation is None or len(image.orientation) != 6:
        return None
    r, c = image.orientation[:3], image.orientation[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    return sum(p * n for p, n in zip(image.position, normal, strict=True))


def _completeness_problem(
    images: Sequence[ImageHeader],
    parts: Sequence[str],
    echo_sets: Mapping[str, Sequence[float]],
    all_tes: Sequence[float],
) -> str:
    """Why the series lacks slices or echoes; '' when it looks complete."""
    for part in parts:
        tes = echo_sets[part]
        if list(tes) != list(all_tes):
            missing = ", ".join(f"{te:g}" for te in all_tes if te not in tes)
            return f"{part} images lack echo time(s) {missing} ms"
        numbers = sorted(
            {im.echo_number for im in images if im.part == part and im.echo_number is not None}
        )
        if (
            numbers
            and len(numbers) == len(tes)
            and numbers[0] >= 1
            and (numbers != list(range(numbers[0], numbers[0] + len(numbers))))
        ):
            gaps = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
            return f"echo number(s) {', '.join(map(str, gaps))} missing"
        slices_per_te: dict[float, set[tuple[float, ...]]] = defaultdict(set)
        counts: dict[tuple[float, tuple[float, ...]], int] = defaultdict(int)
        for im in images:
            if im.part != part:
                continue
            key = (te_key(im.echo_time or 0.0), _slice_key(im))
            slices_per_te[key[0]].add(key[1])
            counts[key] += 1
        all_slices = set().union(*slices_per_te.values())
        for te in tes:
            lacking = len(all_slices) - len(slices_per_te[te])
            if lacking:
                return f"{part} echo at {te:g} ms lacks {lacking} of {len(all_slices)} slices"
        if any(n > 1 for n in counts.values()):
            return f"{part} images repeat a slice at one echo time (several repetitions?)"
        gap = _slice_gap(images, part)
        if gap:
            return gap
    expected = {im.expected_echoes for im in images if im.expected_echoes}
    if len(expected) == 1:
        (n_expected,) = expected
        if n_expected > len(all_tes):
            return f"{len(all_tes)} of {n_expected} echoes present"
    return ""


def _slice_gap(images: Sequence[ImageHeader], part: str) -> str:
    """A missing slice in the middle of the stack shows as a spacing twice the usual."""
    offsets = sorted(
        {round(o, 2) for im in images if im.part == part and (o := _slice_offset(im)) is not None}
    )
    if len(offsets) < 3:
        return ""
    steps = [b - a for a, b in itertools.pairwise(offsets)]
    usual = sorted(steps)[len(steps) // 2]
    if usual <= 0:
        return ""
    missing = sum(round(s / usual) - 1 for s in steps if s > 1.5 * usual)
    if missing:
        return f"{part} images lack {missing} slice(s) inside the stack (uneven slice spacing)"
    return ""


# --- acquisitions ------------------------------------------------------------------------------


def sanitize_label(text: str) -> str:
    """A BIDS label (letters and digits only) from free text such as a protocol name."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def plan_acquisitions(decisions: Sequence[Decision]) -> Plan:
    """Pair accepted series into acquisitions and give them ``acq``/``run`` entities.

    A series holding magnitude images starts an acquisition; a series holding only phase
    (or real/imaginary) images joins the magnitude series with the same protocol, echo times
    and geometry that lacks those parts, the nearest earlier one first (Siemens writes
    magnitude as series N and phase as series N+1, sometimes both with the same number).
    Several acquisitions get ``acq-<protocol>`` labels when their protocols differ and
    ``run-<n>`` (in series order) where a protocol repeats.
    """
    accepted = sorted((d for d in decisions if d.accepted), key=_decision_order)
    primaries = [[Member(d, p) for p in d.parts] for d in accepted if "mag" in d.parts]
    skipped: list[tuple[Series, str]] = []
    for decision in accepted:
        if "mag" in decision.parts:
            continue
        home, why = _find_partner(decision, primaries)
        if home is None:
            skipped.append((decision.series, why))
            continue
        home.extend(Member(decision, p) for p in decision.parts)
    if not primaries:
        return Plan((), tuple(skipped))
    labels = [
        sanitize_label(_protocol(m[0].decision)) or f"series{m[0].decision.series.number}"
        for m in primaries
    ]
    distinct = list(dict.fromkeys(labels))
    acquisitions: list[Acquisition] = []
    for members, label in zip(primaries, labels, strict=True):
        same = [i for i, lab in enumerate(labels) if lab == label]
        run = same.index(len(acquisitions)) + 1 if len(same) > 1 else None
        ordered = tuple(sorted(members, key=lambda m: PARTS.index(m.part)))
        acquisitions.append(
            Acquisition(
                members=ordered,
                echo_times=members[0].decision.echo_times,
                acq=label if len(distinct) > 1 else None,
                run=run,
                protocol_label=label,
            )
        )
    return Plan(tuple(acquisitions), tuple(skipped))


def _decision_order(d: Decision) -> tuple[int, str]:
    number = d.series.number
    return (number if number is not None else 1 << 30, d.series.uid)


def _protocol(decision: Decision) -> str:
    return decision.series.first.protocol_name or decision.series.first.series_description


def _geometry(decision: Decision) -> tuple[int, int, int]:
    first = decision.series.first
    return (first.rows, first.columns, decision.n_slices)


def _find_partner(
    decision: Decision, primaries: list[list[Member]]
) -> tuple[list[Member] | None, str]:
    candidates = [
        members
        for members in primaries
        if _protocol(members[0].decision) == _protocol(decision)
        and _geometry(members[0].decision) == _geometry(decision)
        and not set(decision.parts) & {m.part for m in members}
    ]
    what = "/".join(decision.parts)
    if not candidates:
        return None, f"{what} images without a matching magnitude series"
    matching = [m for m in candidates if m[0].decision.echo_times == decision.echo_times]
    if not matching:
        nearest = candidates[-1][0].decision.series
        return None, (
            f"{what} echo times differ from those of the magnitude "
            f"{nearest.label()} (missing echoes?)"
        )
    own = decision.series.number or 0

    def distance(members: list[Member]) -> tuple[bool, int]:
        number = members[0].decision.series.number or 0
        return (number > own, abs(own - number))  # the nearest earlier series first

    return min(matching, key=distance), ""
