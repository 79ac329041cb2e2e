"""One HTML page per participant (and session) with a section per echo set.

Works from the records of published sets (:class:`t2starmap.derivatives.PublishedSet`): reads
their maps back from the written derivatives and the raw echoes from the input, so the page
shows exactly what was published; nothing here changes a fit.
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

import nibabel as nib
import numpy as np

from t2starmap import derivatives
from t2starmap.atomic import write_text
from t2starmap.conventions import sidecar_path
from t2starmap.derivatives import STATUS_LEVELS, PublishedSet
from t2starmap.report import figures
from t2starmap.report.html import Figure, render
from t2starmap.report.planes import FLAT, View, choose_view, to_canonical
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
)
#: Fit-status label of voxels the field-gradient correction left out (no gradient there).
NOT_CORRECTED = next(s.index for s in STATUS_LEVELS if s.name == "not_gradient_corrected")


def page_name(subject: str, session: str | None) -> str:
    """File name of a participant page: ``sub-<L>[_ses-<S>].html`` (at the output root)."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "") + ".html"


@dataclass(frozen=True)
class SetMaps:
    """Maps of one echo set as written, in the files' voxel order (X, Y, Z)."""

    maps: Mapping[str, np.ndarray]  # keys of derivatives.OUTPUTS present; masks as bool
    affine: np.ndarray
    zooms: tuple[float, ...]
    sidecar: Mapping[str, Any]


def load_set_maps(output_dir: Path, record: PublishedSet) -> SetMaps:
    """The published maps of ``record`` (those present) and its T2* sidecar.
    Raises FileNotFoundError without a T2* map."""
    masks = {s.key for s in derivatives.OUTPUTS if s.suffix == "mask"}
    maps: dict[str, np.ndarray] = {}
    affine: np.ndarray | None = None
    zooms: tuple[float, ...] = ()
    for key in (k for k in _MAP_KEYS if k in record.files):
        path = record.path(output_dir, key)
        if not path.exists():
            continue
        img: Any = nib.load(str(path))  # a NIfTI image; nibabel's stubs say less
        data = np.asarray(img.dataobj)
        maps[key] = data > 0 if key in masks else data.astype(np.float32)
        if affine is None:
            affine = np.asarray(img.affine)
            zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
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
        image: Any = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # the fit read it; a page without curves is still a page
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
    """What a set's section shows of the raw echoes, taken from the echoes the fit read
    instead of reading them again: the magnitudes at ``voxels`` (n_voxels, n_echoes) and the
    first echo's volume (X, Y, Z), both in the files' voxel order."""

    voxels: tuple[tuple[int, ...], ...]
    signals: np.ndarray
    first: np.ndarray


def _masks(maps: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signal, failed within signal, good = signal and not failed), bool."""
    signal = maps.get("signal", maps["t2star"] > 0)
    failed = maps.get("failed", np.zeros_like(signal)) & signal
    return signal, failed, signal & ~failed


def echo_samples(magnitude: np.ndarray, maps: Mapping[str, np.ndarray]) -> EchoSamples:
    """The :class:`EchoSamples` of a set from its stacked echoes (X, Y, Z, n_echoes) and its
    maps as written (float32 maps, bool masks; the keys of :func:`load_set_maps`)."""
    good = _masks(maps)[2]
    voxels = tuple(v for _, v in representative_voxels(maps["t2star"], good))
    signals = np.array([magnitude[v] for v in voxels], dtype=np.float64)
    return EchoSamples(
        voxels, signals.reshape(len(voxels), magnitude.shape[-1]), magnitude[..., 0].copy()
    )


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
    the absolute value (signed maps: the field map). ``overlay``: mask the background and mark
    failed voxels.
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
        "r2star_uncorrected",
        1.0,
        "viridis",
        "R2* uncorrected (1/s)",
        "R2* before the through-slice field-gradient correction (compare with the R2* above)",
        "fixed",
        R2STAR_WINDOW,
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
        "RdBu_r",
        "field map (Hz)",
        "Off-resonance frequency of the complex fit",
        "symmetric",
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
) -> Figure:
    """One montage of ``values`` (the files' voxel order) as ``spec`` says."""
    volume = values * spec.factor
    inside = volume[good] if spec.overlay else volume[signal]
    if spec.window == "fixed":
        window = spec.fixed
    elif spec.window == "symmetric":
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
        failed=canonical_failed if spec.overlay else None,
        view=view,
    )
    return Figure(figures.data_uri(png), f"{spec.label} montage", caption_of(spec, window))


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
        ("Failed", f"{n_failed} voxel(s), {100 * record.failed_fraction:.2f} %"),
        ("Fit status (desc-fitstatus_dseg)", _status_text(record)),
        (
            "T2* median [IQR] (ms)",
            f"{q[1]:.1f} [{q[0]:.1f}–{q[2]:.1f}]" if q is not None else "no voxel",
        ),
    ]
    return acquisition, fit


