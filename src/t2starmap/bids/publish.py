"""Publishing: the staged files of one participant page appear in the output together.

A :class:`Publication` is what one participant/session page covers in one run: the maps,
sidecars and records of its echo sets that were fitted, the failure records of those that
failed, and the page itself. :func:`publish` copies them into the output folder, each file
atomically (:mod:`t2starmap.bids.atomic`), in the order given (a set's record after its maps, the
page last), and removes what they make stale (the failure record of a set now published, files
an earlier record of the same set listed that the new one does not).

It runs with SIGINT and SIGTERM deferred (:func:`t2starmap.interrupts.deferred_signals`): a
signal takes effect once every file is in place. When a write fails (a full disk, a folder
made read-only), everything the publication wrote is removed again and every file it replaced
or removed is put back, and it raises OutputError (exit 73). Files replaced or removed are
first moved aside under a hidden temporary name beside them, the name pattern of
:func:`t2starmap.bids.atomic.atomic_path`, so what a SIGKILLed run leaves is swept by the next run
of the same participant (:func:`t2starmap.bids.atomic.remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from t2starmap.bids.atomic import remove_stale_temporaries, write_with
from t2starmap.errors import OutputError
from t2starmap.interrupts import deferred_signals

log = logging.getLogger("t2starmap")


@dataclass(frozen=True)
class Publication:
    """What one page's publication writes: ``files``, (staged file, target relative to the
    output folder) in writing order; ``remove``, targets (relative) to delete; ``label``
    names it in messages (``sub-01_ses-2``); ``shared``, the targets other runs into the same
    output may be writing at the same moment (``dataset_description.json``): their temporary
    files are never swept as stale."""

    label: str
    files: tuple[tuple[Path, str], ...]
    remove: tuple[str, ...] = ()
    shared: frozenset[str] = frozenset()


class _Undo:
    """What a publication has done so far, and how to take it back."""

    def __init__(self) -> None:
        #: (target, where the file it replaced was moved, whether this run wrote target)
        self.steps: list[tuple[Path, Path | None, bool]] = []
        self.folders: list[Path] = []

    def _aside(self, target: Path) -> Path:
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{''.join(target.suffixes)}", dir=target.parent
        )
        os.close(fd)
        os.replace(target, name)
        return Path(name)

    def _make_parents(self, target: Path) -> None:
        missing = [p for p in target.parents if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir(exist_ok=True)
            self.folders.append(folder)

    def put(self, source: Path, target: Path, shared: bool = False) -> None:
        self._make_parents(target)
        if not shared:  # a shared file's temporaries may be another run's, in flight
            remove_stale_temporaries(target)  # left by an earlier, killed run
        old = self._aside(target) if target.exists() else None
        self.steps.append((target, old, True))
        write_with(target, partial(shutil.copyfile, source))

    def delete(self, target: Path) -> None:
        if target.exists():
            self.steps.append((target, self._aside(target), False))

    def undo(self) -> None:
        for target, old, written in reversed(self.steps):
            if written:
                target.unlink(missing_ok=True)
            if old is not None:
                os.replace(old, target)
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):  # not empty: another job wrote there meanwhile
                folder.rmdir()

    def commit(self) -> None:
        for _, old, _ in self.steps:
            if old is not None:
                old.unlink(missing_ok=True)


def publish(output_dir: Path, publication: Publication) -> None:
    """Put ``publication`` in place under ``output_dir``: all of it, or (OutputError) none."""
    output_dir = Path(output_dir)
    with deferred_signals(f"publishing {publication.label}"):
        undo = _Undo()
        try:
            for source, relative in publication.files:
                undo.put(source, output_dir / relative, relative in publication.shared)
            for relative in publication.remove:
                undo.delete(output_dir / relative)
        except BaseException as err:
            try:
                undo.undo()
            except OSError as second:  # pragma: no cover - a disk failing twice
                log.error("%s: could not undo a failed publication (%s)", output_dir, second)
            if isinstance(err, OSError):
                raise OutputError(
                    f"{output_dir}: cannot publish {publication.label} ({err}); what it had "
                    "written was removed again"
                ) from err
            raise
        undo.commit()
