"""Figures of multi-echo BOLD runs and of the group page that the MEGRE figures
(:mod:`t2starmap.report.figures`) do not cover: the adaptive mask with its legend, the tSNR
histograms of the combined series and the best echo, and the failed and misfit fractions side
by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from t2starmap.report.figures import AXIAL, MAX_BARS, to_png
from t2starmap.report.planes import View
from t2starmap.report.statusmap import label_montage_png

#: Colours of the adaptive mask's counts: 0 black, then one colour per number of good echoes,
#: from dark red (one good echo) to bright green (every echo).
_COUNT_MAP = "RdYlGn"


def count_colours(n_echoes: int) -> list[tuple[float, float, float]]:
    """The colour of 0 .. ``n_echoes`` good echoes (0 is black)."""
    from matplotlib import colormaps

    cmap = colormaps[_COUNT_MAP]
    steps = np.linspace(0.1, 0.9, max(1, n_echoes))
    return [(0.0, 0.0, 0.0), *(to_rgb(cmap(float(s))) for s in steps)]


def adaptive_mask_png(
    counts: np.ndarray,
    slices: Sequence[int],
    n_echoes: int,
    voxels: Mapping[str, int],
    view: View = AXIAL,
    tile_in: float = 1.75,
) -> bytes:
    """Slices of the canonical adaptive mask (good echoes per voxel, integers 0..``n_echoes``)
    as ``view`` cuts them, one colour per count, and a legend with each count's voxels
    (``voxels``: count as text -> voxels)."""
    colours = count_colours(n_echoes)
    handles = [
        Patch(
            facecolor=colours[k],
            edgecolor="white" if k == 0 else colours[k],
            label=f"{k} good echo{'es' if k != 1 else ''}: {voxels.get(str(k), 0)}",
        )
        for k in range(n_echoes + 1)
    ]
    return label_montage_png(counts, slices, dict(enumerate(colours)), handles, 2.6, view, tile_in)


def tsnr_histogram_png(
    edges: Sequence[float],
    optcom: Sequence[int],
    best: Sequence[int],
    labels: tuple[str, str],
    medians: tuple[float, float],
) -> bytes:
    """Two tSNR histograms over shared bin ``edges`` (voxel counts ``optcom`` and ``best``),
    named ``labels``, their ``medians`` marked."""
    fig = Figure(figsize=(5.4, 3.0))
    ax = fig.add_axes((0.13, 0.18, 0.83, 0.74))
    colours = ("#4c72b0", "#dd8452")
    for counts, label, median, colour in zip((optcom, best), labels, medians, colours, strict=True):
        ax.stairs(counts, edges, color=colour, lw=1.6, label=f"{label} (median {median:.1f})")
        if np.isfinite(median):
            ax.axvline(median, color=colour, lw=1.0, ls="--")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("temporal SNR (mean / SD over volumes)")
    ax.set_ylabel("voxels")
    ax.legend(fontsize=8, frameon=False)
    ax.tick_params(labelsize=8)
    return to_png(fig)


def fraction_bars_png(
    labels: Sequence[str], failed: Sequence[float], misfit: Sequence[float]
) -> bytes:
    """Horizontal bars per echo set: failed and misfit fractions (%) side by side; with more
    than :data:`MAX_BARS` sets only the :data:`MAX_BARS` with the highest sum, descending."""
    f = 100 * np.nan_to_num(np.asarray(failed, dtype=np.float64), nan=0.0)
    m = 100 * np.nan_to_num(np.asarray(misfit, dtype=np.float64), nan=0.0)
    total = len(labels)
    keep = np.arange(total)
    if total > MAX_BARS:
        keep = np.argsort(-(f + m), kind="stable")[:MAX_BARS]
    names = [labels[int(i)] for i in keep]
    f, m = f[keep], m[keep]
    n = len(names)
    height = max(2.0, 0.42 * n + 1.3)  # the legend sits above the bars
    fig = Figure(figsize=(6.0, height))
    ax = fig.add_axes((0.32, 0.75 / height, 0.62, 1 - 1.4 / height))
    y = np.arange(n)
    ax.barh(y - 0.2, f, height=0.38, color="#c44e52", label="failed (no estimate)")
    ax.barh(y + 0.2, m, height=0.38, color="#dd8452", label="misfit (estimate, SE inflated)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("voxels (% of signal mask)")
    if total > n:
        ax.set_xlabel(f"voxels (% of signal mask); the {n} highest of {total} echo sets")
    top = max(1.0, float(max(f.max(initial=0), m.max(initial=0))) * 1.3)
    ax.set_xlim(0, top)
    for offset, values in ((-0.2, f), (0.2, m)):
        for row, value in enumerate(values):
            ax.text(value + 0.01 * top, row + offset, f"{value:.2f} %", va="center", fontsize=7)
    ax.legend(fontsize=7.5, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    ax.tick_params(labelsize=8)
    return to_png(fig)
