"""Run bids-validator (PyPI ``bids-validator-deno``) and read its JSON report."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALIDATOR = "bids-validator-deno"
#: Most distinct problems listed in an error message (the full report goes to the logs).
MAX_SUMMARY_LINES = 5


@dataclass(frozen=True)
class ValidationIssue:
    """One issue: ``field`` is the validator's ``subCode`` (often the sidecar key at fault,
    e.g. ``EchoTime``); ``message`` the first line of its ``issueMessage``."""

    code: str
    severity: str
    location: str
    message: str
    field: str = ""

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        detail = self.field or self.message
        return f"{self.code}{where}" + (f": {detail}" if detail else "")


@dataclass(frozen=True)
class ValidationReport:
    errors: tuple[ValidationIssue, ...]
    warnings: tuple[ValidationIssue, ...]
    raw: str = ""  # the validator's whole JSON output, for the log

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, limit: int = MAX_SUMMARY_LINES) -> list[str]:
        """One line per distinct (code, field) among the errors, most frequent first:
        ``CODE (field): first file (and N more)``; at most ``limit`` lines, the rest counted
        in a last line."""
        groups: dict[tuple[str, str], list[ValidationIssue]] = {}
        for issue in self.errors:
            groups.setdefault((issue.code, issue.field), []).append(issue)
        ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
        lines = []
        for (code, field_name), issues in ordered[:limit]:
            text = code + (f" ({field_name})" if field_name else "")
            files = list(dict.fromkeys(i.location for i in issues if i.location))
            if files:
                text += f": {files[0].lstrip('/')}"
            elif issues[0].message:
                text += f": {issues[0].message}"
            if len(files) > 1:
                text += f" (and {len(files) - 1} more)"
            lines.append(text)
        if len(ordered) > limit:
            rest = sum(len(v) for _, v in ordered[limit:])
            lines.append(f"{len(ordered) - limit} more kind(s) of error, {rest} in all")
        return lines


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
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{VALIDATOR} did not finish within {timeout:g} s") from err
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
            message=_first_line(item.get("issueMessage")),
            field=str(item.get("subCode", "") or "").strip(),
        )
        (errors if issue.severity == "error" else warnings).append(issue)
    # the validator reports some issues more than once (one per rule that finds them): count
    # each once, as the summary lists it once
    return ValidationReport(
        tuple(dict.fromkeys(errors)), tuple(dict.fromkeys(warnings)), proc.stdout
    )


def _first_line(text: object) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0].strip() if lines else ""
