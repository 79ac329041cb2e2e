"""Where the real-data tests find the shared scanner data: ``$T2STARMAP_TEST_DATA``, else
``../shared/data`` beside the repository; a clone elsewhere can point at them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.files import (
    DATA_VARIABLE,
    REPO,
    SHARED_DATA,
    missing_data_reason,
    real_data_folder,
)

#: One quick real-data test (the bids-examples sidecars), run in a pytest of its own.
ONE_REAL_TEST = "tests/fit/test_limits.py::test_real_sidecars_pass_the_file_rules"


def test_the_variable_names_the_folder_and_the_default_is_beside_the_repository(
    tmp_path: Path,
) -> None:
    assert real_data_folder({DATA_VARIABLE: str(tmp_path)}) == tmp_path.resolve()
    assert real_data_folder({DATA_VARIABLE: ""}) == REPO.parent / "shared" / "data"
    assert real_data_folder({}) == REPO.parent / "shared" / "data"
    reason = missing_data_reason(tmp_path)
    assert str(tmp_path) in reason and DATA_VARIABLE in reason


def _pytest_with_data_at(folder: Path) -> str:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"]
    done = subprocess.run(
        [*command, ONE_REAL_TEST],
        env={**os.environ, DATA_VARIABLE: str(folder)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout


@pytest.mark.slow
def test_a_real_data_test_follows_the_variable(tmp_path: Path) -> None:
    """Pointed at a folder without the data, the test is skipped and the reason names the
    variable; pointed at the data through another path, it runs."""
    missing = _pytest_with_data_at(tmp_path / "none")
    assert "1 skipped" in missing and DATA_VARIABLE in missing, missing
    if not SHARED_DATA.is_dir():
        pytest.skip(missing_data_reason(SHARED_DATA))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.symlink_to(SHARED_DATA)
    found = _pytest_with_data_at(elsewhere)
    assert "1 passed" in found, found
