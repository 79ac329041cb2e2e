"""One HTML page per participant (and session) with a section per echo set.

A set's section is drawn from its record (:class:`t2starmap.bids.records.PublishedSet`) and its
maps: for the sets a run fits, the workflow hands over the maps it holds and the echoes it read
(:func:`set_section` with :class:`SetMaps` and :class:`EchoSamples`), so nothing is read back;
the sets earlier runs published are read from the output folder and the raw echoes from the
input (:func:`earlier_sections`). Sets that failed are listed with their reason
(:class:`t2starmap.bids.records.SetFailure`). Every image is read through
:mod:`t2starmap.bids.nifti`; nothing here changes a fit or writes anything but the page.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.b0.profiles import factor_curves
from t2starmap.bids import outputs as derivatives
from t2starmap.bids.atomic import write_text
from t2starmap.bids.conventions import sidecar_path
from t2starmap.bids.nifti import read_map_image, read_volume
from t2starmap.bids.outputs import STATUS_LEVELS
from t2starmap.bids.records import PublishedSet, SetFailure, load_failures, load_published
from t2starmap.bids.slice_profiles import parse_slice_profile
from t2starmap.errors import T2StarError, describe_code
from t2starmap.report import figures
from t2starmap.report.html import Figure, render
from t2starmap.report.methods import citation
from t2starmap.report.planes import DEFAULT_CONVENTION, FLAT, View, choose_view, to_canonical
from t2starmap.report.statusmap import MISFIT_NAME, misfit_mask, overlay_note, status_png
from t2starmap.resources import available_cpus

log = logging.getLogger("t2starmap.report")

#: Fixed T2* display window (ms) of montages: the same colours mean the same T2* on every page.
T2STAR_WINDOW_MS = (0.0, 100.0)
#: Fixed R2* display window (1/s).
R2STAR_WINDOW = (0.0, 200.0)
#: Percentile of in-mask values that tops the window of maps without a natural scale.
ROBUST_TOP = 99.0
#: T2* quantiles whose voxels get a decay-curve plot.
CURVE_QUANTILES = (("low", 0.05), ("median", 0.5), ("high", 0.95))
CURVE_LABELS = tuple(label for label, _ in CURVE_QUANTILES)

#: Most threads that read (decompress) echoes at once.
READ_THREADS = 4
#: Most threads that draw a section's figures at once.
FIGURE_THREADS = 2

_MAP_KEYS = (
    "t2star",
    "r2star",
    "s0",
    "t2star_se",
    "rmse",
    "signal",
    "failed",
    "frequency",
    "r2star_uncorrected",
    "gradz",
    "status",
    "chisq",
)
#: Fit-status label of voxels the field-gradient correction left out (no gradient there).
NOT_CORRECTED = next(s.index for s in STATUS_LEVELS if s.name == "not_gradient_corrected")


def page_name(subject: str, session: str | None) -> str:
    """File name of a participant page: ``sub-<L>[_ses-<S>].html`` (at the output root)."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "") + ".html"


@dataclass(frozen=True)
class SetMaps:
    """Maps of one echo set in the files' voxel order (X, Y, Z): float32 maps, bool masks
    (OUTPUTS keys present), the affine and voxel size they are written with, and the fit's
    sidecar fields (``FieldMapWrapLimit`` sets the field map's window)."""

    maps: Mapping[str, np.ndarray]
    affine: np.ndarray
    zooms: tuple[float, ...]
    sidecar: Mapping[str, Any]


_MASKS = frozenset(s.key for s in derivatives.OUTPUTS if s.suffix == "mask")


def in_memory_maps(
    maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    zooms: tuple[float, ...],
    sidecar: Mapping[str, Any],
) -> SetMaps:
    """:class:`SetMaps` of maps a run holds (as it writes them: masks bool, the rest as
    float32), so that the page shows exactly what is published without reading it back."""
    shown = {
        k: (v > 0 if k in _MASKS else v.astype(np.float32, copy=False))
        for k, v in maps.items()
        if k in _MAP_KEYS
    }
    return SetMaps(shown, np.asarray(affine), tuple(zooms), dict(sidecar))


