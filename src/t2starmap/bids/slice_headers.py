"""The slice profile a sidecar (or a flattened vendor header) names.

Read by the echo-set workflow before the through-slice correction; pure (a mapping in, a
:class:`~t2starmap.b0.profiles.SliceProfile` or None out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t2starmap.b0.profiles import SliceProfile
from t2starmap.bids.slice_profiles import parse_slice_profile

__all__ = ["SIEMENS_PULSE_NAMES", "profile_from_metadata"]

#: Siemens product ``gre`` (2D): the excitation pulse is named "SRFExcit" in the protocol
#: (``sTXSPEC.aRFPULSE[0].tName``) and its time-bandwidth product follows the UI's "RF pulse
#: type" (``sTXSPEC.ucRFPulseType``: 1 fast, 2 normal, 4 low SAR, 8 optimized). Keys (pulse
#: name, RF pulse type) -> (time-bandwidth product, source). Only 2D: a 3D slab's pulse is no
#: slice profile.
SIEMENS_PULSE_NAMES: dict[tuple[str, int], tuple[float, str]] = {
    (name, rf_type): (
        tbw,
        f"Siemens NUMARIS/4 a_gre.cpp (gre, gre_rt), fSelectAndPrepRFPulse, "
        f"2D: sRF_PULSE_SINC 'SRFExcit', {kind} {tbw:g} x {duration} us; a copy "
        "of an old software line in a public repository, not checked on VE/XA",
    )
    for name, rf_type, kind, tbw, duration in (
        ("SRFExcit", 1, "RF_FAST", 2.0, "1000 (400 above 1560 Hz/pixel)"),
        ("SRFExcit", 2, "RF_NORMAL", 2.7, "2000"),
        ("SRFExcit", 4, "RF_LOW_SAR", 2.0, "4000"),
    )
}
_SIEMENS_NAME = "sTXSPEC.aRFPULSE[0].tName"
_SIEMENS_TYPE = "sTXSPEC.ucRFPulseType"


def profile_from_metadata(metadata: Mapping[str, Any]) -> SliceProfile | None:
    """The slice profile a sidecar (or flattened header) names, or None when it names none.

    Read, in order: ``SliceProfile`` (t2starmap's own field: ``rect``, ``gaussian[:W]`` or
    ``sinc:N``; a site that knows its pulse writes it into the sidecars), then the Siemens
    protocol keys ``sTXSPEC.aRFPULSE[0].tName`` + ``sTXSPEC.ucRFPulseType`` of a 2D
    acquisition (``MRAcquisitionType``) through :data:`SIEMENS_PULSE_NAMES`. dcm2niix writes
    none of these (checked: v1.0.20260724 on Siemens E11/XA30 and GE DV26 series, and its
    source), so from a plain dcm2niix sidecar this returns None; the Siemens keys are those of
    the DICOM's protocol text (``MrPhoenixProtocol``), where a site copies them into a
    sidecar. GE and Philips headers name no excitation pulse that we found. Raises ValueError
    for an ill-formed ``SliceProfile``.
    """
    spec = metadata.get("SliceProfile")
    if spec is not None:
        if not isinstance(spec, str) or spec.strip().lower().endswith(".tsv"):
            raise ValueError(
                f"sidecar SliceProfile must be rect, gaussian[:W] or sinc:N, got {spec!r} "
                "(a table goes on the command line)"
            )
        return parse_slice_profile(spec, source="header:SliceProfile").with_source(
            "header:SliceProfile", spec
        )
    name, rf_type = metadata.get(_SIEMENS_NAME), metadata.get(_SIEMENS_TYPE)
    if str(metadata.get("MRAcquisitionType", "")).upper() != "2D" or name is None:
        return None
    try:
        key = (str(name), int(rf_type))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if key not in SIEMENS_PULSE_NAMES:
        return None
    tbw, _ = SIEMENS_PULSE_NAMES[key]
    return SliceProfile(
        "sinc",
        tbw,
        source=f"header:{_SIEMENS_NAME}+{_SIEMENS_TYPE}",
        origin=f"{key[0]}, RF pulse type {key[1]}",
    )
