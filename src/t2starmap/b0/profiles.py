"""Slice profiles and the through-slice dephasing factor F(TE) they give.

Pure numpy (the one exception: :func:`read_profile_table` reads a TSV file; the estimation
calls the corrected fit of :mod:`t2starmap.b0.correction`). No logging, no printing. Units:
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PROFILE",
    "FAMILIES",
    "FAMILY_GRIDS",
    "GAMMA_BAR_HZ_PER_MT_M_MM",
    "KINDS",
    "SIEMENS_PULSE_NAMES",
    "SIMULATOR_SINC_TAIL",
    "TBW_RANGE",
    "WIDTH_RANGE",
    "FactorCurves",
    "FamilyFit",
    "ProfileEstimate",
    "SliceProfile",
    "dephasing_factor",
    "effective_thickness",
    "estimate_slice_profile",
    "factor_curves",
    "format_profile_table",
    "numeric_factor",
    "parse_slice_profile",
    "profile_from_metadata",
    "profile_shape",
    "profile_support",
    "read_profile_table",
    "siemens_rf_fields",
    "slice_select_gradient_hz_per_mm",
]

KINDS = ("rect", "gaussian", "sinc", "table")
#: Time-bandwidth products accepted for ``sinc:N``. Below 1 the "sinc" has not even its main
#: lobe; above 30 it is a rectangle for every practical purpose (use ``rect``).
TBW_RANGE = (1.0, 30.0)
#: FWHMs accepted for ``gaussian:W``, in slice thicknesses.
WIDTH_RANGE = (0.2, 5.0)
#: gamma / (2 pi) of 1H: a gradient of 1 mT/m changes the frequency by this many Hz per mm.
GAMMA_BAR_HZ_PER_MT_M_MM = 42.577478
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
            _check_tbw(self.parameter)
        elif self.kind == "gaussian" and self.parameter is not None:
            _check_width(self.parameter)
        elif self.parameter is not None:
            raise ValueError(f"slice profile {self.kind!r} takes no parameter")
        if self.kind == "table":
            if self.positions is None or self.amplitudes is None:
                raise ValueError("a table slice profile needs positions and amplitudes")
            _check_table(np.asarray(self.positions), np.asarray(self.amplitudes), "table")
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


def _check_tbw(tbw: float | None) -> float:
    lo, hi = TBW_RANGE
    if tbw is None or not isinstance(tbw, (int, float)) or not math.isfinite(tbw):
        raise ValueError(f"slice profile sinc needs a finite time-bandwidth product, got {tbw!r}")
    if not lo <= tbw <= hi:
        raise ValueError(
            f"slice profile sinc: time-bandwidth product {tbw:g} outside [{lo:g}, {hi:g}]"
        )
    return float(tbw)


def _check_width(width: float | None) -> float:
    lo, hi = WIDTH_RANGE
    if width is None or not isinstance(width, (int, float)) or not math.isfinite(width):
        raise ValueError(f"slice profile gaussian: FWHM must be a finite number, got {width!r}")
    if not lo <= width <= hi:
        raise ValueError(
            f"slice profile gaussian: FWHM {width:g} slice thicknesses outside [{lo:g}, {hi:g}]"
        )
    return float(width)


def _number(text: str, spec: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"slice profile {spec!r}: {what} {text.strip()!r} is not a number"
        ) from None
    if not value > 0:
        raise ValueError(f"slice profile {spec!r}: the {what} must be > 0")
    return value


def _check_table(x: np.ndarray, p: np.ndarray, where: str) -> None:
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


# --- parsing ---------------------------------------------------------------------------------


def parse_slice_profile(spec: str, *, source: str = "option") -> SliceProfile:
    """A :class:`SliceProfile` from its ``--slice-profile`` spelling: ``rect``, ``gaussian``
    (FWHM = slice thickness), ``gaussian:W`` (FWHM W slice thicknesses), ``sinc:N`` (N the
    time-bandwidth product) or the path of a ``.tsv`` file (see
    :func:`read_profile_table`). Kinds are case-insensitive. Raises ValueError with a one-line
    message naming what is wrong (and, for a file, the file and line)."""
    text = str(spec).strip()
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind == "rect" or (kind == "gaussian" and not arg.strip()):
        if arg.strip():
            raise ValueError(
                f"slice profile {text!r}: rect takes no parameter (its width is the slice "
                "thickness)"
            )
        return SliceProfile(kind, source=source)
    if kind == "gaussian":
        width = _number(arg, text, "FWHM (slice thicknesses)")
        return SliceProfile("gaussian", _check_width(width), source=source)
    if kind == "sinc":
        if not arg.strip():
            raise ValueError(
                f"slice profile {text!r} needs the pulse's time-bandwidth product, e.g. sinc:2.7"
            )
        tbw = _number(arg, text, "time-bandwidth product")
        return SliceProfile("sinc", _check_tbw(tbw), source=source)
    if text.lower().endswith(".tsv"):
        positions, amplitudes = read_profile_table(text)
        return SliceProfile(
            "table",
            source=source,
            positions=tuple(float(v) for v in positions),
            amplitudes=tuple(float(v) for v in amplitudes),
            origin=text,
        )
    raise ValueError(
        f"unknown slice profile {text!r}: expected rect, gaussian[:<FWHM>], sinc:<time-bandwidth "
        "product> or a .tsv file (position in slice thicknesses, amplitude)"
    )


def read_profile_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(positions, amplitudes) of a profile TSV: two tab- or space-separated columns, position
    in slice thicknesses (strictly increasing) and amplitude (signed; its scale does not
    matter). Blank lines and lines starting with ``#`` are skipped; a first line that is not
    numeric is a header. At least 3 rows, positive area. The one function here that reads a
    file. Raises ValueError naming the file and line."""
    name = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"slice profile file {name}: cannot be read ({exc})") from None
    rows: list[tuple[float, float]] = []
    header_allowed = True
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ValueError(
                f"slice profile file {name} line {number}: expected 2 columns (position, "
                f"amplitude), got {len(fields)}"
            )
        try:
            row = (float(fields[0]), float(fields[1]))
        except ValueError:
            if header_allowed:
                header_allowed = False
                continue
            raise ValueError(
                f"slice profile file {name} line {number}: {line.strip()!r} is not two numbers"
            ) from None
        header_allowed = False
        if not (math.isfinite(row[0]) and math.isfinite(row[1])):
            raise ValueError(f"slice profile file {name} line {number}: not finite")
        if rows and row[0] <= rows[-1][0]:
            raise ValueError(
                f"slice profile file {name} line {number}: position {row[0]:g} does not "
                f"increase (previous {rows[-1][0]:g})"
            )
        rows.append(row)
    if len(rows) < 3:
        raise ValueError(f"slice profile file {name}: {len(rows)} rows, at least 3 needed")
    table = np.asarray(rows, dtype=np.float64)
    _check_table(table[:, 0], table[:, 1], f"slice profile file {name}")
    return table[:, 0], table[:, 1]


