"""One HTML page per participant (and session) with a section per echo set.

Reads the maps back from the written derivatives and the raw echoes from the input, so the
page shows exactly what was published; nothing here changes a fit.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from t2starmap import __version__, derivatives
from t2starmap.atomic import write_text
from t2starmap.layout import EchoSet
from t2starmap.report import figures
from t2starmap.report.html import (
    esc,
    figure,
    key_value_table,
    page,
    warnings_block,
)

if TYPE_CHECKING:
    from t2starmap.workflow import SetOutcome

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

_MAP_KEYS = ("t2star", "r2star", "s0", "t2star_se", "rmse", "signal", "failed")


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


def load_set_maps(output_dir: Path, echo_set: EchoSet) -> SetMaps:
    """The published maps (those present) and the T2* sidecar of ``echo_set``.
    Raises FileNotFoundError without a T2* map."""
    specs = {s.key: s for s in derivatives.OUTPUTS}
    maps: dict[str, np.ndarray] = {}
    affine: np.ndarray | None = None
    zooms: tuple[float, ...] = ()
    for key in _MAP_KEYS:
        path = derivatives.output_path(output_dir, echo_set, specs[key], ".nii.gz")
        if not path.exists():
            continue
        img: Any = nib.load(str(path))  # a NIfTI image; nibabel's stubs say less
        data = np.asarray(img.dataobj)
        maps[key] = data > 0 if specs[key].suffix == "mask" else data.astype(np.float32)
        if affine is None:
            affine = np.asarray(img.affine)
            zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if affine is None or "t2star" not in maps:
        raise FileNotFoundError(f"no T2* map of {echo_set.name} under {output_dir}")
    sidecar_path = derivatives.output_path(output_dir, echo_set, specs["t2star"], ".json")
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
    return SetMaps(maps, affine, zooms, sidecar)


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder the axes of a 3-D volume to the closest RAS orientation (flips/transposes)."""
    if volume.ndim != 3:
        return volume
    ornt = nib.orientations.io_orientation(affine)
    return np.asarray(nib.orientations.apply_orientation(volume, ornt))


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


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux: honours taskset/cgroup CPU sets
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read_volume(path: Path) -> np.ndarray | None:
    try:
        image: Any = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # the fit read it; a page without curves is still a page
        log.warning("%s: not readable for the report (%s)", path, err)
        return None
    return data.reshape(data.shape[:3]) if data.ndim == 4 else data


