"""Which DICOM series are multi-echo gradient echo, multi-echo EPI or field maps.

Everything here is pure: it works on :class:`ImageHeader` records (one per DICOM image, or
one per frame of an enhanced multi-frame file) that :mod:`t2starmap.convert.scan` reads, and
it never touches a file. Echo times are in milliseconds here, as DICOM stores them.

The decisions, in order (see :func:`classify_series`):

1. scanner-made maps inside a series (``DERIVED`` image types, T2*/R2*/B0 maps) are dropped;
   a series made only of them is skipped;
2. EPI with two or more echo times is multi-echo BOLD (``func``): every echo must hold the
   same slices and the same number of volumes; single-echo EPI is skipped;
3. otherwise the sequence must be gradient echo (not spin echo); a Siemens field-mapping
   sequence (``*fm2d2r``) is a field map (``fmap``): its magnitude pair and its single-echo
   phase difference are kept; any other gradient echo needs two or more distinct echo times
   (``anat``, ME-GRE);
4. every echo has every slice (no gaps in the slice positions, no echo numbers missing).

:func:`t2starmap.convert.plan.plan_acquisitions` then pairs the series into acquisitions.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PARTS = ("mag", "phase", "real", "imag")
"""BIDS ``part`` labels, magnitude first."""

# Siemens' field-mapping sequence (gre_field_mapping) names itself *fm2d2r (2D) or *fm3d2r.
_FIELDMAP_NAME = re.compile(r"(?:^|\*)fm[23]d\d", re.IGNORECASE)

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
    ``mosaic_slices`` is the number of slices tiled into a Siemens mosaic (None otherwise).
    ``acquired`` is when the image (frame) was acquired, DICOM date-time text that sorts in
    time order (FrameAcquisitionDateTime, AcquisitionDateTime or AcquisitionDate + Time).
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
    mosaic_slices: int | None = None
    acquired: str = ""


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

    accepted: True for a complete ME-GRE, ME-EPI or field-map series.
    reason: why it was skipped ('' when accepted).
    refused: True when the series IS one of those but cannot be converted (incomplete): the
        user has to hear about it as a warning, not in the list of ordinary skipped series.
    datatype: the BIDS folder it belongs in: ``anat`` (ME-GRE), ``func`` (ME-EPI) or
        ``fmap`` (a field map's magnitude pair or phase difference).
    parts: the parts it holds, in :data:`PARTS` order.
    echo_times: distinct echo times in ms, ascending.
    n_slices: slices per echo.
    n_volumes: volumes per echo (1 but for EPI).
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
    datatype: str = "anat"
    n_volumes: int = 1

    @property
    def kind(self) -> str:
        """How the log names what the series is."""
        return {"anat": "ME-GRE", "func": "ME-EPI", "fmap": "field map"}[self.datatype]

    def files_for(self, part: str) -> tuple[Path, ...]:
        """The files holding ``part`` images (each file once, in series order)."""
        return tuple(dict.fromkeys(im.path for im in self.images if im.part == part))


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


def is_fieldmap_sequence(sequence_names: Sequence[str]) -> bool:
    """Whether a sequence name is Siemens' dual-echo field mapping (``*fm2d2r``, ``*fm3d2r``)."""
    return any(_FIELDMAP_NAME.search(name) for name in sequence_names)


def classify_series(series: Series) -> Decision:
    """Decide whether ``series`` is a complete ME-GRE, ME-EPI or field-map series."""
    first = series.first
    if first.modality and first.modality.upper() != "MR":
        return Decision(series, False, f"modality {first.modality}, not MR")
    images = tuple(im for im in series.images if not derived_reason(im.image_type))
    dropped = len(series.images) - len(images)
    if not images:
        return Decision(series, False, derived_reason(first.image_type), dropped=dropped)
    kind = sequence_kind(first.scanning_sequence, first.echo_pulse_sequence, first.sequence_names)
    if kind == "epi":
        return _classify_epi(series, images, dropped)
    if kind != "gre":
        what = {"se": "spin echo", "unknown": "not recognisably gradient echo"}
        detail = "\\".join(first.scanning_sequence) or first.echo_pulse_sequence or "none"
        return Decision(series, False, f"{what[kind]} (ScanningSequence {detail})", dropped=dropped)
    if any(im.echo_time is None for im in images):
        return Decision(series, False, "no EchoTime in the headers", dropped=dropped)
    parts, echo_sets, all_tes = _echo_sets(images)
    fieldmap = is_fieldmap_sequence(first.sequence_names)
    if len(all_tes) < 2 and not (fieldmap and parts == ("phase",)):
        te = f"{all_tes[0]:g} ms" if all_tes else "none"
        return Decision(series, False, f"single echo time ({te})", dropped=dropped)
    found = _found(series, images, dropped, parts, all_tes, "fmap" if fieldmap else "anat")
    problem = _completeness_problem(images, parts, echo_sets, all_tes)
    if problem:
        return dataclasses.replace(found, accepted=False, reason=problem, refused=True)
    return dataclasses.replace(found, n_slices=len({_slice_key(im) for im in images}))