def format_profile_table(positions: np.ndarray, amplitudes: np.ndarray) -> str:
    """The text of a profile TSV that :func:`read_profile_table` reads back: a header line,
    then one ``position<TAB>amplitude`` row per point (17 significant digits: exact)."""
    x = np.asarray(positions, dtype=np.float64).reshape(-1)
    p = np.asarray(amplitudes, dtype=np.float64).reshape(-1)
    _check_table(x, p, "format_profile_table")
    rows = "".join(f"{a!r}\t{b!r}\n" for a, b in zip(x.tolist(), p.tolist(), strict=True))
    return "position\tamplitude\n" + rows


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
    return p / _trapezoid(pt, xt)


def _envelope(tbw: float, s: np.ndarray) -> np.ndarray:
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
    weighted = _envelope(tbw, s) * w * (h / 3.0) * tbw
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
    return (re + 1j * np.where(kk < 0, -im, im)) * np.exp(2j * np.pi * kk * middle)


def _gaussian_factor(width2: float, k: np.ndarray) -> np.ndarray:
    """F of a Gaussian profile of squared FWHM ``width2`` (slice thicknesses^2)."""
    return np.exp(-(math.pi**2) * width2 * k * k / (4.0 * _LN2))


def _closed_form(profile: SliceProfile, k: np.ndarray) -> np.ndarray:
    """F(k) of the analytic kinds (module docstring), real float64."""
    if profile.kind == "rect":
        return np.sinc(k)
    if profile.kind == "gaussian":
        return _gaussian_factor((profile.fwhm or 1.0) ** 2, k)
    tbw = float(profile.parameter or 1.0)
    return _envelope(tbw, k / tbw)


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


# --- the slice-select gradient: polarity and stretching (Soellradl et al., MRM 2020) ---------


