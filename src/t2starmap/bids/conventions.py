"""BIDS facts the app writes down once: the BIDS version it follows, where its code lives,
what a label may hold, and where an image's sidecar is. No torch, no pybids."""

from __future__ import annotations

import re
from pathlib import Path

#: The BIDS version of the datasets this app writes (raw from ``convert``, and derivatives).
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/t2starmap/t2starmap"
#: A BIDS label (``sub-<label>``, ``ses-<label>``, ...): letters and digits only.
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")

_NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def sidecar_path(image: Path) -> Path:
    """The JSON sidecar beside a NIfTI image: ``x_MEGRE.nii.gz`` -> ``x_MEGRE.json``.

    Raises ValueError when ``image`` is not named ``*.nii`` or ``*.nii.gz``."""
    for extension in _NIFTI_EXTENSIONS:
        if image.name.endswith(extension) and len(image.name) > len(extension):
            return image.with_name(image.name[: -len(extension)] + ".json")
    raise ValueError(f"{image}: not a NIfTI file name (*.nii or *.nii.gz)")


#: How the pages show axial and coronal tiles (``--report-convention``), default first:
#: radiological (the subject's right on the left of the image), as scanner consoles and PACS
#: show images and most radiologists read them; neurological (the subject's left on the
#: left), as the pages of fMRIPrep and MRIQC show brains. Every tile carries its orientation
#: letters either way.
REPORT_CONVENTIONS = ("radiological", "neurological")
DEFAULT_REPORT_CONVENTION = REPORT_CONVENTIONS[0]
