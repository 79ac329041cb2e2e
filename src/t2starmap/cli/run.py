"""Command line: the BIDS-Apps contract, argument checks, exit codes, dispatch.

``t2starmap BIDS_DIR OUTPUT_DIR {participant,group} [options]`` fits and summarises;
``t2starmap convert DICOM_DIR BIDS_DIR --participant-label L`` converts DICOM first.
:func:`main` returns the exit code (tests call it directly); :func:`run` is the console script.
Parsing and every argument check import no torch: ``--help`` and ``--version`` start fast, and
a usage error is reported before anything is created or validated.
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
from t2starmap.bids.conventions import DEFAULT_REPORT_CONVENTION, REPORT_CONVENTIONS
from t2starmap.cli.parser import (
    AUTO_HELP,
    METHOD_HELP,
    TRACEBACK_VERBOSITY,
    ArgumentParser,
    add_other_options,
    configure_logging,
    log_level,
)
from t2starmap.errors import ExitCode, Interrupted, T2StarError, UnknownLevelError
from t2starmap.fit.limits import B0_CORRECTIONS, DEFAULT_METHOD, FIT_CHOICES
from t2starmap.interrupts import sigterm_raises

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
73 cannot create output, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). When some echo
sets fail and the others are published, the code is the worst failure's (1, 66, 65, 64 in
that order); the failed sets are listed in logs/failures/ and on the pages.
"""


def _methods_help() -> str:
    """Every fit method with its one line from :data:`t2starmap.cli.parser.METHOD_HELP`."""
    parts = []
    for name, text in [*METHOD_HELP.items(), ("auto", AUTO_HELP)]:
        label = f"{name} (default)" if name == DEFAULT_METHOD else name
        parts.append(f"{label}: {text}")
    return "; ".join(parts)


def build_parser() -> ArgumentParser:
    """The parser of ``t2starmap BIDS_DIR OUTPUT_DIR LEVEL``, in groups as in MRIQC."""
    parser = ArgumentParser(
        prog="t2starmap",
        description="Quantitative T2*, R2* and S0 maps from multi-echo gradient-echo (BIDS "
        "MEGRE) data: a BIDS-App.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    required = parser.add_argument_group("required arguments")
    required.add_argument("bids_dir", type=Path, help="the BIDS dataset (read only)")
    required.add_argument(
        "output_dir", type=Path, help="where derivatives go (created; must not be inside bids_dir)"
    )
    required.add_argument(
        "analysis_level",
        metavar="{participant,group}",
        help="participant: fit each echo set; group: summarise the participants' outputs",
    )

    filtering = parser.add_argument_group("BIDS filtering")
    filtering.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="participants to process ('sub-' optional); default: all",
    )
    filtering.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="sessions to process ('ses-' optional); default: all",
    )
    filtering.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        type=Path,
        default=None,
        metavar="FILE",
        help="PyBIDS-style JSON of entity filters for the MEGRE "
        'files, e.g. {"megre": {"acquisition": "highres"}} or {"run": 1}',
    )
    filtering.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validator",
        action="store_true",
        help="do not run bids-validator on the input first",
    )

    run = parser.add_argument_group("run control")
    run.add_argument(
        "--stop-on-first-crash",
        "--stop_on_first_crash",
        action="store_true",
        help="stop at the first echo set that fails and publish nothing (default: record the "
        "failed set with its reason, publish the others, and exit with the worst failure's "
        "code)",
    )
    run.add_argument(
        "--report-convention",
        "--report_convention",
        choices=REPORT_CONVENTIONS,
        default=DEFAULT_REPORT_CONVENTION,
        help="how the pages show axial and coronal slices: radiological (default: the "
        "subject's right on the left, as scanner consoles and PACS show them and most "
        "radiologists read) or neurological (the subject's left on the left, as the pages of "
        "fMRIPrep and MRIQC); every tile carries its orientation letters either way",
    )

    fitting = parser.add_argument_group("fit options")
    fitting.add_argument(
        "--fit-method",
        "--fit_method",
        choices=FIT_CHOICES,
        default=DEFAULT_METHOD,
        help=_methods_help(),
    )
    fitting.add_argument(
        "--noise-sigma",
        "--noise_sigma",
        type=float,
        default=None,
        metavar="SIGMA",
        help="noise standard deviation of the magnitude "
        "images' real/imaginary channels, in image units (default: estimated "
        "from the background air)",
    )
    fitting.add_argument(
        "--b0-correction",
        "--b0_correction",
        choices=B0_CORRECTIONS,
        default="auto",
        help="through-slice: correct R2* for the through-slice gradient of the field map "
        "(the dephasing factor of the slice profile, --slice-profile; needs phase or "
        "real/imaginary parts that follow a frequency, MRAcquisitionType and SliceThickness); "
        "auto (default): through-slice where the set's phase allows it, else none (the "
        "sidecars say why)",
    )
    fitting.add_argument(
        "--slice-profile",
        "--slice_profile",
        default="auto",
        metavar="SPEC",
        help="slice profile of the through-slice correction: rect, gaussian (FWHM = slice "
        "thickness; gaussian:W for W thicknesses), sinc:N (small-tip profile of a "
        "Hanning-windowed sinc pulse of time-bandwidth product N), or a TSV file of the "
        "measured profile (position in slice thicknesses, amplitude). auto (default): the "
        "pulse the sidecars name (SliceProfile, Siemens protocol keys), else estimated from "
        "the set's strong-gradient voxels (sinc:2.7 when they are too few)",
    )
    fitting.add_argument(
        "--noise-coils",
        "--noise_coils",
        type=float,
        default=None,
        metavar="L",
        help="effective number of coils L >= 1 of root-sum-of-squares magnitude images "
        "(noncentral chi noise; 1 = Rician). Default: estimated from the background with sigma, "
        "1 with --noise-sigma",
    )

    performance = parser.add_argument_group("performance")
    performance.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto (default): CUDA when torch sees a GPU, else CPU",
    )
    performance.add_argument(
        "--nprocs",
        "--n_cpus",
        "--n-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: SLURM_CPUS_PER_TASK, else the cgroup CPU quota as set by "
        "docker/podman --cpus, else the CPUs this process may run on)",
    )
    performance.add_argument(
        "-w",
        "--work-dir",
        "--work_dir",
        type=Path,
        default=None,
        help="scratch folder for temporary files (default: system temp)",
    )

    other = parser.add_argument_group("other options")
    add_other_options(other)
    other.add_argument("--version", action="version", version=f"t2starmap {__version__}")
    return parser


