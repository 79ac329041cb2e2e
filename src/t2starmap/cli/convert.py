"""``t2starmap convert DICOM_DIR BIDS_DIR --participant-label L``: the command line.

``t2starmap.cli.run.main`` parses with :func:`build_parser` and calls :func:`run_convert`, which
checks the labels and runs :func:`t2starmap.convert.workflow.convert`; failures are raised as
:mod:`t2starmap.errors` exceptions, which ``t2starmap.cli.run.main`` turns into exit codes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from t2starmap.cli.parser import ArgumentParser, add_other_options
from t2starmap.convert.bids import check_label
from t2starmap.errors import ExitCode, UsageError

log = logging.getLogger("t2starmap.convert")

_DESCRIPTION = """\
Convert the multi-echo series in a folder of DICOM files into a BIDS dataset:
  multi-echo gradient echo (ME-GRE) -> anat/*_echo-<k>_part-<mag|phase|real|imag>_MEGRE
  multi-echo EPI (BOLD; Siemens mosaics, enhanced multi-frame, GE, Philips)
                                    -> func/*_task-<label>[_run-<n>]_echo-<k>[_part-<p>]_bold
                                       (4-D; EchoTime in s, RepetitionTime, TaskName)
  dual-echo GRE field map (Siemens gre_field_mapping, *fm2d2r)
                                    -> fmap/*_magnitude1, *_magnitude2, *_phasediff
                                       (EchoTime1/EchoTime2; IntendedFor the BOLD runs
                                       acquired with the same ShimSetting, if any)
Phase is written in radians (Units "rad"). Every other series (single-echo EPI, spin echo,
scanner-made maps ...) is listed in the log as skipped, with the reason."""

_EPILOG = """\
The task label of a BOLD run is its protocol name in letters and digits only
(cmrr_mbep2d_ME_rest -> task-cmrrmbep2dMErest); --task-label replaces it.

Then fit the T2* maps of the ME-GRE data in the result:
  t2starmap convert DICOM_DIR BIDS_DIR --participant-label 01
  t2starmap BIDS_DIR OUTPUT_DIR participant --participant-label 01
run.py and the container take the same arguments, e.g.
  docker run -v /data:/data t2starmap convert /data/dicom /data/bids --participant-label 01
  docker run -v /data:/data t2starmap /data/bids /data/out participant

BIDS_DIR is created when absent, or extended when it is a BIDS dataset (a participants.tsv
row is added once). The DICOM folder is only read. Exit codes: 0 ok, 64 usage error (labels,
an existing participant without --overwrite), 65 multi-echo series that cannot be converted,
66 DICOM folder missing or without a series to convert, 73 cannot write BIDS_DIR.
"""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="t2starmap convert",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    required = parser.add_argument_group("required arguments")
    required.add_argument(
        "dicom_dir",
        type=Path,
        help="folder of DICOM files (searched recursively; any file names; read only)",
    )
    required.add_argument("bids_dir", type=Path, help="BIDS dataset to create or extend")
    required.add_argument(
        "--participant-label",
        "--participant_label",
        required=True,
        metavar="LABEL",
        help="participant label, letters and digits ('sub-' optional)",
    )
    options = parser.add_argument_group("conversion options")
    options.add_argument(
        "--session-label",
        "--session_label",
        default=None,
        metavar="LABEL",
        help="session label, letters and digits ('ses-' optional)",
    )
    options.add_argument(
        "--task-label",
        "--task_label",
        default=None,
        metavar="LABEL",
        help="task label of every multi-echo BOLD run, letters and digits "
        "(default: the protocol name without its other characters)",
    )
    options.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the participant (or session) if it is already there",
    )
    other = parser.add_argument_group("other options")
    add_other_options(other)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """Run the conversion the parsed ``args`` ask for; return 0, or raise a
    :class:`t2starmap.errors.T2StarError`."""
    try:
        subject = check_label(args.participant_label, "participant")
        session = (
            check_label(args.session_label, "session") if args.session_label is not None else None
        )
        task = check_label(args.task_label, "task") if args.task_label is not None else None
    except ValueError as err:
        raise UsageError(str(err)) from err
    from t2starmap.convert.workflow import convert

    result = convert(
        args.dicom_dir,
        args.bids_dir,
        subject,
        session,
        overwrite=args.overwrite,
        task_label=task,
    )
    log.info(
        "converted %d acquisition(s) into %s; next: t2starmap %s OUTPUT_DIR participant "
        "--participant-label %s",
        len(result.acquisitions),
        result.target,
        args.bids_dir,
        subject,
    )
    return int(ExitCode.OK)
