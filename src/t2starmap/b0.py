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
assumes, and :mod:`t2starmap.simulate` measures what a smooth profile costs.

The steps:

1. :func:`slice_geometry`: slice thickness and spacing from the metadata (2D: SliceThickness,
   spacing from SpacingBetweenSlices or the affine; 3D: the voxel size along the slice axis).
2. :func:`through_slice_gradient`: G from the field map by central differences between the
   neighbouring slices, with a local unwrapping rule for the wrapped field of a complex fit.
3. :func:`sinc_factor`: |F(TE)| per voxel and echo.
4. :func:`fit_corrected`: the fit of S0 exp(-TE R2*) |F(TE)|, dropping echoes where
   |F| < ``FACTOR_THRESHOLD``.
5. :func:`correct_through_slice`: all of it, with a per-voxel :class:`Status`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from t2starmap import fit as _fit
from t2starmap.fitresult import (
    FitResult,
    check_echo_times,
    fit_device_and_chunk,
    flat_mask,
)

__all__ = [
    "FACTOR_THRESHOLD",
    "Status",
    "ThroughSliceCorrection",
    "correct_through_slice",
    "fit_corrected",
    "sinc_factor",
    "slice_geometry",
    "through_slice_gradient",
]

#: Echoes where the modelled |F(TE)| falls below this are left out of the corrected fit. Near
#: the sinc's first zero (pi G dz TE = pi) |F| is small and steep: an error of G (noise, a
#: field not linear across the slice, a slice profile that is not rectangular) changes |F| by
#: a large factor there. d ln|F| / d ln G = x cot x - 1 is -1.6 at |F| = 0.5 (x = 1.90 rad),
#: -3.4 at 0.3 (x = 2.36), -10.6 at 0.1 (x = 2.85): a 5 % error of G moves |F| by 8 %, 17 %,
#: 53 %. On the simulator (``python benchmarks/bench_b0.py``, its table is the record; field
#: changes up to 36 Hz across 3 mm, TE to 40 ms) the threshold hardly matters from 0 to 0.3
#: (median R2* error 2.10-2.16 % at SNR 100, 7.17-7.32 % at SNR 30) and costs above it (2.28 %
#: and 7.68 % at 0.5): 0.3 is the most robust value that costs nothing measurable.
#: What the sidecars cite for the correction.
REFERENCES = (
    "Fernandez-Seara MA, Wehrli FW. Postprocessing technique to correct for background gradients "
    "in image-based R2* measurements. Magn Reson Med 2000;44:358-366",
    "Hirsch NM, Preibisch C. T2* mapping with background gradient correction using different "
    "excitation pulse shapes. AJNR Am J Neuroradiol 2013;34:E65-E68",
)
FACTOR_THRESHOLD = 0.3
#: Fewest echoes the corrected fit keeps; below it the voxel is fitted uncorrected.
MIN_ECHOES = 2
_LM_MAX_ITER = 20
_LM_TOL = 1e-4


