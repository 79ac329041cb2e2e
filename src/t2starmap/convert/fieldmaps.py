"""``IntendedFor`` of the field maps one conversion writes, only where it can be justified.

A field map measures the B0 field under the shim of its own acquisition; it describes an EPI
run only when the scanner held the same shim for that run. Siemens records the shim currents
and gradient offsets in every series' protocol, which dcm2niix writes as ``ShimSetting``. So a
field map is marked as intended for the BOLD runs of the same conversion (one participant and
session) whose ``ShimSetting`` equals its own (heudiconv's "Shims" criterion); without a
``ShimSetting`` on either side, or without a BOLD run that shares it, nothing is written and
the log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from t2starmap.bids.atomic import write_json
from t2starmap.bids.conventions import sidecar_path
from t2starmap.convert.bids import load_json
from t2starmap.convert.plan import Acquisition

log = logging.getLogger("t2starmap.convert")


def shim_of(meta: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The ``ShimSetting`` of a sidecar as numbers, or None when absent or not a list."""
    value = meta.get("ShimSetting")
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    return tuple(float(v) for v in value)


def add_intended_for(built: Sequence[tuple[Acquisition, Sequence[Path]]], prefix: str) -> None:
    """Write ``IntendedFor`` (BIDS URIs ``bids::<prefix>/func/<name>``) into the sidecars of
    each field map of ``built`` that shares its ``ShimSetting`` with BOLD images of ``built``;
    ``prefix`` is ``sub-<s>[/ses-<t>]``. Log the outcome for every field map."""
    runs = [
        (path, shim_of(load_json(sidecar_path(path))))
        for acquisition, paths in built
        if acquisition.datatype == "func"
        for path in paths
    ]
    for acquisition, paths in built:
        if acquisition.datatype != "fmap":
            continue
        metas = {path: load_json(sidecar_path(path)) for path in paths}
        shims = {shim_of(meta) for meta in metas.values()}
        name = paths[0].name.split("_magnitude")[0].split("_phase")[0]
        shim = shims.pop() if len(shims) == 1 else None
        if shim is None:
            log.info("%s: no IntendedFor: its sidecars carry no single ShimSetting", name)
            continue
        intended = [f"bids::{prefix}/func/{p.name}" for p, s in runs if s == shim]
        if not intended:
            why = (
                "no BOLD run of this conversion shares its ShimSetting"
                if runs
                else "this conversion has no BOLD run"
            )
            log.info("%s: no IntendedFor: %s", name, why)
            continue
        for path, meta in metas.items():
            write_json(sidecar_path(path), {**meta, "IntendedFor": intended})
        log.info(
            "%s: IntendedFor the %d BOLD image(s) acquired with the same shim (ShimSetting %s)",
            name,
            len(intended),
            ", ".join(f"{v:g}" for v in shim),
        )
