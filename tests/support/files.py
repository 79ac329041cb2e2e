"""Where the test inputs live, and file-tree checksums to prove an input was left untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "bids_example"
SHARED_DATA = REPO.parent / "shared" / "data"


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
