"""Slice profiles and the through-slice dephasing factor F(TE) they give.

Pure numpy, no file I/O. The profile estimated from the data is in
:mod:`t2starmap.b0.profile_fit`; a profile's spelling (``--slice-profile``, a TSV table) is read
by :mod:`t2starmap.bids.slice_profiles`, the profile the headers name by
:mod:`t2starmap.bids.slice_headers`. No logging, no printing. Units:
echo times in s, field gradients in Hz/mm (the field's change along the slice axis, as
:func:`t2starmap.b0.correction.through_slice_gradient` gives it), lengths in mm, positions
through the slice ``x`` in slice thicknesses. Echo axis last.

Physics. A 2D acquisition excites a slice whose transverse magnetisation across the slice is
the profile p(x). A field gradient G along the slice axis makes the spins at x precess at
G x dz Hz more than those at the centre, and the voxel's signal at echo time TE is multiplied by

    F(k) = integral p(x) exp(2 pi i k x) dx / integral p(x) dx,    k = G dz TE,

the Fourier transform of the profile at k cycles per slice thickness (Fernandez-Seara & Wehrli,
MRM 2000; Preibisch et al., MRM 2008; Baudrexel et al., MRM 2009; Hirsch & Preibisch, AJNR
2013). In the small-tip regime the profile is the Fourier transform of the RF envelope b(t),
so F is the envelope itself, read at tau = TE G / G_slice from the pulse's centre: for a pulse
of duration T and time-bandwidth product N exciting the nominal thickness dz,
tau / T = G dz TE / N = k / N. F is real for a symmetric profile and changes sign past its
first zero; the magnitude of the signal carries |F|.

The kinds, and what "thickness" dz means for each (the thickness the sidecar's SliceThickness
gives is taken to be this):

- ``rect``: p = 1 on |x| <= 1/2; dz is its full width. F = sinc(k) = sin(pi k) / (pi k).
- ``gaussian``: p = exp(-4 ln2 x^2); dz is its full width at half maximum. F = exp(-pi^2 k^2 /
  (4 ln 2)); never changes sign. ``gaussian:W``: FWHM W slice thicknesses (what the estimate
  reports; F = exp(-pi^2 W^2 k^2 / (4 ln 2))).
- ``sinc:N``: the small-tip profile of a Hanning-windowed sinc pulse of time-bandwidth product
  N, b(s) = sinc(N s) (1 + cos(2 pi s)) / 2 for |s| <= 1/2 (s = t / T, pulse centre at 0), the
  convention of Siemens' IDEA sinc pulses and of BART's simulator (window alpha 0.5). dz is the
  NOMINAL thickness BW / (gamma G_slice) with BW = N / T, not the profile's FWHM (which is
  wider for small N). F(k) = b(k / N) = sinc(k) (1 + cos(2 pi k / N)) / 2 for |k| < N / 2 and
  exactly 0 beyond: past the end of the pulse no dephasing can be undone.
- ``table``: a measured or Bloch-simulated profile, positions in slice thicknesses (dz is the
  unit of its positions), amplitudes linearly interpolated and 0 outside the table. F is
  computed numerically; complex when the profile is not symmetric (its phase is that of a
  shift of the profile's centre: a frequency offset). The magnitude fit uses |F|, which is
  exact for magnitude data whatever the profile; Re F would be wrong for an asymmetric one.

For the analytic kinds :func:`dephasing_factor` uses the closed forms above; the tests check
them against :func:`numeric_factor`, the numerical Fourier transform of :func:`profile_shape`,
which for ``sinc`` is itself the numerical transform of the pulse envelope.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KINDS",
    "SIMULATOR_SINC_TAIL",
    "TBW_RANGE",
    "WIDTH_RANGE",
    "FactorCurves",
    "SliceProfile",
    "check_table",
    "check_tbw",
    "check_width",
    "dephasing_factor",
    "factor_curves",
    "gaussian_factor",
    "numeric_factor",
    "profile_shape",
    "profile_support",
    "sinc_envelope",
]

KINDS = ("rect", "gaussian", "sinc", "table")
#: Time-bandwidth products accepted for ``sinc:N``. Below 1 the "sinc" has not even its main
#: lobe; above 30 it is a rectangle for every practical purpose (use ``rect``).
TBW_RANGE = (1.0, 30.0)
#: FWHMs accepted for ``gaussian:W``, in slice thicknesses.
WIDTH_RANGE = (0.2, 5.0)
_LN2 = math.log(2.0)
# Numerical transform: profile sampled at most 1/256 slice thickness apart, zero-padded to 2^18
# points: F tabulated every 1/1024 cycle per thickness (or closer) up to 128 (or more), then
# interpolated linearly (error below 1e-4 for the profiles here).
_DX = 1.0 / 256.0
_PAD = 2**18
# The sinc profile's sidelobes fall as 1/nu^3 (nu = N x): beyond |x| = 1/2 + 16/N what is left
# changes F by less than 1e-4 (profile_support).
_SINC_TAIL = 16.0
#: What the simulator samples of a sinc profile: 1/2 + 4/N thicknesses each side (F within 7e-4).
SIMULATOR_SINC_TAIL = 4.0
_ENVELOPE_SAMPLES = 4097


# --- the profile object ----------------------------------------------------------------------


@dataclass(frozen=True)
class SliceProfile:
    """A slice profile. ``kind``: one of :data:`KINDS`; ``parameter``: the time-bandwidth
    product of ``sinc``, the FWHM of ``gaussian`` in slice thicknesses (None: 1), None for the
    others; ``positions`` / ``amplitudes``: the points of a
    ``table`` (positions in slice thicknesses, strictly increasing); ``source``: where it came
    from, "option", "header:<field>", "estimated" or "default"; ``origin``: the file of a table
    or the header value it was read from (for the sidecar). Raises ValueError when
    inconsistent."""

    kind: str
    parameter: float | None = None
    source: str = "option"
    positions: tuple[float, ...] | None = None
    amplitudes: tuple[float, ...] | None = None
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"slice profile kind must be one of {KINDS}, got {self.kind!r}")
        ok_source = self.source in ("option", "estimated", "default")
        if not (ok_source or self.source.startswith("header:")):
            raise ValueError(
                f"slice profile source {self.source!r} is not one of option, "
                "header:<field>, estimated, default"
            )
        if self.kind == "sinc":
            check_tbw(self.parameter)
        elif self.kind == "gaussian" and self.parameter is not None:
            check_width(self.parameter)
        elif self.parameter is not None:
            raise ValueError(f"slice profile {self.kind!r} takes no parameter")
        if self.kind == "table":
            if self.positions is None or self.amplitudes is None:
                raise ValueError("a table slice profile needs positions and amplitudes")
            check_table(np.asarray(self.positions), np.asarray(self.amplitudes), "table")
        elif self.positions is not None or self.amplitudes is not None:
            raise ValueError(f"slice profile {self.kind!r} takes no table")

    @property
    def tbw(self) -> float | None:
        """The time-bandwidth product of a ``sinc`` profile, else None."""
        return self.parameter if self.kind == "sinc" else None

    @property
    def fwhm(self) -> float | None:
        """The FWHM of a ``gaussian`` profile in slice thicknesses (1 unless given), else None."""
        if self.kind != "gaussian":
            return None
        return 1.0 if self.parameter is None else float(self.parameter)

    @property
    def symmetric(self) -> bool:
        """Whether p(-x) = p(x), so that F is real."""
        if self.kind != "table":
            return True
        x, p = _table_arrays(self)
        return bool(np.allclose(x, -x[::-1], atol=1e-9) and np.allclose(p, p[::-1], atol=1e-9))

    def spec(self) -> str:
        """The ``--slice-profile`` spelling (a table: its file, when known)."""
        if self.kind == "sinc":
            return f"sinc:{self.parameter:g}"
        if self.kind == "gaussian" and self.parameter is not None:
            return f"gaussian:{self.parameter:g}"
        if self.kind == "table":
            return self.origin or "table"
        return self.kind

    def describe(self) -> str:
        """One line for sidecars and logs: the kind, its parameter and where it came from."""
        if self.kind == "sinc":
            what = (
                f"small-tip profile of a Hanning-windowed sinc pulse, time-bandwidth product "
                f"{self.parameter:g} (nominal thickness = pulse bandwidth / slice gradient)"
            )
        elif self.kind == "gaussian":
            what = f"Gaussian slice profile (FWHM = {self.fwhm or 1.0:g} slice thickness)"
        elif self.kind == "table":
            what = f"tabulated slice profile ({len(self.positions or ())} points)"
        else:
            what = "rectangular slice profile"
        origin = f" {self.origin}" if self.origin else ""
        return f"{self.spec()}: {what}; source: {self.source}{origin}"

    def with_source(self, source: str, origin: str | None = None) -> SliceProfile:
        """The same profile with another ``source`` (and ``origin``)."""
        return dataclasses.replace(self, source=source, origin=origin)


def check_tbw(tbw: float | None) -> float:
    lo, hi = TBW_RANGE
    if tbw is None or not isinstance(tbw, (int, float)) or not math.isfinite(tbw):
        raise ValueError(f"slice profile sinc needs a finite time-bandwidth product, got {tbw!r}")
    if not lo <= tbw <= hi:
        raise ValueError(
            f"slice profile sinc: time-bandwidth product {tbw:g} outside [{lo:g}, {hi:g}]"
        )
    return float(tbw)


def check_width(width: float | None) -> float:
    lo, hi = WIDTH_RANGE
    if width is None or not isinstance(width, (int, float)) or not math.isfinite(width):
        raise ValueError(f"slice profile gaussian: FWHM must be a finite number, got {width!r}")
    if not lo <= width <= hi:
        raise ValueError(
            f"slice profile gaussian: FWHM {width:g} slice thicknesses outside [{lo:g}, {hi:g}]"
        )
    return float(width)


def check_table(x: np.ndarray, p: np.ndarray, where: str) -> None:
    if x.ndim != 1 or x.shape != p.shape or x.size < 3:
        raise ValueError(f"{where}: a slice profile table needs at least 3 (position, amplitude)")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(p))):
        raise ValueError(f"{where}: positions and amplitudes must be finite")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"{where}: positions must increase strictly")
    if not _trapezoid(p, x) > 0:
        raise ValueError(f"{where}: the profile's area must be positive")


def _table_arrays(profile: SliceProfile) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(profile.positions, dtype=np.float64),
        np.asarray(profile.amplitudes, dtype=np.float64),
    )


def _trapezoid(p: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal integral of p(x) (numpy < 2 has no ``np.trapezoid``)."""
    return float(np.sum((p[1:] + p[:-1]) * np.diff(x)) / 2.0)


