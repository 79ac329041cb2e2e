"""The phase, or real and imaginary, parts beside the magnitude echoes of an echo set.

BIDS MEGRE stores the parts of one echo as files that differ only in ``part-<mag|phase|real|
imag>``. An echo set (:mod:`t2starmap.bids.layout`) holds the magnitude files; here their sibling
parts are found by replacing ``part-mag`` in each file name (a magnitude file without a
``part`` entity has no parts), checked, and loaded into one complex array.

Phase units (the ``Units`` field of each phase file's own sidecar, which BIDS requires):

* ``rad``: values in [-pi, pi] or [0, 2 pi] (tolerance ``RANGE_RTOL``) are used as they are;
* ``arbitrary``: converted only when the range says unambiguously what it is: [-pi, pi]
  (radians), Philips milliradians (+-3142), Siemens 12-bit integers (+-4096 for +-pi);
* anything else (no ``Units``, degrees, other ranges) is refused: guessing the scale would
  give a wrong field map and a wrong complex fit without any sign of it.

Errors are :class:`~t2starmap.errors.BadDataError` (exit 65), one line naming the file.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.bids.layout import EchoSet
from t2starmap.bids.nifti import Geometry, read_part, read_workers
from t2starmap.errors import BadDataError

#: Relative tolerance on the full-scale value of a phase range.
RANGE_RTOL = 1e-3
#: A range is placed only if its largest |value| reaches this fraction of the full scale: real
#: phase images wrap, so their values fill the range.
FILL_FRACTION = 0.9
#: Full scales of the phase encodings accepted with ``Units: "arbitrary"``: name, the largest
#: |value|, the factor to radians.
ARBITRARY_SCALES = (
    ("radians", math.pi, 1.0),
    ("milliradians (Philips)", 1000.0 * math.pi, 1e-3),
    ("12-bit integers, +-4096 for +-pi (Siemens)", 4096.0, math.pi / 4096.0),
)
#: Largest difference, in s, between the EchoTime of a part and its magnitude echo.
ECHO_TIME_ATOL = 1e-6

_PART_MAG = re.compile(r"_part-mag_")


@dataclass(frozen=True)
class Parts:
    """The parts of an echo set, one entry per echo in the set's (TE) order.

    kind: ``"real-imag"`` (``files`` holds (real, imag) paths per echo) or ``"phase"``
    (``files`` holds (phase,) per echo; ``units`` the phase Units of each echo).
    """

    kind: str
    files: tuple[tuple[Path, ...], ...]
    units: tuple[str, ...] = ()


def sibling(path: Path, part: str) -> Path | None:
    """The file of ``part`` beside the magnitude file ``path`` if it exists (same extension
    first, then the other NIfTI one), else None. None too when ``path`` has no ``part-mag``."""
    name = path.name
    if not _PART_MAG.search(name):
        return None
    stem, ext = _split_nifti(_PART_MAG.sub(f"_part-{part}_", name))
    for candidate_ext in (ext, ".nii" if ext == ".nii.gz" else ".nii.gz"):
        candidate = path.with_name(stem + candidate_ext)
        if candidate.exists():
            return candidate
    return None


def _split_nifti(name: str) -> tuple[str, str]:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def sidecar_of(path: Path) -> dict[str, Any]:
    """The JSON sidecar beside an image ({} when there is none). Raises BadDataError when it
    cannot be read."""
    stem, _ = _split_nifti(path.name)
    json_path = path.with_name(stem + ".json")
    if not json_path.exists():
        return {}
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise BadDataError(f"{json_path}: sidecar is not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise BadDataError(f"{json_path}: sidecar is not a JSON object")
    return data


def find_parts(echo_set: EchoSet) -> Parts | None:
    """The set's real/imag parts (preferred: no units to interpret) or its phase, or None when
    there are none. Raises BadDataError when parts exist for some echoes only, when a real file
    has no imaginary partner (or the reverse), or when a part's EchoTime differs from its
    magnitude echo's."""
    found = {
        part: [sibling(echo.path, part) for echo in echo_set.echoes]
        for part in ("real", "imag", "phase")
    }
    real, imag, phase = found["real"], found["imag"], found["phase"]
    for echo, r, i in zip(echo_set.echoes, real, imag, strict=True):
        if (r is None) != (i is None):
            have, lack = ("real", "imag") if i is None else ("imag", "real")
            raise BadDataError(
                f"{r or i}: part-{have} without part-{lack} for echo {echo.path.name}; "
                "the complex signal needs both"
            )
    if all(r is not None for r in real):
        pairs: tuple[tuple[Path, ...], ...] = tuple(
            (r, i) for r, i in zip(real, imag, strict=True) if r and i
        )
        _check_echo_times(echo_set, pairs)
        return Parts(kind="real-imag", files=pairs)
    if all(p is not None for p in phase):
        singles: tuple[tuple[Path, ...], ...] = tuple((p,) for p in phase if p)
        _check_echo_times(echo_set, singles)
        units = tuple(_phase_units(paths[0]) for paths in singles)
        return Parts(kind="phase", files=singles, units=units)
    for part, paths in (("real", real), ("phase", phase)):
        present = [p for p in paths if p is not None]
        if present:
            missing = next(e.path for e, p in zip(echo_set.echoes, paths, strict=True) if p is None)
            raise BadDataError(
                f"{present[0]}: part-{part} exists for {len(present)} of "
                f"{len(paths)} echoes of set {echo_set.name}; none beside {missing.name}"
            )
    return None