def slice_select_gradient_hz_per_mm(
    tbw: float, pulse_duration_s: float, thickness_mm: float
) -> float:
    """gamma-bar G_slice in Hz/mm of a pulse of time-bandwidth product ``tbw`` and duration
    ``pulse_duration_s`` exciting the nominal ``thickness_mm``: BW / dz = tbw / (T dz).
    Divide by :data:`GAMMA_BAR_HZ_PER_MT_M_MM` for mT/m."""
    if not (tbw > 0 and pulse_duration_s > 0 and thickness_mm > 0):
        raise ValueError("time-bandwidth product, pulse duration and thickness must be > 0")
    return float(tbw) / (float(pulse_duration_s) * float(thickness_mm))


def effective_thickness(
    thickness_mm: float,
    gradient_hz_per_mm: np.ndarray | float,
    slice_gradient_mt_per_m: float,
    polarity: int = 1,
) -> np.ndarray:
    """The thickness the pulse really excites where a background gradient G adds to the
    slice-select gradient G_s during the pulse: dz G_s / (G_s + polarity G), G_s in Hz/mm.

    ``gradient_hz_per_mm``: (...) G along the slice axis, the sign that of increasing slice
    index (:func:`t2starmap.b0.correction.through_slice_gradient`); ``slice_gradient_mt_per_m``:
    |G_s| in mT/m (> 0); ``polarity``: +1 when the slice-select gradient points along increasing
    slice index, -1 against it. A background gradient with the slice gradient's sign compresses the
    slice (less dephasing), one against it stretches it (more). The profile's shape is scaled,
    not changed, and the dephasing then follows F(G dz_eff TE) (the rephasing lobe undoes only
    G_s; time from the pulse's centre); the signal also scales by dz_eff / dz, the spins the
    stretched slice holds, a factor independent of TE that the fit's S0 takes up. Returns (...)
    float64 for :func:`dephasing_factor`'s ``thickness_mm``. No header read here gives G_s or
    its polarity (dcm2niix keeps neither; Siemens' CSA ``SelectionGradientAmplitude`` is 0.0 in
    the real sets checked), so this is reachable from the API only. Raises ValueError when
    |G| >= G_s / 2 somewhere (the excited region is no longer a slice)."""
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be +1 or -1, got {polarity!r}")
    if not (math.isfinite(slice_gradient_mt_per_m) and slice_gradient_mt_per_m > 0):
        raise ValueError("the slice-select gradient must be a positive number of mT/m")
    if not (math.isfinite(thickness_mm) and thickness_mm > 0):
        raise ValueError("slice thickness must be a positive number of mm")
    gs = float(slice_gradient_mt_per_m) * GAMMA_BAR_HZ_PER_MT_M_MM
    g = np.asarray(gradient_hz_per_mm, dtype=np.float64)
    if np.any(~np.isfinite(g)) or np.any(np.abs(g) >= 0.5 * gs):
        raise ValueError(
            f"background gradient up to {np.nanmax(np.abs(g)):.3g} Hz/mm against a slice-select "
            f"gradient of {gs:.3g} Hz/mm: must be finite and below half of it"
        )
    return float(thickness_mm) * gs / (gs + polarity * g)


# --- what the headers say --------------------------------------------------------------------

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
    source), so from a plain dcm2niix sidecar this returns None; the Siemens keys are what
    :func:`siemens_rf_fields` gets from the DICOM's protocol text. GE and Philips headers name
    no excitation pulse that we found. Raises ValueError for an ill-formed ``SliceProfile``.
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


def siemens_rf_fields(protocol_text: str) -> dict[str, str | int]:
    """The excitation keys of a Siemens protocol (the ``### ASCCONV BEGIN`` ... ``END`` text
    of the CSA series header's MrPhoenixProtocol): ``sTXSPEC.aRFPULSE[0].tName`` (quotes
    removed) and ``sTXSPEC.ucRFPulseType`` (int; hex accepted), those present. Pure text."""
    out: dict[str, str | int] = {}
    for line in protocol_text.splitlines():
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in (_SIEMENS_NAME, _SIEMENS_TYPE):
            continue
        if key == _SIEMENS_NAME:
            out[key] = value.strip('"').strip()
        else:
            try:
                out[key] = int(value, 0)
            except ValueError:
                continue
    return out


# --- the profile estimated from the data -----------------------------------------------------

