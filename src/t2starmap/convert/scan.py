"""Walk a folder of DICOM files and read the headers that series detection needs.

Files of any name are tried; files that are not DICOM are ignored (logged at debug level),
DICOM files that cannot be read or whose pixel data are cut short are reported as corrupt.
DICOM objects of a storage class that holds no image (structured reports, presentation
states, encapsulated PDFs, raw data, ...) are ignored like files that are not DICOM.
Pixel data are never loaded: the header is read and the file size checked against the size
the header promises.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from t2starmap.convert.series import ImageHeader, part_from_headers

log = logging.getLogger("t2starmap.convert")

# Every standard storage SOP class, image or not, lies under this root (DICOM PS3.6 Annex A).
_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1"
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
# Storage classes under the root whose objects hold no image (no Pixel Data), as suffixes:
# whole families (every class below them) ...
_NON_IMAGE_FAMILIES = (
    "9",  # waveforms: ECG, hemodynamic, audio, EEG, respiratory ...
    "11",  # presentation states (and the retired standalone VOI LUT)
    "78",  # ophthalmic measurements: lensometry, refraction, axial lengths, IOL ...
    "88",  # structured reports, key object selection, radiation dose and CAD reports
    "104",  # encapsulated documents: PDF, CDA, STL, OBJ, MTL
    "200",  # defined and performed procedure protocols
)
# ... and single classes (their siblings may be images: 66.4 segmentation, 481.1 RT image).
_NON_IMAGE_CLASSES = (
    "4.2",  # MR spectroscopy: Rows and Columns, but spectroscopy data, not pixels
    "8",  # standalone overlay (retired)
    "10",  # standalone modality LUT (retired)
    "66",  # raw data
    "66.1",  # spatial registration
    "66.2",  # spatial fiducials
    "66.3",  # deformable spatial registration
    "66.5",  # surface segmentation
    "66.6",  # tractography results
    "67",  # real world value mapping
    "68.1",  # surface scan mesh
    "68.2",  # surface scan point cloud
    "79.1",  # macular grid thickness and volume report
    "80.1",  # ophthalmic visual field static perimetry measurements
    "90.1",  # content assessment results
    "91.1",  # microscopy bulk simple annotations
    "129",  # standalone PET curve (retired)
    # radiotherapy objects other than RT image (481.1), RT dose (481.2) and the enhanced
    # RT images (481.23, 481.24): structure sets, plans, treatment records ...
    *(f"481.{n}" for n in (*range(3, 23), 25)),
)
_NON_IMAGE_SOPS = frozenset({_DICOMDIR_SOP, *(f"{_STORAGE_ROOT}.{c}" for c in _NON_IMAGE_CLASSES)})
_NON_IMAGE_SOP_PREFIXES = tuple(f"{_STORAGE_ROOT}.{f}." for f in _NON_IMAGE_FAMILIES)


@dataclass(frozen=True)
class ScanResult:
    """Images found under a folder, and the files that could not be used (path, why)."""

    images: tuple[ImageHeader, ...]
    corrupt: tuple[tuple[Path, str], ...]
    ignored: tuple[Path, ...]


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, recursively, in a stable order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                yield path


def scan_dicom_dir(root: Path) -> ScanResult:
    images: list[ImageHeader] = []
    corrupt: list[tuple[Path, str]] = []
    ignored: list[Path] = []
    for path in iter_files(root):
        try:
            found = read_image_headers(path)
        except NotDicomError:
            ignored.append(path)
            log.debug("not DICOM, ignored: %s", path)
            continue
        except CorruptDicomError as err:
            corrupt.append((path, str(err)))
            continue
        images.extend(found)
    return ScanResult(tuple(images), tuple(corrupt), tuple(ignored))


class NotDicomError(Exception):
    pass


class CorruptDicomError(Exception):
    pass


def read_image_headers(path: Path) -> list[ImageHeader]:
    """The image headers in one file: one for a classic file, one per frame of an enhanced one.

    Raises NotDicomError for files that are not DICOM (or hold no image) and
    CorruptDicomError for DICOM files that cannot be read or are truncated.
    """
    with warnings.catch_warnings(record=True) as caught, open(path, "rb") as fp:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError as err:
            raise NotDicomError(str(err)) from err
        except Exception as err:  # pydicom raises many kinds on broken files
            raise CorruptDicomError(f"unreadable header ({type(err).__name__}: {err})") from err
        pixel_start = fp.tell()
    for w in caught:
        log.debug("%s: %s", path, w.message)
    sop = str(ds.get("SOPClassUID", ""))
    if sop and not holds_image(sop):
        raise NotDicomError(f"SOP class {sop} holds no image")
    if "SeriesInstanceUID" not in ds or "Rows" not in ds:
        if getattr(ds, "preamble", None) is not None:  # it says DICM: a broken DICOM file
            raise CorruptDicomError("no SeriesInstanceUID or Rows in the header")
        raise NotDicomError("no SeriesInstanceUID or Rows")
    if "Columns" not in ds:
        raise CorruptDicomError("Rows but no Columns in the header")
    try:
        _check_pixel_data(path, ds, pixel_start)
        if "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_headers(path, ds)
        return [_classic_header(path, ds)]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise CorruptDicomError(f"inconsistent header ({type(err).__name__}: {err})") from err


def holds_image(sop_class: str) -> bool:
    """Whether objects of this SOP class UID hold an image (pixel data).

    False for DICOMDIR, for the standard storage classes that hold none (structured reports,
    presentation states, encapsulated documents, raw data, RT plans ...) and for private
    classes outside the standard storage root (e.g. Siemens CSA non-image); True for every
    other standard storage class (MR, enhanced MR, secondary capture, CT, ...).
    """
    if sop_class in _NON_IMAGE_SOPS or sop_class.startswith(_NON_IMAGE_SOP_PREFIXES):
        return False
    return sop_class.startswith(_STORAGE_ROOT + ".")


def _check_pixel_data(path: Path, ds: Any, pixel_start: int) -> None:
    """Raise CorruptDicomError when the file ends before the pixel data the header promises.

    ``pixel_start`` is the byte offset of the (7FE0,0010) Pixel Data element (or the float
    variants), where reading stopped. Its element header is 8 bytes in implicit VR (tag,
    4-byte length) and 12 in explicit VR, where pixel data are always OB, OW, OF or OD
    (tag, VR, 2 reserved bytes, 4-byte length).
    """
    transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if transfer is not None and transfer.is_deflated:
        return  # the whole dataset is compressed: offsets in the file say nothing
    size = path.stat().st_size
    if pixel_start >= size:
        raise CorruptDicomError("no pixel data (file truncated?)")
    if transfer is not None and transfer.is_compressed:
        return  # encapsulated: the size cannot be predicted from the header
    implicit_vr = ds.original_encoding[0]
    if implicit_vr is None and transfer is not None:
        implicit_vr = transfer.is_implicit_VR
    element_header = 8 if implicit_vr else 12
    bits = (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.get("SamplesPerPixel", 1))
        * int(ds.get("BitsAllocated", 16))
        * int(ds.get("NumberOfFrames", 1) or 1)
    )
    expected = -(-bits // 8)  # whole bytes; 1-bit data (segmentations) are packed
    available = size - pixel_start - element_header
    if available < expected:
        raise CorruptDicomError(f"pixel data truncated ({max(available, 0)} of {expected} bytes)")


def _strs(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes):
        return (str(value),) if str(value) else ()
    return tuple(str(v) for v in value)


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _private(ds: Any, group: int, element: int) -> Any:
    tag = (group, element)
    return ds[tag].value if tag in ds else None


def _sequence_names(ds: Any) -> tuple[str, ...]:
    names = [
        ds.get("SequenceName"),
        ds.get("PulseSequenceName"),
        _private(ds, 0x0019, 0x109C),
        _private(ds, 0x0019, 0x109E),
        _private(ds, 0x2001, 0x1020),
    ]
    return tuple(str(n) for n in names if isinstance(n, str | bytes) and str(n))


def _scanning_sequence(ds: Any) -> tuple[str, ...]:
    """ScanningSequence, with ``EP`` added where enhanced DICOM says EchoPlanarPulseSequence
    YES (enhanced files have no ScanningSequence)."""
    scanning = _strs(ds.get("ScanningSequence"))
    if str(ds.get("EchoPlanarPulseSequence", "")).strip().upper() == "YES" and "EP" not in scanning:
        scanning = (*scanning, "EP")
    return scanning


def _common(path: Path, ds: Any) -> dict[str, Any]:
    manufacturer = str(ds.get("Manufacturer", ""))
    expected = None
    if manufacturer.upper().startswith("GE"):
        expected = _int(_private(ds, 0x0019, 0x107E))
    return {
        "path": path,
        "series_uid": str(ds.SeriesInstanceUID),
        "series_number": _int(ds.get("SeriesNumber")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "protocol_name": str(ds.get("ProtocolName", "")),
        "manufacturer": manufacturer,
        "scanning_sequence": _scanning_sequence(ds),
        "sequence_variant": _strs(ds.get("SequenceVariant")),
        "echo_pulse_sequence": str(ds.get("EchoPulseSequence", "")),
        "sequence_names": _sequence_names(ds),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "modality": str(ds.get("Modality", "MR")),
        "expected_echoes": expected,
    }


def _classic_header(path: Path, ds: Any) -> ImageHeader:
    image_type = _strs(ds.get("ImageType"))
    ge_type = None
    if str(ds.get("Manufacturer", "")).upper().startswith("GE"):
        ge_type = _int(_private(ds, 0x0043, 0x102F))
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    return ImageHeader(
        **_common(path, ds),
        image_type=image_type,
        mosaic_slices=mosaic_slices(ds, image_type),
        acquired=_acquired(ds),
        echo_time=_float(ds.get("EchoTime")),
        echo_number=_int(_first(ds.get("EchoNumbers"))),
        part=part_from_headers(image_type, str(ds.get("ComplexImageComponent", "")), ge_type),
        position=tuple(float(x) for x in position) if position else None,  # type: ignore[arg-type]
        orientation=tuple(float(x) for x in orientation) if orientation else None,
    )


def mosaic_slices(ds: Any, image_type: tuple[str, ...]) -> int | None:
    """Slices tiled into a Siemens mosaic: (0019,100A), else the CSA image header's
    NumberOfImagesInMosaic; None for an image that is not a mosaic (or says no count)."""
    if "MOSAIC" not in (t.strip().upper() for t in image_type):
        return None
    count = _int(_private(ds, 0x0019, 0x100A))
    if count:
        return count
    csa = _private(ds, 0x0029, 0x1010)
    if isinstance(csa, bytes):
        text = csa_item(csa, "NumberOfImagesInMosaic")
        number = _float(text)
        return int(number) if number else None
    return None


def csa_item(csa: bytes, name: str) -> str | None:
    """The first item of tag ``name`` in a Siemens CSA2 header (``SV10``), or None.

    Layout (as nibabel and dcm2niix read it): 'SV10', 4 bytes, tag count, 77; per tag a
    64-byte name, VM, VR, syngo type, item count, 77; per item four int32 (the second is the
    length) and the text, padded to 4 bytes.
    """
    if not csa.startswith(b"SV10") or len(csa) < 16:
        return None
    (n_tags,) = struct.unpack_from("<I", csa, 8)
    pos = 16
    for _ in range(min(n_tags, 512)):
        if pos + 84 > len(csa):
            return None
        raw, _vm, _vr, _dt, n_items, _ = struct.unpack_from("<64si4s3i", csa, pos)
        pos += 84
        first = None
        for _item in range(max(n_items, 0)):
            if pos + 16 > len(csa):
                return None
            length = struct.unpack_from("<4i", csa, pos)[1]
            pos += 16
            if first is None and length > 0:
                first = csa[pos : pos + length].split(b"\x00")[0].decode("latin-1").strip()
            pos += max(length, 0) + (-max(length, 0) % 4)
        if raw.split(b"\x00")[0].decode("latin-1") == name:
            return first
    return None


def _acquired(ds: Any, frame_time: Any = None) -> str:
    """When an image (or frame) was acquired, as DICOM date-time text (sorts in time order)."""
    for value in (frame_time, ds.get("AcquisitionDateTime")):
        if value:
            return str(value)
    date, time = ds.get("AcquisitionDate"), ds.get("AcquisitionTime")
    return f"{date or ''}{time or ''}"


def _first(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float):
        return value
    try:
        return value[0]
    except (TypeError, IndexError):
        return value


def _functional(ds: Any, frame: Any, sequence: str) -> Any:
    """First item of a functional group, looked up per frame first, then shared."""
    for holder in (frame, _shared(ds)):
        if holder is not None and sequence in holder and len(holder[sequence].value):
            return holder[sequence].value[0]
    return None


def _shared(ds: Any) -> Any:
    shared = ds.get("SharedFunctionalGroupsSequence")
    return shared[0] if shared else None


def _enhanced_headers(path: Path, ds: Any) -> list[ImageHeader]:
    common = _common(path, ds)
    file_type = _strs(ds.get("ImageType"))
    out = []
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        echo = _functional(ds, frame, "MREchoSequence")
        frame_type_item = _functional(ds, frame, "MRImageFrameTypeSequence")
        position_item = _functional(ds, frame, "PlanePositionSequence")
        orientation_item = _functional(ds, frame, "PlaneOrientationSequence")
        frame_type = _strs(frame_type_item.get("FrameType")) if frame_type_item else file_type
        component = (
            str(frame_type_item.get("ComplexImageComponent", ""))
            if frame_type_item
            else str(ds.get("ComplexImageComponent", ""))
        )
        content = _functional(ds, frame, "FrameContentSequence")
        frame_time = content.get("FrameAcquisitionDateTime") if content else None
        position = position_item.get("ImagePositionPatient") if position_item else None
        orientation = orientation_item.get("ImageOrientationPatient") if orientation_item else None
        out.append(
            ImageHeader(
                **common,
                image_type=frame_type or file_type,
                echo_time=_float(echo.get("EffectiveEchoTime")) if echo else None,
                echo_number=None,
                part=part_from_headers(frame_type or file_type, component),
                position=tuple(float(x) for x in position) if position else None,  # type: ignore[arg-type]
                orientation=tuple(float(x) for x in orientation) if orientation else None,
                frame=index,
                acquired=_acquired(ds, frame_time),
            )
        )
    return out
