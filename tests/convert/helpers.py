"""Helpers shared by the conversion tests (imported, not fixtures)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DICOM = REPO_ROOT.parent / "shared" / "data" / "dicom"

VOXEL = 2.0


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and the list of names): to prove input untouched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class LogRecords(logging.Handler):
    """Collects the conversion's log records (the app's own handler does not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: int = logging.DEBUG) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= level)
