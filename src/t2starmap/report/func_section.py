"""One multi-echo BOLD run's section of a participant page (:func:`run_section`): the
fit-status map, the adaptive mask with its legend, T2* and S0 montages, the tSNR of the
optimal combination against the best single echo, the T2* histogram, and the tables.

Drawn from the run's record (:class:`t2starmap.bids.func_records.PublishedRun`) and its 3-D
maps (:func:`load_run_maps`: from the staging folder for a run this run fitted, from the
output folder for one an earlier run published); the tSNR numbers and histograms are in the
record, so no 4-D series is read here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.nifti import read_map_image
from t2starmap.fit import status as fit_status
from t2starmap.report import figures
from t2starmap.report.charts import adaptive_mask_png, tsnr_histogram_png
from t2starmap.report.html import Figure
from t2starmap.report.maps import SetMaps
from t2starmap.report.planes import DEFAULT_CONVENTION, FLAT, View, choose_view, to_canonical
from t2starmap.report.sections import T2STAR_WINDOW_MS, Section
from t2starmap.report.statusmap import MISFIT_NAME, overlay_note, status_png

#: Section maps -> the run's registry keys.
RUN_MAPS = {
    "t2star": "t2star img",
    "s0": "s0 img",
    "adaptive": "adaptive mask img",
    "status": "fit status img",
}
#: What the page says of raw and of motion-corrected echoes.
RAW_STATEMENT = (
    "The echoes are raw: they are not motion-corrected. Head motion between volumes blurs "
    "these maps and lowers the tSNR. Give fMRIPrep's per-echo outputs (--me-output-echos, "
    "desc-preproc) as input to fit motion-corrected echoes."
)
PREPROC_STATEMENT = "The echoes are fMRIPrep's motion-corrected echoes (desc-preproc)."
KIND = "BOLD run"
#: Threads that draw a run's figures (the MEGRE sections use as many).
FIGURE_THREADS = 2
_FAILED = tuple(level.index for level in fit_status.LEVELS if level.failure)
_MISFIT = fit_status.level_named(MISFIT_NAME).index


def load_run_maps(folder: Path, record: PublishedRun) -> SetMaps:
    """The run's T2*, S0, adaptive mask and fit-status map under ``folder`` (the output or the
    staging folder). FileNotFoundError without its T2* map."""
    maps: dict[str, np.ndarray] = {}
    affine: np.ndarray | None = None
    zooms: tuple[float, ...] = ()
    for name, key in RUN_MAPS.items():
        if key not in record.files or not record.path(folder, key).exists():
            continue
        image = read_map_image(record.path(folder, key))
        maps[name] = image.data
        affine, zooms = image.affine, image.zooms
    if affine is None or "t2star" not in maps:
        raise FileNotFoundError(f"no T2* map of {record.name} under {folder}")
    return SetMaps(maps, affine, zooms, {})


@dataclass(frozen=True)
class _Layout:
    """The slices every figure of the section shows, how they are cut, the reordering."""

    slices: Sequence[int]
    view: View
    canon: Callable[[np.ndarray], np.ndarray]
    where: str


def _layout(loaded: SetMaps, fitted: np.ndarray, convention: str) -> _Layout:
    def canon(volume: np.ndarray) -> np.ndarray:
        return to_canonical(volume, loaded.affine)

    c_fitted = canon(fitted)
    view = choose_view(loaded.affine, fitted.shape, convention) if fitted.ndim == 3 else FLAT
    slices = figures.select_slices(c_fitted, axis=view.axis)
    depth = c_fitted.shape[view.axis] if c_fitted.ndim == 3 else 1
    return _Layout(slices, view, canon, view.describe(slices, depth))


def _masks(maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fitted: adaptive mask >= 1, failed: a failure label of the fit-status map, misfit:
    the decay does not follow the model), bool."""
    fitted = maps["adaptive"] >= 1 if "adaptive" in maps else maps["t2star"] > 0
    status = maps.get("status")
    if status is None:
        return fitted, np.zeros_like(fitted), np.zeros_like(fitted)
    return fitted, np.isin(status, _FAILED) & fitted, (status == _MISFIT) & fitted


