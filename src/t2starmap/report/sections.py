"""One echo set's section of a participant page: its montages (a table of :class:`Montage`
rows), the fit-status map, the decay curves and the slice-profile plot (:func:`set_section`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.b0.profiles import factor_curves
from t2starmap.bids.outputs import STATUS_LEVELS
from t2starmap.bids.records import PublishedSet
from t2starmap.bids.slice_profiles import parse_slice_profile
from t2starmap.report import figures
from t2starmap.report.html import Figure
from t2starmap.report.maps import (
    CURVE_LABELS,
    EchoSamples,
    SetMaps,
    masks_of,
    read_echoes,
    representative_voxels,
)
from t2starmap.report.planes import DEFAULT_CONVENTION, FLAT, View, choose_view, to_canonical
from t2starmap.report.statusmap import misfit_mask, overlay_note, status_png
from t2starmap.report.tables import set_tables
from t2starmap.resources import available_cpus

#: Fixed T2* display window (ms) of montages: the same colours mean the same T2* on every page.
T2STAR_WINDOW_MS = (0.0, 100.0)


#: Fixed R2* display window (1/s).
R2STAR_WINDOW = (0.0, 200.0)


#: Percentile of in-mask values that tops the window of maps without a natural scale.
ROBUST_TOP = 99.0


#: Most threads that draw a section's figures at once.
FIGURE_THREADS = 2


#: Fit-status label of voxels the field-gradient correction left out (no gradient there).
NOT_CORRECTED = next(s.index for s in STATUS_LEVELS if s.name == "not_gradient_corrected")


def _figure_threads() -> int:
    """Threads that draw a section's figures: :data:`FIGURE_THREADS`, at most the CPUs this
    process may use."""
    return max(1, min(FIGURE_THREADS, available_cpus(os.environ)[0]))


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, ROBUST_TOP)) if finite.size else 1.0
    return 0.0, top if top > 0 else 1.0


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
    """What the template shows of one echo set or BOLD run."""

    name: str
    acquisition: Sequence[tuple[str, str]]
    fit: Sequence[tuple[str, str]]
    warnings: Sequence[str]
    where: str
    montages: Sequence[Figure]
    plots: Sequence[Figure]
    #: what it is: an echo set (MEGRE) or a BOLD run (:mod:`t2starmap.report.func_section`)
    kind: str = "Echo set"
    #: statements shown above its warnings (a BOLD run: whether its echoes are motion-corrected)
    notes: Sequence[str] = ()


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


@dataclass(frozen=True)
class _Grid:
    """What every montage of one section shares: the signal mask and the voxels whose fit did
    not fail (the files' voxel order, with their flat indices: taking values by index is
    several times faster than by a mask), the failed and misfit voxels (canonical order), the
    slices and how they are cut, the canonical reordering, the caption writer and the wrapped
    field map's ``FieldMapWrapLimit`` (Hz, its window)."""

    signal: np.ndarray
    good: np.ndarray
    signal_index: np.ndarray
    good_index: np.ndarray
    failed: np.ndarray
    misfit: np.ndarray
    slices: Sequence[int]
    view: View
    canon: Callable[[np.ndarray], np.ndarray]
    caption_of: Callable[[Montage, tuple[float, float]], str]
    wrap_limit: float | None


def _montage(spec: Montage, values: np.ndarray, grid: _Grid) -> Figure:
    """One montage of ``values`` (the files' voxel order) as ``spec`` says."""
    marked = spec.overlay and spec.mark_failed
    if marked:
        inside = _taken(values, grid.good, grid.good_index) * spec.factor
    else:
        inside = _taken(values, grid.signal, grid.signal_index) * spec.factor
    if spec.window == "fixed":
        window = spec.fixed
    elif spec.window == "wrap" and grid.wrap_limit:
        window = (-grid.wrap_limit, grid.wrap_limit)
    elif spec.window in ("symmetric", "wrap"):
        top = _window(np.abs(inside))[1]
        window = (-top, top)
    else:
        window = _window(inside)
    png = figures.montage_png(
        _drawn_volume(spec, values, grid),
        grid.slices,
        figures.Scale(window[0], window[1], spec.cmap, spec.label),
        failed=grid.failed if marked else None,
        misfit=grid.misfit if marked else None,
        view=grid.view,
    )
    return Figure(figures.data_uri(png), f"{spec.label} montage", grid.caption_of(spec, window))


