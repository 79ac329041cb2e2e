"""Run bids-validator (PyPI ``bids-validator-deno``) and read its JSON report."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALIDATOR = "bids-validator-deno"


@dataclass(frozen=True)
class ValidationIssue:
    code: str
    severity: str
    location: str
    message: str

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.code}{where}" + (f": {self.message}" if self.message else "")


@dataclass(frozen=True)
class ValidationReport:
    errors: tuple[ValidationIssue, ...]
    warnings: tuple[ValidationIssue, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def validator_command() -> str:
    """Path of the validator executable; RuntimeError when it is not installed."""
    found = shutil.which(VALIDATOR)
    if found is None:
        # Installed into the same environment as this package but not on PATH (a venv not
        # activated): look beside the running interpreter.
        import sys

        candidate = Path(sys.executable).parent / VALIDATOR
        if candidate.exists():
            return str(candidate)
        raise RuntimeError(f"{VALIDATOR} is not installed (pip install bids-validator-deno)")
    return found


def validate_bids(path: Path, *, timeout: float = 600.0) -> ValidationReport:
    """Validate the dataset at ``path``. Raises RuntimeError when the validator cannot run."""
    cmd = [validator_command(), str(path), "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{VALIDATOR} failed (exit {proc.returncode}): {tail[0]}") from err
    errors: list[ValidationIssue] = []
    warnings: list[ValidationIssue] = []
    for item in report.get("issues", {}).get("issues", []):
        issue = ValidationIssue(
            code=str(item.get("code", "")),
            severity=str(item.get("severity", "")),
            location=str(item.get("location", "")),
            message=str(item.get("issueMessage", "") or item.get("subCode", "")).strip(),
        )
        (errors if issue.severity == "error" else warnings).append(issue)
    return ValidationReport(tuple(errors), tuple(warnings))
