"""Helpers shared by the conversion tests (imported, not fixtures)."""

from __future__ import annotations

import logging
from pathlib import Path

from t2starmap.convert.series import ImageHeader
from tests.support.files import SHARED_DATA, checksums

__all__ = ["SHARED_DICOM", "VOXEL", "LogRecords", "checksums", "header"]

SHARED_DICOM = SHARED_DATA / "dicom"

VOXEL = 2.0


class LogRecords(logging.Handler):
    """Collects the conversion's log records (the app's own handler does not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: int = logging.DEBUG) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= level)


def header(
    uid: str, number: int, protocol: str, part: str, name: str, **fields: object
) -> ImageHeader:
    """One image header of series ``uid`` for the pure decision tests: a Siemens-like classic
    image at ``/dicom/<uid>/<name>.dcm`` (64 x 64, axial); ``fields`` set or override the rest
    (echo_time, position, scanning_sequence, ...)."""
    letter = {"mag": "M", "phase": "P", "real": "R", "imag": "I"}[part]
    base: dict[str, object] = {
        "path": Path(f"/dicom/{uid}/{name}.dcm"),
        "series_uid": uid,
        "series_number": number,
        "series_description": protocol,
        "protocol_name": protocol,
        "manufacturer": "SIEMENS",
        "image_type": ("ORIGINAL", "PRIMARY", letter, "ND"),
        "part": part,
        "orientation": (1, 0, 0, 0, 1, 0),
        "rows": 64,
        "columns": 64,
    }
    return ImageHeader(**{**base, **fields})  # type: ignore[arg-type]
