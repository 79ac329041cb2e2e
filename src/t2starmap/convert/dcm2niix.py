"""Run dcm2niix (from the PyPI ``dcm2niix`` package) on a folder of DICOM files.

The command is an argument list (no shell); its flags live in :data:`DCM2NIIX_FLAGS`; its
exit code is checked and its output kept for the error message.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from t2starmap.bids.conventions import sidecar_path
from t2starmap.errors import BadDataError

log = logging.getLogger("t2starmap.convert")

DCM2NIIX = "dcm2niix"

DCM2NIIX_FLAGS: tuple[str, ...] = (
    "-b",
    "y",  # BIDS sidecar
    "-ba",
    "y",  # anonymised sidecar (no patient name, ID, birth date ...)
    "-z",
    "y",  # gzip: .nii.gz
    "-f",
    "%s_%e",  # series number and echo number: outputs are matched by their sidecars
    "-i",
    "n",  # keep every image the caller staged (derived ones were left out before)
    "-m",
    "n",  # do not merge slices of different echoes
    "-l",
    "o",  # keep the stored data type (no rescaling to fill int16)
)


@dataclass(frozen=True)
class Output:
    """One NIfTI image dcm2niix wrote and its JSON sidecar."""

    nifti: Path
    sidecar: Path


def dcm2niix_command() -> str:
    """Path of the dcm2niix executable of this environment.

    First the binary inside the ``dcm2niix`` Python package (``dcm2niix.bin_path``): the
    version this package was tested with, and no Python wrapper to start on every call;
    then the console script beside the running interpreter (a virtual environment that is
    not activated); then PATH. Raises RuntimeError when none exists.
    """
    try:
        import dcm2niix as package

        bin_path = Path(str(package.bin_path))
        if bin_path.is_file() and os.access(bin_path, os.X_OK):
            return str(bin_path)
    except (ImportError, AttributeError):
        pass
    beside = Path(sys.executable).parent / DCM2NIIX
    if beside.exists():
        return str(beside)
    found = shutil.which(DCM2NIIX)
    if found:
        return found
    raise RuntimeError(f"{DCM2NIIX} is not installed (pip install dcm2niix)")


def run_dcm2niix(
    source: Path, out_dir: Path, *, label: str, timeout: float = 600.0
) -> list[Output]:
    """Convert every DICOM file in ``source`` into ``out_dir``; return the outputs.

    ``label`` names the series in error messages. Raises BadDataError when dcm2niix fails or
    writes no image; its last lines of output are in the message.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [dcm2niix_command(), *DCM2NIIX_FLAGS, "-o", str(out_dir), str(source)]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        # dcm2niix warns about much that does not matter here (missing GE protocol blocks,
        # Philips field-map guesses): shown with -v, and in the error message on failure.
        log.log(
            logging.INFO if line.startswith("Warning") else logging.DEBUG,
            "dcm2niix on %s: %s",
            label,
            line,
        )
    outputs = sorted(out_dir.glob("*.nii.gz"))
    if proc.returncode != 0 or not outputs:
        text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        tail = " | ".join(text[-3:]) if text else "no output"
        raise BadDataError(f"dcm2niix could not convert {label} (exit {proc.returncode}): {tail}")
    result = []
    for nifti in outputs:
        sidecar = sidecar_path(nifti)
        if not sidecar.exists():
            raise BadDataError(f"dcm2niix wrote {nifti.name} for {label} without a sidecar")
        result.append(Output(nifti, sidecar))
    return result
