"""Shared fixtures: the bundled example copied to a temporary folder, checksums, real data."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "bids_example"
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; torch sees none")
    skip_real = pytest.mark.skip(reason=f"real scanner data not found at {SHARED_DATA}")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_real)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of bids_example/ that a test may break."""
    target = tmp_path / "bids"
    shutil.copytree(EXAMPLE, target)
    return target


def checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file below root (and the set of paths), to prove nothing changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def files_below(root: Path) -> set[str]:
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )
