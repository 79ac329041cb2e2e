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
