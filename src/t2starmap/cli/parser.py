"""Parser pieces both command lines share (``t2starmap`` and ``t2starmap convert``).

Kept apart from :mod:`t2starmap.cli.run` so that :mod:`t2starmap.cli.convert` does not import the
module that dispatches to it. No torch here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

from t2starmap.errors import UsageError
from t2starmap.fit.limits import DEFAULT_METHOD

#: Fit method (:data:`t2starmap.fit.limits.METHODS`) -> one line of help for ``--fit-method``.
METHOD_HELP: dict[str, str] = {
    "nlls": "noise-aware (Rician) least squares when the noise level is known or estimated, "
    "else Gaussian",
    "nlls-gaussian": "plain Levenberg-Marquardt least squares",
    "wls": "weighted log-linear",
    "loglin": "ordinary log-linear",
    "arlo": "auto-regression on linear operations (evenly spaced echoes only)",
    "complex": "complex-domain least squares on magnitude and phase (needs part-phase or "
    "part-real + part-imag); also gives a field map",
}
#: The help of ``--fit-method auto``.
AUTO_HELP = "complex where part-phase or part-real/imag files exist, else " + DEFAULT_METHOD


#: ``-v`` count -> log level; more than two ``-v`` is the same as two.
VERBOSITY_LEVELS = (logging.INFO, logging.DEBUG, logging.DEBUG)
#: From this many ``-v``, unexpected errors are logged with their traceback.
TRACEBACK_VERBOSITY = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit 64) instead of exiting with 2, and leaves
    ``-h`` to :func:`add_other_options` (so that it sits in the "other options" group)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("add_help", False)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def add_other_options(group: argparse._ActionsContainer) -> None:
    """``-h``, ``-v`` (counted) and ``-q`` (``-v`` and ``-q`` mutually exclusive) into ``group``,
    a parser made with ``add_help=False`` or one of its groups."""
    group.add_argument("-h", "--help", action="help", help="show this help and exit")
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output: -v debug messages, -vv also tracebacks of unexpected errors",
    )
    exclusive.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def log_level(verbose: int, quiet: bool) -> int:
    """The level of the ``t2starmap`` logger for ``-v`` counted ``verbose`` times, or ``-q``."""
    if quiet:
        return logging.WARNING
    return VERBOSITY_LEVELS[min(max(verbose, 0), len(VERBOSITY_LEVELS) - 1)]


def configure_logging(level: int) -> None:
    """One stderr handler on the ``t2starmap`` logger, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("t2starmap %(levelname)s: %(message)s"))
    root = logging.getLogger("t2starmap")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
