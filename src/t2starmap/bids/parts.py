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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from t2starmap.bids.layout import EchoSet
from t2starmap.bids.nifti import (
    Geometry,
    MagnitudeEchoes,
    checked_stack,
    echo_task,
    magnitude_stack,
    read_magnitude,
    read_part,
    read_workers,
)
from t2starmap.bids.tasks import raised, run_tasks
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
    exp(i phase). The files are read in up to ``workers`` threads (default as
    :func:`t2starmap.bids.nifti.read_volumes`; decompression and numpy release the GIL),
    each echo combined into its own slot (:class:`_Assembly`): the same values whatever the
    count. Raises BadDataError naming the file (shape, affine, units, unreadable)."""
    shape = (*geometry.shape, len(parts.files))
    if parts.kind == "phase" and (magnitude is None or magnitude.shape != shape):
        got = None if magnitude is None else magnitude.shape
        raise ValueError(f"phase parts need the magnitude echoes {shape}, got {got}")
    assembly = _Assembly(parts, geometry, magnitude, magnitude_pending=False)
    tasks = [task for k in range(len(parts.files)) for task in assembly.tasks(k)]
    for outcome in run_tasks(tasks, read_workers(workers, len(tasks))):
        raised(outcome)
    return assembly.out


@dataclass(frozen=True)
class SetRead:
    """What :func:`read_echo_set` read: the magnitude echoes, and the complex signal (None
    without parts) or the error reading the parts raised; ``from_magnitude``: the signal is
    the phase combined with the magnitude."""

    echoes: MagnitudeEchoes
    _signal: Any
    from_magnitude: bool = False

    def signal(self) -> np.ndarray | None:
        """The complex signal (:func:`load_complex`'s; from phase, NaN in the echoes'
        unusable voxels, as the NaN magnitude gives); raises the first part file's error."""
        signal = raised(self._signal)
        if signal is not None and self.from_magnitude and self.echoes.unusable is not None:
            signal[self.echoes.unusable] = complex(np.nan, np.nan)  # as NaN x exp(i phase)
        return cast("np.ndarray | None", signal)


def read_echo_set(
    paths: Sequence[Path],
    parts: Parts | None,
    geometry: Geometry,
    workers: int | None = None,
    *,
    integers: bool = False,
) -> SetRead:
    """The magnitude echoes (:func:`t2starmap.bids.nifti.read_magnitude`) and, when
    ``parts`` is given, the complex signal (:func:`load_complex`), read in ONE pool of up to
    ``workers`` threads: a task per file, all queued at once, echo by echo, each echo
    combined once all its files are in; the same values as the two read one after the
    other. Raises the first magnitude echo's error; a part's error is raised by
    :meth:`SetRead.signal`."""
    if parts is None:
        return SetRead(read_magnitude(paths, geometry, workers, integers=integers), None)
    out = magnitude_stack(paths, geometry, integers)
    assembly = _Assembly(parts, geometry, out, magnitude_pending=parts.kind == "phase")
    done = assembly.arrived if parts.kind == "phase" else None
    tasks = []
    for k in range(len(paths)):
        tasks += [echo_task(paths, k, out, done), *assembly.tasks(k)]
    outcomes = run_tasks(tasks, read_workers(workers, len(tasks)))
    step = 1 + len(parts.files[0])
    echoes = checked_stack(out, outcomes[::step])
    failed = [o for k in range(len(paths)) for o in outcomes[k * step + 1 : (k + 1) * step]]
    first = next((o for o in failed if o is not None), None)
    return SetRead(echoes, assembly.out if first is None else first, parts.kind == "phase")


class _Assembly:
    """The complex signal of ``parts``, put together as its files come in: each echo is
    combined by the task that brings its last file (its parts and, with
    ``magnitude_pending``, its magnitude echo in ``magnitude``, announced by
    :meth:`arrived`), a few slices at a time (:func:`_blocks`), so that its complex128
    temporaries stay in the CPU's cache."""

    def __init__(
        self,
        parts: Parts,
        geometry: Geometry,
        magnitude: np.ndarray | None,
        magnitude_pending: bool,
    ) -> None:
        self.parts, self.geometry, self.magnitude = parts, geometry, magnitude
        self.out = np.empty((*geometry.shape, len(parts.files)), dtype=np.complex64)
        self._lock = threading.Lock()
        self._missing = [len(files) + magnitude_pending for files in parts.files]
        self._pieces: list[dict[int, np.ndarray]] = [{} for _ in parts.files]

    def tasks(self, k: int) -> list[Callable[[], None]]:
        """The tasks that read the part files of echo ``k``."""
        return [partial(self._read, k, i) for i in range(len(self.parts.files[k]))]

    def _read(self, k: int, i: int) -> None:
        path = self.parts.files[k][i]
        values = read_part(path, self.geometry)
        if self.parts.kind == "phase":
            values = phase_to_radians(values, self.parts.units[k], path)
        self._pieces[k][i] = values
        self.arrived(k)

    def arrived(self, k: int) -> None:
        """One more file of echo ``k`` is in; the last one combines the echo."""
        with self._lock:
            self._missing[k] -= 1
            last = self._missing[k] == 0
        if last:
            self._combine(k, self._pieces[k])
            self._pieces[k] = {}

    def _combine(self, k: int, pieces: dict[int, np.ndarray]) -> None:
        out = self.out
        if self.parts.kind == "real-imag":
            for block in _blocks(self.geometry.shape):
                out[..., block, k] = pieces[0][..., block] + 1j * pieces[1][..., block]
            return
        assert self.magnitude is not None
        for block in _blocks(self.geometry.shape):
            out[..., block, k] = self.magnitude[..., block, k] * np.exp(
                1j * pieces[0][..., block].astype(np.float64)
            )


#: Voxels the echoes are combined in at a time (:func:`load_complex`): about 0.5 MB of
#: complex128 temporaries.
COMBINE_BLOCK = 1 << 15


def _blocks(shape: tuple[int, ...]) -> list[slice]:
    """Slabs of whole planes along the last axis of a volume of ``shape``, each of about
    :data:`COMBINE_BLOCK` voxels (at least one plane)."""
    plane = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    step = max(1, COMBINE_BLOCK // max(plane, 1))
    return [slice(z, z + step) for z in range(0, shape[-1], step)]
