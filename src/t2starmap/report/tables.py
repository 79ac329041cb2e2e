"""The tables of a set's section: the acquisition, the fit, the checks it passed or failed, and
the field-gradient correction, from the record and the map sidecar."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from t2starmap.bids.outputs import STATUS_LEVELS
from t2starmap.bids.records import PublishedSet
from t2starmap.report.maps import (
    SetMaps,
)
from t2starmap.report.statusmap import MISFIT_NAME


def _fmt(value: Any, spec: str = ".4g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "not known"
    return f"{value:{spec}}{unit}"


def _status_text(record: PublishedSet) -> str:
    """Voxel count and mask share of every fit-status label that occurs, good fits first."""
    parts = []
    for level in STATUS_LEVELS:
        count = record.status_counts.get(level.name, 0)
        if count:
            share = 100 * count / max(record.n_voxels, 1)
            parts.append(f"{level.meaning}: {count} ({share:.2f} %)")
    return "; ".join(parts) or "no voxel"


def set_tables(
    record: PublishedSet, loaded: SetMaps, good: np.ndarray, n_failed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The section's "Acquisition" and "Fit" tables: (label, value) rows."""
    t2 = loaded.maps["t2star"]
    sigma = record.noise_sigma
    q = np.percentile(t2[good] * 1e3, [25, 50, 75]) if good.any() else None

    tes = ", ".join(f"{t * 1e3:.3g}" for t in record.echo_times)
    meta = record.sources[0].metadata
    field_strength = meta.get("MagneticFieldStrength")
    vendor = " ".join(str(meta[k]) for k in ("Manufacturer", "ManufacturerModelName") if k in meta)
    acquisition = [
        ("Echo times (ms)", f"{tes} ({len(record.sources)} echoes)"),
        ("Field strength", f"{field_strength} T" if field_strength else "not in the sidecars"),
        ("Vendor", vendor or "not in the sidecars"),
        ("Voxel size (mm)", " × ".join(f"{z:.3g}" for z in loaded.zooms)),
        ("Matrix", " × ".join(str(n) for n in t2.shape)),
        ("First echo", record.sources[0].path),
    ]
    fit = [
        ("Method", f"{record.fit_method}: {record.algorithm}"),
        (
            "Noise level σ",
            _fmt(sigma)
            + (f" ({record.noise_method}, coils {record.noise_coils:.3g})" if sigma else "")
            + (f"; caveat: {record.noise_caveat}" if record.noise_caveat else ""),
        ),
        ("Noise model", record.noise_model),
        ("Compute device", record.device),
        (
            "Time taken",
            f"{record.seconds:.2f} s (read the echoes and fit)"
            if record.seconds is not None
            else "not recorded",
        ),
        ("Voxels in the signal mask", f"{record.n_voxels}"),
        (
            "Fit failed (no usable estimate)",
            f"{n_failed} voxel(s), {100 * record.failed_fraction:.2f} %",
        ),
        (
            "Decay not following the model (estimate kept, SE inflated)",
            f"{record.status_counts.get(MISFIT_NAME, 0)} voxel(s), "
            f"{100 * record.misfit_fraction:.2f} %",
        ),
        ("Fit status (desc-fitstatus_dseg)", _status_text(record)),
        *_checks(record, loaded.sidecar),
        (
            "T2* median [IQR] (ms)",
            f"{q[1]:.1f} [{q[0]:.1f}–{q[2]:.1f}]" if q is not None else "no voxel",
        ),
    ]
    return acquisition, fit


def _checks(record: PublishedSet, sidecar: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rows of what the fit checked against the data and what it concluded: the noise level's
    candidates, the goodness of fit, the phase and the field-gradient correction."""
    rows = []
    candidates = sidecar.get("NoiseSigmaCandidates") or record.noise_candidates
    if candidates:
        listed = ", ".join(f"{k} {_fmt(v)}" for k, v in candidates.items())
        note = sidecar.get("NoiseSigmaNote")
        rows.append(("Noise level candidates", listed + (f"; {note}" if note else "")))
    if "GoodnessOfFit" in sidecar:
        misfit = record.status_counts.get("decay_not_following_model", 0)
        share = 100 * misfit / max(record.n_voxels, 1)
        rows.append(
            (
                "Goodness of fit",
                f"{sidecar['GoodnessOfFit']}; misfit in {misfit} voxels ({share:.2f} %)",
            )
        )
    if "PhaseVerdict" in sidecar:
        rows.append(
            (
                "Phase",
                f"{sidecar['PhaseVerdict']}: {sidecar.get('PhaseVerdictNote', '')} "
                f"(consecutive-echo coherence {_fmt(sidecar.get('PhaseCoherence'), '.3g')})",
            )
        )
    if "B0Correction" in sidecar:
        rows.append(("Field-gradient correction", _correction_text(sidecar)))
    return rows


def _correction_text(sidecar: Mapping[str, Any]) -> str:
    if sidecar["B0Correction"] != "through-slice":
        return f"none: {sidecar.get('B0CorrectionNote', 'not asked for')}"
    profile = sidecar.get("B0SliceProfileEstimate") or sidecar.get(
        "B0SliceProfileSource", sidecar.get("B0SliceProfile", "not recorded")
    )
    return (
        f"through-slice in {100 * float(sidecar.get('B0CorrectedFraction', 0.0)):.1f} % of the "
        f"mask; field map from the {sidecar.get('B0FieldMapMethod', 'phase')}; slice profile "
        f"{profile}"
    )