#: What a set falls back to when it cannot tell its profile: a Hanning-windowed sinc of
#: time-bandwidth product 2.7, Siemens' 2D gre "normal" pulse (:data:`SIEMENS_PULSE_NAMES`).
#: It also sits mid-family between the rectangle (1/N^2 = 0) and N = 2 (0.25) in 1/N^2, the
#: quantity the dephasing's curvature follows: the smallest worst case when nothing is known.
DEFAULT_PROFILE = SliceProfile("sinc", 2.7, source="default")
#: The one-parameter families, each searched over the variable its dephasing's curvature at
#: small k is linear in (pi^2 k^2 (1/6 + v) for sinc, pi^2 k^2 v / (4 ln 2) for gaussian), so
#: that the cost is close to a parabola in it: sinc: v = 1/N^2, from the rectangle (0) to
#: N = 1.58 (0.4); gaussian: v = W^2, FWHM W from 0.6 to 1.6 slice thicknesses. A coarse
#: grid; the search then adds 4 points a quarter and a half step either side of the coarse
#: minimum, where the parabola is taken.
FAMILY_GRIDS: dict[str, tuple[float, ...]] = {
    "sinc": tuple(float(v) for v in np.linspace(0.0, 0.4, 9)),
    "gaussian": tuple(float(v) for v in np.linspace(0.36, 2.56, 9)),
}
_REFINE = (-0.5, -0.25, 0.25, 0.5)
FAMILIES = ("auto", *FAMILY_GRIDS)


def _family_factor(family: str, v: float, k: np.ndarray) -> np.ndarray:
    """|F| of ``family``'s member v at k cycles per slice thickness."""
    if family == "gaussian":
        return _gaussian_factor(v, k)
    if v <= 0:
        return np.abs(np.sinc(k))
    return np.abs(_envelope(1.0 / math.sqrt(v), k * math.sqrt(v)))


@dataclass(frozen=True)
class FamilyFit:
    """One family's search in :func:`estimate_slice_profile`.

    family: "sinc" (parameter: the time-bandwidth product N, searched as v = 1/N^2; v = 0 is
    the rectangle, N = inf) or "gaussian" (parameter: the FWHM W in slice thicknesses,
    searched as v = W^2). grid, cost: (n,) the v tried and the set-wide reduced chi-square at
    each. value, value_sd: v at the minimum (parabola through the lowest grid point and its
    neighbours) and its SD from a bootstrap over voxels; value_sd_curvature: the SD the
    curvature of the chi-square gives, scaled by the reduced chi-square when that exceeds 1.
    parameter, parameter_sd: N or W, SD by the delta method. reduced_chi2: at the minimum.
    at_edge: the minimum is on an end of the grid that is not a family member's limit (the
    smooth end for sinc, either end for gaussian): the truth may lie beyond."""

    family: str
    grid: np.ndarray
    cost: np.ndarray
    value: float
    value_sd: float
    value_sd_curvature: float
    parameter: float
    parameter_sd: float
    reduced_chi2: float
    at_edge: bool

    def profile(self) -> SliceProfile:
        """The member found (source "estimated"); sinc beyond N = 30 is the rectangle."""
        origin = f"{self.family} family, {self.parameter:.3g} +- {self.parameter_sd:.2g}"
        if self.family == "gaussian":
            width = min(max(self.parameter, WIDTH_RANGE[0]), WIDTH_RANGE[1])
            return SliceProfile("gaussian", width, source="estimated", origin=origin)
        if self.parameter > TBW_RANGE[1]:
            return SliceProfile("rect", source="estimated", origin=origin)
        tbw = max(self.parameter, TBW_RANGE[0])
        return SliceProfile("sinc", tbw, source="estimated", origin=origin)


@dataclass(frozen=True)
class ProfileEstimate:
    """:func:`estimate_slice_profile`'s result.

    profile: the estimated profile (source "estimated") or, on a fallback, the default
    (source "default", the reason as its origin). chosen: the family kept (lowest reduced
    chi-square), None on a fallback; fits: every family searched (empty when it fell back
    before fitting); support: the fraction of the bootstrap resamplings in which the chosen
    family also has the lowest cost (None with one family). n_voxels: voxels used;
    fallback_reason: why the default was taken, else None."""

    profile: SliceProfile
    chosen: FamilyFit | None
    fits: tuple[FamilyFit, ...]
    support: float | None
    n_voxels: int
    fallback_reason: str | None

    @property
    def tbw(self) -> float | None:
        """The estimated time-bandwidth product (inf: the rectangle), when sinc was chosen."""
        return self.chosen.parameter if self.chosen and self.chosen.family == "sinc" else None

    @property
    def tbw_sd(self) -> float | None:
        """Its standard uncertainty (bootstrap over voxels), when sinc was chosen."""
        return self.chosen.parameter_sd if self.chosen and self.chosen.family == "sinc" else None

    def describe(self) -> str:
        """One line for the sidecar."""
        if self.chosen is None:
            return f"{self.profile.spec()} (default: {self.fallback_reason})"
        c = self.chosen
        if c.family == "sinc" and c.value <= 0:
            found = f"the rectangle end of the sinc family (1/N^2 = 0, SD {c.value_sd:.2g})"
        else:
            name = "time-bandwidth product" if c.family == "sinc" else "FWHM / thickness"
            found = f"{c.family} family, {name} {c.parameter:.3g} +- {c.parameter_sd:.2g}"
        support = "" if self.support is None else f"; family kept in {self.support:.0%}"
        edge = "; at the end of the searched range" if c.at_edge else ""
        return (
            f"{self.profile.spec()} estimated from {self.n_voxels} strong-gradient voxels: "
            f"{found} (SD: bootstrap over voxels{support}), reduced chi-square "
            f"{c.reduced_chi2:.3g}{edge}"
        )