def load_set_maps(output_dir: Path, record: PublishedSet) -> SetMaps:
    """The published maps of ``record`` (those present) and its T2* sidecar, read from the
    output folder: for sets that earlier runs published. Raises FileNotFoundError without a
    T2* map."""
    maps: dict[str, np.ndarray] = {}
    affine: np.ndarray | None = None
    zooms: tuple[float, ...] = ()
    for key in (k for k in _MAP_KEYS if k in record.files):
        path = record.path(output_dir, key)
        if not path.exists():
            continue
        image = read_map_image(path)
        maps[key] = image.data > 0 if key in _MASKS else image.data
        if affine is None:
            affine, zooms = image.affine, image.zooms
    if affine is None or "t2star" not in maps:
        raise FileNotFoundError(f"no T2* map of {record.name} under {output_dir}")
    sidecar = sidecar_path(record.path(output_dir, "t2star"))
    return SetMaps(maps, affine, zooms, json.loads(sidecar.read_text()) if sidecar.exists() else {})


def representative_voxels(
    t2star: np.ndarray, good: np.ndarray, quantiles: Sequence[tuple[str, float]] = CURVE_QUANTILES
) -> list[tuple[str, tuple[int, ...]]]:
    """For each (label, q): the voxel of ``good`` whose T2* is closest to the q-quantile.
    Ties go to the first voxel in C order, so the choice is deterministic."""
    index = np.flatnonzero(good)
    if index.size == 0:
        return []
    values = t2star.reshape(-1)[index]
    out = []
    for label, q in quantiles:
        target = np.quantile(values, q)
        flat = int(index[int(np.argmin(np.abs(values - target)))])
        out.append((label, tuple(int(i) for i in np.unravel_index(flat, t2star.shape))))
    return out


def _read_volume(path: Path) -> np.ndarray | None:
    try:
        data = read_volume(path)
    except (T2StarError, OSError) as err:  # the fit read it; a page without curves is a page
        log.warning("%s: not readable for the report (%s)", path, err)
        return None
    return data.reshape(data.shape[:3]) if data.ndim == 4 else data


def read_echoes(
    paths: Sequence[Path], voxels: Sequence[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Magnitudes of ``voxels`` at every echo, (n_voxels, n_echoes) with NaN for an echo
    that cannot be read, and the first echo's volume (None when unreadable: no montage).

    Echoes are decompressed in a few threads (zlib releases the GIL): reading them is most of
    the report's cost on large volumes. At most :data:`READ_THREADS`, and never more than the
    CPUs this process may run on (a batch scheduler's allocation).
    """
    signals = np.full((len(voxels), len(paths)), np.nan)
    workers = max(1, min(READ_THREADS, available_cpus(os.environ)[0], len(paths)))
    first: np.ndarray | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        volumes = pool.map(_read_volume, paths)
        for k, data in enumerate(volumes):
            if data is None:
                continue
            if k == 0:
                first = data
            for i, voxel in enumerate(voxels):
                signals[i, k] = data[voxel]
    return signals, first


@dataclass(frozen=True)
class EchoSamples:
    """What a set's section shows of the raw echoes: the magnitudes at ``voxels`` (the
    decay-curve voxels, :func:`representative_voxels`), (n_voxels, n_echoes), and the first
    echo's volume (X, Y, Z; None when it could not be read), both in the files' voxel order.
    For a set the run fits, taken from the echoes the fit read (:func:`echo_samples`)."""

    voxels: tuple[tuple[int, ...], ...]
    signals: np.ndarray
    first: np.ndarray | None


def _masks(maps: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signal, failed within signal, good = signal and not failed), bool."""
    signal = maps.get("signal", maps["t2star"] > 0)
    failed = maps.get("failed", np.zeros_like(signal)) & signal
    return signal, failed, signal & ~failed


def echo_samples(magnitude: np.ndarray, maps: Mapping[str, np.ndarray]) -> EchoSamples:
    """The :class:`EchoSamples` of a set from its stacked echoes (X, Y, Z, n_echoes) and its
    maps as written (float32 maps, bool masks; the keys of :func:`load_set_maps`). The first
    echo is kept as float32 when the echoes are integers (int16 files stay int16 in memory):
    the page draws float32 whatever the file held."""
    good = _masks(maps)[2]
    voxels = tuple(v for _, v in representative_voxels(maps["t2star"], good))
    signals = np.array([magnitude[v] for v in voxels], dtype=np.float64)
    first = magnitude[..., 0]
    first = first.astype(np.float32) if first.dtype.kind in "iu" else first.copy()
    return EchoSamples(voxels, signals.reshape(len(voxels), magnitude.shape[-1]), first)


def _figure_threads() -> int:
    """Threads that draw a section's figures: :data:`FIGURE_THREADS`, at most the CPUs this
    process may use."""
    return max(1, min(FIGURE_THREADS, available_cpus(os.environ)[0]))


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, ROBUST_TOP)) if finite.size else 1.0
    return 0.0, top if top > 0 else 1.0


