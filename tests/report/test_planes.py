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
        "Coronal slices k = 0, 1, 2, 3, 4 of the file (voxel axis k, 0–4), tiles in order "
        "from posterior to anterior; superior up, the subject's right on the left "
        "(radiological convention). Each tile is labelled with its k index and carries the "
        "orientation letters (R/L, A/P, S/I) on its edges."
    )
    neuro = choose_view(CORONAL, (256, 256, 5), "neurological")
    assert (
        choose_view(CORONAL, (256, 256, 1))
        .describe([0], 1)
        .startswith("Coronal slice k = 0, the file's only one; superior up, ")
    )
    assert "the subject's left on the left (neurological convention)" in neuro.describe([0], 5)


#: GE's coronal slab: k runs anterior to posterior, so the posterior tile is the file's k = 4
GE_CORONAL = np.array(
    [[-1.5, 0.0, 0.0, 0.0], [0.0, 0.0, -5.0, 0.0], [0.0, -1.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def test_slices_are_named_by_their_index_in_the_file() -> None:
    """Tiles are ordered posterior to anterior, but each is named by the file's k, which
    runs the other way here: what a viewer shows as slice 4 is the first, posterior tile."""
    view = choose_view(GE_CORONAL, (256, 256, 5))
    assert view.plane == "coronal" and view.file_axis == 2 and view.file_flipped
    assert "Coronal slices k = 4, 3, 2, 1, 0 of the file" in view.describe([0, 1, 2, 3, 4], 5)
    assert [view.tile_label(k, 5) for k in (0, 4)] == ["k=4", "k=0"]
    volume = np.zeros((256, 256, 5))
    volume[:, :, 4] = 1.0  # the file's last slice: the most posterior one
    canonical = to_canonical(volume, GE_CORONAL)
    assert canonical[:, 0, :].all() and not canonical[:, 1:, :].any()


def test_sagittal_slices_are_named_by_the_files_i() -> None:
    view = choose_view(SAGITTAL, (160, 160, 30))
    assert view.file_axis == 2 and not view.file_flipped
    assert view.describe([3], 30).startswith("Sagittal slices k = 3 of the file")
    assert view.edge_letters() == ("S", "I", "A", "P")


def test_an_oblique_acquisition_gets_the_nearest_plane_and_a_note() -> None:
    view = choose_view(rotated_about_x(AXIAL, 20.0), (64, 54, 20))
    assert view.plane == "axial"
    assert view.oblique_degrees == pytest.approx(20.0, abs=0.01)
    assert "oblique (20° from axial)" in view.describe([0, 1], 20)
    assert choose_view(rotated_about_x(AXIAL, 3.0), (64, 54, 20)).oblique_degrees < 5


def test_two_dimensional_images_are_shown_flat() -> None:
    assert choose_view(np.eye(4), (64, 54)) is FLAT


@pytest.mark.parametrize(
    ("convention", "left", "letters"),
    [("radiological", -1, ("S", "I", "R", "L")), ("neurological", 0, ("S", "I", "L", "R"))],
)
def test_tiles_are_oriented_for_their_plane(
    convention: str, left: int, letters: tuple[str, ...]
) -> None:
    """In RAS order: coronal tiles superior up, the subject's left on the right
    (radiological) or on the left (neurological), letters saying so; sagittal tiles
    anterior on the left in both."""
    volume = np.zeros((3, 4, 5))
    volume[0, 1, 4] = 1.0  # left, superior
    volume[2, 3, 0] = 2.0  # right, anterior, inferior
    coronal = choose_view(CORONAL, (256, 256, 5), convention)
    assert coronal.plane == "coronal"
    tile = coronal.tile(volume, 1)
    assert tile.shape == (5, 3) and tile[0, left] == 1.0  # superior row, the subject's left
    assert coronal.edge_letters() == letters
    sagittal_view = choose_view(np.diag([1.0, 1.0, 1.0, 1.0]), (3, 4, 5), convention)
    assert sagittal_view.plane == "sagittal"
    tile = sagittal_view.tile(volume, 2)
    assert tile.shape == (5, 4) and tile[-1, 0] == 2.0  # inferior row, anterior on the left


def test_an_unknown_convention_is_refused() -> None:
    with pytest.raises(ValueError, match="convention"):
        choose_view(AXIAL, (4, 4, 4), "upside-down")


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
    png = figures.montage_png(volume, [0], figures.Scale(0, 1, "gray", "x"), view=view, tile_in=3.0)
    image = imread(io.BytesIO(png), format="png")
    white = np.argwhere(image[..., :3].min(axis=-1) > 0.95)
    white = white[white[:, 1] < 300]  # the picture, not the colour bar
    height = white[:, 0].max() - white[:, 0].min() + 1
    width = white[:, 1].max() - white[:, 1].min() + 1
    assert height / width == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_letters_follow_the_affine(convention: str) -> None:
    """In an LAS file (i runs to the subject's left), the voxel at the largest i is on the
    subject's left: it lands on the tile's side whose letter is L, whatever the convention."""
    volume = np.zeros((10, 8, 3))
    volume[9, 4, 1] = 1.0
    view = choose_view(AXIAL, volume.shape, convention)
    tile = view.tile(to_canonical(volume, AXIAL), 1)
    _, column = np.argwhere(tile == 1.0)[0]
    _, _, left, right = view.edge_letters() or ("", "", "", "")
    assert (left if column < tile.shape[1] / 2 else right) == "L"