def _taken(values: np.ndarray, mask: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[mask]``, taken by the mask's flat indices ``index`` (C order) where ``values``
    is C-contiguous (the maps a run holds; several times faster than the mask); by the mask
    otherwise (maps read from files are in Fortran order)."""
    return values.reshape(-1).take(index) if values.flags.c_contiguous else values[mask]


def _drawn_volume(spec: Montage, values: np.ndarray, grid: _Grid) -> np.ndarray:
    """The canonical float32 volume a montage draws: ``values`` times ``spec.factor``, NaN
    outside the signal mask for a fitted map (background, not zero). Worked out in the shown
    slices only, NaN in the others (which no tile shows): on a brain-sized volume the whole
    volume's products and masks cost more than drawing the montage."""
    signal = grid.canon(grid.signal)
    canon = grid.canon(values)
    if canon.ndim != 3:  # a single image: all of it is shown
        volume = (canon * spec.factor).astype(np.float32, copy=False)
        return np.where(signal, volume, np.float32(np.nan)) if spec.overlay else volume
    drawn = np.full(canon.shape, np.nan, dtype=np.float32)
    for k in grid.slices:
        cut = (slice(None),) * grid.view.axis + (k,)
        part = canon[cut] * spec.factor
        drawn[cut] = np.where(signal[cut], part, np.nan) if spec.overlay else part
    return drawn


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
    _, failed, good = masks_of(maps)
    echoes = _echoes(record, maps["t2star"], good, bids_dir, samples)
    grid, where = _grid(record, loaded, convention)
    shown_maps = _shown_maps(maps, echoes.first)
    # Drawn in a few threads: PNG encoding (zlib) releases the GIL, so one figure is encoded
    # while the next is drawn. Each figure is its own Figure object (no pyplot state).
    with ThreadPoolExecutor(max_workers=_figure_threads()) as pool:
        montage_jobs = [
            pool.submit(_montage, spec, shown_maps[spec.key], grid)
            for spec in MONTAGES
            if shown_maps.get(spec.key) is not None
        ]
        plot_jobs = pool.submit(
            _plots, record, maps, echoes, (good, grid.good_index), int(grid.misfit.sum())
        )
        status_job = pool.submit(_status_figure, record, maps, grid.canon, grid.slices, grid.view)
        montages = [job.result() for job in montage_jobs]
        plots = plot_jobs.result()
        if (status := status_job.result()) is not None:
            montages.insert(0, status)
    acquisition, fit = set_tables(record, loaded, good, int(failed.sum()))
    factor = _factor_plot(record.echo_times, loaded.sidecar)
    if factor is not None:
        plots.append(factor)
    return Section(record.name, acquisition, fit, record.warnings, where, montages, plots)


def _grid(record: PublishedSet, loaded: SetMaps, convention: str) -> tuple[_Grid, str]:
    """What the section's montages share, and the sentence that says which slices they show."""
    maps = loaded.maps
    signal, failed, good = masks_of(maps)

    def canon(volume: np.ndarray) -> np.ndarray:
        return to_canonical(volume, loaded.affine)

    c_signal = canon(signal)
    view = choose_view(loaded.affine, signal.shape, convention) if signal.ndim == 3 else FLAT
    slices = figures.select_slices(c_signal, axis=view.axis)
    where = view.describe(slices, c_signal.shape[view.axis] if c_signal.ndim == 3 else 1)
    misfit = misfit_mask(maps, signal & ~failed)
    note = overlay_note(int(failed.sum()), int(misfit.sum()))

    def caption_of(spec: Montage, window: tuple[float, float]) -> str:
        return _caption(spec, window, record.echo_times[0], note if spec.mark_failed else "")

    wrap = loaded.sidecar.get("FieldMapWrapLimit")
    wrap_limit = float(wrap) if isinstance(wrap, int | float) else None
    indices = np.flatnonzero(signal), np.flatnonzero(good)
    grid = _Grid(
        signal, good, *indices, canon(failed), canon(misfit), slices, view, canon, caption_of,
        wrap_limit,
    )  # fmt: skip
    return grid, where


def _plots(
    record: PublishedSet,
    maps: Mapping[str, np.ndarray],
    echoes: EchoSamples,
    voxels: tuple[np.ndarray, np.ndarray],
    n_misfit: int,
) -> list[Figure]:
    """The section's T2* histogram (of the voxels whose fit did not fail, ``voxels``: their
    mask and flat indices) and decay curves."""
    good, good_index = voxels
    sigma = record.noise_sigma
    good_t2star = _taken(maps["t2star"], good, good_index)
    hist = figures.histogram_png(good_t2star * 1e3, window_ms=T2STAR_WINDOW_MS)
    decay = figures.decay_png(record.echo_times, _decay_curves(maps, echoes), sigma)
    return [
        Figure(
            figures.data_uri(hist),
            "T2* histogram",
            f"T2* of the {good_index.size} signal-mask voxels whose fit did not fail "
            f"({n_misfit} of them with a decay that does not follow the model: "
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
