"""Reading a converted MEGRE set's parts back for the real-data tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


def echo_parts(anat: Path, parts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({part: its echoes stacked last, by echo time, float64}, the echo times in s sorted)
    of the ``*_part-<part>_MEGRE.nii.gz`` files in ``anat``."""
    out, times = {}, np.zeros(0)
    for part in parts:
        files = sorted(anat.glob(f"*_part-{part}_MEGRE.nii.gz"))
        times = np.asarray(
            [
                float(json.loads(Path(str(f).replace(".nii.gz", ".json")).read_text())["EchoTime"])
                for f in files
            ]
        )
        order = np.argsort(times)
        out[part] = np.stack(
            [np.asarray(nib.load(files[k]).dataobj, dtype=np.float64) for k in order], axis=-1
        )
    return out, np.sort(times)