# --- the profile and its transform -----------------------------------------------------------


def profile_support(profile: SliceProfile, sinc_tail: float = _SINC_TAIL) -> float:
    """Half-width (slice thicknesses) outside which the profile is negligible: where a
    numerical transform or a simulator need sample it. rect 1/2, gaussian 3 FWHM (amplitude
    1.5e-11 of the peak there), table its outermost point, sinc 1/2 + ``sinc_tail``/N: the
    sidelobes fall as 1/(N x)^3, and cutting them there changes F by at most 1e-4 (tail 16),
    2e-4 (8), 7e-4 (4), 3e-3 (2) for N from 2 to 4."""
    if profile.kind == "rect":
        return 0.5
    if profile.kind == "gaussian":
        return 3.0 * (profile.fwhm or 1.0)
    if profile.kind == "sinc":
        return 0.5 + float(sinc_tail) / float(profile.parameter or 1.0)
    x, _ = _table_arrays(profile)
    return float(max(abs(x[0]), abs(x[-1])))


def profile_shape(profile: SliceProfile, x: np.ndarray | Sequence[float]) -> np.ndarray:
    """The profile p(x) at positions ``x`` (any shape, slice thicknesses), scaled to unit area
    (the integral over x is 1), float64 of ``x``'s shape.

    rect: 1 inside |x| < 1/2, 1/2 at the edges; gaussian of FWHM W: 2 sqrt(ln2 / pi) / W
    exp(-4 ln2 x^2 / W^2);
    sinc: the small-tip profile N integral b(s) cos(2 pi N x s) ds of the envelope b (module
    docstring), by quadrature over the pulse (4097 points), so it is the pulse's numerical
    transform, not a closed form; table: linear interpolation, 0 outside, divided by its
    trapezoidal area. Where a profile jumps (the rectangle's edges, a table's ends) it takes
    the mean of both sides, so that sampling across the jump integrates to second order."""
    u = np.asarray(x, dtype=np.float64)
    if profile.kind == "rect":
        return np.where(np.abs(u) < 0.5, 1.0, np.where(np.abs(u) == 0.5, 0.5, 0.0))
    if profile.kind == "gaussian":
        w = profile.fwhm or 1.0
        return 2.0 * math.sqrt(_LN2 / math.pi) / w * np.exp(-4.0 * _LN2 * (u / w) ** 2)
    if profile.kind == "sinc":
        return _sinc_profile(float(profile.parameter or 1.0), u)
    xt, pt = _table_arrays(profile)
    p = np.interp(u, xt, pt, left=0.0, right=0.0)
    p = np.where(u == xt[0], 0.5 * pt[0], np.where(u == xt[-1], 0.5 * pt[-1], p))
    return np.asarray(p / _trapezoid(pt, xt))