def _map_montages(record: PublishedRun, maps: dict[str, np.ndarray], lay: _Layout) -> list[Figure]:
    """T2* (fixed window, as MEGRE sets) and S0 (robust window), failed voxels marked."""
    fitted, failed, misfit = _masks(maps)
    good = fitted & ~failed
    note = overlay_note(int(failed.sum()), int(misfit.sum()))
    out = []
    t2 = np.where(fitted, maps["t2star"] * 1e3, np.nan)
    s0 = np.where(fitted, maps["s0"], np.nan) if "s0" in maps else None
    s0_top = float(np.percentile(s0[good], 99)) if s0 is not None and good.any() else 1.0
    shown = [
        ("T2* (ms)", t2, T2STAR_WINDOW_MS, "inferno", "T2* (ms, fixed window"),
        ("S0 (input units)", s0, (0.0, max(s0_top, 1e-6)), "gray", "S0 (window: 99th percentile"),
    ]
    for label, volume, window, cmap, title in shown:
        if volume is None:
            continue
        png = figures.montage_png(
            lay.canon(volume),
            lay.slices,
            figures.Scale(window[0], window[1], cmap, label),
            failed=lay.canon(failed),
            misfit=lay.canon(misfit),
            view=lay.view,
        )
        caption = (
            f"{title} {window[0]:g}–{window[1]:.6g}) over the {record.n_voxels} voxels "
            f"with at least one good echo; black outside them. {note}"
        )
        out.append(Figure(figures.data_uri(png), f"{label} montage", caption))
    return out


def _mask_figures(record: PublishedRun, maps: dict[str, np.ndarray], lay: _Layout) -> list[Figure]:
    """The fit-status map and the adaptive mask, each with its legend."""
    out = []
    if "status" in maps:
        png = status_png(
            lay.canon(maps["status"]), lay.slices, dict(record.status_counts), view=lay.view
        )
        out.append(
            Figure(
                figures.data_uri(png),
                "fit-status map",
                "Fit status (desc-fitstatus_dseg): why each voxel's fit is or is not to be "
                "trusted; counts are voxels with at least one good echo.",
            )
        )
    if "adaptive" in maps:
        counts = np.clip(maps["adaptive"], 0, record.n_echoes)
        png = adaptive_mask_png(
            lay.canon(counts), lay.slices, record.n_echoes, record.mask_counts, view=lay.view
        )
        out.append(
            Figure(
                figures.data_uri(png),
                "adaptive mask",
                "Adaptive mask (desc-adaptiveGoodSignal_mask): the number of echoes with good "
                "signal in each voxel (tedana's dropout rule); the fit and the combination use "
                "these echoes (one good echo: fitted from the first two).",
            )
        )
    return out


def _tsnr_figure(record: PublishedRun) -> Figure | None:
    t = record.tsnr
    if t is None:
        return None
    png = tsnr_histogram_png(
        t.edges,
        t.optcom_counts,
        t.best_counts,
        ("optimal combination", f"echo {t.best_echo} (best single echo)"),
        (t.optcom_median, t.best_median),
    )
    return Figure(
        figures.data_uri(png),
        "tSNR histogram",
        f"Temporal SNR (mean / SD over the {record.n_volumes} volumes) of the optimally "
        f"combined series and of the best single echo (echo {t.best_echo}, the highest median), "
        f"over the {t.n_voxels} voxels with at least one good echo; dashed: medians; the last bin "
        "holds every voxel at or above its top. The "
        f"combination's median is {t.ratio:.2f}× the best echo's.",
    )


def _status_text(record: PublishedRun) -> str:
    """Voxels and share of every fit-status label that occurs (the failure reasons)."""
    parts = []
    for level in fit_status.LEVELS:
        count = record.status_counts.get(level.name, 0)
        if count and level.index:
            share = 100 * count / max(record.n_voxels, 1)
            parts.append(f"{level.name}: {count} ({share:.2f} %)")
    return "; ".join(parts) or "no voxel"


def _ms(value: float) -> str:
    return f"{value * 1e3:.1f}"


