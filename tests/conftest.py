"""Shared fixtures: the bundled example copied to a temporary folder; the gpu and realdata skips.

Helpers are imported from ``tests.support`` (the names below are re-exported for the test
modules that still import them from here).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.support.files import EXAMPLE, REPO, SHARED_DATA, checksums, files_below

__all__ = ["EXAMPLE", "REPO", "SHARED_DATA", "checksums", "files_below"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; torch sees none")
    skip_real = pytest.mark.skip(reason=f"real scanner data not found at {SHARED_DATA}")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_real)


@pytest.fixture(scope="session", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> str:
    """The compute device a fit test runs on: every such test runs on the CPU, and again on
    CUDA where torch sees a GPU (``gpu`` marker: skipped without one)."""
    return str(request.param)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of bids_example/ that a test may break."""
    target = tmp_path / "bids"
    shutil.copytree(EXAMPLE, target)
    return target
