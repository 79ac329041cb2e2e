"""Errors that end a run with a documented exit code.

The codes follow the draft BIDS execution specification (see README, "Exit codes").
Library code raises these; only ``cli.main`` turns them into exit codes and messages.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    VALIDATION_FAILED = 16
    UNKNOWN_LEVEL = 17
    NOTHING_SELECTED = 18
    USAGE = 64
    BAD_DATA = 65
    INPUT_MISSING = 66
    CANNOT_CREATE_OUTPUT = 73
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
    TERMINATED = 143  # SIGTERM (SLURM, docker stop, kill): 128 + SIGTERM


#: What each exit code means, in a few words (pages and messages).
MEANINGS = {
    ExitCode.OK: "ok",
    ExitCode.UNEXPECTED: "unexpected error",
    ExitCode.VALIDATION_FAILED: "input failed BIDS validation",
    ExitCode.UNKNOWN_LEVEL: "unknown analysis level",
    ExitCode.NOTHING_SELECTED: "nothing selected",
    ExitCode.USAGE: "usage error",
    ExitCode.BAD_DATA: "bad data",
    ExitCode.INPUT_MISSING: "input missing",
    ExitCode.CANNOT_CREATE_OUTPUT: "cannot write the output",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.TERMINATED: "terminated",
}


def describe_code(code: int) -> str:
    """``65 (bad data)``."""
    try:
        return f"{code} ({MEANINGS[ExitCode(code)]})"
    except (ValueError, KeyError):
        return str(code)


#: How bad a failed echo set's exit code is, worst first: a run in which some sets failed
#: exits with the worst of their codes (an unexpected error before missing input, before bad
#: data, before a usage problem found only when the set was fitted).
SEVERITY = (
    ExitCode.UNEXPECTED,
    ExitCode.CANNOT_CREATE_OUTPUT,
    ExitCode.INPUT_MISSING,
    ExitCode.BAD_DATA,
    ExitCode.USAGE,
)


def worst(codes: list[int]) -> int:
    """The worst of ``codes`` by :data:`SEVERITY` (codes it does not list rank last, in order)."""
    rank = {int(code): i for i, code in enumerate(SEVERITY)}
    return min(codes, key=lambda code: rank.get(code, len(SEVERITY)))


class T2StarError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code: ExitCode = ExitCode.UNEXPECTED


class UsageError(T2StarError):
    exit_code = ExitCode.USAGE


class ValidationError(T2StarError):
    exit_code = ExitCode.VALIDATION_FAILED


class UnknownLevelError(T2StarError):
    exit_code = ExitCode.UNKNOWN_LEVEL


class NothingSelectedError(T2StarError):
    exit_code = ExitCode.NOTHING_SELECTED


class BadDataError(T2StarError):
    exit_code = ExitCode.BAD_DATA


class InputMissingError(T2StarError):
    exit_code = ExitCode.INPUT_MISSING


class OutputError(T2StarError):
    exit_code = ExitCode.CANNOT_CREATE_OUTPUT


class SetsFailedError(T2StarError):
    """Some echo sets failed, the others were published: the code is the worst failure's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)


class EchoSpacingError(ValueError):
    """A method that needs evenly spaced echoes (ARLO) was given unevenly spaced ones. A
    ValueError of the fitting API (``t2starmap.fit`` re-exports it); the echo-set workflow
    reports it as bad data."""


class NotApplicableError(ValueError):
    """The data do not allow a step (the through-slice correction of a set without slice
    metadata, with fewer than 3 echoes or slices, or with an ill-formed sidecar profile). The
    step's caller decides: skip it with a note (``auto``), or refuse the set. Any other
    ValueError from the numeric core is a bug, not bad data."""


class Interrupted(KeyboardInterrupt):
    """A signal that asks the run to stop, raised as an exception so that the same clean-up
    runs as for Ctrl-C (a subclass of KeyboardInterrupt: ``except Exception`` never swallows
    it). ``signum``: the signal; the exit code is 128 + ``signum``, as a shell reports it."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum = signum
        self.name = name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
