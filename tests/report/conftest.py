"""Fixtures of the report tests: the demo run through the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.files import EXAMPLE


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled example run as two participant runs into one folder, then the group level:
    the merged-runs case, through the command line entry point."""
    from t2starmap.cli.run import main

    root = tmp_path_factory.mktemp("demo")
    bids = root / "bids"
    shutil.copytree(EXAMPLE, bids)
    out = root / "out"
    for label in ("01", "02"):
        args = [
            str(bids),
            str(out),
            "participant",
            "--skip-bids-validation",
            "-q",
            "--participant-label",
            label,
        ]
        assert main(args) == 0
    assert main([str(bids), str(out), "group", "-q"]) == 0
    return out
