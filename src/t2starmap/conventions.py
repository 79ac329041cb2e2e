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
