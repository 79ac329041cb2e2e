"""``t2starmap t2smap`` (and the console script ``t2starmap-t2smap``): tedana's ``t2smap``
command, with tedana 26's argument names, meanings and defaults, on the project's fit.

:func:`build_parser` takes tedana's arguments (``-v`` is ``--version`` there, as in tedana;
``--verbose`` writes the extra files, ``--debug`` / ``--quiet`` set the log level) and ours
(``--fittype nlls``, ``--device``). :func:`settings_from_args` makes every check that needs no
image data before anything is read or created; :func:`main` turns errors into one line and
the documented exit code (64 usage, 65 bad data, 66 missing input, 73 cannot write).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from t2starmap import __version__
from t2starmap.cli.parser import ArgumentParser, configure_logging
from t2starmap.errors import ExitCode, InputMissingError, Interrupted, T2StarError, UsageError
from t2starmap.interrupts import sigterm_raises

if TYPE_CHECKING:
    from t2starmap.workflows.t2smap import T2smapSettings

log = logging.getLogger("t2starmap.t2smap")

FIT_TYPES = ("loglin", "curvefit", "nlls")
MASK_TYPES = ("dropout", "decay", "none")

_DESCRIPTION = """\
Estimate T2* and S0 of multi-echo BOLD, and optimally combine the echoes: tedana's t2smap
(same arguments, same algorithm, same output names) on t2starmap's batched fit, with R2*,
standard-error and fit-status maps beside tedana's files."""

_EPILOG = """\
Echo times in seconds (BIDS); values >= 1 are read as milliseconds, with a warning, as tedana
does. Exit codes: 0 ok, 64 usage error (arguments, existing outputs without --overwrite),
65 bad data (unreadable or mismatched images), 66 an input file missing, 73 cannot write the
output folder."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="t2starmap t2smap",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_and_output(parser)
    _add_masking(parser)
    _add_fitting(parser)
    other = parser.add_argument_group("other options")
    other.add_argument("-h", "--help", action="help", help="show this help and exit")
    other.add_argument("--quiet", action="store_true", help="only warnings and errors")
    other.add_argument("-v", "--version", action="version", version=f"t2smap {__version__}")
    return parser


def _add_data_and_output(parser: ArgumentParser) -> None:
    """tedana's required arguments and output control."""
    req = parser.add_argument_group("Required Arguments")
    req.add_argument(
        "-d",
        dest="data",
        nargs="+",
        metavar="FILE",
        required=True,
        type=Path,
        help="echo-specific files in ascending order of echo time (or one z-concatenated file)",
    )
    req.add_argument(
        "-e",
        dest="tes",
        nargs="+",
        metavar="TE",
        type=float,
        required=True,
        help="ascending echo times in seconds, e.g. 0.015 0.039 0.063 "
        "(milliseconds accepted, deprecated)",
    )
    out = parser.add_argument_group("Output Control")
    out.add_argument(
        "--out-dir",
        dest="out_dir",
        type=Path,
        metavar="PATH",
        default=Path("."),
        help="output directory (default: .)",
    )
    out.add_argument("--prefix", dest="prefix", default="", help="prefix for file names")
    out.add_argument(
        "--convention",
        choices=["orig", "bids"],
        default="bids",
        help="file naming convention (default: bids)",
    )
    out.add_argument(
        "--verbose", action="store_true", help="also write the variance and covariance maps"
    )
    out.add_argument("--overwrite", "-f", action="store_true", help="replace existing files")


def _add_masking(parser: ArgumentParser) -> None:
    """tedana's temporal and spatial masking."""
    masking = parser.add_argument_group("Temporal and Spatial Masking")
    masking.add_argument(
        "--mask",
        metavar="FILE",
        type=Path,
        default=None,
        help="binary mask in the space of the data (default: computed from the first echo)",
    )
    masking.add_argument(
        "--masktype",
        nargs="+",
        choices=MASK_TYPES,
        default=["dropout"],
        help="adaptive mask rule(s) (default: dropout)",
    )
    masking.add_argument(
        "--dummy-scans",
        dest="dummy_scans",
        metavar="INT",
        type=int,
        default=0,
        help="volumes to remove from the start (default: 0)",
    )
    masking.add_argument(
        "--exclude",
        default=None,
        help="0-based volume indices left out of the mask and fit but kept "
        "in the combination: '0,5,10', '5:10' (end-exclusive), mixed",
    )


