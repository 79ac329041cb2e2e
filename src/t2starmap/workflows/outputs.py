"""What both levels do to the output folder: create it, write its shared files and the
settings log, validate the input, stage in a private work folder, show progress."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t2starmap.bids.atomic import write_text
from t2starmap.bids.dataset_files import shared_files
from t2starmap.config import Settings
from t2starmap.errors import (
    OutputError,
    ValidationError,
)
from t2starmap.interrupts import deferred_signals

log = logging.getLogger("t2starmap")


def prepare_output(output_dir: Path) -> Path | None:
    """Create the output folder (exit 73 when impossible); return the topmost folder this
    call created (None when the output folder existed)."""
    missing = [p for p in (output_dir, *output_dir.parents) if not p.exists()]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutputError(
            f"{output_dir}: cannot create or write the output folder ({err})"
        ) from err
    return missing[-1] if missing else None


def write_shared_files(settings: Settings) -> None:
    for name, text in shared_files(settings.bids_dir).items():
        write_text(settings.output_dir / name, text)


def settings_log_name(settings: Settings) -> str:
    """``logs/settings_<level>_<who>_<UTC time>.json``, relative to the output folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    who = "_".join(f"sub-{p}" for p in settings.participant_labels or ())[:80] or "all"
    return f"logs/settings_{settings.analysis_level}_{who}_{stamp}.json"


def write_settings_log(settings: Settings) -> Path:
    path = settings.output_dir / settings_log_name(settings)
    write_text(path, settings.to_json())
    return path


def validate_input(settings: Settings) -> None:
    """Run bids-validator on the input; exit 16 with one line per distinct problem, the full
    report written to ``OUTPUT_DIR/logs/``."""
    from t2starmap.bids.validate import validate_bids

    log.info(
        "validating %s with bids-validator (skip with --skip-bids-validation)", settings.bids_dir
    )
    try:
        report = validate_bids(settings.bids_dir)
    except (RuntimeError, OSError) as err:
        raise ValidationError(f"{settings.bids_dir}: could not run bids-validator ({err})") from err
    if not report.ok:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        full = settings.output_dir / "logs" / f"bids-validator_{stamp}.json"
        write_text(full, report.raw)
        lines = "\n".join(f"  {line}" for line in report.summary())
        raise ValidationError(
            f"{settings.bids_dir}: bids-validator found {len(report.errors)} error(s):\n"
            f"{lines}\nFix them, or run with --skip-bids-validation; the full report is {full}"
        )


@contextmanager
def staging_folder(work_dir: Path | None) -> Iterator[Path]:
    """A private folder in ``work_dir`` (the system temp folder when None), removed on every
    way out, and with it the folders above it that this call created (``-w /x/deep/work``)
    once they are empty: another run may share them, and keeps what it still uses."""
    created: list[Path] = []
    if work_dir is not None:
        created = [p for p in (work_dir, *work_dir.parents) if not p.exists()]
    try:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="t2starmap-", dir=work_dir))
    except OSError as err:
        remove_empty(created)
        raise OutputError(f"{work_dir}: cannot create a work folder ({err})") from err
    try:
        yield folder
    finally:
        with deferred_signals("removing the staging folder"):
            shutil.rmtree(folder, ignore_errors=True)
            remove_empty(created)


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: another run's files are in it
            return


class Progress:
    """A progress bar over the echo sets on a terminal, nothing otherwise (log lines say where
    the run is)."""

    def __init__(self, total: int) -> None:
        self.bar: Any = None
        if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="echo sets", unit="set", file=sys.stderr)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