def read_echoes(
    echo_set: EchoSet, voxels: Sequence[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Magnitudes of ``voxels`` at every echo, (n_voxels, n_echoes) with NaN for an echo
    that cannot be read, and the first echo's volume (None when unreadable: no montage).

    Echoes are decompressed in a few threads (zlib releases the GIL): reading them is most of
    the report's cost on large volumes. At most :data:`READ_THREADS`, and never more than the
    CPUs this process may run on (a batch scheduler's allocation).
    """
    signals = np.full((len(voxels), len(echo_set.echoes)), np.nan)
    workers = max(1, min(READ_THREADS, _usable_cpus(), len(echo_set.echoes)))
    first: np.ndarray | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        volumes = pool.map(_read_volume, [e.path for e in echo_set.echoes])
        for k, data in enumerate(volumes):
            if data is None:
                continue
            if k == 0:
                first = data
            for i, voxel in enumerate(voxels):
                signals[i, k] = data[voxel]
    return signals, first


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, ROBUST_TOP)) if finite.size else 1.0
    return 0.0, top if top > 0 else 1.0


def _fmt(value: Any, spec: str = ".4g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "not known"
    return f"{value:{spec}}{unit}"


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def set_section(outcome: SetOutcome, loaded: SetMaps, bids_dir: Path) -> str:
    """The HTML section of one echo set: tables, montages, histogram and decay curves."""
    echo_set = outcome.echo_set
    maps = loaded.maps
    signal = maps.get("signal", maps["t2star"] > 0)
    failed = maps.get("failed", np.zeros_like(signal)) & signal
    good = signal & ~failed
    t2 = maps["t2star"]
    sidecar = loaded.sidecar
    sigma = outcome.noise_sigma

    voxels = representative_voxels(t2, good)
    signals, first_echo = read_echoes(echo_set, [v for _, v in voxels])

    def canon(volume: np.ndarray) -> np.ndarray:
        return to_canonical(volume, loaded.affine)

    c_signal, c_failed = canon(signal), canon(failed)
    slices = figures.select_slices(c_signal)
    if c_signal.ndim == 3:
        where = (
            f"Axial slices {', '.join(str(k) for k in slices)} of {c_signal.shape[-1]} "
            "(counted from 0, inferior to superior), anterior up, subject's left on the left."
        )
    else:
        where = "The image's single slice, as stored (no orientation applied)."
    panels: list[str] = []

    def montage(
        volume: np.ndarray,
        window: tuple[float, float],
        cmap: str,
        label: str,
        caption: str,
        overlay: bool = True,
    ) -> None:
        if overlay:  # a fitted map: outside the signal mask is background, not zero
            volume = np.where(signal, volume, np.nan)
        png = figures.montage_png(
            canon(volume),
            slices,
            vmin=window[0],
            vmax=window[1],
            cmap=cmap,
            label=label,
            failed=c_failed if overlay else None,
        )
        panels.append(figure(figures.data_uri(png), f"{label} montage", caption))

    n_failed = int(failed.sum())
    failed_note = f"{n_failed} failed voxel(s) in cyan." if n_failed else "No voxel failed."
    montage(
        t2 * 1e3,
        T2STAR_WINDOW_MS,
        "inferno",
        "T2* (ms)",
        f"T2*, fixed window {T2STAR_WINDOW_MS[0]:g}–{T2STAR_WINDOW_MS[1]:g} ms "
        f"(longer T2* saturates). {failed_note}",
    )
    if "r2star" in maps:
        montage(
            maps["r2star"],
            R2STAR_WINDOW,
            "viridis",
            "R2* (1/s)",
            f"R2*, fixed window {R2STAR_WINDOW[0]:g}–{R2STAR_WINDOW[1]:g} s⁻¹. {failed_note}",
        )
    # Maps shown in a robust window, 0 to their ROBUST_TOP percentile inside the mask: key,
    # factor to the shown units, colour map, label, caption title, window format and unit.
    robust = [
        ("s0", 1.0, "gray", "S0 (input units)", "S0", ".4g", ""),
        ("rmse", 1.0, "viridis", "RMSE (input units)", "Root-mean-square residual", ".4g", ""),
        ("t2star_se", 1e3, "viridis", "SE of T2* (ms)", "Standard error of T2*", ".3g", " ms"),
    ]
    for key, factor, cmap, label, title, fmt, unit in robust:
        if key in maps:
            shown = maps[key] * factor
            window = _window(shown[good])
            montage(
                shown,
                window,
                cmap,
                label,
                f"{title}, window 0–{window[1]:{fmt}}{unit} (the {ROBUST_TOP:g}th percentile "
                f"in the mask). {failed_note}",
            )
    if first_echo is not None:
        window = _window(first_echo[signal])
        montage(
            first_echo,
            window,
            "gray",
            "echo 1 magnitude",
            f"Measured magnitude at the first echo (TE {echo_set.echo_times[0] * 1e3:.2f} "
            f"ms), window 0–{window[1]:.4g}, no overlay.",
            overlay=False,
        )

    hist = figures.histogram_png(t2[good] * 1e3, window_ms=T2STAR_WINDOW_MS)
    curves = [
        figures.DecayCurve(
            f"{label} ({', '.join(str(i) for i in voxel)})",
            signals[i],
            float(maps["s0"][voxel]) if "s0" in maps else float("nan"),
            float(t2[voxel]),
        )
        for i, (label, voxel) in enumerate(voxels)
    ]
    decay = figures.decay_png(echo_set.echo_times, curves, sigma)
    q = np.percentile(t2[good] * 1e3, [25, 50, 75]) if good.any() else None

    tes = ", ".join(f"{t * 1e3:.3g}" for t in echo_set.echo_times)
    meta = echo_set.echoes[0].metadata
    field_strength = meta.get("MagneticFieldStrength")
    vendor = " ".join(str(meta[k]) for k in ("Manufacturer", "ManufacturerModelName") if k in meta)
    acquisition = key_value_table(
        [
            ("Echo times (ms)", f"{tes} ({len(echo_set.echoes)} echoes)"),
            ("Field strength", f"{field_strength} T" if field_strength else "not in the sidecars"),
            ("Vendor", vendor or "not in the sidecars"),
            ("Voxel size (mm)", " × ".join(f"{z:.3g}" for z in loaded.zooms)),
            ("Matrix", " × ".join(str(n) for n in t2.shape)),
            ("First echo", _relative(echo_set.echoes[0].path, bids_dir)),
        ]
    )
    noise_source = sidecar.get("NoiseSigmaSource")
    fit = key_value_table(
        [
            (
                "Method",
                f"{sidecar.get('FitMethod', 'not recorded')}: "
                f"{sidecar.get('EstimationAlgorithm', '')}",
            ),
            (
                "Noise level σ",
                _fmt(sigma) + (f" (from {noise_source})" if noise_source and sigma else ""),
            ),
            ("Noise model", outcome.noise_model),
            ("Compute device", sidecar.get("ComputeDevice", "not recorded")),
            (
                "Time taken",
                f"{outcome.seconds:.2f} s (read the echoes and fit)"
                if np.isfinite(outcome.seconds)
                else "not recorded (fitted by an earlier run)",
            ),
            ("Voxels in the signal mask", f"{outcome.n_voxels}"),
            ("Failed", f"{n_failed} voxel(s), {100 * outcome.failed_fraction:.2f} %"),
            (
                "T2* median [IQR] (ms)",
                f"{q[1]:.1f} [{q[0]:.1f}–{q[2]:.1f}]" if q is not None else "no voxel",
            ),
        ]
    )
    anchor = esc(echo_set.name)
    return (
        f'<section id="{anchor}">\n<h2>Echo set {esc(echo_set.name)}</h2>\n'
        f'<div class="pair"><div><h3>Acquisition</h3>{acquisition}</div>'
        f"<div><h3>Fit</h3>{fit}</div></div>\n"
        f"<h3>Warnings</h3>{warnings_block(outcome.warnings)}\n"
        f'<h3>Maps</h3><p class="note">{esc(where)}</p>\n'
        + "\n".join(panels)
        + '\n<div class="pair">'
        + figure(
            figures.data_uri(hist),
            "T2* histogram",
            f"T2* of the {int(good.sum())} signal-mask voxels whose fit did not fail.",
        )
        + figure(
            figures.data_uri(decay),
            "decay curves",
            "Measured magnitudes (dots) and fitted curves for the voxels (i, j, k) at the "
            "5th, 50th and 95th percentile of T2*; dashed: noise level.",
        )
        + "</div>\n</section>"
    )


def participant_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole page; ``sections``: (echo set name, section HTML)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = ""
    if len(sections) > 1:
        nav = "<nav>" + "".join(f'<a href="#{esc(n)}">{esc(n)}</a>' for n, _ in sections) + "</nav>"
    body = (
        f"<h1>{esc(title)}: T2* quality report</h1>\n"
        f'<p class="meta">t2starmap {esc(__version__)}, {esc(stamp)}. '
        'See also the <a href="group_report.html">group report</a> when the group level has '
        "been run.</p>\n" + nav + "\n".join(html for _, html in sections)
    )
    return page(f"{title} · t2starmap", body)


def published_outcomes(
    output_dir: Path,
    bids_dir: Path,
    subject: str,
    session: str | None,
    skip: Collection[str] = (),
) -> list[SetOutcome]:
    """Outcomes rebuilt from the files of echo sets already published for one
    participant/session (by this run or an earlier one), for pages that cover them all.

    What the files do not record is left out: the time taken is NaN. Sets whose T2* map stem
    is in ``skip`` are not read; one whose sidecar cannot be read is skipped with a warning.
    """
    from t2starmap.layout import Echo
    from t2starmap.workflow import SetOutcome

    folder = Path(output_dir) / f"sub-{subject}"
    folder = (folder / f"ses-{session}" if session else folder) / "anat"
    names = {short: long for long, short in derivatives._SHORT.items()}
    prefix = f"bids:{derivatives.SOURCE_LINK}:"
    found = []
    for t2_path in sorted(folder.glob("*_T2starmap.nii.gz")):
        stem = t2_path.name[: -len("_T2starmap.nii.gz")]
        if "_desc-" in f"_{stem}" or f"{stem}_T2starmap" in skip:
            continue
        try:
            sidecar = json.loads(t2_path.with_name(f"{stem}_T2starmap.json").read_text())
            entities = {names[k]: v for k, v in (p.split("-", 1) for p in stem.split("_"))}
            echoes = []
            for uri, te in zip(sidecar["Sources"], sidecar["EchoTime"], strict=True):
                path = Path(bids_dir) / uri.removeprefix(prefix)
                meta_path = path.parent / (path.name.split(".", 1)[0] + ".json")
                meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
                echoes.append(Echo(path, float(te), meta))
            echo_set = EchoSet(entities, tuple(sorted(echoes, key=lambda e: e.echo_time)))
            masks = {}
            for key in ("signal", "failed"):
                spec = next(s for s in derivatives.OUTPUTS if s.key == key)
                image: Any = nib.load(
                    str(derivatives.output_path(output_dir, echo_set, spec, ".nii.gz"))
                )
                masks[key] = np.asarray(image.dataobj) > 0
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: left out of the report (%s)", t2_path, err)
            continue
        n_voxels = int(masks["signal"].sum())
        found.append(
            SetOutcome(
                echo_set,
                n_voxels=n_voxels,
                failed_fraction=float((masks["failed"] & masks["signal"]).sum()) / max(n_voxels, 1),
                noise_sigma=sidecar.get("NoiseSigma"),
                noise_model=str(sidecar.get("NoiseModel", "not recorded")),
                seconds=float("nan"),
                warnings=[str(w) for w in sidecar.get("Warnings", [])],
            )
        )
    return found


def write_participant_reports(
    output_dir: Path, bids_dir: Path, outcomes: Sequence[SetOutcome]
) -> list[Path]:
    """Write ``OUTPUT_DIR/sub-<L>[_ses-<S>].html`` for every participant/session among
    ``outcomes`` (whose maps are already published); return the pages written.

    A page also covers the echo sets of its participant/session that earlier runs published
    into the same folder (jobs split by run or acquisition), so the last job does not drop
    the others' sections.
    """
    by_page: dict[tuple[str, str | None], list[SetOutcome]] = {}
    for outcome in outcomes:
        key = (outcome.echo_set.subject, outcome.echo_set.session)
        by_page.setdefault(key, []).append(outcome)
    first_spec = derivatives.OUTPUTS[0]
    written = []
    for (subject, session), group in by_page.items():
        started = time.perf_counter()
        ours = {derivatives.output_stem(o.echo_set.entities, first_spec) for o in group}
        earlier = published_outcomes(output_dir, bids_dir, subject, session, skip=ours)
        everything = sorted(
            [*group, *earlier],
            key=lambda o: derivatives.output_stem(o.echo_set.entities, first_spec),
        )
        sections = [
            (o.echo_set.name, set_section(o, load_set_maps(output_dir, o.echo_set), bids_dir))
            for o in everything
        ]
        title = f"sub-{subject}" + (f" ses-{session}" if session else "")
        target = Path(output_dir) / page_name(subject, session)
        write_text(target, participant_page(title, sections))
        written.append(target)
        log.info("report %s written in %.2f s", target, time.perf_counter() - started)
    return written
