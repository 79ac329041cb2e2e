"""Where the test inputs live, and file-tree checksums to prove an input was left untouched."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "bids_example"

#: The environment variable that points the real-data tests at the shared scanner data.
DATA_VARIABLE = "T2STARMAP_TEST_DATA"


def real_data_folder(environ: Mapping[str, str]) -> Path:
    """Where the real scanner data are: ``$T2STARMAP_TEST_DATA`` when set, else
    ``../shared/data`` beside the repository (the project's machines)."""
    given = environ.get(DATA_VARIABLE)
    return Path(given).expanduser().resolve() if given else REPO.parent / "shared" / "data"


SHARED_DATA = real_data_folder(os.environ)


def missing_data_reason(path: Path) -> str:
    """The skip reason of a real-data test whose data are not at ``path``."""
    return (
        f"real scanner data not found at {path} (set {DATA_VARIABLE} to the shared data's "
        "folder; default ../shared/data beside the repository)"
    )


def checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file below root (and the set of paths), to prove nothing changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def files_below(root: Path) -> set[str]:
    """Paths of every file below root, relative to it (empty when root does not exist)."""
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def images_below(root: Path) -> set[str]:
    """The NIfTI images below root (relative paths): the maps a run published."""
    return {f for f in files_below(root) if f.endswith((".nii.gz", ".nii"))}


def failure_reasons(out: Path) -> dict[str, str]:
    """Echo set name -> reason, from the failure records of an output folder."""
    import json

    folder = out / "logs" / "failures"
    return {
        p.name.removesuffix("_failure.json"): json.loads(p.read_text())["reason"]
        for p in sorted(folder.glob("*_failure.json"))
    }