def _fmt(value: Any, spec: str = ".4g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "not known"
    return f"{value:{spec}}{unit}"


@dataclass(frozen=True)
class Montage:
    """One montage of a set's section: which map, in which units, window and colours.

    ``window``: ``"fixed"`` uses ``fixed`` (the same colours mean the same value on every page);
    ``"robust"`` runs from 0 to the :data:`ROBUST_TOP` percentile inside the mask, printed with
    ``fmt`` and ``unit`` in the caption; ``"symmetric"`` from minus to plus that percentile of
    the absolute value (signed maps: the gradient, the correction); ``"wrap"`` over the wrapped
    field map's full range, minus to plus ``FieldMapWrapLimit`` (a cyclic colour map: both ends
    are the same colour, as they are the same frequency). ``overlay``: mask the background and
    mark failed voxels.
    """

    key: str
    factor: float
    cmap: str
    label: str
    title: str
    window: str = "robust"
    fixed: tuple[float, float] = (0.0, 1.0)
    fmt: str = ".4g"
    unit: str = ""
    overlay: bool = True
    #: mark failed voxels (not on a map that says why they failed)
    mark_failed: bool = True


#: The montages of a set's section, in page order; "echo1" is the measured first echo.
MONTAGES = (
    Montage(
        "t2star",
        1e3,
        "inferno",
        "T2* (ms)",
        "T2*",
        "fixed",
        T2STAR_WINDOW_MS,
        unit=" ms (longer T2* saturates)",
    ),
    Montage("r2star", 1.0, "viridis", "R2* (1/s)", "R2*", "fixed", R2STAR_WINDOW, unit=" s⁻¹"),
    Montage(
        "r2star_difference",
        1.0,
        "RdBu_r",
        "R2* correction (1/s)",
        "What the through-slice field-gradient correction changed: corrected minus uncorrected "
        "R2* (blue where it lowered R2*; black where it was not applied: edge slices, mask "
        "borders, untrusted field; the uncorrected map is desc-uncorrected_R2starmap)",
        "symmetric",
        fmt=".3g",
        unit=" s⁻¹",
    ),
    Montage(
        "gradz",
        1.0,
        "RdBu_r",
        "gradient (Hz/mm)",
        "Through-slice gradient of the field map (black where it could not be estimated: edge "
        "slices, mask borders, untrusted field)",
        "symmetric",
        fmt=".3g",
        unit=" Hz/mm",
    ),
    Montage("s0", 1.0, "gray", "S0 (input units)", "S0"),
    Montage("rmse", 1.0, "viridis", "RMSE (input units)", "Root-mean-square residual"),
    Montage(
        "chisq",
        1.0,
        "magma",
        "reduced χ²",
        "Goodness of fit: the reduced chi-square of each voxel's residuals under the fit's noise "
        "model (about 1 where the decay follows the model; far above it: two T2* pools, fat, a "
        "bright or dark echo, motion; labelled decay_not_following_model above its p < 0.001 "
        "point; failed voxels are not marked on this map: its values say why)",
        "fixed",
        (0.0, 5.0),
        fmt=".3g",
        mark_failed=False,
    ),
    Montage(
        "t2star_se",
        1e3,
        "viridis",
        "SE of T2* (ms)",
        "Standard error of T2*",
        fmt=".3g",
        unit=" ms",
    ),
    Montage(
        "frequency",
        1.0,
        "twilight",
        "field map (Hz)",
        "Off-resonance frequency (the complex fit's, or the field map the through-slice "
        "correction used), wrapped (a cyclic colour map: the two ends of the window are one "
        "colour, as they are one frequency)",
        "wrap",
        fmt=".4g",
        unit=" Hz",
    ),
    Montage(
        "echo1",
        1.0,
        "gray",
        "echo 1 magnitude",
        "Measured magnitude at the first echo",
        overlay=False,
    ),
)


@dataclass(frozen=True)
class Section:
    """What the template shows of one echo set."""

    name: str
    acquisition: Sequence[tuple[str, str]]
    fit: Sequence[tuple[str, str]]
    warnings: Sequence[str]
    where: str
    montages: Sequence[Figure]
    plots: Sequence[Figure]


def _caption(spec: Montage, window: tuple[float, float], echo_time: float, note: str) -> str:
    if spec.key == "echo1":
        return f"{spec.title} (TE {echo_time * 1e3:.2f} ms), window 0–{window[1]:.4g}, no overlay."
    if spec.window == "fixed":
        return f"{spec.title}, fixed window {window[0]:g}–{window[1]:g}{spec.unit}. {note}"
    if spec.window == "symmetric":
        return (
            f"{spec.title}, window ±{window[1]:{spec.fmt}}{spec.unit} (the {ROBUST_TOP:g}th "
            f"percentile of its size in the mask). {note}"
        )
    if spec.window == "wrap":
        return f"{spec.title}, window ±{window[1]:{spec.fmt}}{spec.unit}. {note}"
    return (
        f"{spec.title}, window 0–{window[1]:{spec.fmt}}{spec.unit} (the {ROBUST_TOP:g}th "
        f"percentile in the mask). {note}"
    )


def _montage(
    spec: Montage,
    values: np.ndarray,
    signal: np.ndarray,
    good: np.ndarray,
    canonical_failed: np.ndarray,
    slices: Sequence[int],
    view: View,
    canon: Callable[[np.ndarray], np.ndarray],
    caption_of: Callable[[Montage, tuple[float, float]], str],
    wrap_limit: float | None = None,
    canonical_misfit: np.ndarray | None = None,
) -> Figure:
    """One montage of ``values`` (the files' voxel order) as ``spec`` says; ``wrap_limit``:
    the wrapped field map's ``FieldMapWrapLimit`` (Hz), its window."""
    volume = values * spec.factor
    inside = volume[good] if spec.overlay and spec.mark_failed else volume[signal]
    if spec.window == "fixed":
        window = spec.fixed
    elif spec.window == "wrap" and wrap_limit:
        window = (-wrap_limit, wrap_limit)
    elif spec.window in ("symmetric", "wrap"):
        top = _window(np.abs(inside))[1]
        window = (-top, top)
    else:
        window = _window(inside)
    if spec.overlay:  # a fitted map: outside the signal mask is background, not zero
        volume = np.where(signal, volume, np.nan)
    png = figures.montage_png(
        canon(volume),
        slices,
        vmin=window[0],
        vmax=window[1],
        cmap=spec.cmap,
        label=spec.label,
        failed=canonical_failed if spec.overlay and spec.mark_failed else None,
        misfit=canonical_misfit if spec.overlay and spec.mark_failed else None,
        view=view,
    )
    return Figure(figures.data_uri(png), f"{spec.label} montage", caption_of(spec, window))


def _status_figure(
    record: PublishedSet,
    maps: Mapping[str, np.ndarray],
    canon: Callable[[np.ndarray], np.ndarray],
    slices: Sequence[int],
    view: View,
) -> Figure | None:
    """The fit-status map with its legend, or None without one."""
    if "status" not in maps:
        return None
    png = status_png(canon(maps["status"]), slices, dict(record.status_counts), view=view)
    return Figure(
        figures.data_uri(png),
        "fit-status map",
        "Fit status (desc-fitstatus_dseg): why each voxel's fit is or is not to be trusted. "
        "Failed labels have no usable estimate; decay_not_following_model (orange) has one, "
        "with an inflated standard error; counts are voxels of the signal mask.",
    )


def _status_text(record: PublishedSet) -> str:
    """Voxel count and mask share of every fit-status label that occurs, good fits first."""
    parts = []
    for level in STATUS_LEVELS:
        count = record.status_counts.get(level.name, 0)
        if count:
            share = 100 * count / max(record.n_voxels, 1)
            parts.append(f"{level.meaning}: {count} ({share:.2f} %)")
    return "; ".join(parts) or "no voxel"


def _tables(
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
            + (f" ({record.noise_method}, coils {record.noise_coils:.3g})" if sigma else ""),
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


#: Gradient strengths (Hz/mm) of the F(TE) plot: weak, typical near air-tissue interfaces,
#: strong (the frontal sinuses, the abdomen near bowel gas).
FACTOR_GRADIENTS = (2.0, 5.0, 10.0)


def _factor_plot(echo_times: Sequence[float], sidecar: Mapping[str, Any]) -> Figure | None:
    """The dephasing factor of the slice profile the correction used, or None without one."""
    spec, thickness = sidecar.get("B0SliceProfile"), sidecar.get("B0SliceThickness")
    if sidecar.get("B0Correction") != "through-slice" or not spec or not thickness:
        return None
    try:
        profile = parse_slice_profile(str(spec))
    except (ValueError, OSError):  # a table moved since the run: no plot, the text says it
        return None
    fine = np.linspace(0.0, max(echo_times) * 1.05, 200)
    curves = factor_curves(profile, float(thickness), fine, FACTOR_GRADIENTS)
    threshold = float(sidecar.get("B0CorrectionThreshold", 0.3))
    png = figures.factor_png(fine, curves.gradients_hz_per_mm, curves.factor, echo_times, threshold)
    return Figure(
        figures.data_uri(png),
        "dephasing factor",
        f"F(TE) of the slice profile used ({profile.spec()}, {float(thickness):.3g} mm slices) "
        f"for field gradients of {', '.join(f'{g:g}' for g in FACTOR_GRADIENTS)} Hz/mm across "
        f"the slice; echoes with |F| below {threshold:g} (dashed) are left out of the "
        "corrected fit.",
    )


def _shown_maps(
    maps: Mapping[str, np.ndarray], first_echo: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The arrays the montages show: the maps, the measured first echo, the gradient with
    NaN where it was not estimated, and what the field-gradient correction changed."""
    shown = dict(maps)
    if first_echo is not None:
        shown["echo1"] = first_echo
    left_out = maps["status"] == NOT_CORRECTED if "status" in maps else None
    if "gradz" in maps and left_out is not None:  # 0 there means "not estimated", not "flat"
        shown["gradz"] = np.where(left_out, np.nan, maps["gradz"])
    if "r2star_uncorrected" in maps:  # black where the correction was not applied
        difference = maps["r2star"] - maps["r2star_uncorrected"]
        shown["r2star_difference"] = (
            difference if left_out is None else np.where(left_out, np.nan, difference)
        )
    return shown


def _echoes(
    record: PublishedSet,
    t2: np.ndarray,
    good: np.ndarray,
    bids_dir: Path,
    given: EchoSamples | None,
) -> EchoSamples:
    """The raw echoes the section shows: those handed over, else read from the input."""
    if given is not None:
        return given
    voxels = tuple(v for _, v in representative_voxels(t2, good))
    sources = [Path(bids_dir) / s.path for s in record.sources]
    signals, first = read_echoes(sources, voxels)
    return EchoSamples(voxels, signals, first)


def _decay_curves(maps: Mapping[str, np.ndarray], samples: EchoSamples) -> list[figures.DecayCurve]:
    """The decay-curve voxels, named by their quantile and the file's voxel indices."""
    return [
        figures.DecayCurve(
            f"{label} ({', '.join(str(i) for i in voxel)})",
            samples.signals[i],
            float(maps["s0"][voxel]) if "s0" in maps else float("nan"),
            float(maps["t2star"][voxel]),
        )
        for i, (label, voxel) in enumerate(zip(CURVE_LABELS, samples.voxels, strict=False))
    ]


def set_section(
    record: PublishedSet,
    loaded: SetMaps,
    bids_dir: Path,
    samples: EchoSamples | None = None,
    convention: str = DEFAULT_CONVENTION,
) -> Section:
    """One echo set's tables, montages, histogram and decay curves. ``samples``: the raw
    echoes the run read (:func:`echo_samples` of the same maps); without them they are read
    from ``bids_dir``. ``convention``: how axial and coronal tiles face (:mod:`.planes`)."""
    maps = loaded.maps
    signal, failed, good = _masks(maps)
    t2 = maps["t2star"]
    sigma = record.noise_sigma
    echoes = _echoes(record, t2, good, bids_dir, samples)

    def canon(volume: np.ndarray) -> np.ndarray:
        return to_canonical(volume, loaded.affine)

    c_signal, c_failed = canon(signal), canon(failed)
    view = choose_view(loaded.affine, signal.shape, convention) if signal.ndim == 3 else FLAT
    slices = figures.select_slices(c_signal, axis=view.axis)
    where = view.describe(slices, c_signal.shape[view.axis] if c_signal.ndim == 3 else 1)
    n_failed = int(failed.sum())
    misfit = misfit_mask(maps, signal & ~failed)
    note = overlay_note(n_failed, int(misfit.sum()))

    def caption_of(spec: Montage, window: tuple[float, float]) -> str:
        return _caption(spec, window, record.echo_times[0], note if spec.mark_failed else "")

    shown_maps = _shown_maps(maps, echoes.first)
    wrap = loaded.sidecar.get("FieldMapWrapLimit")
    # Drawn in a few threads: PNG encoding (zlib) releases the GIL, so one figure is encoded
    # while the next is drawn. Each figure is its own Figure object (no pyplot state).
    with ThreadPoolExecutor(max_workers=_figure_threads()) as pool:
        montage_jobs = [
            pool.submit(
                _montage,
                spec,
                shown_maps[spec.key],
                signal,
                good,
                c_failed,
                slices,
                view,
                canon,
                caption_of,
                float(wrap) if isinstance(wrap, int | float) else None,
                canon(misfit),
            )
            for spec in MONTAGES
            if shown_maps.get(spec.key) is not None
        ]
        hist_job = pool.submit(figures.histogram_png, t2[good] * 1e3, window_ms=T2STAR_WINDOW_MS)
        decay_job = pool.submit(
            figures.decay_png, record.echo_times, _decay_curves(maps, echoes), sigma
        )
        status_job = pool.submit(_status_figure, record, maps, canon, slices, view)
        montages = [job.result() for job in montage_jobs]
        hist, decay = hist_job.result(), decay_job.result()
        if (status := status_job.result()) is not None:
            montages.insert(0, status)
    acquisition, fit = _tables(record, loaded, good, n_failed)
    plots = [
        Figure(
            figures.data_uri(hist),
            "T2* histogram",
            f"T2* of the {int(good.sum())} signal-mask voxels whose fit did not fail "
            f"({int(misfit.sum())} of them with a decay that does not follow the model: "
            "included, as in the record's statistics).",
        ),
        Figure(
            figures.data_uri(decay),
            "decay curves",
            "Measured magnitudes (dots) and fitted curves for the voxels at the 5th, 50th and "
            "95th percentile of T2*, named by their voxel indices (i, j, k) in the file, as a "
            "viewer shows them" + ("; dashed: noise level." if sigma else "."),
        ),
    ]
    factor = _factor_plot(record.echo_times, loaded.sidecar)
    if factor is not None:
        plots.append(factor)
    return Section(record.name, acquisition, fit, record.warnings, where, montages, plots)


@dataclass(frozen=True)
class FailedSet:
    """What a page says of an echo set that failed: why, when, and whether the outputs of an
    earlier run are still there (they are shown below it)."""

    name: str
    reason: str
    exit_code: str
    when: str
    earlier_kept: bool


def failed_sets(
    failures: Sequence[SetFailure], published_names: set[str] | frozenset[str]
) -> list[FailedSet]:
    """The page's list of failed sets; ``published_names``: sets whose earlier outputs the
    page shows."""
    return [
        FailedSet(f.name, f.reason, describe_code(f.exit_code), f.when, f.name in published_names)
        for f in sorted(failures, key=lambda f: f.name)
    ]


def render_page(
    subject: str,
    session: str | None,
    sections: Sequence[Section],
    failed: Sequence[FailedSet],
    records: Sequence[PublishedSet] = (),
) -> str:
    """The HTML of one participant/session page: failed sets first, then a section per set,
    then the methods paragraphs of ``records`` (the sets shown), to cite."""
    heading = f"sub-{subject}" + (f" ses-{session}" if session else "")
    label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    return render(
        "participant.html",
        title=f"{heading} · t2starmap",
        heading=heading,
        sections=sorted(sections, key=lambda x: x.name),
        failed=list(failed),
        citation=citation(records) if records else None,
        citation_file=f"logs/CITATION_{label}.md",
    )


def recorded_sets(
    output_dir: Path, subject: str, session: str | None
) -> tuple[list[PublishedSet], list[SetFailure]]:
    """The records and failure records of one participant/session in the output folder; a
    record that cannot be read is left out with a warning (the page shows the others)."""
    try:
        records = load_published(output_dir, [subject])
    except ValueError as err:
        log.warning("%s; the page leaves out the sets published earlier", err)
        records = []
    try:
        failures = load_failures(output_dir, [subject])
    except ValueError as err:
        log.warning("%s; the page leaves out the sets that failed earlier", err)
        failures = []
    return (
        [r for r in records if r.session == session],
        [f for f in failures if f.session == session],
    )


def earlier_sections(
    output_dir: Path,
    bids_dir: Path,
    records: Sequence[PublishedSet],
    convention: str = DEFAULT_CONVENTION,
) -> list[Section]:
    """Sections of sets published before (``records``), their maps read from the output
    folder and their echoes from the input."""
    return [
        set_section(r, load_set_maps(output_dir, r), bids_dir, convention=convention)
        for r in records
    ]


def write_participant_reports(
    output_dir: Path,
    bids_dir: Path,
    published: Sequence[PublishedSet],
    convention: str = DEFAULT_CONVENTION,
) -> list[Path]:
    """Write ``OUTPUT_DIR/sub-<L>[_ses-<S>].html`` for every participant/session among
    ``published`` from what the output folder holds (maps and records already written; the
    participant run hands its maps over instead, see :mod:`t2starmap.workflows.participant`);
    return the pages written. A page covers every set of its participant/session recorded in the
    output folder, also those that other runs published, and lists those that failed."""
    pages = sorted({(r.subject, r.session) for r in published}, key=lambda k: (k[0], k[1] or ""))
    written = []
    for subject, session in pages:
        started = time.perf_counter()
        records, failures = recorded_sets(output_dir, subject, session)
        names = {r.name for r in published}
        records = [*(r for r in published if (r.subject, r.session) == (subject, session))] + [
            r for r in records if r.name not in names
        ]
        sections = earlier_sections(output_dir, bids_dir, records, convention)
        failed = failed_sets(failures, {r.name for r in records})
        target = Path(output_dir) / page_name(subject, session)
        write_text(target, render_page(subject, session, sections, failed, records))
        written.append(target)
        log.info("report %s written in %.2f s", target, time.perf_counter() - started)
    return written
