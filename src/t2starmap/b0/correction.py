"""Through-slice field-gradient correction of R2* (macroscopic B0 inhomogeneity).

Pure numpy/torch: no file I/O, no logging, no printing. Units: echo times in s, R2* in 1/s,
T2* in s, field (off-resonance frequency) in Hz, gradients in Hz/mm, lengths in mm. The echo
axis is the LAST axis of every signal.

A field that changes by dF Hz across a slice of thickness dz dephases the spins within the
voxel: for a rectangular slice profile and a field linear across the slice (gradient G = dF /
dz), the signal is S(TE) = S0 exp(-TE R2*) F(TE) with

    F(TE) = sinc(pi G dz TE),  sinc(x) = sin(x) / x

(Fernandez-Seara & Wehrli, MRM 2000;43:625). Fitting the plain exponential to such data reads
the sinc's extra decay as R2*. Real slice profiles are not rectangular, which changes F (Hirsch
& Preibisch, MRM 2013;70:1085 model the profile itself); the rectangle is what this module
assumes, and :mod:`t2starmap.sim.phantoms` measures what a smooth profile costs.

The steps:

1. :func:`slice_geometry`: slice thickness and spacing from the metadata (2D: SliceThickness,
   spacing from SpacingBetweenSlices or the affine; 3D: the voxel size along the slice axis).
2. :func:`through_slice_gradient`: G from the field map by central differences between the
   neighbouring slices, with a local unwrapping rule for the wrapped field of a complex fit.
3. the dephasing factor |F(TE)| per voxel and echo of the slice profile
   (:func:`t2starmap.b0.profiles.dephasing_factor`; given, named by the headers or estimated).
4. :func:`t2starmap.fit.fit_corrected`: the fit of S0 exp(-TE R2*) |F(TE)| (the magnitude
   model times a known factor, in the one solver), dropping echoes where |F| <
   ``FACTOR_THRESHOLD``, started from the uncorrected fit.
5. :func:`correct_through_slice`: all of it, with a per-voxel
   :class:`~t2starmap.fit.status.Correction` outcome. The field map and the uncorrected fit
   come from the caller: nothing is fitted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from t2starmap.b0.profile_fit import estimate_slice_profile
from t2starmap.b0.profile_result import ProfileEstimate
from t2starmap.b0.profiles import SliceProfile, dephasing_factor
from t2starmap.errors import NotApplicableError
from t2starmap.fit import FitResult, NoiseModel, check_echo_times, fit_corrected
from t2starmap.fit.corrected import FACTOR_THRESHOLD
from t2starmap.fit.dispatch import Compute, default_workers, map_chunks
from t2starmap.fit.phase import FieldMap
from t2starmap.fit.result import MAPS
from t2starmap.fit.status import Correction

#: The rectangular slice profile: a 3D acquisition's voxel along the slice axis.
RECTANGLE = SliceProfile(
    "rect", source="default", origin="(3D acquisition: the voxel is a box along the slice axis)"
)

__all__ = [
    "FACTOR_THRESHOLD",
    "SliceGeometry",
    "ThroughSliceCorrection",
    "correct_through_slice",
    "slice_geometry",
    "through_slice_gradient",
]

#: Echoes where the modelled |F(TE)| falls below ``FACTOR_THRESHOLD`` (0.3, defined with the
#: corrected fit in :mod:`t2starmap.fit.corrected`) are left out. Near the sinc's first zero
#: (pi G dz TE = pi) |F| is small and steep: an error of G (noise, a field not linear across
#: the slice, a slice profile that is not rectangular) changes |F| by a large factor there.
#: d ln|F| / d ln G = x cot x - 1 is -1.6 at |F| = 0.5 (x = 1.90 rad), -3.4 at 0.3 (x = 2.36),
#: -10.6 at 0.1 (x = 2.85): a 5 % error of G moves |F| by 8 %, 17 %, 53 %. On the simulator
#: (``python benchmarks/bench_b0.py``, its table is the record; field changes up to 36 Hz
#: across 3 mm, TE to 40 ms) the threshold hardly matters from 0 to 0.3 (median R2* error
#: 2.10-2.16 % at SNR 100, 7.17-7.32 % at SNR 30) and costs above it (2.28 % and 7.68 % at
#: 0.5): 0.3 is the most robust value that costs nothing measurable.

# --- geometry --------------------------------------------------------------------------------


def slice_geometry(
    mr_acquisition_type: str | None,
    affine: np.ndarray,
    slice_axis: int = 2,
    *,
    slice_thickness_mm: float | None = None,
    spacing_between_slices_mm: float | None = None,
) -> tuple[float, float]:
    """(thickness, spacing) of the slices in mm.

    ``mr_acquisition_type`` "2D": thickness is ``slice_thickness_mm`` (the sidecar's
    SliceThickness, required), spacing ``spacing_between_slices_mm`` (SpacingBetweenSlices) or,
    without it, the length of the affine's ``slice_axis`` column. "3D": both are the voxel size
    along the slice axis (the affine's column). Raises NotApplicableError for a missing or
    unknown acquisition type, a missing SliceThickness for 2D, or non-positive sizes.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    voxel = float(np.linalg.norm(a[:3, slice_axis]))
    kind = (mr_acquisition_type or "").upper()
    if kind == "3D":
        thickness, spacing = voxel, voxel
    elif kind == "2D":
        if slice_thickness_mm is None:
            raise NotApplicableError(
                "2D acquisition without SliceThickness: no through-slice correction"
            )
        thickness = float(slice_thickness_mm)
        spacing = voxel if spacing_between_slices_mm is None else float(spacing_between_slices_mm)
    else:
        raise NotApplicableError(
            f"MRAcquisitionType must be '2D' or '3D' for a through-slice correction, "
            f"got {mr_acquisition_type!r}"
        )
    if not (np.isfinite(thickness) and thickness > 0 and np.isfinite(spacing) and spacing > 0):
        raise NotApplicableError(
            f"slice thickness {thickness} mm and spacing {spacing} mm must be > 0"
        )
    return thickness, spacing


# --- the gradient ----------------------------------------------------------------------------


def through_slice_gradient(
    frequency_hz: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    slice_axis: int = 2,
    slice_spacing_mm: float | None = None,
    *,
    wrap_period_hz: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The field's derivative along the slice axis, (gradient in Hz/mm, valid), both (X, Y, Z).

    ``frequency_hz``: (X, Y, Z) field map in Hz. ``mask``: (X, Y, Z) bool, voxels whose field
    is to be trusted (inside the object and, for a complex fit, not failed). ``affine``: the
    image's 4x4 voxel-to-mm matrix; the spacing is the length of its ``slice_axis`` column
    unless ``slice_spacing_mm`` is given (SpacingBetweenSlices of a 2D acquisition). The sign
    is that of increasing index along ``slice_axis``.

    Central differences only: G_k = (f_{k+1} - f_{k-1}) / (2 spacing). A voxel is valid when
    it and both its slice neighbours are in ``mask``; edge slices never are (no one-sided
    differences: they are first-order and biased where the field curves).

    Wrapping (``wrap_period_hz`` P, e.g. 1 / dTE for a complex fit's field, which is only known
    modulo P): each neighbour difference d = f_{k+-1} - f_k is taken modulo P into [-P/2, P/2)
    before the central difference. The rule is right as long as the true field changes by
    less than P/2 between neighbouring slices (P = 263 Hz for dTE = 3.8 ms: 131 Hz a slice);
    a larger true change is aliased by P and gives a wrong gradient, which no local rule can
    detect. None: no unwrapping (a field that is already continuous).
    """
    f = np.asarray(frequency_hz, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if f.ndim != 3:
        raise ValueError(f"the field map must be 3-D (X, Y, Z), got shape {f.shape}")
    if m.shape != f.shape:
        raise ValueError(f"mask shape {m.shape} does not match the field map {f.shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    if f.shape[slice_axis] < 3:
        raise ValueError(
            f"a through-slice gradient needs at least 3 slices along axis {slice_axis}, "
            f"got {f.shape[slice_axis]}"
        )
    if slice_spacing_mm is None:
        spacing = float(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, slice_axis]))
    else:
        spacing = float(slice_spacing_mm)
    if not (np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"slice spacing must be a positive number of mm, got {spacing}")
    if wrap_period_hz is not None and not (np.isfinite(wrap_period_hz) and wrap_period_hz > 0):
        raise ValueError(f"wrap period must be a positive number of Hz, got {wrap_period_hz}")
    f = np.moveaxis(np.where(m & np.isfinite(f), f, 0.0), slice_axis, -1)
    ok = np.moveaxis(m & np.isfinite(np.asarray(frequency_hz)), slice_axis, -1)
    up = _unwrap(f[..., 2:] - f[..., 1:-1], wrap_period_hz)
    down = _unwrap(f[..., 1:-1] - f[..., :-2], wrap_period_hz)
    gradient = np.zeros_like(f)
    valid = np.zeros(f.shape, dtype=bool)
    valid[..., 1:-1] = ok[..., 1:-1] & ok[..., 2:] & ok[..., :-2]
    gradient[..., 1:-1] = np.where(valid[..., 1:-1], (up + down) / (2.0 * spacing), 0.0)
    return np.moveaxis(gradient, -1, slice_axis), np.moveaxis(valid, -1, slice_axis)


def _unwrap(difference: np.ndarray, period: float | None) -> np.ndarray:
    """A field difference taken modulo ``period`` into [-period/2, period/2) (None: as is)."""
    if period is None:
        return difference
    return difference - period * np.floor(difference / period + 0.5)


# --- the factor ------------------------------------------------------------------------------


# --- the driver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughSliceCorrection:
    """:func:`correct_through_slice`'s result; maps (X, Y, Z).

    corrected: the maps to report (corrected where ``status == Correction.CORRECTED``, the
    uncorrected fit's values elsewhere in the mask); uncorrected: the plain magnitude fit;
    gradient_hz_per_mm: G along the slice axis (0 where not valid); status: uint8
    :class:`~t2starmap.fit.status.Correction`; thickness_mm, spacing_mm, threshold,
    wrap_period_hz: what was used; field_method: how the field map was made (``field_hz``,
    the map itself); profile: the
    slice profile the dephasing factor came from; profile_estimate: how it was estimated from
    the data (None when it was given or named by the headers).
    """

    corrected: FitResult
    uncorrected: FitResult
    gradient_hz_per_mm: np.ndarray
    status: np.ndarray
    thickness_mm: float
    spacing_mm: float
    threshold: float
    wrap_period_hz: float | None
    field_method: str = ""
    profile: SliceProfile = RECTANGLE
    profile_estimate: ProfileEstimate | None = None
    #: The field map the gradient was taken from (Hz, wrapped modulo ``wrap_period_hz``).
    field_hz: np.ndarray | None = None


@dataclass(frozen=True)
class SliceGeometry:
    """The slices of a set, as the correction needs them, in one object.

    ``affine``: the image's 4x4 voxel-to-mm matrix; ``slice_axis``: the voxel axis (0-2) the
    slices are stacked along; ``mr_acquisition_type``, ``thickness_mm``, ``spacing_mm``: the
    sidecar's MRAcquisitionType, SliceThickness and SpacingBetweenSlices (see
    :func:`slice_geometry`); ``profile``: the slice profile (:mod:`t2starmap.b0.profiles`;
    None: estimated from the strong-gradient voxels,
    :func:`~t2starmap.b0.profile_fit.estimate_slice_profile`). A 3D acquisition's voxel is a
    box along the slice axis: the rectangle, whatever profile is given.
    """

    affine: np.ndarray
    slice_axis: int = 2
    mr_acquisition_type: str | None = None
    thickness_mm: float | None = None
    spacing_mm: float | None = None
    profile: SliceProfile | None = None

    def sizes(self) -> tuple[float, float]:
        """(thickness, spacing) in mm: :func:`slice_geometry`."""
        return slice_geometry(
            self.mr_acquisition_type,
            self.affine,
            self.slice_axis,
            slice_thickness_mm=self.thickness_mm,
            spacing_between_slices_mm=self.spacing_mm,
        )


def correct_through_slice(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    slices: SliceGeometry,
    *,
    field: FieldMap,
    uncorrected: FitResult,
    mask: np.ndarray | None = None,
    compute: Compute = Compute(),
    threshold: float = FACTOR_THRESHOLD,
) -> ThroughSliceCorrection:
    """Through-slice correction of a magnitude volume (X, Y, Z, n_echoes).

    ``field``: the field map and the voxels where it is not to be trusted
    (:class:`~t2starmap.fit.phase.FieldMap`). ``uncorrected``: the plain fit of the same
    voxels; voxels that cannot be corrected keep its values, and the corrected fit starts from
    it, with its noise model (noise-aware when it was). ``slices``: the slice geometry and
    profile (:class:`SliceGeometry`; :func:`slice_geometry` raises NotApplicableError when the
    metadata do not suffice). ``compute``: as for :func:`t2starmap.fit.fit_t2star`.
    """
    axis = slices.slice_axis
    mag, te, inside = _checked(magnitude, echo_times, mask, axis, field)
    thickness, spacing = slices.sizes()
    bad_field = np.asarray(field.untrusted, dtype=bool)
    gradient, valid = through_slice_gradient(
        field.frequency_hz, inside & ~bad_field, slices.affine, axis, spacing,
        wrap_period_hz=field.wrap_period_hz,
    )  # fmt: skip
    status = _status(inside, bad_field, valid, axis)
    noise = NoiseModel(
        uncorrected.noise_sigma, uncorrected.noise_coils, uncorrected.noise_model != "gaussian"
    )
    workers = compute.workers
    profile, estimate = _slice_profile(slices, mag, te, gradient, valid, noise.sigma, workers)
    corr = fit_corrected(
        mag, te, _factor_where(valid, profile, gradient, thickness, te, workers), mask=valid,
        noise=noise, start=uncorrected, compute=compute, threshold=threshold,
    )  # fmt: skip
    status[valid & corr.too_few.cpu().numpy()] = Correction.FEW_ECHOES
    use = torch.as_tensor(status == Correction.CORRECTED)
    return ThroughSliceCorrection(
        corrected=_merge(corr.result, uncorrected, use),
        uncorrected=uncorrected,
        gradient_hz_per_mm=np.where(valid, gradient, 0.0).astype(np.float32),
        status=status,
        thickness_mm=thickness,
        spacing_mm=spacing,
        threshold=threshold,
        wrap_period_hz=field.wrap_period_hz,
        field_method=field.method,
        profile=profile,
        profile_estimate=estimate,
        field_hz=np.asarray(field.frequency_hz, dtype=np.float32),
    )


#: Voxels per chunk of :func:`_factor_where`: about 1 MB of float64 temporaries each (8192
#: voxels split 1.9x on 2 workers at 128x128x24, 65536 only 1.1x: too few chunks to share).
FACTOR_CHUNK = 8192


def _factor_where(
    valid: np.ndarray,
    profile: SliceProfile,
    gradient: np.ndarray,
    thickness: float,
    te: np.ndarray,
    workers: int | None,
) -> np.ndarray:
    """|F(TE)| (X, Y, Z, E) float64 at the ``valid`` voxels, 0 elsewhere (the corrected fit
    reads no other): computed in chunks of :data:`FACTOR_CHUNK` voxels on ``workers`` threads
    (numpy's transcendental functions release the GIL; on the whole volume in one thread this
    was half of the correction's time with --nprocs 2)."""
    factor = np.zeros((*valid.shape, te.size))
    index = np.flatnonzero(valid)
    g = gradient.reshape(-1)[index]
    out = factor.reshape(-1, te.size)

    def chunk(start: int) -> None:
        rows = index[start : start + FACTOR_CHUNK]
        out[rows] = np.abs(dephasing_factor(profile, g[start : start + rows.size], thickness, te))

    starts = range(0, index.size, FACTOR_CHUNK)
    for _ in map_chunks(chunk, starts, default_workers() if workers is None else workers):
        pass
    return factor


def _slice_profile(
    slices: SliceGeometry,
    magnitude: np.ndarray,
    te: np.ndarray,
    gradient: np.ndarray,
    valid: np.ndarray,
    sigma: float | None,
    workers: int | None,
) -> tuple[SliceProfile, ProfileEstimate | None]:
    """The profile the factor comes from: the rectangle for a 3D acquisition (its voxel is a
    box), else the one given, else estimated from the strong-gradient voxels (with how)."""
    if str(slices.mr_acquisition_type).upper() == "3D":
        return RECTANGLE, None
    if slices.profile is not None:
        return slices.profile, None
    thickness = slices.sizes()[0]
    estimate = estimate_slice_profile(
        magnitude, te, gradient, thickness, valid, sigma, workers=workers
    )
    return estimate.profile, estimate


def _checked(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    mask: np.ndarray | None,
    slice_axis: int,
    field: FieldMap,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(magnitude, echo times, mask) for :func:`correct_through_slice`; ValueError naming what
    does not fit: 4-D magnitude, >= 3 echoes, >= 3 slices, shapes of mask and field map."""
    mag = np.asarray(magnitude)
    if mag.ndim != 4:
        raise ValueError(f"magnitude must be (X, Y, Z, n_echoes), got shape {mag.shape}")
    te = check_echo_times(np.asarray(echo_times, dtype=np.float64))
    if mag.shape[-1] != te.size:
        raise ValueError(f"magnitude has {mag.shape[-1]} echoes but {te.size} echo times")
    if te.size < 3:
        raise NotApplicableError(
            f"a through-slice correction needs at least 3 echoes, got {te.size}: with two the "
            "decay and the dephasing cannot be told apart"
        )
    spatial = mag.shape[:-1]
    inside = np.ones(spatial, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != spatial:
        raise ValueError(f"mask shape {inside.shape} does not match the magnitude {spatial}")
    if spatial[slice_axis] < 3:
        raise NotApplicableError(
            f"a through-slice correction needs at least 3 slices, got {spatial[slice_axis]}"
        )
    for name, value in (("field map", field.frequency_hz), ("field trust", field.untrusted)):
        if np.shape(value) != spatial:
            raise ValueError(f"{name} shape {np.shape(value)} does not match {spatial}")
    return mag, te, inside


def _status(
    inside: np.ndarray, bad_field: np.ndarray, valid: np.ndarray, slice_axis: int
) -> np.ndarray:
    """Per-voxel :class:`Correction` before the fit (FEW_ECHOES is set after it)."""
    n = inside.shape[slice_axis]
    edge = np.zeros(inside.shape, dtype=bool)
    index = [slice(None)] * 3
    for k in (0, n - 1):
        index[slice_axis] = slice(k, k + 1)
        edge[tuple(index)] = True
    m = np.moveaxis(inside, slice_axis, -1)
    b = np.moveaxis(inside & bad_field, slice_axis, -1)
    border = np.zeros(m.shape, dtype=bool)
    border[..., 1:-1] = ~(m[..., 2:] & m[..., :-2])
    phase = np.zeros(m.shape, dtype=bool)
    phase[..., 1:-1] = b[..., 1:-1] | b[..., 2:] | b[..., :-2]
    border, phase = np.moveaxis(border, -1, slice_axis), np.moveaxis(phase, -1, slice_axis)
    status = np.full(inside.shape, Correction.OUTSIDE, dtype=np.uint8)
    status[inside] = Correction.CORRECTED
    status[inside & phase] = Correction.FIELD_UNTRUSTED
    status[inside & border] = Correction.MASK_BORDER
    status[inside & edge] = Correction.EDGE_SLICE
    assert not np.any(valid & (status != Correction.CORRECTED))
    status[inside & ~valid & (status == Correction.CORRECTED)] = Correction.FIELD_UNTRUSTED
    return status


def _merge(corrected: FitResult, uncorrected: FitResult, use: torch.Tensor) -> FitResult:
    """The corrected fit's maps where ``use``, the uncorrected fit's elsewhere."""
    maps: dict[str, Any] = {}
    keys = [*MAPS, "failed", "reason"]
    for key in keys:
        a, b = getattr(corrected, key), getattr(uncorrected, key)
        maps[key] = torch.where(use.to(a.device), a, b.to(device=a.device, dtype=a.dtype))
    return FitResult(
        **maps,
        method="through-slice",
        device=corrected.device,
        noise_sigma=corrected.noise_sigma,
        noise_model=corrected.noise_model,
        noise_coils=corrected.noise_coils,
        solver_runs=corrected.solver_runs + uncorrected.solver_runs,
    )
