"""Files that appear whole or not at all: write to a temporary name in the target folder,
then ``os.replace``. Concurrent writers of identical content are safe."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` if the block succeeds.

    The temporary name keeps the target's suffixes (``.nii.gz``) so writers that look at the
    extension behave, and starts with a dot so a crashed run leaves nothing a BIDS tool reads.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete the temporary files a killed writer of ``target`` left beside it; return them.

    SIGKILL gives :func:`atomic_path` no chance to clean up. Call this only for a file no other
    process may be writing at the same time (a participant's own outputs, not the shared
    ``dataset_description.json``).
    """
    target = Path(target)
    pattern = f".{glob.escape(target.name)}.*.tmp{''.join(target.suffixes)}"
    stale = [p for p in target.parent.glob(pattern) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_with(target: Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_text(target: Path, text: str) -> Path:
    return write_with(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(target: Path, data: Any) -> Path:
    return write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")
