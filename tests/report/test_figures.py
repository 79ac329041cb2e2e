"""Figure builders: PNG bytes that decode to non-trivial pictures."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.image import imread

from t2starmap.report import figures


def decode(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return imread(io.BytesIO(png), format="png")


def assert_not_blank(image: np.ndarray) -> None:
    colours = np.unique(image[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 10, "a figure of a handful of colours is as good as blank"


@pytest.mark.parametrize(
    ("occupied", "n", "expected"),
    [
        (range(0), 4, [0, 2, 3, 5]),  # empty mask: spread over every slice
        (range(2, 5), 12, [2, 3, 4]),  # fewer occupied slices than asked for
        (range(0, 40), 5, [0, 10, 20, 29, 39]),  # evenly spaced over the occupied ones
    ],
)
def test_select_slices(occupied: range, n: int, expected: list[int]) -> None:
    depth = max(6, *(k + 1 for k in occupied)) if len(occupied) else 6
    mask = np.zeros((4, 4, depth), dtype=bool)
    for k in occupied:
        mask[1, 1, k] = True
    assert figures.select_slices(mask, n) == expected


@pytest.mark.parametrize(("convention", "column"), [("neurological", 2), ("radiological", 0)])
def test_mosaic_orientation_and_padding(convention: str, column: int) -> None:
    vol = np.zeros((3, 2, 3), dtype=np.float32)
    vol[2, 1, 0] = 5  # right, anterior corner of slice 0
    view = figures.View(axis=2, pixel_aspect=1.0, convention=convention)
    tiles = figures.mosaic(vol, [0, 1, 2], columns=2, view=view)
    assert tiles.shape == (2 * 2, 2 * 3)
    # anterior up; the subject's right on the right (neurological) or left (radiological)
    assert tiles[0, column] == 5
    assert np.isnan(tiles[2:, 3:]).all()  # the fourth tile is empty


def cielab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in [0, 1] to CIE L*a*b* (D65)."""
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (
        linear
        @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    )
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def test_failed_voxels_take_a_colour_no_map_of_the_page_comes_near() -> None:
    """The failed colour is at least 50 CIELAB units from every colour of every colour map a
    montage with the failed overlay uses (cyan was 37 from viridis' teal), and opaque."""
    from matplotlib import colormaps

    from t2starmap.report.sections import MONTAGES

    failed = cielab(np.array(figures.FAILED_RGBA[:3]))
    assert figures.FAILED_RGBA[3] == 1.0
    for cmap in {m.cmap for m in MONTAGES if m.overlay}:
        colours = cielab(colormaps[cmap](np.linspace(0, 1, 256))[:, :3])
        assert np.linalg.norm(colours - failed, axis=1).min() > 50, cmap