def _add_fitting(parser: ArgumentParser) -> None:
    """The decay fit, the combination, performance (tedana's, and ``nlls``, ``--device``)."""
    decay = parser.add_argument_group("Decay Model Fitting and Optimal Combination")
    decay.add_argument(
        "--fittype",
        choices=FIT_TYPES,
        default="loglin",
        help="loglin (default): log-linear; curvefit: least squares of the "
        "signal; nlls (ours): noise-aware least squares over all echoes",
    )
    decay.add_argument(
        "--fitmode",
        choices=["all", "ts"],
        default="all",
        help="all (default): one fit per voxel; ts: one per voxel and volume",
    )
    decay.add_argument(
        "--combmode",
        choices=["t2s", "paid"],
        default="t2s",
        help="t2s (default, Posse 1999) or paid (Poser 2006)",
    )
    decay.add_argument(
        "--phase",
        nargs="+",
        metavar="FILE",
        default=None,
        help="ours, not tedana's: the phase echoes (part-phase), one per -d file in the same "
        "order, rad or scanner units (each file's sidecar Units); S0 and T2* are then fitted "
        "to the complex echoes (each volume's phase offset removed before the mean), unless "
        "the phase follows no frequency (then --fittype on the magnitude, with the reason). "
        "Not with --fitmode ts",
    )
    decay.add_argument(
        "--n-independent-echos",
        dest="n_independent_echos",
        metavar="INT",
        type=int,
        default=None,
        help="accepted for tedana's sake; unused",
    )
    perf = parser.add_argument_group("Performance Control")
    perf.add_argument(
        "--n-threads",
        dest="n_threads",
        metavar="INT",
        type=int,
        default=1,
        help="CPU threads for the fit (default 1; -1: all available)",
    )
    perf.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto (default): CUDA when torch sees a GPU",
    )
    perf.add_argument("--debug", action="store_true", help="debug messages")


def echo_times_seconds(values: Sequence[float]) -> tuple[float, ...]:
    """Echo times in s: all in (0, 1) are seconds; all >= 1 milliseconds (a warning, as
    tedana's); anything else a UsageError."""
    if all(0 < v < 1 for v in values):
        return tuple(float(v) for v in values)
    if all(v >= 1 for v in values):
        log.warning("echo times %s look like milliseconds; BIDS and tedana want seconds", values)
        return tuple(float(v) / 1000.0 for v in values)
    raise UsageError(
        f"-e {' '.join(str(v) for v in values)}: echo times must be positive and all in "
        "seconds (< 1) or all in milliseconds (>= 1)"
    )


def parse_volume_indices(text: str | None) -> tuple[int, ...]:
    """tedana's ``--exclude`` syntax: '0,5,10', '5:10' (end-exclusive) or a mix; sorted,
    unique. UsageError for steps, open or negative ranges, or anything not a number."""
    if not text:
        return ()
    found: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        try:
            if ":" in item:
                parts = item.split(":")
                if len(parts) != 2 or "" in parts:
                    raise ValueError("ranges need a start and an end and no step")
                start, end = int(parts[0]), int(parts[1])
                if start < 0 or end < 0:
                    raise ValueError("negative indices are not supported")
                found.update(range(start, end))
            else:
                index = int(item)
                if index < 0:
                    raise ValueError("negative indices are not supported")
                found.add(index)
        except ValueError as err:
            raise UsageError(f"--exclude {text!r}: {err}") from err
    return tuple(sorted(found))