def set_section(
    record: PublishedSet, loaded: SetMaps, bids_dir: Path, samples: EchoSamples | None = None
) -> Section:
    """One echo set's tables, montages, histogram and decay curves. The raw echoes come from
    ``samples`` when they are for the same voxels, else they are read from ``bids_dir``."""
    maps = loaded.maps
    signal, failed, good = _masks(maps)
    t2 = maps["t2star"]
    sigma = record.noise_sigma

    voxels = representative_voxels(t2, good)
    first_echo: np.ndarray | None
    if samples is not None and samples.voxels == tuple(v for _, v in voxels):
        signals, first_echo = samples.signals, samples.first
    else:
        sources = [Path(bids_dir) / s.path for s in record.sources]
        signals, first_echo = read_echoes(sources, [v for _, v in voxels])

    def canon(volume: np.ndarray) -> np.ndarray:
        return to_canonical(volume, loaded.affine)

    c_signal, c_failed = canon(signal), canon(failed)
    view = choose_view(loaded.affine, signal.shape) if signal.ndim == 3 else FLAT
    slices = figures.select_slices(c_signal, axis=view.axis)
    if c_signal.ndim == 3:
        where = view.describe(slices, c_signal.shape[view.axis])
    else:
        where = "The image's single slice, as stored (no orientation applied)."
    n_failed = int(failed.sum())
    note = f"{n_failed} failed voxel(s) in cyan." if n_failed else "No voxel failed."

    def caption_of(spec: Montage, window: tuple[float, float]) -> str:
        return _caption(spec, window, record.echo_times[0], note)

    shown_maps = {**maps, "echo1": first_echo} if first_echo is not None else dict(maps)
    if "gradz" in maps and "status" in maps:  # 0 there means "not estimated", not "flat"
        shown_maps["gradz"] = np.where(maps["status"] == NOT_CORRECTED, np.nan, maps["gradz"])
    curves = [
        figures.DecayCurve(
            f"{label} ({', '.join(str(i) for i in voxel)})",
            signals[i],
            float(maps["s0"][voxel]) if "s0" in maps else float("nan"),
            float(t2[voxel]),
        )
        for i, (label, voxel) in enumerate(voxels)
    ]
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
            )
            for spec in MONTAGES
            if shown_maps.get(spec.key) is not None
        ]
        hist_job = pool.submit(figures.histogram_png, t2[good] * 1e3, window_ms=T2STAR_WINDOW_MS)
        decay_job = pool.submit(figures.decay_png, record.echo_times, curves, sigma)
        montages = [job.result() for job in montage_jobs]
        hist, decay = hist_job.result(), decay_job.result()
    acquisition, fit = _tables(record, loaded, good, n_failed)
    plots = [
        Figure(
            figures.data_uri(hist),
            "T2* histogram",
            f"T2* of the {int(good.sum())} signal-mask voxels whose fit did not fail.",
        ),
        Figure(
            figures.data_uri(decay),
            "decay curves",
            "Measured magnitudes (dots) and fitted curves for the voxels (i, j, k) at the "
            "5th, 50th and 95th percentile of T2*" + ("; dashed: noise level." if sigma else "."),
        ),
    ]
    return Section(record.name, acquisition, fit, record.warnings, where, montages, plots)


def write_participant_reports(
    output_dir: Path,
    bids_dir: Path,
    published: Sequence[PublishedSet],
    samples: Mapping[str, EchoSamples] | None = None,
) -> list[Path]:
    """Write ``OUTPUT_DIR/sub-<L>[_ses-<S>].html`` for every participant/session among
    ``published`` (whose maps and records are already written); return the pages written.
    ``samples``: set name -> :func:`echo_samples` of the echoes this run read (the other
    sets' echoes are read from ``bids_dir``).

    A page covers every set of its participant/session recorded in the output folder, also
    those that earlier runs published (jobs split by run or acquisition), so the last job
    does not drop the others' sections.
    """
    pages = sorted({(r.subject, r.session) for r in published}, key=lambda k: (k[0], k[1] or ""))
    written = []
    for subject, session in pages:
        started = time.perf_counter()
        ours = [r for r in published if (r.subject, r.session) == (subject, session)]
        try:
            recorded = derivatives.load_published(output_dir, [subject])
        except ValueError as err:
            log.warning("%s; the page shows this run's echo sets only", err)
            recorded = []
        names = {r.name for r in ours}
        everything = sorted(
            [*ours, *(r for r in recorded if r.session == session and r.name not in names)],
            key=lambda r: r.name,
        )
        sections = [
            set_section(r, load_set_maps(output_dir, r), bids_dir, (samples or {}).get(r.name))
            for r in everything
        ]
        heading = f"sub-{subject}" + (f" ses-{session}" if session else "")
        target = Path(output_dir) / page_name(subject, session)
        text = render(
            "participant.html", title=f"{heading} · t2starmap", heading=heading, sections=sections
        )
        write_text(target, text)
        written.append(target)
        log.info("report %s written in %.2f s", target, time.perf_counter() - started)
    return written