@pytest.mark.parametrize("shape", [(16, 12, 4), (16, 12)])
def test_montage_draws_the_failed_overlay(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    volume = rng.random(shape) * 100
    failed = np.zeros(shape, dtype=bool)
    failed[2:6, 2:6] = True
    slices = figures.select_slices(np.ones(shape, dtype=bool))
    plain = decode(
        figures.montage_png(volume, slices, figures.Scale(0, 100, "inferno", "T2* (ms)"))
    )
    flagged = decode(
        figures.montage_png(
            volume, slices, figures.Scale(0, 100, "inferno", "T2* (ms)"), failed=failed
        )
    )
    assert_not_blank(plain)
    assert plain.shape == flagged.shape

    def magenta(image: np.ndarray) -> np.ndarray:
        return (image[..., 0] > 0.9) & (image[..., 1] < 0.1) & (image[..., 2] > 0.9)

    assert magenta(flagged).sum() > 50
    assert magenta(plain).sum() == 0


def test_misfit_voxels_are_tinted_with_their_estimate_readable_under_the_tint() -> None:
    """A misfit voxel keeps its estimate: the montage tints it orange (it differs from the
    plain montage and leans to orange) and the value still shows through (two different
    values under the tint give two different colours)."""
    volume = np.zeros((24, 24, 1))
    volume[:, :12] = 20.0
    volume[:, 12:] = 80.0
    misfit = np.zeros(volume.shape, dtype=bool)
    misfit[4:20, 4:20] = True
    scale = figures.Scale(0, 100, "gray", "T2* (ms)")
    plain = decode(figures.montage_png(volume, [0], scale))[..., :3]
    tinted = decode(figures.montage_png(volume, [0], scale, misfit=misfit))
    tinted = tinted[..., :3]
    tile = slice(0, plain.shape[0])  # the one square tile, then the colour bar
    plain, tinted = plain[tile, tile], tinted[tile, tile]
    changed = np.abs(tinted - plain).max(axis=-1) > 0.2
    assert 0.3 < changed.mean() < 0.6, "the misfit square (44 % of the tile) is not tinted"
    assert (tinted[changed][:, 0] > tinted[changed][:, 2] + 0.2).all(), "not orange"
    under, shown = plain[changed].mean(axis=-1), tinted[changed].mean(axis=-1)
    assert np.ptp(under) > 0.5 and np.ptp(shown) > 0.2, "the estimate does not show through"
    assert np.corrcoef(under, shown)[0, 1] > 0.9, "the estimate does not show through"


def test_montage_nan_is_background() -> None:
    volume = np.full((10, 10, 2), np.nan)
    png = figures.montage_png(volume, [0, 1], figures.Scale(0, 1, "gray", "x"))
    image = decode(png)
    left = image[:, : image.shape[1] // 2, :3]
    assert np.allclose(left, 0.0)  # all black, no colour-mapped garbage


@pytest.mark.parametrize("values", [np.array([]), np.array([np.nan, 12.0, 30.0, 250.0])])
def test_histogram_png(values: np.ndarray) -> None:
    image = decode(figures.histogram_png(values))
    assert image.shape[1] == int(5.4 * figures.DPI)


def test_decay_png_tolerates_nan_and_missing_sigma() -> None:
    te = np.array([0.003, 0.01, 0.02, 0.03])
    curves = [
        figures.DecayCurve("low", 1000 * np.exp(-te / 0.008), 1000.0, 0.008),
        figures.DecayCurve("bad", np.array([np.nan, 1.0, 2.0, 3.0]), np.nan, np.nan),
    ]
    assert_not_blank(decode(figures.decay_png(te, curves, 12.0)))
    decode(figures.decay_png(te, [], None))


def test_group_plots() -> None:
    strip = figures.group_strip_png(
        {"ses-1": [22.0, 23.0, 40.0], "ses-2": [21.0, 22.5]},
        {"ses-1": [False, False, True], "ses-2": [False, False]},
    )
    assert_not_blank(decode(strip))


@pytest.mark.parametrize(
    "groups",
    [{"all": [float("nan")]}, {"ses-1": [float("nan")], "ses-2": [22.0]}, {"all": []}],
    ids=["all-nan", "one-group-nan", "empty"],
)
def test_group_strip_without_values(groups: dict[str, list[float]]) -> None:
    decode(figures.group_strip_png(groups))  # no flags given, nothing to plot: still a figure


def test_data_uri_round_trip() -> None:
    import base64

    uri = figures.data_uri(b"\x89PNGxyz")
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == b"\x89PNGxyz"


def test_histogram_counts_values_above_the_window_in_an_overflow_bar() -> None:
    values = np.array([5.0, 50.0, 99.9, 100.0, 150.0, 1e4, np.nan])
    counts, edges, over = figures.histogram_counts(values, (0.0, 100.0), 10)
    assert over == 3  # 100, 150 and 10 000 ms: not piled into the last bin
    assert counts.sum() == 3 and counts[-1] == 1  # only 99.9 ms in the last bin
    assert edges[0] == 0.0 and edges[-1] == 100.0
    assert_not_blank(decode(figures.histogram_png(values, window_ms=(0.0, 100.0))))


def test_histogram_counts_are_those_of_the_clipped_finite_values() -> None:
    """Counted without copies of the values: the same as clipping the finite values below
    the window's top into it, the window's edges and infinities included."""
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [rng.uniform(-20.0, 130.0, 5000), [0.0, 100.0, 100.0, -5.0, 50.0, np.inf, -np.inf, np.nan]]
    )
    finite = values[np.isfinite(values)]
    below_top = finite[finite < 100.0]
    expected, expected_edges = np.histogram(np.clip(below_top, 0.0, 100.0), 80, (0.0, 100.0))
    counts, edges, over = figures.histogram_counts(values, (0.0, 100.0), 80)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(edges, expected_edges)
    assert over == finite.size - below_top.size


def test_the_histogram_leaves_the_values_it_is_given_alone() -> None:
    values = np.random.default_rng(2).uniform(1.0, 90.0, 1001)
    kept = values.copy()
    figures.histogram_png(values)
    np.testing.assert_array_equal(values, kept)


def test_decay_legend_is_outside_the_data() -> None:
    te = np.linspace(0.003, 0.04, 8)
    curves = [
        figures.DecayCurve(f"voxel {k}", 1000 * np.exp(-te / t2), 1000.0, t2)
        for k, t2 in enumerate((0.01, 0.03, 0.08))
    ]
    fig = figures.decay_figure(te, curves, noise_sigma=20.0)
    figures.FigureCanvasAgg(fig).draw()
    [ax] = fig.axes
    legend = ax.get_legend()
    assert legend is not None
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())
    assert legend.get_window_extent().y1 <= fig.bbox.y1 and legend.get_window_extent().y0 >= 0


