"""Shared fixtures: the bundled example copied to a temporary folder; the gpu and realdata skips.

Helpers are imported from ``tests.support`` (the names below are re-exported for the test
modules that still import them from here).
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.files import (
    EXAMPLE,
    REPO,
    SHARED_DATA,
    checksums,
    files_below,
    missing_data_reason,
)

__all__ = ["EXAMPLE", "REPO", "SHARED_DATA", "checksums", "files_below"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; torch sees none")
    skip_real = pytest.mark.skip(reason=missing_data_reason(SHARED_DATA))
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_real)


@pytest.fixture(autouse=True)
def sigint_at_its_default() -> Iterator[None]:
    """Every test, and every process it starts, sees SIGINT at Python's default (raise
    KeyboardInterrupt), however the suite was started: ``cmd &`` in a script, ``nohup`` and
    some CI runners start it with SIGINT ignored, which the children would inherit (an
    ignored signal stays ignored across exec; a handled one is reset to its default)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