def _tables(
    record: PublishedRun, loaded: SetMaps
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The section's "Acquisition" and "Fit" tables: (label, value) rows."""
    entities = record.entities
    tes = ", ".join(f"{t * 1e3:.3g}" for t in record.echo_times)
    acquisition = [
        ("Task", str(entities.get("task", "none"))),
        ("Run", str(entities.get("run", "none"))),
        ("Echo times (ms)", f"{tes} ({record.n_echoes} echoes)"),
        ("Volumes", f"{record.n_volumes} (TR {record.repetition_time:.4g} s)"),
        ("Voxel size (mm)", " × ".join(f"{z:.3g}" for z in loaded.zooms)),
        ("Matrix", " × ".join(str(n) for n in loaded.maps["t2star"].shape)),
        ("Echoes", "motion-corrected (desc-preproc)" if record.preprocessed else "raw"),
        ("First echo", record.sources[0].path),
    ]
    counts = ", ".join(
        f"{k}: {record.mask_counts.get(str(k), 0)}" for k in range(1, record.n_echoes + 1)
    )
    stats = record.statistics.t2star
    fit = [
        ("Method", f"{record.fit_type}: {record.algorithm}"),
        ("Time taken", f"{record.seconds:.2f} s" if record.seconds is not None else "not recorded"),
        ("Voxels fitted (adaptive mask ≥ 1)", f"{record.n_voxels}"),
        ("Voxels by good echoes", counts),
        ("Fit failed (no usable estimate)", f"{100 * record.failed_fraction:.2f} %"),
        ("Decay not following the model", f"{100 * record.misfit_fraction:.2f} %"),
        ("Fit status (desc-fitstatus_dseg)", _status_text(record)),
        (
            "T2* median [IQR] (ms), fitted voxels whose fit did not fail",
            f"{_ms(stats[1])} [{_ms(stats[0])}–{_ms(stats[2])}]" if stats else "no voxel",
        ),
        *_tsnr_rows(record),
    ]
    return acquisition, fit


def _tsnr_rows(record: PublishedRun) -> list[tuple[str, str]]:
    t = record.tsnr
    if t is None:
        return [("Temporal SNR", "not computed (fewer than two volumes)")]
    echoes = ", ".join(f"echo {k}: {m:.1f}" for k, m in enumerate(t.echo_medians, start=1))
    return [
        ("tSNR median, optimal combination", f"{t.optcom_median:.1f}"),
        (f"tSNR median, best single echo (echo {t.best_echo})", f"{t.best_median:.1f}"),
        ("tSNR ratio, combination / best echo", f"{t.ratio:.2f}"),
        ("tSNR median per echo", echoes),
    ]


def _t2star_histogram(t2star: np.ndarray, good: np.ndarray) -> Figure:
    png = figures.histogram_png(t2star[good] * 1e3, window_ms=T2STAR_WINDOW_MS)
    return Figure(
        figures.data_uri(png),
        "T2* histogram",
        f"T2* of the {int(good.sum())} voxels with at least one good echo whose fit did not "
        "fail (as in the record's statistics).",
    )


def run_section(
    record: PublishedRun, loaded: SetMaps, convention: str = DEFAULT_CONVENTION
) -> Section:
    """One BOLD run's section: tables, the fit-status map, the adaptive mask, T2* and S0
    montages, the tSNR and T2* histograms."""
    maps = dict(loaded.maps)
    fitted, failed, _ = _masks(maps)
    lay = _layout(loaded, fitted, convention)
    # drawn in two threads, as a MEGRE set's section: PNG encoding releases the GIL
    with ThreadPoolExecutor(max_workers=FIGURE_THREADS) as pool:
        masks = pool.submit(_mask_figures, record, maps, lay)
        tsnr = pool.submit(_tsnr_figure, record)
        hist = pool.submit(_t2star_histogram, maps["t2star"], fitted & ~failed)
        montages = _map_montages(record, maps, lay)
        montages = masks.result() + montages
        plots = [f for f in (tsnr.result(), hist.result()) if f is not None]
    acquisition, fit = _tables(record, loaded)
    share = {k: v / max(record.n_voxels, 1) for k, v in record.status_counts.items()}
    warnings = [*record.warnings, *fit_status.warnings(share)]
    note = PREPROC_STATEMENT if record.preprocessed else RAW_STATEMENT
    return Section(
        record.name, acquisition, fit, warnings, lay.where, montages, plots, KIND, (note,)
    )