@pytest.mark.parametrize("shape", [(64, 6, 1), (256, 256, 5), (20, 18)])
def test_colour_bar_label_is_not_cut_off(shape: tuple[int, ...]) -> None:
    """A flat slab (one short row of tiles) still leaves room for a long colour-bar label."""
    volume = np.random.default_rng(0).random(shape)
    slices = figures.select_slices(np.ones(shape, dtype=bool))
    fig = figures.montage_figure(
        volume * 1e5, slices, figures.Scale(0, 1e5, "viridis", "SE of S0 (input units)")
    )
    figures.FigureCanvasAgg(fig).draw()
    bar = fig.axes[1]
    label = bar.yaxis.label.get_window_extent()
    assert label.y0 >= 0 and label.y1 <= fig.bbox.y1 and label.x1 <= fig.bbox.x1


def test_tiles_carry_their_file_index_and_orientation_letters() -> None:
    """Every tile of a montage is labelled with its slice's index in the file (here a file
    stored inferior-first along k: canonical slice 0 is k = 3) and its edge letters."""
    view = figures.View(axis=2, pixel_aspect=1.0, file_axis=2, file_flipped=True)
    volume = np.random.default_rng(0).random((8, 6, 4))
    fig = figures.montage_figure(volume, [0, 1, 3], figures.Scale(0, 1, "gray", "x"))
    assert [t.get_text() for t in fig.axes[0].texts] == []  # no file axis: no letters
    fig = figures.montage_figure(volume, [0, 1, 3], figures.Scale(0, 1, "gray", "x"), view=view)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[:5] == ["k=3", "A", "P", "R", "L"]
    assert [t for t in texts if t.startswith("k=")] == ["k=3", "k=2", "k=0"]
    assert texts.count("R") == texts.count("L") == 3


@pytest.mark.parametrize("pixel_aspect", [1.0, 2.5])
def test_the_montage_png_is_its_figure_drawn_with_its_annotations(pixel_aspect: float) -> None:
    """montage_png lays the tiles' annotations (drawn once per layout) over the montage drawn
    without them: the picture is the figure drawn with its texts, to a level of rounding, the
    second time (from the cached layer) as the first; and the texts are really in it."""
    view = figures.View(axis=2, pixel_aspect=pixel_aspect, file_axis=2, file_flipped=True)
    rng = np.random.default_rng(4)
    volume = rng.random((40, 32, 9)) * 100
    failed = rng.random(volume.shape) > 0.97
    scale = figures.Scale(0, 100, "inferno", "T2* (ms)")
    slices = figures.select_slices(np.ones(volume.shape, dtype=bool))
    options = {"failed": failed, "view": view}
    png = figures.montage_png(volume, slices, scale, **options)
    assert figures.montage_png(volume, slices, scale, **options) == png
    drawn = decode(figures.to_png(figures.montage_figure(volume, slices, scale, **options)))
    bare = figures.montage_figure(volume, slices, scale, annotate=False, **options)
    image = decode(png)
    assert image.shape == drawn.shape
    assert np.abs(image - drawn).max() <= 2 / 255 + 1e-6
    assert (np.abs(decode(figures.to_png(bare)) - drawn).max(-1) > 0.5).sum() > 100


def test_png_is_rgb_when_opaque_and_keeps_transparency() -> None:
    opaque = figures.Figure(figsize=(2, 1), facecolor="black")
    clear = figures.Figure(figsize=(2, 1), facecolor="none")
    assert decode(figures.to_png(opaque)).shape == (100, 200, 3)
    image = decode(figures.to_png(clear))
    assert image.shape == (100, 200, 4) and image[..., 3].max() == 0


def test_montages_are_compressed_fast_and_losslessly() -> None:
    """The montages' PNGs use zlib level MONTAGE_COMPRESSION (speed): the same pixels as
    Pillow's default level."""
    from PIL import Image

    volume = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    fig = figures.montage_figure(volume, [0, 1, 2], figures.Scale(0, 1, "viridis", "x"))
    fast, default = figures.to_png(fig, figures.MONTAGE_COMPRESSION), figures.to_png(fig)
    assert figures.MONTAGE_COMPRESSION <= 3
    pixels = [np.asarray(Image.open(io.BytesIO(png))) for png in (fast, default)]
    assert np.array_equal(pixels[0], pixels[1])
    shown = figures.montage_png(volume, [0, 1, 2], figures.Scale(0, 1, "viridis", "x"))
    assert shown == fast
