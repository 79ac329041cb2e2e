"""Walk a folder of DICOM files and read the headers that series detection needs.

Files of any name are tried; files that are not DICOM are ignored (logged at debug level),
DICOM files that cannot be read or whose pixel data are cut short are reported as corrupt.
Pixel data are never loaded: the header is read and the file size checked against the size
the header promises.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from t2starmap.convert.series import ImageHeader, part_from_headers

log = logging.getLogger("t2starmap.convert")

# SOP classes that hold no image: DICOMDIR, structured reports, presentation states ...
_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.",)
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"


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
    if sop == _DICOMDIR_SOP or (sop and not sop.startswith(_IMAGE_SOP_PREFIXES)):
        raise NotDicomError(f"SOP class {sop} holds no image")
    if "SeriesInstanceUID" not in ds or "Rows" not in ds:
        if getattr(ds, "preamble", None) is not None:  # it says DICM: a broken DICOM file
            raise CorruptDicomError("no SeriesInstanceUID or Rows in the header")
        raise NotDicomError("no SeriesInstanceUID or Rows")
    _check_pixel_data(path, ds, pixel_start)
    try:
        if "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_headers(path, ds)
        return [_classic_header(path, ds)]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise CorruptDicomError(f"inconsistent header ({type(err).__name__}: {err})") from err


def _check_pixel_data(path: Path, ds: Any, pixel_start: int) -> None:
    size = path.stat().st_size
    if pixel_start >= size:
        raise CorruptDicomError("no pixel data (file truncated?)")
    transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if transfer is not None and transfer.is_compressed:
        return  # encapsulated: the size cannot be predicted from the header
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.get("SamplesPerPixel", 1))
        * (int(ds.get("BitsAllocated", 16)) // 8)
        * frames
    )
    available = size - pixel_start - 8  # tag + VR/length of the PixelData element
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
        "scanning_sequence": _strs(ds.get("ScanningSequence")),
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
        echo_time=_float(ds.get("EchoTime")),
        echo_number=_int(_first(ds.get("EchoNumbers"))),
        part=part_from_headers(image_type, str(ds.get("ComplexImageComponent", "")), ge_type),
        position=tuple(float(x) for x in position) if position else None,  # type: ignore[arg-type]
        orientation=tuple(float(x) for x in orientation) if orientation else None,
    )


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
            )
        )
    return out
