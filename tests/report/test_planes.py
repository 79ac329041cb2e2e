"""Which plane a set is shown in, how its tiles are oriented, and that pixels keep their shape."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from matplotlib.image import imread

from t2starmap.report import figures
from t2starmap.report.planes import FLAT, choose_view, slice_axis, to_canonical

AXIAL = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS, as dcm2niix writes axial slices
#: dcm2niix's coronal slab: i right-to-left, j superior-to-inferior, k posterior-to-anterior
CORONAL = np.array(
    [[-1.5, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, -1.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
#: sagittal slices: i anterior-to-posterior, j superior-to-inferior, k left-to-right
SAGITTAL = np.array(
    [[0.0, 0.0, 1.2, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def rotated_about_x(affine: np.ndarray, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    rotation = np.array(
        [
            [1, 0, 0, 0],
            [0, math.cos(t), -math.sin(t), 0],
            [0, math.sin(t), math.cos(t), 0],
            [0, 0, 0, 1],
        ]
    )
    return rotation @ affine


@pytest.mark.parametrize(
    ("affine", "shape", "plane", "aspect"),
    [
        (AXIAL, (64, 54, 20), "axial", 1.0),
        (np.diag([1.0, 2.0, 3.0, 1.0]), (20, 10, 10), "axial", 2.0),  # no single thinnest axis
        (CORONAL, (256, 256, 5), "coronal", 1.0),
        (SAGITTAL, (160, 160, 30), "sagittal", 1.0),
        (np.diag([1.0, 1.0, 1.0, 1.0]), (64, 54, 1), "axial", 1.0),  # a single slice
        (np.diag([1.0, 1.0, 1.0, 1.0]), (5, 64, 64), "sagittal", 1.0),  # fewest voxels on i
    ],
)
def test_the_acquired_plane_is_chosen(
    affine: np.ndarray, shape: tuple[int, int, int], plane: str, aspect: float
) -> None:
    view = choose_view(affine, shape)
    assert view.plane == plane
    assert view.pixel_aspect == pytest.approx(aspect)
    assert view.oblique_degrees == pytest.approx(0.0, abs=1e-6)
    assert "oblique" not in view.describe([0], shape[slice_axis(shape)])


def test_the_coronal_caption_names_the_slices_and_orientation() -> None:
    view = choose_view(CORONAL, (256, 256, 5))
    assert view.describe([0, 1, 2, 3, 4], 5) == (
        "Coronal slices 0, 1, 2, 3, 4 of 5 (counted from 0, posterior to anterior), "
        "superior up, subject's left on the left."
    )


def test_an_oblique_acquisition_gets_the_nearest_plane_and_a_note() -> None:
    view = choose_view(rotated_about_x(AXIAL, 20.0), (64, 54, 20))
    assert view.plane == "axial"
    assert view.oblique_degrees == pytest.approx(20.0, abs=0.01)
    assert "oblique (20° from axial)" in view.describe([0, 1], 20)
    assert choose_view(rotated_about_x(AXIAL, 3.0), (64, 54, 20)).oblique_degrees < 5


def test_two_dimensional_images_are_shown_flat() -> None:
    assert choose_view(np.eye(4), (64, 54)) is FLAT


def test_tiles_are_oriented_for_their_plane() -> None:
    """In RAS order: coronal tiles superior up, left on the left; sagittal anterior on the left."""
    volume = np.zeros((3, 4, 5))
    volume[0, 1, 4] = 1.0  # left, superior
    volume[2, 3, 0] = 2.0  # right, anterior, inferior
    coronal = choose_view(CORONAL, (256, 256, 5))
    assert coronal.plane == "coronal"
    tile = coronal.tile(volume, 1)
    assert tile.shape == (5, 3) and tile[0, 0] == 1.0  # superior row, leftmost column
    sagittal_view = choose_view(np.diag([1.0, 1.0, 1.0, 1.0]), (3, 4, 5))
    assert sagittal_view.plane == "sagittal"
    tile = sagittal_view.tile(volume, 2)
    assert tile.shape == (5, 4) and tile[-1, 0] == 2.0  # inferior row, anterior on the left


def test_to_canonical_undoes_a_flip() -> None:
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.array_equal(to_canonical(volume, lps), volume[::-1, ::-1, :])
    assert np.array_equal(to_canonical(volume, np.eye(4)), volume)


def test_montage_pixels_keep_the_voxel_aspect_ratio() -> None:
    """A 20 x 10 slice of 1 x 2 mm voxels is square on the page, not twice as wide as high."""
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    volume = np.ones((20, 10, 10), dtype=np.float32)
    view = choose_view(affine, volume.shape)
    png = figures.montage_png(
        volume, [0], vmin=0, vmax=1, cmap="gray", label="x", view=view, tile_in=3.0
    )
    image = imread(io.BytesIO(png), format="png")
    white = np.argwhere(image[..., :3].min(axis=-1) > 0.95)
    white = white[white[:, 1] < 300]  # the picture, not the colour bar
    height = white[:, 0].max() - white[:, 0].min() + 1
    width = white[:, 1].max() - white[:, 1].min() + 1
    assert height / width == pytest.approx(1.0, rel=0.05)
