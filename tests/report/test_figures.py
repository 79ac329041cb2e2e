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


def test_mosaic_orientation_and_padding() -> None:
    vol = np.zeros((3, 2, 3), dtype=np.float32)
    vol[2, 1, 0] = 5  # right, anterior corner of slice 0
    tiles = figures.mosaic(vol, [0, 1, 2], columns=2)
    assert tiles.shape == (2 * 2, 2 * 3)
    assert tiles[0, 2] == 5  # top right of the first tile: anterior up, right on the right
    assert np.isnan(tiles[2:, 3:]).all()  # the fourth tile is empty


@pytest.mark.parametrize("shape", [(16, 12, 4), (16, 12)])
def test_montage_draws_the_failed_overlay(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    volume = rng.random(shape) * 100
    failed = np.zeros(shape, dtype=bool)
    failed[2:6, 2:6] = True
    slices = figures.select_slices(np.ones(shape, dtype=bool))
    plain = decode(
        figures.montage_png(volume, slices, vmin=0, vmax=100, cmap="inferno", label="T2* (ms)")
    )
    flagged = decode(
        figures.montage_png(
            volume, slices, vmin=0, vmax=100, cmap="inferno", label="T2* (ms)", failed=failed
        )
    )
    assert_not_blank(plain)
    assert plain.shape == flagged.shape
    cyan = (flagged[..., 0] < 0.2) & (flagged[..., 1] > 0.8) & (flagged[..., 2] > 0.8)
    assert cyan.sum() > 50
    plain_cyan = (plain[..., 0] < 0.2) & (plain[..., 1] > 0.8) & (plain[..., 2] > 0.8)
    assert plain_cyan.sum() == 0


def test_montage_nan_is_background() -> None:
    volume = np.full((10, 10, 2), np.nan)
    png = figures.montage_png(volume, [0, 1], vmin=0, vmax=1, cmap="gray", label="x")
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
    bars = figures.failed_bar_png(["sub-01", "sub-02 ses-1"], [0.0, 0.03])
    assert_not_blank(decode(bars))


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


def test_failed_bars_at_study_scale_show_the_highest_only() -> None:
    labels = [f"sub-{i:04d}" for i in range(1000)]
    fractions = [i / 10000 for i in range(1000)]
    image = decode(figures.failed_bar_png(labels, fractions))
    few = decode(figures.failed_bar_png(labels[:40], fractions[:40]))
    assert image.shape[0] <= few.shape[0] * 1.1  # 40 bars, not 1000


@pytest.mark.parametrize("shape", [(64, 6, 1), (256, 256, 5), (20, 18)])
def test_colour_bar_label_is_not_cut_off(shape: tuple[int, ...]) -> None:
    """A flat slab (one short row of tiles) still leaves room for a long colour-bar label."""
    volume = np.random.default_rng(0).random(shape)
    slices = figures.select_slices(np.ones(shape, dtype=bool))
    fig = figures.montage_figure(
        volume * 1e5, slices, vmin=0, vmax=1e5, cmap="viridis", label="SE of S0 (input units)"
    )
    figures.FigureCanvasAgg(fig).draw()
    bar = fig.axes[1]
    label = bar.yaxis.label.get_window_extent()
    assert label.y0 >= 0 and label.y1 <= fig.bbox.y1 and label.x1 <= fig.bbox.x1