def _check_files(args: argparse.Namespace) -> None:
    for path in [*args.data, *([args.mask] if args.mask else []), *(args.phase or [])]:
        if not Path(path).is_file():
            raise InputMissingError(f"{path}: no such file")


def settings_from_args(args: argparse.Namespace, command: str) -> T2smapSettings:
    """The checked settings; UsageError / InputMissingError before anything is touched."""
    from t2starmap.workflows.t2smap import T2smapSettings

    _check_files(args)
    tes = echo_times_seconds(args.tes)
    if len(args.data) not in (1, len(tes)):
        raise UsageError(f"-d gives {len(args.data)} files but -e {len(tes)} echo times")
    if len(tes) < 2:
        raise UsageError("at least two echoes are needed")
    if any(b <= a for a, b in itertools.pairwise(tes)):
        raise UsageError(f"-e: echo times must ascend (with -d in the same order), got {tes}")
    exclude = parse_volume_indices(args.exclude)
    if exclude and args.fitmode == "ts":
        raise UsageError("--exclude is not supported with --fitmode ts (as in tedana)")
    phase = tuple(Path(p) for p in args.phase or ())
    if phase and len(phase) != len(args.data):
        raise UsageError(f"--phase gives {len(phase)} files but -d {len(args.data)}")
    if phase and args.fitmode == "ts":
        raise UsageError("--phase is not supported with --fitmode ts (the complex fit is of "
                         "the volumes' aligned mean; use --fitmode all)")  # fmt: skip
    if args.dummy_scans < 0:
        raise UsageError(f"--dummy-scans must be >= 0, got {args.dummy_scans}")
    if args.n_threads == 0 or args.n_threads < -1:
        raise UsageError(f"--n-threads must be >= 1 or -1, got {args.n_threads}")
    if args.device == "cuda":
        from t2starmap.fit.dispatch import resolve_device

        try:
            resolve_device("cuda")
        except ValueError as err:
            raise UsageError(f"--device cuda: {err}") from err
    return T2smapSettings(
        data=tuple(Path(p) for p in args.data),
        tes=tes,
        out_dir=Path(args.out_dir),
        prefix=args.prefix,
        convention=args.convention,
        verbose=args.verbose,
        overwrite=args.overwrite,
        mask=args.mask,
        masktype=tuple(args.masktype),
        dummy_scans=args.dummy_scans,
        exclude=exclude,
        fittype=args.fittype,
        fitmode=args.fitmode,
        combmode=args.combmode,
        workers=None if args.n_threads == -1 else args.n_threads,
        device=args.device,
        command=command,
        phase=phase,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``t2smap``; return its exit code. Errors become one line on stderr."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    configure_logging(logging.INFO)
    try:
        with sigterm_raises():
            return _run(arguments)
    except T2StarError as err:
        log.error("%s", err)
        return int(err.exit_code)
    except Interrupted as err:
        log.error("terminated (%s)", err.name)
        return err.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return int(ExitCode.INTERRUPTED)
    except Exception as err:  # not foreseen: one line (the traceback with --debug)
        log.error(
            "unexpected error: %s: %s", type(err).__name__, err, exc_info="--debug" in arguments
        )
        return int(ExitCode.UNEXPECTED)


def _run(arguments: list[str]) -> int:
    """Parse, check and run; errors propagate to :func:`main`."""
    parser = build_parser()
    if not arguments:
        sys.stderr.write(parser.format_usage() + "Every option: t2starmap t2smap --help\n")
        return int(ExitCode.USAGE)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as done:  # --help or --version
        return int(done.code or 0)
    configure_logging(
        logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    )
    settings = settings_from_args(args, "t2smap " + " ".join(arguments))
    from t2starmap.resources import available_cpus, prepare_allocator
    from t2starmap.workflows.t2smap import run_t2smap  # torch: only past the checks

    prepare_allocator(settings.workers or available_cpus(os.environ)[0])
    run_t2smap(settings)
    return int(ExitCode.OK)