def _check_echo_times(echo_set: EchoSet, files: tuple[tuple[Path, ...], ...]) -> None:
    for echo, paths in zip(echo_set.echoes, files, strict=True):
        for path in paths:
            meta = sidecar_of(path)
            if "EchoTime" not in meta:
                continue
            try:
                value = float(meta["EchoTime"])
            except (TypeError, ValueError) as err:
                raise BadDataError(
                    f"{path}: EchoTime {meta['EchoTime']!r} is not a number"
                ) from err
            if not abs(value - echo.echo_time) <= ECHO_TIME_ATOL:
                raise BadDataError(
                    f"{path}: EchoTime {value} s differs from its magnitude echo "
                    f"{echo.path.name} ({echo.echo_time} s)"
                )


def _phase_units(path: Path) -> str:
    units = sidecar_of(path).get("Units")
    if units is None:
        raise BadDataError(
            f"{path}: the phase sidecar has no Units (BIDS requires 'rad' or 'arbitrary'); "
            "its scale cannot be known"
        )
    text = str(units).strip().lower()
    if text not in ("rad", "arbitrary"):
        raise BadDataError(
            f"{path}: phase Units {units!r} not accepted; give the phase in 'rad' "
            "(or 'arbitrary' vendor integers)"
        )
    return text


def complex_available(parts: Parts | None) -> bool:
    """Whether the complex fit can run on a set whose parts :func:`find_parts` returned."""
    return parts is not None


def phase_to_radians(values: np.ndarray, units: str, where: Path | str) -> np.ndarray:
    """Phase ``values`` with their ``Units`` ("rad" or "arbitrary") -> radians, float32.

    Raises BadDataError naming ``where`` when the range does not say what the values are
    (see the module docstring). Non-finite values are left as they are (the fit flags them).
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise BadDataError(f"{where}: the phase image holds no finite value")
    low, high = float(finite.min()), float(finite.max())
    peak = max(abs(low), abs(high))
    tol = 1.0 + RANGE_RTOL
    if units == "rad":
        if low >= -math.pi * tol and high <= math.pi * tol:
            return values.astype(np.float32)
        if low >= -RANGE_RTOL and high <= 2.0 * math.pi * tol:
            return values.astype(np.float32)  # [0, 2 pi): the same angles
        raise BadDataError(
            f"{where}: phase Units 'rad' but values span [{low:g}, {high:g}], outside "
            "[-pi, pi] and [0, 2 pi]"
        )
    for _name, full_scale, factor in ARBITRARY_SCALES:
        if FILL_FRACTION * full_scale <= peak <= full_scale * tol and low < 0 < high:
            return (values.astype(np.float64) * factor).astype(np.float32)
    raise BadDataError(
        f"{where}: phase in 'arbitrary' units spanning [{low:g}, {high:g}] matches none of "
        "radians, milliradians or +-4096 integers; convert it to radians"
    )


def load_complex(
    parts: Parts,
    geometry: Geometry,
    magnitude: np.ndarray | None,
    workers: int | None = None,
) -> np.ndarray:
    """The complex signal, complex64 (*shape, n_echoes), echoes in the set's (TE) order.

    real/imag parts: real + i imag. Phase: ``magnitude`` (the set's magnitude echoes,
    (*shape, n_echoes), as :func:`t2starmap.bids.nifti.load_magnitude` gives them) times
    exp(i phase). Echoes are read and combined in up to ``workers`` threads (default as
    :func:`t2starmap.bids.nifti.read_volumes`; decompression and numpy release the GIL),
    each into its own slot: the same values whatever the count. Each echo is combined a few
    slices at a time (:func:`_blocks`): its complex128 temporaries stay in the CPU's cache
    instead of streaming through memory, which two threads share. Raises BadDataError naming
    the file (shape, affine, units, unreadable)."""
    n_echo = len(parts.files)
    out = np.empty((*geometry.shape, n_echo), dtype=np.complex64)
    if parts.kind == "phase" and (magnitude is None or magnitude.shape != out.shape):
        got = None if magnitude is None else magnitude.shape
        raise ValueError(f"phase parts need the magnitude echoes {out.shape}, got {got}")

    def combine(k: int) -> None:
        paths = parts.files[k]
        if parts.kind == "real-imag":
            real, imag = read_part(paths[0], geometry), read_part(paths[1], geometry)
            for block in _blocks(geometry.shape):
                out[..., block, k] = real[..., block] + 1j * imag[..., block]
        else:
            assert magnitude is not None
            rad = phase_to_radians(read_part(paths[0], geometry), parts.units[k], paths[0])
            for block in _blocks(geometry.shape):
                out[..., block, k] = magnitude[..., block, k] * np.exp(
                    1j * rad[..., block].astype(np.float64)
                )

    workers = read_workers(workers, n_echo)
    if workers == 1:
        for k in range(n_echo):
            combine(k)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t2starmap-read") as pool:
            list(pool.map(combine, range(n_echo)))
    return out


#: Voxels the echoes are combined in at a time (:func:`load_complex`): about 0.5 MB of
#: complex128 temporaries.
COMBINE_BLOCK = 1 << 15


def _blocks(shape: tuple[int, ...]) -> list[slice]:
    """Slabs of whole planes along the last axis of a volume of ``shape``, each of about
    :data:`COMBINE_BLOCK` voxels (at least one plane)."""
    plane = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    step = max(1, COMBINE_BLOCK // max(plane, 1))
    return [slice(z, z + step) for z in range(0, shape[-1], step)]