def estimate_slice_profile(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    gradient_hz_per_mm: np.ndarray,
    thickness_mm: float,
    mask: np.ndarray | None,
    noise_sigma: float | None,
    family: str = "auto",
    *,
    min_voxels: int = 100,
    max_voxels: int = 1000,
    min_cycles: float = 0.5,
    snr_floor: float = 3.0,
    n_boot: int = 200,
    seed: int = 0,
    default: SliceProfile = DEFAULT_PROFILE,
    workers: int | None = None,
) -> ProfileEstimate:
    """The set's slice profile within a one-parameter family, from its strong-gradient voxels.

    ``magnitude``: (..., E); ``echo_times``: (E,) s; ``gradient_hz_per_mm``: (...) G along the
    slice axis; ``thickness_mm``: dz; ``mask``: (...) bool, voxels whose gradient is to be
    trusted (None: all with a finite, non-zero G); ``noise_sigma``: the magnitude's noise SD
    (None: echoes count from 5 % of the voxel's brightest, the cost is scaled by its own
    residual variance and the Rician correction is off); ``family``: "sinc" (Hanning-windowed
    sinc, time-bandwidth product N), "gaussian" (FWHM W) or "auto", both, keeping the one
    with the lower reduced chi-square (:data:`FAMILY_GRIDS` for what is searched).

    Voxels: strong where the dephasing reaches k = |G| dz TE >= ``min_cycles`` at an echo
    whose signal, PREDICTED by a first fit, is >= ``snr_floor`` sigma (the family members
    differ by 10-50 % in F there), with at least 4 such "counted" echoes; at most
    ``max_voxels`` (a seeded random subset; 1000 give N to 0.4 % at SNR 100 and cost a
    third to half of the complex fit of a 96 x 96 x 16 set; the cost does not grow with the
    set).

    Cost: for each member, :func:`t2starmap.fit.fit_corrected` on the counted echoes (the
    others get factor 0, so it leaves them out as it does echoes with |F| below its
    threshold), then the chi-square over ALL counted echoes, the same set for every member,
    of the data against the model's Rician mean sqrt(A^2 + sigma^2) (first order in sigma / A:
    within 0.01 sigma of the exact mean from A = 3 sigma). Summed over voxels and divided by
    the degrees of freedom it is the set-wide cost; its minimum is refined by a parabola. A
    member that over-dephases pushes R2* to its bound: that bounded fit's cost counts against
    it. Voxels a member leaves with too few echoes to correct, or without signal, are left
    out of all members.

    Uncertainty: a bootstrap over voxels (``n_boot`` resamplings of the per-voxel cost table,
    seeded): it sees model misfit (e.g. errors of the gradient) that the chi-square's
    curvature, also reported, assumes away. It is still a lower bound: neighbouring voxels
    share their gradient, and a bias common to all voxels (a noisy gradient, the field
    curving within the slice) is not seen; on the simulator N came out 1-3 SD (< 1.5 %) off.
    Falls back to ``default``, with the reason, when fewer than ``min_voxels`` strong voxels
    remain or the cost does not change across the family. ``workers``: the fits' chunk workers
    (:func:`t2starmap.fit.fit_corrected`).
    """
    if family not in FAMILIES:
        raise ValueError(f"profile family must be one of {FAMILIES}, got {family!r}")
    if noise_sigma is not None and not (math.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise sigma must be a positive number, got {noise_sigma!r}")
    mag, te, g = _check_inputs(magnitude, echo_times, gradient_hz_per_mm, thickness_mm, mask)
    rng = np.random.default_rng(seed)
    limits = (min_cycles, snr_floor)
    rows, counted = _strong_voxels(
        mag, te, g * thickness_mm, noise_sigma, limits, rng, max_voxels, workers
    )
    few = f"fewer than the {min_voxels} needed ({_STRONG.format(*limits)})"
    if rows.size < min_voxels:
        return _fallback(default, rows.size, f"{rows.size} strong-gradient voxels, {few}")
    names = tuple(FAMILY_GRIDS) if family == "auto" else (family,)
    k = (g[rows] * thickness_mm)[:, None] * te
    strong = np.asarray(mag[rows], dtype=np.float64)
    grids, tables, usable = _search(strong, te, k, counted, noise_sigma, names, workers)
    n = int(usable.sum())
    if n < min_voxels:
        return _fallback(default, n, f"{n} strong-gradient voxels every member fits, {few}")
    costs = {name: tables[name][usable] for name in names}
    dof = float(np.sum(counted[usable].sum(axis=1) - 2))
    return _choose(grids, costs, dof, noise_sigma is None, rng, n_boot, default)


def _a_minimum(fit: FamilyFit) -> bool:
    """Whether a family's best member is a minimum: inside its range, or the rectangle."""
    return not fit.at_edge or (fit.family == "sinc" and fit.value <= 0)


def _choose(
    grids: Mapping[str, np.ndarray],
    costs: Mapping[str, np.ndarray],
    dof: float,
    rescale: bool,
    rng: np.random.Generator,
    n_boot: int,
    default: SliceProfile,
) -> ProfileEstimate:
    """Each family's minimum and bootstrap from its per-voxel cost (n, grid), and the family
    with the lowest reduced chi-square. ``rescale`` (no sigma): scale every cost so that the
    best member's reduced chi-square is 1."""
    if rescale:
        scale = dof / min(float(np.min(c.sum(axis=0))) for c in costs.values())
        costs = {name: c * scale for name, c in costs.items()}
    n = next(iter(costs.values())).shape[0]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    found = [_family_fit(name, grids[name], c, weights, dof) for name, c in costs.items()]
    fits = tuple(fit for fit, _ in found)
    # a member at the end of its range is not a minimum (the rectangle, the sinc family's end
    # 1/N^2 = 0, is a member): such a family does not describe these voxels
    inside = [k for k, fit in enumerate(fits) if _a_minimum(fit)]
    if not inside:
        ends = ", ".join(f"{fit.profile().spec()} (reduced chi-square {fit.reduced_chi2:.3g})"
                         for fit in fits)  # fmt: skip
        return _fallback(
            default,
            n,
            f"every family's best member lies at the end of the searched range ({ends}): "
            "none describes these voxels",
        )
    best = min(inside, key=lambda k: fits[k].reduced_chi2)
    if not np.isfinite(fits[best].value_sd_curvature):
        return _fallback(default, n, "the fit's cost does not change across the profile family")
    # support: how often the chosen family also wins the bootstrap, among those with a minimum
    boot_best = np.argmin(np.stack([found[k][1] for k in inside]), axis=0)
    support = None if len(inside) == 1 else float(np.mean(boot_best == inside.index(best)))
    return ProfileEstimate(fits[best].profile(), fits[best], fits, support, n, None)


_STRONG = (
    "strong: |G| dz TE >= {0:g} cycles at an echo whose predicted signal is >= {1:g} sigma, "
    "4 such echoes"
)


def _fallback(default: SliceProfile, n: int, reason: str) -> ProfileEstimate:
    return ProfileEstimate(default.with_source("default", reason), None, (), None, int(n), reason)


def _check_inputs(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    gradient_hz_per_mm: np.ndarray,
    thickness_mm: float,
    mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(magnitude (n, E) in its own type, not copied; TE (E,); G (n,) float64 with NaN where
    it is not to be used)."""
    mag = np.asarray(magnitude)
    te = np.asarray(echo_times, dtype=np.float64).reshape(-1)
    if mag.ndim < 1 or mag.shape[-1] != te.size:
        raise ValueError(f"magnitude's last axis must hold the {te.size} echoes")
    if te.size < 3 or not np.all(np.isfinite(te)) or np.any(te < 0):
        raise ValueError("at least 3 finite echo times >= 0 (seconds) are needed")
    if not (math.isfinite(thickness_mm) and thickness_mm > 0):
        raise ValueError("slice thickness must be a positive number of mm")
    g = np.asarray(gradient_hz_per_mm, dtype=np.float64)
    if g.shape != mag.shape[:-1]:
        raise ValueError(f"gradient shape {g.shape} does not match {mag.shape[:-1]}")
    use = np.isfinite(g) & (g != 0) & np.all(np.isfinite(mag), axis=-1)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != g.shape:
            raise ValueError(f"mask shape {m.shape} does not match {g.shape}")
        use &= m
    return mag.reshape(-1, te.size), te, np.where(use, g, np.nan).reshape(-1)


def _strong_voxels(
    mag: np.ndarray,
    te: np.ndarray,
    g_dz: np.ndarray,
    sigma: float | None,
    limits: tuple[float, float],
    rng: np.random.Generator,
    max_voxels: int,
    workers: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the strong voxels, their counted echoes (n, E) bool); ``limits``:
    (min_cycles, snr_floor); see the estimator.

    Echoes are counted by the signal a first fit PREDICTS (the sinc family's middle member),
    not by the measured sample: keeping samples for their own noisy value keeps those the noise
    pushed up (by most of a sigma near the floor), which reads as less dephasing, a
    larger N (+3 to +6 % on the simulator at SNR 100)."""
    min_cycles, snr_floor = limits
    finite = np.isfinite(g_dz)
    # The whole volume is screened in the magnitude's own type, one echo at a time: the
    # largest cycles a rough echo reaches is |G dz| times its largest such TE (a product with
    # the same factor keeps the order), no (n, E) float64 table.
    if sigma is None:
        floor = 0.05 * mag.max(axis=1, keepdims=True)
    else:
        floor = np.full((mag.shape[0], 1), snr_floor * sigma)
    rough = mag >= 0.6 * floor
    te_reach = np.zeros(mag.shape[0])
    for j, t in enumerate(te):
        np.maximum(te_reach, np.where(rough[:, j], t, 0.0), out=te_reach)
    reach = np.abs(np.where(finite, g_dz, 0.0)) * te_reach
    rows = np.nonzero(finite & (reach >= min_cycles) & (rough.sum(axis=1) >= 4))[0]
    if rows.size > max_voxels:
        rows = np.sort(rng.choice(rows, size=max_voxels, replace=False))
    if rows.size == 0:
        return rows, np.zeros((0, te.size), dtype=bool)
    from t2starmap.fit import fit_corrected

    cycles = np.abs(g_dz[rows])[:, None] * te
    f = _family_factor("sinc", 0.15, cycles)
    first = fit_corrected(
        np.asarray(mag[rows], dtype=np.float64),
        te,
        np.where(rough[rows], f, 0.0),
        noise_sigma=sigma,
        workers=workers,
    )
    counted = _model(first, te, f) >= floor[rows]
    reach = np.max(np.where(counted, cycles, 0.0), axis=1)
    keep = (reach >= min_cycles) & (counted.sum(axis=1) >= 4)
    return rows[keep], counted[keep]


def _model(fit: Any, te: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """S0 exp(-TE R2*) |F| of a :class:`t2starmap.fit.CorrectedFit`, (n, E) float64."""
    r2 = fit.result.r2star.double().cpu().numpy()
    s0 = fit.result.s0.double().cpu().numpy()
    return s0[:, None] * np.exp(-te * r2[:, None]) * factor


def _search(
    mag: np.ndarray,
    te: np.ndarray,
    k: np.ndarray,
    counted: np.ndarray,
    sigma: float | None,
    names: Sequence[str],
    workers: int | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Each family's grid (coarse + refined, sorted), per-voxel cost on it (n, grid), and
    the voxels no fit flagged (n,). Two batches of fits: the coarse grid, then the points
    around each family's coarse minimum (a parabola over a whole coarse step misplaces a
    sharp minimum, and its height, which decides between families)."""
    coarse = {name: np.asarray(FAMILY_GRIDS[name], dtype=np.float64) for name in names}
    first, usable = _cost_tables(mag, te, k, counted, sigma, coarse, workers)
    extra = {}
    for name, grid in coarse.items():
        vertex, _, _ = _vertex(first[name][usable].sum(axis=0), grid)
        step = float(grid[1] - grid[0])
        points = np.clip(vertex + step * np.asarray(_REFINE), grid[0], grid[-1])
        extra[name] = np.setdiff1d(np.unique(points), grid)
    second, usable_too = _cost_tables(mag, te, k, counted, sigma, extra, workers)
    grids, tables = {}, {}
    for name in names:
        grid = np.concatenate([coarse[name], extra[name]])
        order = np.argsort(grid)
        grids[name] = grid[order]
        tables[name] = np.concatenate([first[name], second[name]], axis=1)[:, order]
    return grids, tables, usable & usable_too


def _cost_tables(
    mag: np.ndarray,
    te: np.ndarray,
    k: np.ndarray,
    counted: np.ndarray,
    sigma: float | None,
    grids: Mapping[str, np.ndarray],
    workers: int | None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-voxel chi-square (n, len(grid)) of each family's members ``grids`` over the counted
    echoes, and the voxels every member could fit (n,) bool. sigma None: plain sums of
    squares. One corrected fit for every (member, voxel) pair: the fit is voxel-wise, so
    stacking the members as voxels is the same fit with one call's overhead, not one each."""
    from t2starmap.fit import fit_corrected

    n, n_echo = mag.shape
    members = [(name, float(v)) for name, grid in grids.items() for v in grid]
    if not members:
        return {name: np.zeros((n, 0)) for name in grids}, np.ones(n, dtype=bool)
    factors = np.stack([_family_factor(name, v, k) for name, v in members])  # (M, n, E)
    fit = fit_corrected(
        np.broadcast_to(mag, factors.shape).reshape(-1, n_echo),
        te,
        np.where(counted, factors, 0.0).reshape(-1, n_echo),
        mask=np.ones(factors.shape[0] * n, dtype=bool),
        noise_sigma=sigma,
        workers=workers,
    )
    # A member that over-dephases drives R2* to its lower bound and the fit reports a
    # failure: that bounded fit's cost is what the member is worth, so it stays. Left out:
    # voxels the fit could not correct (too few echoes) or gave no signal for.
    s0 = fit.result.s0.double().cpu().numpy()
    flagged = (fit.too_few.cpu().numpy() | ~(s0 > 0)).reshape(-1, n)
    model = _model(fit, te, factors.reshape(-1, n_echo)).reshape(factors.shape)
    if sigma is not None:  # the Rician mean, to first order in sigma / signal
        model = np.sqrt(model * model + sigma * sigma)
    resid = np.where(counted, mag - model, 0.0)
    cost = np.sum(resid * resid, axis=2).T / (1.0 if sigma is None else sigma**2)  # (n, M)
    usable = ~flagged.any(axis=0) & np.all(np.isfinite(cost), axis=1)
    split = np.cumsum([len(grid) for grid in grids.values()])[:-1]
    return dict(zip(grids, np.split(cost, split, axis=1), strict=True)), usable


def _vertex(total: np.ndarray, grid: np.ndarray) -> tuple[float, float, float]:
    """(v at the minimum of the parabola through the lowest grid point and its neighbours,
    clipped to the grid; the parabola's second derivative, <= 0 when there is no minimum;
    the parabola's value there). The grid may be uneven."""
    i = int(np.clip(np.argmin(total), 1, total.size - 2))
    v0, v1, v2 = grid[i - 1 : i + 2]
    s0, s1, s2 = total[i - 1 : i + 2]
    d1, d2 = (s1 - s0) / (v1 - v0), (s2 - s1) / (v2 - v1)  # divided differences
    curvature = 2.0 * (d2 - d1) / (v2 - v0)
    if not curvature > 0:
        j = int(np.argmin(total))
        return float(grid[j]), float(curvature), float(total[j])
    vertex = float(np.clip(0.5 * (v0 + v1) - d1 / curvature, grid[0], grid[-1]))
    value = s0 + d1 * (vertex - v0) + 0.5 * curvature * (vertex - v0) * (vertex - v1)
    return vertex, float(curvature), float(value)


def _family_fit(
    family: str, grid: np.ndarray, cost: np.ndarray, weights: np.ndarray, dof: float
) -> tuple[FamilyFit, np.ndarray]:
    """The family's :class:`FamilyFit` from its per-voxel cost (n, grid) and the bootstrap's
    voxel weights (n_boot, n); also each resampling's lowest reduced chi-square (n_boot,)."""
    total = cost.sum(axis=0)
    value, curvature, lowest = _vertex(total, grid)
    boot = [_vertex(curve, grid) for curve in weights @ cost]
    value_sd = float(np.std([b[0] for b in boot], ddof=1))
    chi2 = lowest / dof
    sd_curvature = math.sqrt(2.0 / curvature * max(1.0, chi2)) if curvature > 0 else math.inf
    if family == "sinc":
        parameter = math.inf if value <= 0 else value**-0.5
        parameter_sd = math.inf if value <= 0 else 0.5 * value**-1.5 * value_sd
        at_edge = value >= grid[-1]
    else:
        parameter, parameter_sd = math.sqrt(value), 0.5 * value_sd / math.sqrt(value)
        at_edge = value <= grid[0] or value >= grid[-1]
    fit = FamilyFit(
        family,
        grid,
        total / dof,
        value,
        value_sd,
        sd_curvature,
        parameter,
        parameter_sd,
        chi2,
        bool(at_edge),
    )
    return fit, np.array([b[2] for b in boot]) / dof
