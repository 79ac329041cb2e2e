"""The maps and echoes a page section shows: handed over by the run, or read back from the
output folder (:class:`SetMaps`); the voxels whose decay curves are drawn (:class:`EchoSamples`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.bids import outputs as derivatives
from t2starmap.bids.conventions import sidecar_path
from t2starmap.bids.nifti import read_map_image, read_volume
from t2starmap.bids.records import PublishedSet
from t2starmap.errors import T2StarError
from t2starmap.resources import available_cpus

#: T2* quantiles whose voxels get a decay-curve plot.
CURVE_QUANTILES = (("low", 0.05), ("median", 0.5), ("high", 0.95))

log = logging.getLogger("t2starmap.report")


CURVE_LABELS = tuple(label for label, _ in CURVE_QUANTILES)


#: Most threads that read (decompress) echoes at once.
READ_THREADS = 4


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


def masks_of(maps: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signal, failed within signal, good = signal and not failed), bool."""
    signal = maps.get("signal", maps["t2star"] > 0)
    failed = maps.get("failed", np.zeros_like(signal)) & signal
    return signal, failed, signal & ~failed


def echo_samples(magnitude: np.ndarray, maps: Mapping[str, np.ndarray]) -> EchoSamples:
    """The :class:`EchoSamples` of a set from its stacked echoes (X, Y, Z, n_echoes) and its
    maps as written (float32 maps, bool masks; the keys of :func:`load_set_maps`). The first
    echo is kept as float32 when the echoes are integers (int16 files stay int16 in memory):
    the page draws float32 whatever the file held."""
    good = masks_of(maps)[2]
    voxels = tuple(v for _, v in representative_voxels(maps["t2star"], good))
    signals = np.array([magnitude[v] for v in voxels], dtype=np.float64)
    first = magnitude[..., 0]
    first = first.astype(np.float32) if first.dtype.kind in "iu" else first.copy()
    return EchoSamples(voxels, signals.reshape(len(voxels), magnitude.shape[-1]), first)
