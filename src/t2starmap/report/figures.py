"""QC figures as PNG bytes: slice montages, histograms, decay curves and group plots.

Pure functions of numpy arrays; no file I/O. Matplotlib is used through its object API
(``Figure`` + Agg canvas), never ``pyplot``, so no global state or GUI backend is touched.
Units: echo times in s on input, shown in ms; T2* in s on input, shown in ms.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from t2starmap.report.planes import View
from t2starmap.report.raster import DPI as DPI
from t2starmap.report.raster import Layer, covered_pixels, draw_rgba, encode_png, lay_over

#: The default view: axial tiles of square voxels.
AXIAL = View(axis=2, pixel_aspect=1.0)

#: Most slices shown in a montage, and tiles per montage row.
MAX_SLICES = 12
COLUMNS = 6
#: Colour of voxels whose fit failed, drawn opaque over every montage: magenta, which no
#: colour map of the pages (viridis, inferno, grey, RdBu, twilight) comes near (CIELAB
#: distance above 60 from each of them; cyan was 37 from viridis' teal).
FAILED_RGBA = (1.0, 0.0, 1.0, 1.0)
#: Colour of voxels whose decay does not follow the model (an estimate exists, not a failure):
#: orange, apart from magenta and from the viridis, grey and twilight maps it is drawn over.
MISFIT_RGBA = (1.0, 0.55, 0.0, 1.0)
#: Share of that orange blended over a misfit voxel on the value montages: its estimate is
#: kept, so it stays readable under the tint (drawn opaque, misfit hid 42 % of every map of
#: a GE kidney set); the fit-status map draws the label opaque.
MISFIT_TINT = 0.45
#: Size (points) of the slice label and orientation letters on each tile.
TILE_TEXT_PT = 7.0


#: zlib level of the slice montages' PNGs (a page draws a dozen): level 1 encodes a GE
#: kidney T2* montage in 11 ms instead of 29 ms (Pillow's default 6), 3 % larger; maps are
#: flat enough that the higher levels find little more. (A brain-sized montage: 3x faster.)
MONTAGE_COMPRESSION = 1


def to_png(fig: Figure, compress_level: int | None = None) -> bytes:
    """``fig`` as PNG bytes at :data:`DPI`, drawn once (savefig draws twice) and encoded by
    Pillow (:func:`~t2starmap.report.raster.encode_png`; ``compress_level`` 0-9 or None)."""
    return encode_png(draw_rgba(fig), compress_level)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def select_slices(mask: np.ndarray, n: int = MAX_SLICES, axis: int = 2) -> list[int]:
    """Up to ``n`` evenly spaced indices along ``axis`` of (X, Y, Z) ``mask`` among the
    slices that hold any mask voxel (all slices when the mask is empty)."""
    if mask.ndim == 2:
        return [0]
    along = np.moveaxis(mask, axis, -1)
    occupied = np.flatnonzero(along.reshape(-1, along.shape[-1]).any(axis=0))
    if occupied.size == 0:
        occupied = np.arange(along.shape[-1])
    if occupied.size <= n:
        return [int(k) for k in occupied]
    picks = np.linspace(occupied[0], occupied[-1], n).round().astype(int)
    return sorted({int(k) for k in picks})


def mosaic(
    volume: np.ndarray, slices: Sequence[int], columns: int = COLUMNS, view: View = AXIAL
) -> np.ndarray:
    """Tile slices of a canonical (X, Y, Z) volume (RAS order) into one 2-D array, each cut
    and oriented as ``view`` says (default axial: anterior up, subject's left on the left).
    Empty tiles are NaN (drawn as background)."""
    vol = volume[..., None] if volume.ndim == 2 else volume
    tiles = [view.tile(vol, k) for k in slices]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    height, width = tiles[0].shape
    out = np.full((rows * height, columns * width), np.nan, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * height : (r + 1) * height, c * width : (c + 1) * width] = tile
    return out


@dataclass(frozen=True)
class Scale:
    """How a montage maps values to colours: the window ``vmin``..``vmax``, the colour map and
    the colour bar's label."""

    vmin: float
    vmax: float
    cmap: str
    label: str


def montage_png(volume: np.ndarray, slices: Sequence[int], scale: Scale, **options: Any) -> bytes:
    """:func:`montage_figure` as PNG bytes (same arguments). The tiles' labels are drawn once
    per layout (:func:`annotation_layer`: a section's montages share it) and laid over the
    montage drawn without them: 60 outlined texts cost more than the montage itself."""
    tile_in, view = options.get("tile_in", 1.75), options.get("view", AXIAL)
    layout = montage_layout(volume, slices, scale, tile_in, view)
    fig = montage_figure(volume, slices, scale, annotate=False, **options)
    rgba = draw_rgba(fig)
    layer = annotation_layer(layout)
    if layer is not None:
        lay_over(rgba, layer)
    return encode_png(rgba, MONTAGE_COMPRESSION)


@dataclass(frozen=True)
class MontageLayout:
    """Where a montage's parts go: the figure's size (inches), the image axes' and the colour
    bar's rectangles (figure fractions), the mosaic's shape (pixels of data), the view, the
    slices and their count along the view's axis (``depth``)."""

    size_in: tuple[float, float]
    image_rect: tuple[float, float, float, float]
    bar_rect: tuple[float, float, float, float]
    mosaic_shape: tuple[int, int]
    view: View
    slices: tuple[int, ...]
    depth: int


def montage_layout(
    volume: np.ndarray,
    slices: Sequence[int],
    scale: Scale,
    tile_in: float = 1.75,
    view: View = AXIAL,
) -> MontageLayout:
    """The :class:`MontageLayout` of a montage of ``volume`` (see :func:`montage_figure`)."""
    vol = volume[..., None] if volume.ndim == 2 else volume
    height_px, width_px = view.tile(vol, slices[0]).shape
    columns = max(1, min(COLUMNS, len(slices)))
    height_px *= rows_of(len(slices))
    width_px *= columns
    bar_in = 1.35  # the colour bar, its ticks and its label
    image_w = tile_in * columns
    width_in = image_w + bar_in
    picture_in = image_w * height_px * view.pixel_aspect / width_px
    # the colour bar spans 80 % of the height: tall enough for its label at 9 pt
    height_in = max(1.2, picture_in, 0.09 * len(scale.label) + 0.5)
    return MontageLayout(
        (width_in, height_in),
        (0.0, 0.0, image_w / width_in, 1.0),
        (1.0 - 0.9 * bar_in / width_in, 0.1, 0.12 / width_in, 0.8),
        (height_px, width_px),
        view,
        tuple(slices),
        volume.shape[view.axis] if volume.ndim == 3 else 1,
    )


def montage_figure(
    volume: np.ndarray,
    slices: Sequence[int],
    scale: Scale,
    *,
    failed: np.ndarray | None = None,
    tile_in: float = 1.75,
    view: View = AXIAL,
    misfit: np.ndarray | None = None,
    annotate: bool = True,
) -> Figure:
    """Slices of canonical ``volume`` cut as ``view`` says, coloured as ``scale`` says, in one
    image with a colour bar; voxels of ``failed`` (same shape, bool) drawn on top in
    :data:`FAILED_RGBA`, ``misfit`` tinted :data:`MISFIT_TINT` with :data:`MISFIT_RGBA` (the
    estimate under it stays readable); NaN voxels are background
    (black). Each tile is ``tile_in`` inches (``tile_in * DPI`` pixels) wide; its height
    keeps the voxels' aspect ratio (``view.pixel_aspect``); it carries its slice's file index
    and orientation letters (unless ``annotate`` is false: :func:`montage_png` lays them
    over)."""
    layout = montage_layout(volume, slices, scale, tile_in, view)
    tiles = mosaic(volume.astype(np.float32, copy=False), slices, view=view)
    fig = Figure(figsize=layout.size_in, facecolor="black")
    ax = fig.add_axes(layout.image_rect)
    ax.set_axis_off()
    # coloured here, overlays included, and drawn as one RGBA image: one resampling instead of
    # one per layer (NaN takes the colour map's "bad" colour, transparent over black)
    shown = ScalarMappable(Normalize(vmin=scale.vmin, vmax=scale.vmax), scale.cmap)
    rgba = shown.to_rgba(np.ma.masked_invalid(tiles), bytes=True)
    for marked, colour, share in ((misfit, MISFIT_RGBA, MISFIT_TINT), (failed, FAILED_RGBA, 1.0)):
        if marked is not None and marked.any():
            flags = mosaic(marked, slices, view=view) > 0.5  # the shown slices only, no copy
            over = share * np.asarray(colour) * 255
            rgba[flags] = np.round((1.0 - share) * rgba[flags] + over).astype(np.uint8)
    ax.imshow(rgba, interpolation="nearest", aspect=view.pixel_aspect)
    if annotate:
        _annotate_layout(ax, layout)
    bar = fig.colorbar(shown, cax=fig.add_axes(layout.bar_rect))
    bar.set_label(scale.label, color="white", fontsize=9)
    bar.ax.tick_params(colors="white", labelsize=8)
    return fig


def _annotate_layout(ax: Axes, layout: MontageLayout) -> None:
    rows, columns = rows_of(len(layout.slices)), max(1, min(COLUMNS, len(layout.slices)))
    tile_shape = (layout.mosaic_shape[0] // rows, layout.mosaic_shape[1] // columns)
    _annotate_tiles(ax, layout.view, layout.slices, tile_shape, layout.depth)


@functools.lru_cache(maxsize=8)
def annotation_layer(layout: MontageLayout) -> Layer | None:
    """The tiles' annotations of a montage of ``layout``, drawn alone on a transparent figure
    of its size (None when there are none): the pixels they cover, their colours and alphas,
    to lay over the montage drawn without them (as Agg would have drawn them over it)."""
    fig = Figure(figsize=layout.size_in, facecolor="none")
    ax = fig.add_axes(layout.image_rect)
    ax.set_axis_off()
    blank = np.zeros((*layout.mosaic_shape, 4), dtype=np.uint8)  # the same axes transform
    ax.imshow(blank, interpolation="nearest", aspect=layout.view.pixel_aspect)
    _annotate_layout(ax, layout)
    return covered_pixels(draw_rgba(fig)) if ax.texts else None


def rows_of(n_tiles: int, columns: int = COLUMNS) -> int:
    """Rows of a montage of ``n_tiles`` tiles."""
    columns = max(1, min(columns, n_tiles))
    return -(-n_tiles // columns)


def _annotate_tiles(
    ax: Axes,
    view: View,
    slices: Sequence[int],
    tile_shape: tuple[int, int],
    depth: int,
) -> None:
    """Each tile's slice label (its file index, top left) and orientation letters (edge
    midpoints), white with a black outline so they read on any colour. Nothing for a view
    without a file axis (a 2-D image shown as stored). ``depth``: slices along the view's
    axis (needed to turn a flipped canonical index into the file's)."""
    letters = view.edge_letters()
    if letters is None:
        return
    height, width = tile_shape
    columns = max(1, min(COLUMNS, len(slices)))
    style: dict[str, Any] = {
        "color": "white",
        "fontsize": TILE_TEXT_PT,
        "path_effects": [patheffects.withStroke(linewidth=2, foreground="black")],
    }
    top, bottom, left, right = letters
    for i, k in enumerate(slices):
        r, c = divmod(i, columns)
        x0, y0 = c * width - 0.5, r * height - 0.5  # the tile's top-left pixel edge
        xm, ym = x0 + width / 2, y0 + height / 2
        label = view.tile_label(k, depth)
        ax.text(x0 + 0.02 * width, y0 + 0.02 * height, label, ha="left", va="top", **style)
        ax.text(xm, y0 + 0.02 * height, top, ha="center", va="top", **style)
        ax.text(xm, y0 + 0.98 * height, bottom, ha="center", va="bottom", **style)
        ax.text(x0 + 0.02 * width, ym, left, ha="left", va="center", **style)
        ax.text(x0 + 0.98 * width, ym, right, ha="right", va="center", **style)


def histogram_counts(
    values: np.ndarray, window: tuple[float, float], bins: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Counts of finite ``values`` in ``bins`` equal bins over ``[window[0], window[1])``
    (values below the window in the first bin), the bin edges, and the overflow: how many
    are at or above ``window[1]``."""
    values = np.asarray(values, dtype=np.float64)
    low, top = window
    # np.histogram over [low, top] without copies of the values (a brain's 6 M voxels):
    # those at top itself move to the overflow, those below low (which the range drops)
    # to the first bin, as if clipped; infinities are not finite values, and not counted
    counts, edges = np.histogram(values, bins=bins, range=(low, top))
    at_top = np.count_nonzero(values == top)
    counts[-1] -= at_top
    counts[0] += np.count_nonzero(values < low) - np.count_nonzero(values == -np.inf)
    over = at_top + np.count_nonzero(values > top) - np.count_nonzero(values == np.inf)
    return counts, edges, int(over)


def histogram_png(
    t2star_ms: np.ndarray, *, window_ms: tuple[float, float] = (0.0, 100.0), bins: int = 80
) -> bytes:
    """Histogram of T2* values (ms) over the display window; values at or above its top are
    counted in one overflow bar beside it, labelled "≥ top" (not piled into the last bin);
    the median is marked."""
    values = np.asarray(t2star_ms, dtype=np.float64)
    if not np.isfinite(values).all():
        values = values[np.isfinite(values)]
    fig = Figure(figsize=(5.4, 3.0))
    ax = fig.add_axes((0.13, 0.18, 0.83, 0.74))
    low, top = window_ms
    if values.size:
        counts, edges, over = histogram_counts(values, window_ms, bins)
        ax.stairs(counts, edges, fill=True, color="#4c72b0")
        width = (top - low) / bins
        gap = 2 * width
        ax.bar(
            top + gap + 2 * width,
            over,
            width=4 * width,
            color="#dd8452",
            label=f"≥ {top:g} ms: {over}",
        )
        # the window's top tick would collide with the overflow bar's label
        ticks = [t for t in ax.get_xticks() if low <= t <= top - 0.1 * (top - low)]
        ax.set_xticks([*ticks, top + gap + 2 * width], [f"{t:g}" for t in ticks] + [f"≥{top:g}"])
        ax.set_xlim(low, top + gap + 4 * width)
        # the values are not used after this: let the median sort them where they are (a
        # copy of float64 input otherwise; np.median's result is the same either way)
        mine = values is not t2star_ms
        median = float(np.median(values, overwrite_input=mine))
        ax.axvline(min(median, top), color="#c44e52", lw=1.5, label=f"median {median:.1f} ms")
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no voxels", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("T2* (ms)")
    ax.set_ylabel("voxels")
    ax.tick_params(labelsize=8)
    return to_png(fig)


@dataclass(frozen=True)
class DecayCurve:
    """One voxel: measured magnitudes (one per echo) and the fitted S0 and T2* (s)."""

    label: str
    signal: np.ndarray
    s0: float
    t2star: float


_CURVE_COLOURS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974")


def decay_png(
    echo_times: Sequence[float], curves: Sequence[DecayCurve], noise_sigma: float | None = None
) -> bytes:
    """Measured echoes (markers) and fitted mono-exponential curves (lines), TE in ms."""
    return to_png(decay_figure(echo_times, curves, noise_sigma))


def decay_figure(
    echo_times: Sequence[float], curves: Sequence[DecayCurve], noise_sigma: float | None = None
) -> Figure:
    """The figure of :func:`decay_png` (its legend below the axes)."""
    te = np.asarray(echo_times, dtype=np.float64)
    fine = np.linspace(0.0, te.max() * 1.05, 200)
    # the legend sits below the axes, where it cannot hide a data point
    fig = Figure(figsize=(5.4, 3.6))
    ax = fig.add_axes((0.13, 0.36, 0.84, 0.6))
    for curve, colour in zip(curves, _CURVE_COLOURS, strict=False):
        ax.plot(te * 1e3, curve.signal, "o", color=colour, ms=4)
        if curve.t2star > 0 and np.isfinite(curve.t2star):
            fitted = curve.s0 * np.exp(-fine / curve.t2star)
            ax.plot(
                fine * 1e3,
                fitted,
                "-",
                color=colour,
                lw=1.3,
                label=f"{curve.label}: T2* {curve.t2star * 1e3:.1f} ms",
            )
    if noise_sigma:
        ax.axhline(noise_sigma, color="0.5", ls="--", lw=1, label=f"noise σ {noise_sigma:.3g}")
    ax.set_xlabel("echo time (ms)")
    ax.set_ylabel("magnitude")
    ax.set_xlim(0, fine[-1] * 1e3)
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=8)
    if curves or noise_sigma:
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7.5, frameon=False
        )
    return fig


def factor_png(
    echo_times_s: np.ndarray,
    gradients_hz_per_mm: np.ndarray,
    factor: np.ndarray,
    measured_s: Sequence[float],
    threshold: float,
) -> bytes:
    """The through-slice dephasing factor F(TE) of the slice profile the correction used, one
    line per gradient strength (``factor`` (G, E) over ``echo_times_s``), the set's echo
    times marked, and the |F| threshold below which an echo is left out."""
    fig = Figure(figsize=(5.4, 3.4))
    ax = fig.add_axes((0.13, 0.34, 0.84, 0.6))
    for g, row, colour in zip(gradients_hz_per_mm, factor, _CURVE_COLOURS, strict=False):
        ax.plot(echo_times_s * 1e3, row, "-", color=colour, lw=1.3, label=f"G = {g:g} Hz/mm")
    for te in measured_s:
        ax.axvline(te * 1e3, color="0.85", lw=0.8, zorder=0)
    for level in (threshold, -threshold):
        ax.axhline(level, color="0.5", ls="--", lw=0.8)
    ax.axhline(0.0, color="0.3", lw=0.6)
    ax.set_xlabel("echo time (ms); grey: the set's echoes")
    ax.set_ylabel("F(TE)")
    ax.set_xlim(0, echo_times_s[-1] * 1e3)
    ax.set_ylim(min(-0.3, float(np.min(factor)) - 0.05), 1.05)
    ax.tick_params(labelsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7.5, frameon=False)
    return to_png(fig)


def strip_limits(values: np.ndarray) -> tuple[float, float]:
    """The value axis of the group box plot: from 0 (a median T2* is positive) to a little
    above the largest value, so that differences are seen at their size relative to the
    values themselves: a spread of 0.6 ms around 25 ms looks small, as it is."""
    top = float(np.max(values)) if values.size else 1.0
    return 0.0, max(1.12 * top, 1e-9)


def group_strip_png(
    groups: Mapping[str, Sequence[float]],
    flagged: Mapping[str, Sequence[bool]] | None = None,
    *,
    ylabel: str = "median T2* (ms)",
) -> bytes:
    """:func:`group_strip_figure` as PNG bytes (same arguments)."""
    return to_png(group_strip_figure(groups, flagged, ylabel=ylabel))


def group_strip_figure(
    groups: Mapping[str, Sequence[float]],
    flagged: Mapping[str, Sequence[bool]] | None = None,
    *,
    ylabel: str = "median T2* (ms)",
) -> Figure:
    """Box plot with every value drawn as a point, one box per group; ``flagged`` points (the
    outliers of the plotted value) as red diamonds. NaN values are left out; a group without
    values gets an empty slot. The value axis starts at 0 (:func:`strip_limits`)."""
    names = list(groups)
    fig = Figure(figsize=(max(4.0, 1.6 * len(names) + 1.5), 3.4))
    ax = fig.add_axes((0.16, 0.16, 0.8, 0.78))
    data = [np.asarray(groups[n], dtype=np.float64) for n in names]
    marks = [
        np.asarray((flagged or {}).get(n, [False] * d.size), dtype=bool)
        for n, d in zip(names, data, strict=True)
    ]
    rng = np.random.default_rng(0)  # fixed jitter: the same table gives the same picture
    labelled = False
    for i, (values, marked) in enumerate(zip(data, marks, strict=True), start=1):
        keep = np.isfinite(values)
        if keep.any():
            ax.boxplot([values[keep]], positions=[i], widths=0.5, showfliers=False)
        x = i + rng.uniform(-0.12, 0.12, values.size)
        plain, odd = keep & ~marked, keep & marked
        ax.scatter(x[plain], values[plain], s=18, color="#4c72b0", zorder=3)
        if odd.any():
            label = None if labelled else "outlier"  # one legend entry for all groups
            ax.scatter(x[odd], values[odd], s=30, color="#c44e52", marker="D", label=label)
            labelled = True
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_xlim(0.4, len(names) + 0.6)
    if labelled:
        ax.legend(fontsize=8, frameon=False)
    finite = np.concatenate([d[np.isfinite(d)] for d in data]) if data else np.array([])
    if finite.size:
        ax.set_ylim(*strip_limits(finite))
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel(ylabel)
    ax.tick_params(labelsize=8)
    return fig


#: Most bars in the group page's fraction chart (:func:`t2starmap.report.charts.fraction_bars_png`):
#: at study scale only the highest are drawn.
MAX_BARS = 40