class Status(enum.IntEnum):
    """Per-voxel outcome of :func:`correct_through_slice` (uint8 map; 0 outside the mask)."""

    OUTSIDE = 0
    CORRECTED = 1
    EDGE_SLICE = 2  # first or last slice: no central difference
    MASK_BORDER = 3  # a slice neighbour is outside the mask
    PHASE_MODEL = 4  # this voxel's or a neighbour's field estimate failed (complex fit)
    FEW_ECHOES = 5  # fewer than MIN_ECHOES echoes with |F| >= threshold


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
    along the slice axis (the affine's column). Raises ValueError for a missing or unknown
    acquisition type, a missing SliceThickness for 2D, or non-positive sizes.
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
            raise ValueError("2D acquisition without SliceThickness: no through-slice correction")
        thickness = float(slice_thickness_mm)
        spacing = voxel if spacing_between_slices_mm is None else float(spacing_between_slices_mm)
    else:
        raise ValueError(
            f"MRAcquisitionType must be '2D' or '3D' for a through-slice correction, "
            f"got {mr_acquisition_type!r}"
        )
    if not (np.isfinite(thickness) and thickness > 0 and np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"slice thickness {thickness} mm and spacing {spacing} mm must be > 0")
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


def sinc_factor(
    gradient_hz_per_mm: np.ndarray | torch.Tensor,
    thickness_mm: float,
    echo_times: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """|F(TE)| = |sinc(pi G dz TE)|, sinc(x) = sin(x)/x: the signal fraction left by a field
    gradient G (Hz/mm) across a rectangular slice of thickness dz (mm) at each echo time (s).

    Returns (..., n_echoes) float64, the gradient's shape with the echo axis appended, in
    [0, 1]. numpy's ``np.sinc`` is the normalised sinc, sin(pi u)/(pi u), so u = G dz TE.
    """
    if not (np.isfinite(thickness_mm) and thickness_mm > 0):
        raise ValueError(f"slice thickness must be a positive number of mm, got {thickness_mm}")
    te = check_echo_times(np.asarray(echo_times, dtype=np.float64))
    g = np.asarray(gradient_hz_per_mm, dtype=np.float64)
    return np.abs(np.sinc(g[..., None] * float(thickness_mm) * te))


# --- the corrected fit -----------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectedFit:
    """:func:`fit_corrected`'s result. ``result``: the maps (see FitResult; ``method`` is
    "through-slice"); ``echoes_kept``: (...) int, echoes the fit used (0 outside the mask);
    ``too_few``: (...) bool, fewer than ``MIN_ECHOES`` echoes had |F| >= the threshold, so the
    voxel was fitted without the factor (its maps are the uncorrected fit's)."""

    result: FitResult
    echoes_kept: torch.Tensor
    too_few: torch.Tensor
    threshold: float


def fit_corrected(
    magnitude: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray | torch.Tensor,
    factor: np.ndarray | torch.Tensor,
    *,
    mask: np.ndarray | torch.Tensor | None = None,
    noise_sigma: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    threshold: float = FACTOR_THRESHOLD,
) -> CorrectedFit:
    """Fit S(TE) = S0 exp(-TE R2*) |F(TE)| in every voxel, |F| known (``factor``).

    ``magnitude``: (..., n_echoes); ``factor``: the same shape, |F| in [0, 1] (from
    :func:`sinc_factor`); ``echo_times``: (n_echoes,) s. Echoes with |F| < ``threshold`` are
    left out; a voxel left with fewer than ``MIN_ECHOES`` is fitted with |F| = 1 on all echoes
    and flagged ``too_few``. The fit: a log-linear start on M/|F| (weights M^2), then
    Levenberg-Marquardt on sum_k w_k (S0 |F_k| exp(-TE_k R2*) - M_k)^2, w_k 0/1, as
    :mod:`t2starmap.fit` does for the plain model (Gaussian noise; its bounds, failure flags and
    T2* = 1/R2* in :func:`t2starmap.fit._derive`). Standard errors sigma^2 (J^T J)^-1 with
    sigma = ``noise_sigma`` when given, else the residual estimate (0 with two echoes kept).
    """
    if not (0.0 <= threshold < 1.0):
        raise ValueError(f"the |F| threshold must be in [0, 1), got {threshold}")
    dev, chunk_size = fit_device_and_chunk(
        chunk_size, noise_sigma, device, (_fit.DEFAULT_CHUNK, _fit.DEFAULT_CUDA_CHUNK)
    )
    te_np = check_echo_times(echo_times)
    data = torch.as_tensor(magnitude)
    fac = torch.as_tensor(factor)
    if data.ndim < 1 or data.shape[-1] != te_np.size:
        raise ValueError(
            f"magnitude has {data.shape[-1] if data.ndim else 0} echoes on its last axis but "
            f"{te_np.size} echo times were given"
        )
    if tuple(fac.shape) != tuple(data.shape):
        raise ValueError(f"factor shape {tuple(fac.shape)} does not match {tuple(data.shape)}")
    spatial = tuple(data.shape[:-1])
    n_echo = te_np.size
    flat, flat_f = data.reshape(-1, n_echo), fac.reshape(-1, n_echo)
    n_vox = flat.shape[0]
    inside = flat_mask(mask, spatial)
    index = torch.nonzero(inside).reshape(-1)
    order = [int(k) for k in np.argsort(te_np, kind="stable")]
    echoes = _fit._Echoes(
        te=torch.as_tensor(te_np[order], dtype=dtype, device=dev)[:, None],
        distinct=bool(np.unique(te_np).size == te_np.size),
    )
    out: dict[str, Any] = {k: torch.zeros(n_vox, dtype=dtype, device=dev) for k in _fit._MAPS}
    reason = torch.zeros(n_vox, dtype=torch.uint8, device=dev)
    kept = torch.zeros(n_vox, dtype=torch.int64, device=dev)
    too_few = torch.zeros(n_vox, dtype=torch.bool, device=dev)
    for start in range(0, index.numel(), chunk_size):
        sel = index[start : start + chunk_size]
        rows = flat[sel.to(flat.device)].to(device=dev, dtype=dtype)
        frows = flat_f[sel.to(flat_f.device)].to(device=dev, dtype=dtype)
        y = torch.stack([rows[:, k] for k in order])
        f = torch.stack([frows[:, k] for k in order]).nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
        maps, bad, n_kept, few = _kernel_corrected(y, f, echoes, noise_sigma, threshold)
        sel = sel.to(dev)
        for k in _fit._MAPS:
            out[k][sel] = maps[k]
        reason[sel] = bad.to(torch.uint8)  # Failure bits, as fit._derive makes them
        kept[sel] = n_kept
        too_few[sel] = few
    result = FitResult(
        **{k: v.reshape(spatial) for k, v in out.items()},
        failed=(reason != 0).reshape(spatial),
        reason=reason.reshape(spatial),
        method="through-slice",
        device=str(dev),
        noise_sigma=noise_sigma,
    )
    return CorrectedFit(result, kept.reshape(spatial), too_few.reshape(spatial), threshold)


def _kernel_corrected(
    y: torch.Tensor,
    factor: torch.Tensor,
    echoes: _fit._Echoes,
    sigma: float | None,
    threshold: float,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk, echo-major: y, factor (E, n). Returns (maps, failed (float), echoes kept,
    too few (bool))."""
    yn, usable, scale = _fit._prepare(y, echoes, 0.0)
    te = echoes.te
    w = torch.ge(factor, threshold).to(yn.dtype)
    n_kept = w.sum(0)
    few = n_kept < MIN_ECHOES - 0.5
    # Too few echoes left: fit all of them without the factor.
    factor = torch.where(few, torch.ones_like(factor), factor)
    w = torch.where(few, torch.ones_like(w), w)
    n_kept = w.sum(0)
    w = w * _fit._gt(yn, 0.0)  # log-linear start: positive samples only
    safe_f = factor.clamp_min(threshold if threshold > 0 else _fit._tiny(yn))
    start_w = w * yn * yn
    s0n, r2 = _fit._loglinear(yn / safe_f, te, start_w)
    w = torch.ge(factor, threshold).to(yn.dtype).clamp_min(few.to(yn.dtype))
    p, r2, a11, a12, a22, cost, converged = _weighted_lm(yn, factor * w, te, s0n, r2)
    if sigma is not None:
        var = (sigma / scale) ** 2
    else:
        dof = (n_kept - 2.0).clamp_min(1.0)
        var = torch.where(n_kept > 2.5, cost / dof, torch.zeros_like(cost))
    r2_se, s0_se = _fit._inverse_diagonal_sqrt(a11, a12, a22, var)
    rmse = torch.sqrt(cost / n_kept.clamp_min(1.0))
    maps, bad = _fit._derive(p, r2, scale, usable, converged, r2_se, s0_se, rmse)
    return maps, bad, (n_kept * usable).to(torch.int64), few & (usable > 0.5)


def _weighted_lm(
    yn: torch.Tensor, g: torch.Tensor, te: torch.Tensor, p: torch.Tensor, r2: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Batched LM on (p, R2*) for sum_k (p g_k exp(-TE_k R2*) - y_k w_k)^2 where g = w |F|
    (w 0/1 drops an echo: g_k = 0 there, so y_k must be masked too). (E, n) inputs, te (E, 1).
    Returns (p, R2*, a11, a12, a22, cost, converged) at the last accepted point, each (n,)."""
    yw = yn * torch.gt(g, 0.0).to(yn.dtype)
    r2_max = _fit._R2_MAX
    p = torch.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0).clamp(-_fit._P_MAX, _fit._P_MAX)
    r2 = torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, r2_max)

    def point(
        p: torch.Tensor, r2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        m = g * torch.exp(-te * r2)  # d model / d p
        resid = p * m - yw
        jr = -p * te * m  # d model / d R2*
        return (
            (m * m).sum(0),
            (m * jr).sum(0),
            (jr * jr).sum(0),
            (m * resid).sum(0),
            (jr * resid).sum(0),
            (resid * resid).sum(0),
        )

    a11, a12, a22, g1, g2, cost = point(p, r2)
    lam = torch.full_like(p, 1e-3)
    converged = torch.zeros_like(p)
    tiny = _fit._tiny(p)
    for _ in range(_LM_MAX_ITER):
        d11, d22 = a11 * (1.0 + lam), a22 * (1.0 + lam)
        det = (d11 * d22 - a12 * a12).clamp_min(tiny)
        dp = torch.nan_to_num((a12 * g2 - d22 * g1) / det)
        dr = torch.nan_to_num((a12 * g1 - d11 * g2) / det)
        small = (dp.abs() < _LM_TOL * p.abs().clamp_min(1e-12)) & (
            dr.abs() < _LM_TOL * r2.abs().clamp_min(1.0)
        )
        converged = torch.maximum(converged, small.to(p.dtype))
        if bool(converged.min() > 0.5):
            break
        tp = (p + dp).clamp(-_fit._P_MAX, _fit._P_MAX)
        tr = (r2 + dr).clamp(0.0, r2_max)
        trial = point(tp, tr)
        better = (trial[5] < cost) & (converged < 0.5)
        p, r2 = torch.where(better, tp, p), torch.where(better, tr, r2)
        now = (a11, a12, a22, g1, g2, cost)
        a11, a12, a22, g1, g2, cost = (
            torch.where(better, t, c) for t, c in zip(trial, now, strict=True)
        )
        lam = torch.where(better, lam * 0.1, lam * 10.0).clamp(1e-9, 1e9)
    floor = 1e-10 * (yw * yw).sum(0)
    converged = torch.maximum(converged, (cost <= floor).to(p.dtype))
    return p, r2, a11, a12, a22, cost, converged


# --- the driver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughSliceCorrection:
    """:func:`correct_through_slice`'s result; maps (X, Y, Z).

    corrected: the maps to report (corrected where ``status == CORRECTED``, the uncorrected
    fit's values elsewhere in the mask); uncorrected: the plain magnitude fit;
    gradient_hz_per_mm: G along the slice axis (0 where not valid); status: uint8
    :class:`Status`; factor_min: (X, Y, Z) smallest |F| over the echoes kept (1 where not
    corrected); thickness_mm, spacing_mm, threshold, wrap_period_hz: what was used.
    """

    corrected: FitResult
    uncorrected: FitResult
    gradient_hz_per_mm: np.ndarray
    status: np.ndarray
    thickness_mm: float
    spacing_mm: float
    threshold: float
    wrap_period_hz: float | None


def correct_through_slice(
    magnitude: np.ndarray,
    field: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    affine: np.ndarray,
    *,
    mr_acquisition_type: str | None,
    slice_thickness_mm: float | None = None,
    spacing_between_slices_mm: float | None = None,
    slice_axis: int = 2,
    mask: np.ndarray | None = None,
    field_failed: np.ndarray | None = None,
    wrap_period_hz: float | None = None,
    noise_sigma: float | None = None,
    uncorrected: FitResult | None = None,
    method: str = "nlls-gaussian",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    threshold: float = FACTOR_THRESHOLD,
) -> ThroughSliceCorrection:
    """Through-slice correction of a magnitude volume (X, Y, Z, n_echoes).

    ``field``: either the complex signal (X, Y, Z, n_echoes), which is fitted here with
    :func:`t2starmap.fit_complex.fit_complex` (its field map, wrapped at 1/dTE_min, and its
    failures), or a field map in Hz (X, Y, Z) with ``field_failed`` (X, Y, Z bool, voxels whose
    field is not to be trusted) and ``wrap_period_hz`` (the period it is known modulo; None
    for a continuous field). ``mr_acquisition_type``, ``slice_thickness_mm``,
    ``spacing_between_slices_mm``: the sidecar's MRAcquisitionType, SliceThickness and
    SpacingBetweenSlices (see :func:`slice_geometry`, which raises ValueError when they do not
    suffice). ``uncorrected``: the plain fit when the caller has it already, else it is made
    here with ``fit_t2star(method=method)``; voxels that cannot be corrected keep its values.
    """
    mag = np.asarray(magnitude)
    if mag.ndim != 4:
        raise ValueError(f"magnitude must be (X, Y, Z, n_echoes), got shape {mag.shape}")
    te = check_echo_times(np.asarray(echo_times, dtype=np.float64))
    if mag.shape[-1] != te.size:
        raise ValueError(f"magnitude has {mag.shape[-1]} echoes but {te.size} echo times")
    if te.size < 3:
        raise ValueError(
            f"a through-slice correction needs at least 3 echoes, got {te.size}: with two the "
            "decay and the dephasing cannot be told apart"
        )
    spatial = mag.shape[:-1]
    inside = np.ones(spatial, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != spatial:
        raise ValueError(f"mask shape {inside.shape} does not match the magnitude {spatial}")
    thickness, spacing = slice_geometry(
        mr_acquisition_type,
        affine,
        slice_axis,
        slice_thickness_mm=slice_thickness_mm,
        spacing_between_slices_mm=spacing_between_slices_mm,
    )
    if spatial[slice_axis] < 3:
        raise ValueError(
            f"a through-slice correction needs at least 3 slices, got {spatial[slice_axis]}"
        )
    fld = np.asarray(field)
    if np.iscomplexobj(fld):
        if fld.shape != mag.shape:
            raise ValueError(f"complex signal shape {fld.shape} does not match {mag.shape}")
        from t2starmap.fit_complex import fit_complex, frequency_limit

        cfit = fit_complex(fld, te, mask=inside, device=device, noise_sigma=noise_sigma)
        frequency = cfit.frequency.cpu().numpy().astype(np.float64)
        bad_field = cfit.failed.cpu().numpy()
        wrap_period_hz = 2.0 * frequency_limit(te)
    else:
        if fld.shape != spatial:
            raise ValueError(f"field map shape {fld.shape} does not match {spatial}")
        frequency = fld.astype(np.float64)
        bad_field = (
            np.zeros(spatial, dtype=bool) if field_failed is None else np.asarray(field_failed)
        )
        if bad_field.shape != spatial:
            raise ValueError(f"field_failed shape {bad_field.shape} does not match {spatial}")
    gradient, valid = through_slice_gradient(
        frequency,
        inside & ~bad_field,
        affine,
        slice_axis,
        spacing,
        wrap_period_hz=wrap_period_hz,
    )
    status = _status(inside, bad_field, valid, slice_axis)
    if uncorrected is None:
        uncorrected = _fit.fit_t2star(
            mag, te, method=method, mask=inside, device=device, noise_sigma=noise_sigma,
            dtype=dtype,
        )  # fmt: skip
    factor = sinc_factor(gradient, thickness, te)
    corr = fit_corrected(
        mag,
        te,
        factor,
        mask=valid,
        noise_sigma=noise_sigma,
        device=device,
        dtype=dtype,
        threshold=threshold,
    )
    few = corr.too_few.cpu().numpy()
    status[valid & few] = Status.FEW_ECHOES
    use = torch.as_tensor(status == Status.CORRECTED)
    corrected = _merge(corr.result, uncorrected, use)
    return ThroughSliceCorrection(
        corrected=corrected,
        uncorrected=uncorrected,
        gradient_hz_per_mm=np.where(valid, gradient, 0.0).astype(np.float32),
        status=status,
        thickness_mm=thickness,
        spacing_mm=spacing,
        threshold=threshold,
        wrap_period_hz=wrap_period_hz,
    )


def _status(
    inside: np.ndarray, bad_field: np.ndarray, valid: np.ndarray, slice_axis: int
) -> np.ndarray:
    """Per-voxel :class:`Status` before the fit (FEW_ECHOES is set after it)."""
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
    status = np.full(inside.shape, Status.OUTSIDE, dtype=np.uint8)
    status[inside] = Status.CORRECTED
    status[inside & phase] = Status.PHASE_MODEL
    status[inside & border] = Status.MASK_BORDER
    status[inside & edge] = Status.EDGE_SLICE
    assert not np.any(valid & (status != Status.CORRECTED))
    status[inside & ~valid & (status == Status.CORRECTED)] = Status.PHASE_MODEL
    return status


def _merge(corrected: FitResult, uncorrected: FitResult, use: torch.Tensor) -> FitResult:
    """The corrected fit's maps where ``use``, the uncorrected fit's elsewhere."""
    maps: dict[str, Any] = {}
    keys = ["t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se", "failed"]
    if corrected.reason is not None and uncorrected.reason is not None:
        keys.append("reason")
    for key in keys:
        a, b = getattr(corrected, key), getattr(uncorrected, key)
        maps[key] = torch.where(use.to(a.device), a, b.to(device=a.device, dtype=a.dtype))
    return FitResult(
        **maps,
        method="through-slice",
        device=corrected.device,
        noise_sigma=corrected.noise_sigma,
    )