def _found(
    series: Series,
    images: tuple[ImageHeader, ...],
    dropped: int,
    parts: tuple[str, ...],
    all_tes: Sequence[float],
    datatype: str,
) -> Decision:
    """The accepted decision, before the completeness checks add counts or a refusal."""
    return Decision(
        series,
        True,
        parts=parts,
        echo_times=tuple(all_tes),
        images=images,
        dropped=dropped,
        datatype=datatype,
    )


def _echo_sets(
    images: Sequence[ImageHeader],
) -> tuple[tuple[str, ...], dict[str, list[float]], list[float]]:
    """The parts present, each part's echo times and all echo times (ms, ascending)."""
    parts = tuple(p for p in PARTS if any(im.part == p for im in images))
    echo_sets = {
        p: sorted({te_key(im.echo_time or 0.0) for im in images if im.part == p}) for p in parts
    }
    return parts, echo_sets, sorted({te for tes in echo_sets.values() for te in tes})


def _classify_epi(series: Series, images: tuple[ImageHeader, ...], dropped: int) -> Decision:
    """Multi-echo EPI: two or more echo times, each with the same slices and volumes."""
    if any(im.echo_time is None for im in images):
        return Decision(series, False, "EPI without EchoTime in the headers", dropped=dropped)
    parts, echo_sets, all_tes = _echo_sets(images)
    if len(all_tes) < 2:
        expected = max((im.expected_echoes or 1 for im in images), default=1)
        if expected > 1:  # GE research sequences: one EchoTime, EchoNumbers 1 for every echo
            why = (
                f"GE says {expected} echoes but every image has TE {all_tes[0]:g} ms and "
                "echo number 1: its echoes cannot be told apart (dcm2niix issue 359)"
            )
            return Decision(series, False, why, refused=True, dropped=dropped, datatype="func")
        why = f"single-echo EPI (TE {all_tes[0]:g} ms): one echo time gives no T2*"
        return Decision(series, False, why, dropped=dropped, datatype="func")
    found = _found(series, images, dropped, parts, all_tes, "func")
    problem, volumes = _epi_volumes(images, parts, echo_sets, all_tes)
    if problem:
        return dataclasses.replace(found, accepted=False, reason=problem, refused=True)
    mosaic = {im.mosaic_slices for im in images}
    n_slices = mosaic.pop() if len(mosaic) == 1 and None not in mosaic else None
    if n_slices is None:
        n_slices = len({_slice_key(im) for im in images})
    return dataclasses.replace(found, n_slices=n_slices, n_volumes=volumes)


def _epi_volumes(
    images: Sequence[ImageHeader],
    parts: Sequence[str],
    echo_sets: Mapping[str, Sequence[float]],
    all_tes: Sequence[float],
) -> tuple[str, int]:
    """(why the run is incomplete or '', volumes per echo): every (part, echo, slice) must
    have the same number of images, one per volume (a mosaic holds every slice at once)."""
    counts: dict[tuple[str, float, tuple[float, ...]], int] = defaultdict(int)
    for im in images:
        counts[(im.part, te_key(im.echo_time or 0.0), _slice_key(im))] += 1
    slices = {key[2] for key in counts}
    volumes: dict[tuple[str, float], set[int]] = defaultdict(set)
    for part in parts:
        if list(echo_sets[part]) != list(all_tes):
            missing = ", ".join(f"{te:g}" for te in all_tes if te not in echo_sets[part])
            return f"{part} images lack echo time(s) {missing} ms", 0
        for te in all_tes:
            for key in slices:
                volumes[(part, te)].add(counts.get((part, te, key), 0))
    per_echo = {key: max(n) for key, n in volumes.items()}
    if any(len(n) > 1 for n in volumes.values()) or len(set(per_echo.values())) > 1:
        detail = ", ".join(
            f"{part} {te:g} ms: {min(n)}" + (f"-{max(n)}" if len(n) > 1 else "")
            for (part, te), n in volumes.items()
        )
        return f"echoes hold different numbers of volumes ({detail}; run stopped early?)", 0
    return "", next(iter(per_echo.values()))


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
