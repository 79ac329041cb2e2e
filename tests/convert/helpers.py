"""Helpers shared by the conversion tests (imported, not fixtures)."""

from __future__ import annotations

import logging

from tests.support.files import SHARED_DATA, checksums

__all__ = ["SHARED_DICOM", "VOXEL", "LogRecords", "checksums"]

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