def sinc_envelope(tbw: float, s: np.ndarray) -> np.ndarray:
    """Hanning-windowed sinc pulse envelope at s = t / T (centre 0), 0 outside |s| <= 1/2."""
    inside = np.abs(s) <= 0.5
    return np.where(inside, np.sinc(tbw * s) * 0.5 * (1.0 + np.cos(2.0 * np.pi * s)), 0.0)


def _sinc_profile(tbw: float, x: np.ndarray) -> np.ndarray:
    """N integral_{-1/2}^{1/2} b(s) cos(2 pi N x s) ds by Simpson's rule (b is even, so the
    profile is real); unit area because b(0) = 1."""
    s = np.linspace(-0.5, 0.5, _ENVELOPE_SAMPLES)
    h = s[1] - s[0]
    w = np.ones_like(s)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    weighted = sinc_envelope(tbw, s) * w * (h / 3.0) * tbw
    flat = x.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float64)
    for start in range(0, flat.size, 1024):
        part = flat[start : start + 1024]
        out[start : start + 1024] = np.cos(2.0 * np.pi * tbw * part[:, None] * s) @ weighted
    return out.reshape(x.shape)


def numeric_factor(profile: SliceProfile, k: np.ndarray | Sequence[float]) -> np.ndarray:
    """F(k) = integral p(x) exp(2 pi i k x) dx / integral p(x) dx by the numerical Fourier
    transform of :func:`profile_shape`, complex128 of ``k``'s shape (k: cycles per slice
    thickness). The profile is sampled at most 1/256 thickness apart over its span
    (+-:func:`profile_support`, a table's first to last point; the samples at the ends fall
    on any jump there), zero-padded to 2^18 points and transformed by FFT; F between the
    transform's points (1/1024 cycle or closer) is interpolated linearly. 0 where |k| is past
    what the sampling resolves (128 cycles or more; no realistic profile has |F| > 0.01 there).
    """
    kk = np.asarray(k, dtype=np.float64)
    if profile.kind == "table":
        xt, _ = _table_arrays(profile)
        lo, hi = float(xt[0]), float(xt[-1])
    else:
        hi = profile_support(profile)
        lo = -hi
    m = 2 * max(8, math.ceil((hi - lo) / (2.0 * _DX)))
    step = (hi - lo) / m
    p = profile_shape(profile, lo + step * np.arange(m + 1))
    padded = np.zeros(_PAD, dtype=np.float64)
    padded[(np.arange(m + 1) - m // 2) % _PAD] = p  # centred on the span's middle
    centred = np.fft.ifft(padded) * _PAD / np.sum(p)  # at k_j = j / (_PAD * step)
    n_half = _PAD // 2
    grid_k = np.arange(n_half + 1) / (_PAD * step)
    a = np.abs(kk)
    re = np.interp(a, grid_k, centred.real[: n_half + 1], right=0.0)
    im = np.interp(a, grid_k, centred.imag[: n_half + 1], right=0.0)
    middle = 0.5 * (lo + hi)  # F(-k) = conj F(k) for a real profile; then shift back
    return np.asarray((re + 1j * np.where(kk < 0, -im, im)) * np.exp(2j * np.pi * kk * middle))


def gaussian_factor(width2: float, k: np.ndarray) -> np.ndarray:
    """F of a Gaussian profile of squared FWHM ``width2`` (slice thicknesses^2)."""
    return np.asarray(np.exp(-(math.pi**2) * width2 * k * k / (4.0 * _LN2)))


def _closed_form(profile: SliceProfile, k: np.ndarray) -> np.ndarray:
    """F(k) of the analytic kinds (module docstring), real float64."""
    if profile.kind == "rect":
        return np.asarray(np.sinc(k))
    if profile.kind == "gaussian":
        return gaussian_factor((profile.fwhm or 1.0) ** 2, k)
    tbw = float(profile.parameter or 1.0)
    return sinc_envelope(tbw, k / tbw)


def dephasing_factor(
    profile: SliceProfile,
    gradient_hz_per_mm: np.ndarray | float,
    thickness_mm: np.ndarray | float,
    echo_times: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """F(TE), the signed fraction of the signal a field gradient leaves at each echo.

    ``gradient_hz_per_mm``: (...) G along the slice axis; ``thickness_mm``: the slice
    thickness dz (module docstring for what it means per kind), a number or an array that
    broadcasts against the gradient (e.g. from :func:`effective_thickness`); ``echo_times``:
    (E,) s. Returns (..., E): real float64 for a symmetric profile, signed (a sinc's F is
    negative between its first and second zero); complex128 for an asymmetric table. F is a
    function of k = G dz TE only. A magnitude fit uses |F|. Raises ValueError for a
    non-positive thickness or echo times that are not finite and >= 0.
    """
    te = np.asarray(echo_times, dtype=np.float64).reshape(-1)
    if te.size < 1 or not np.all(np.isfinite(te)) or np.any(te < 0):
        raise ValueError("echo times must be finite and >= 0 (seconds)")
    dz = np.asarray(thickness_mm, dtype=np.float64)
    if not (np.all(np.isfinite(dz)) and np.all(dz > 0)):
        raise ValueError("slice thickness must be a positive number of mm")
    g = np.asarray(gradient_hz_per_mm, dtype=np.float64)
    k = (g * dz)[..., None] * te
    if profile.kind != "table":
        return _closed_form(profile, k)
    factor = numeric_factor(profile, k)
    return factor.real if profile.symmetric else factor


# --- curves for the page ---------------------------------------------------------------------


@dataclass(frozen=True)
class FactorCurves:
    """F(TE) curves for a plot. ``echo_times``: (E,) s; ``gradients_hz_per_mm``: (G,);
    ``factor``: (G, E) float64, signed F for a symmetric profile (``signed`` True), |F| for an
    asymmetric table (``signed`` False); ``thickness_mm``; ``label``: the profile's
    :meth:`SliceProfile.describe`."""

    echo_times: np.ndarray
    gradients_hz_per_mm: np.ndarray
    factor: np.ndarray
    signed: bool
    thickness_mm: float
    label: str


def factor_curves(
    profile: SliceProfile,
    thickness_mm: float,
    echo_times: Sequence[float] | np.ndarray,
    gradients_hz_per_mm: Sequence[float] | np.ndarray,
) -> FactorCurves:
    """F(TE) of ``profile`` for a few gradient strengths (Hz/mm), e.g. ``echo_times`` a fine
    grid from 0 to the last echo. Pure; see :class:`FactorCurves`."""
    te = np.asarray(echo_times, dtype=np.float64).reshape(-1)
    g = np.asarray(gradients_hz_per_mm, dtype=np.float64).reshape(-1)
    f = dephasing_factor(profile, g, float(thickness_mm), te)
    signed = not np.iscomplexobj(f)
    return FactorCurves(
        echo_times=te,
        gradients_hz_per_mm=g,
        factor=np.asarray(f if signed else np.abs(f), dtype=np.float64),
        signed=signed,
        thickness_mm=float(thickness_mm),
        label=profile.describe(),
    )