#: Options that change what the participant level selects, fits or draws, which the group
#: level cannot honour (dest -> option): given to it, they are named in a warning. Run-control
#: and performance options (--skip-bids-validation, --nprocs, -w, ...) change nothing there
#: and pass quietly: scripts often give both levels one option list.
PARTICIPANT_ONLY = {
    "bids_filter_file": "--bids-filter-file",
    "fit_method": "--fit-method",
    "noise_sigma": "--noise-sigma",
    "noise_coils": "--noise-coils",
    "b0_correction": "--b0-correction",
    "slice_profile": "--slice-profile",
    "report_convention": "--report-convention",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; return its exit code. Errors become one line on stderr and their code.
    SIGTERM (SLURM, ``docker stop``) stops a run as Ctrl-C does, with exit code 143."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["t2smap"]:  # tedana's command: its own parser, logging and codes
        from t2starmap.cli.t2smap import main as t2smap_main

        return t2smap_main(arguments[1:])
    converting = arguments[:1] == ["convert"]
    verbose = 0
    configure_logging(log_level(verbose, False))  # until the arguments say otherwise
    try:
        with sigterm_raises():
            if converting:
                from t2starmap.cli.convert import build_parser as build_convert_parser

                parser, rest = build_convert_parser(), arguments[1:]
            else:
                parser, rest = build_parser(), arguments
            if not rest:  # a bare command: how to use it, not only what is missing
                sys.stderr.write(parser.format_usage() + _BARE_HINTS[converting])
                return int(ExitCode.USAGE)
            try:
                args = parser.parse_args(rest)
            except SystemExit as done:  # --help or --version: printed; nothing to run
                return int(done.code or 0)
            verbose = args.verbose
            configure_logging(log_level(args.verbose, args.quiet))
            if converting:
                from t2starmap.cli.convert import run_convert

                return run_convert(args)
            return _participant_or_group(args, parser)
    except T2StarError as err:
        _report(str(err))
        return int(err.exit_code)
    except Interrupted as err:
        _report(f"terminated ({err.name})")
        return err.exit_code
    except KeyboardInterrupt:
        _report("interrupted")
        return int(ExitCode.INTERRUPTED)
    except Exception as err:  # anything we did not foresee: one line, traceback with -vv
        _report(f"unexpected error: {type(err).__name__}: {err}", verbose >= TRACEBACK_VERBOSITY)
        return int(ExitCode.UNEXPECTED)


#: What a bare ``t2starmap`` (False) or ``t2starmap convert`` (True) prints after its usage.
_BARE_HINTS = {
    False: """
t2starmap: give the BIDS dataset, an output folder and the analysis level, e.g.
  t2starmap BIDS_DIR OUTPUT_DIR participant --participant-label 01
  t2starmap BIDS_DIR OUTPUT_DIR group
Starting from DICOM: t2starmap convert DICOM_DIR BIDS_DIR --participant-label 01
Every option and the exit codes: t2starmap --help
""",
    True: """
t2starmap convert: give the DICOM folder, the BIDS folder to create or extend and the
participant label, e.g.
  t2starmap convert DICOM_DIR BIDS_DIR --participant-label 01
Every option: t2starmap convert --help
""",
}


def _report(message: str, traceback: bool = False) -> None:
    log.error("%s", message, exc_info=traceback)


def _ignored_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The participant-level options given (not at their default) to a group-level run."""
    return [
        option
        for dest, option in PARTICIPANT_ONLY.items()
        if getattr(args, dest, None) != parser.get_default(dest)
    ]


def _participant_or_group(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise UnknownLevelError(
            f"unknown analysis level {args.analysis_level!r}: use participant or group"
        )
    if args.analysis_level == "group" and (ignored := _ignored_options(args, parser)):
        log.warning(
            "group level: %s %s only the participant level; ignored here",
            ", ".join(ignored),
            "changes" if len(ignored) == 1 else "change",
        )
    from t2starmap.config import settings_from_args

    settings = settings_from_args(args, environ=os.environ)
    if settings.analysis_level == "participant":
        from t2starmap.workflows.participant import run_participant  # torch: past the checks

        run_participant(settings)
    else:
        from t2starmap.workflows.group import run_group

        run_group(settings)
    return int(ExitCode.OK)


def run() -> NoReturn:
    """The console script of installs made before :mod:`t2starmap.cli.entry` took its place
    (that one installs the stop handlers before this module's imports)."""
    sys.exit(main())
