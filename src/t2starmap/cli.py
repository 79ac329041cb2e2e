"""Command line: the BIDS-Apps contract, argument checks, exit codes, dispatch.

``t2starmap BIDS_DIR OUTPUT_DIR {participant,group} [options]`` fits and summarises;
``t2starmap convert DICOM_DIR BIDS_DIR --participant-label L`` converts DICOM first.
:func:`main` returns the exit code (tests call it directly); :func:`run` is the console script.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from t2starmap import __version__
from t2starmap.errors import ExitCode, T2StarError, UnknownLevelError, UsageError

log = logging.getLogger("t2starmap")

DEVICES = ("auto", "cpu", "cuda")
ANALYSIS_LEVELS = ("participant", "group")

_EPILOG = """\
Starting from DICOM? Convert first, then fit:
  t2starmap convert DICOM_DIR BIDS_DIR --participant-label 01
  t2starmap BIDS_DIR OUTPUT_DIR participant --participant-label 01
  t2starmap BIDS_DIR OUTPUT_DIR group

Exit codes: 0 ok, 1 unexpected error, 16 input failed BIDS validation, 17 unknown analysis
level, 18 labels/filters select no MEGRE data, 64 usage error, 65 bad data, 66 input missing,
73 cannot create output.
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit 64) instead of exiting with 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output (repeat for debug and tracebacks)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def build_parser() -> ArgumentParser:
    from t2starmap.fit import METHODS  # imports torch: only the fitting levels need it

    parser = ArgumentParser(
        prog="t2starmap",
        description="Quantitative T2*, R2* and S0 maps from multi-echo gradient-echo (BIDS "
        "MEGRE) data: a BIDS-App.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset (read only)")
    parser.add_argument(
        "output_dir", type=Path, help="where derivatives go (created; must not be inside bids_dir)"
    )
    parser.add_argument("analysis_level", help="participant or group")
    parser.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="participants to process ('sub-' optional); default: all",
    )
    parser.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="sessions to process ('ses-' optional); default: all",
    )
    parser.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        type=Path,
        default=None,
        metavar="FILE",
        help="PyBIDS-style JSON of entity filters for the MEGRE "
        'files, e.g. {"megre": {"acquisition": "highres"}} or {"run": 1}',
    )
    parser.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validator",
        action="store_true",
        help="do not run bids-validator on the input first",
    )
    parser.add_argument(
        "--fit-method",
        "--fit_method",
        choices=METHODS,
        default="nlls",
        help="nlls (default): noise-aware (Rician) least squares when the noise level is known "
        "or estimated, else Gaussian; nlls-gaussian: plain Levenberg-Marquardt least squares; "
        "wls: weighted log-linear; loglin: ordinary log-linear; arlo: auto-regression on "
        "linear operations (evenly spaced echoes only)",
    )
    parser.add_argument(
        "--noise-sigma",
        "--noise_sigma",
        type=float,
        default=None,
        metavar="SIGMA",
        help="noise standard deviation of the magnitude "
        "images' real/imaginary channels, in image units (default: estimated "
        "from the background air)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto (default): CUDA when torch sees a GPU, else CPU",
    )
    parser.add_argument(
        "--nprocs",
        "--n_cpus",
        "--n-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: all available, or SLURM_CPUS_PER_TASK)",
    )
    parser.add_argument(
        "-w",
        "--work-dir",
        "--work_dir",
        type=Path,
        default=None,
        help="scratch folder for temporary files (default: system temp)",
    )
    parser.add_argument("--version", action="version", version=f"t2starmap {__version__}")
    add_logging_options(parser)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose < 2 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("t2starmap %(levelname)s: %(message)s"))
    root = logging.getLogger("t2starmap")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; return its exit code. Errors become one line on stderr and their code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    verbose = sum(a.count("v") for a in args_list if a.startswith("-v") and set(a[1:]) == {"v"})
    verbose += args_list.count("--verbose")
    try:
        if args_list[:1] == ["convert"]:
            from t2starmap.convert.cli import main as convert_main

            return int(convert_main(args_list[1:]))
        return _participant_or_group(args_list)
    except T2StarError as err:
        _report(str(err), verbose)
        return int(err.exit_code)
    except KeyboardInterrupt:
        _report("interrupted", verbose)
        return 130
    except Exception as err:  # anything we did not foresee: one line, traceback with -vv
        _report(f"unexpected error: {type(err).__name__}: {err}", verbose, traceback=True)
        return int(ExitCode.UNEXPECTED)


def _report(message: str, verbose: int, traceback: bool = False) -> None:
    if not log.handlers:
        configure_logging(verbose, False)
    log.error("%s", message, exc_info=traceback and verbose >= 1)


def _participant_or_group(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise UnknownLevelError(
            f"unknown analysis level {args.analysis_level!r}: use participant or group"
        )
    from t2starmap.settings import settings_from_args
    from t2starmap.workflow import run_group, run_participant

    settings = settings_from_args(args, environ=os.environ)
    if settings.analysis_level == "participant":
        run_participant(settings)
    else:
        run_group(settings)
    return int(ExitCode.OK)


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
