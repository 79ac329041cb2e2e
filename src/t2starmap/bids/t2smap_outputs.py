"""What ``t2starmap t2smap`` writes: the names table (tedana's ``outputs.json`` entries and
ours), the staging folder every file is written to first, and the registry.

Every file is written into a hidden staging folder inside the output folder and moved into
place (``os.replace``, one file at a time) only once all of them exist: a failed run leaves no
output behind. Images go through :func:`t2starmap.bids.nifti_write.save_map`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.bids.nifti import Geometry
from t2starmap.bids.nifti_write import save_map, save_volumes
from t2starmap.bids.series import series_volumes, unmask
from t2starmap.errors import OutputError, UsageError


@dataclass(frozen=True)
class Output:
    """One file: its name in tedana's ``orig`` and ``bids`` conventions and its extension."""

    orig: str
    bids: str
    ext: str = ".nii.gz"


#: Registry key (tedana's description where tedana writes the file) -> names. The keys after
#: "registry json" are ours.
OUTPUTS: Mapping[str, Output] = {
    "adaptive mask img": Output("adaptive_mask", "desc-adaptiveGoodSignal_mask"),
    "t2star img": Output("t2svG", "T2starmap"),
    "s0 img": Output("s0vG", "S0map"),
    "fit failures img": Output("fit_failures", "desc-decayFitFailures_mask"),
    "t2star variance img": Output("t2s_var", "stat-variance_desc-t2star_statmap"),
    "s0 variance img": Output("s0_var", "stat-variance_desc-s0_statmap"),
    "t2star-s0 covariance img": Output("t2s_s0_covar", "stat-covariance_desc-t2star+s0_statmap"),
    "combined img": Output("ts_OC", "desc-optcom_bold"),
    "rmse img": Output("rmse", "desc-rmse_statmap"),
    "confounds tsv": Output("confounds", "desc-confounds_timeseries", ".tsv"),
    "limited t2star img": Output("t2sv", "desc-limited_T2starmap"),
    "limited s0 img": Output("s0v", "desc-limited_S0map"),
    "data description json": Output("dataset_description", "dataset_description", ".json"),
    "registry json": Output("registry", "desc-tedana_registry", ".json"),
    "r2star img": Output("r2svG", "R2starmap"),
    "t2star stderr img": Output("t2s_stderr", "desc-stderr_T2starmap"),
    "r2star stderr img": Output("r2s_stderr", "desc-stderr_R2starmap"),
    "s0 stderr img": Output("s0_stderr", "desc-stderr_S0map"),
    "fit status img": Output("fit_status", "desc-fitstatus_dseg"),
    "fit status tsv": Output("fit_status", "desc-fitstatus_dseg", ".tsv"),
}


def file_name(key: str, prefix: str, convention: str) -> str:
    """The file name of ``key``: tedana's prefix rule (an underscore added unless there),
    the convention's name, the extension."""
    out = OUTPUTS[key]
    if prefix and not prefix.endswith("_"):
        prefix += "_"
    return prefix + (out.bids if convention == "bids" else out.orig) + out.ext


def existing_outputs(out_dir: Path, prefix: str, convention: str) -> list[Path]:
    """The files of this run's names already in ``out_dir``."""
    return [
        out_dir / file_name(key, prefix, convention)
        for key in OUTPUTS
        if (out_dir / file_name(key, prefix, convention)).exists()
    ]


class Stage:
    """A hidden staging folder in the output folder; :meth:`publish` moves its files into
    place and records them in the registry; :meth:`discard` removes it."""

    def __init__(self, out_dir: Path, prefix: str, convention: str, overwrite: bool) -> None:
        if not overwrite and (found := existing_outputs(out_dir, prefix, convention)):
            raise UsageError(f"{found[0]}: already exists; use --overwrite to replace it")
        self.created = not out_dir.exists()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=".t2smap-", dir=out_dir))
        except OSError as err:
            raise OutputError(f"{out_dir}: cannot create the output folder ({err})") from err
        self.out_dir, self.prefix, self.convention = out_dir, prefix, convention
        self.registry: dict[str, str] = {}

    def path(self, key: str) -> Path:
        name = file_name(key, self.prefix, self.convention)
        self.registry[key] = name
        return self.folder / name

    def image(self, key: str, values: np.ndarray, mask: np.ndarray, geometry: Geometry) -> None:
        """``values`` of the mask's voxels ((V,) or (V, T)) as an image; floats are written as
        float32, clipped to its finite range (a 4-D float map a few volumes at a time)."""
        if values.ndim == 2 and values.dtype.kind == "f":
            shape = (*mask.shape, values.shape[1])
            save_volumes(self.path(key), shape, series_volumes(values, mask), geometry)
            return
        if values.dtype.kind == "f" and not (
            values.dtype == np.float32 and np.isfinite(values).all()
        ):  # a copy only where needed: 4-D maps are the largest arrays of a run
            top = float(np.finfo(np.float32).max)
            values = np.clip(values, -top, top).astype(np.float32, copy=False)
        save_map(self.path(key), unmask(values, mask), geometry)

    def text(self, key: str, text: str) -> None:
        self.path(key).write_text(text, encoding="utf-8")

    def json(self, key: str, data: Any) -> None:
        self.text(key, json.dumps(data, indent=4, sort_keys=True) + "\n")

    def publish(self) -> dict[str, Path]:
        """Write the registry, move every file into the output folder, remove the stage."""
        self.json("registry json", dict(self.registry))
        placed = {}
        try:
            for key, name in self.registry.items():
                os.replace(self.folder / name, self.out_dir / name)
                placed[key] = self.out_dir / name
        except OSError as err:
            raise OutputError(
                f"{self.out_dir}: cannot move the outputs into place ({err})"
            ) from err
        finally:
            self.discard()
        return placed

    def discard(self) -> None:
        """Remove the stage, and the output folder when this run created it and left it
        empty (a failed run leaves nothing behind)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.created and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()


def tsv(columns: tuple[str, ...], rows: np.ndarray) -> str:
    """A TSV with a header, NaN written as ``n/a`` (tedana's ``na_rep``)."""
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join("n/a" if not np.isfinite(v) else repr(float(v)) for v in row))
    return "\n".join(lines) + "\n"
