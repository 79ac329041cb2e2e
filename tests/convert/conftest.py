"""Fixtures for the conversion tests: synthetic DICOM sessions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from t2starmap.sim.phantoms import Phantom, make_phantom
from tests.convert.helpers import VOXEL, LogRecords
from tests.support import synthetic_dicom


@pytest.fixture
def convert_log() -> Iterator[LogRecords]:
    handler = LogRecords()
    logger = logging.getLogger("t2starmap.convert")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def small_phantom() -> Phantom:
    return make_phantom((16, 12, 4), (0.003, 0.008, 0.013, 0.018), with_phase=True, seed=3)


@pytest.fixture(scope="session")
def tiny_phantom() -> Phantom:
    return make_phantom((8, 8, 3), (0.004, 0.010, 0.016), with_phase=True, seed=4)


@pytest.fixture
def siemens_dicom(tmp_path: Path, tiny_phantom: Phantom) -> Path:
    """A small Siemens classic magnitude + phase pair plus a non-DICOM file."""
    root = tmp_path / "dicom"
    synthetic_dicom.write_siemens_classic(root, tiny_phantom, voxel=VOXEL)
    (root / "notes.txt").write_text("not a DICOM file\n")
    return root
