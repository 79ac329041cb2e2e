"""In which plane a set is shown: the plane it was acquired in, from the affine alone.

Pure functions of the header's affine and shape; no I/O. Volumes are first reordered to the
closest RAS orientation (:func:`to_canonical`), so every rule below speaks of RAS axes:
0 = left to right, 1 = posterior to anterior, 2 = inferior to superior.

The rule:
1. The slice axis of the stored volume is the voxel axis with the fewest voxels when one axis
   has strictly fewer than the others (a 256x256x5 slab, a single slice); otherwise the third
   voxel axis (the slice or partition axis of every NIfTI converter).
2. Its direction in the scanner's frame (its column of the affine) names the plane: mostly
   left-right -> sagittal, anterior-posterior -> coronal, inferior-superior -> axial. An axis
   more than :data:`OBLIQUE_DEGREES` off that world axis is oblique: it is shown in the nearest
   plane and the caption says by how much it is tilted.
3. Tiles are shown the way readers of that plane expect: axial anterior up, coronal superior
   up, sagittal superior up and anterior on the left. Axial and coronal tiles put the
   subject's right on the left of the tile in the radiological convention (the default: how
   scanner consoles and PACS show images, and how most radiologists read), the subject's left
   on the left in the neurological one (the pages of fMRIPrep and MRIQC). Each tile carries
   the orientation letters on its edges and its slice's index along the file's voxel axis, so
   a reader finds it in any viewer. Pixels keep the voxels' aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from t2starmap.bids.conventions import DEFAULT_REPORT_CONVENTION, REPORT_CONVENTIONS
from t2starmap.bids.nifti import ras_orientation, slice_axis, to_ras

#: Tilt (degrees) of the slice axis from the nearest world axis above which a caption says
#: the acquisition is oblique.
OBLIQUE_DEGREES = 5.0
PLANES = ("sagittal", "coronal", "axial")
_COUNTED = ("left to right", "posterior to anterior", "inferior to superior")
_UP = ("superior up", "superior up", "anterior up")
#: The display conventions of axial and coronal tiles (:mod:`t2starmap.bids.conventions` says
#: why radiological is the default); sagittal tiles are the same in both.
CONVENTIONS = REPORT_CONVENTIONS
RADIOLOGICAL, NEUROLOGICAL = "radiological", "neurological"
DEFAULT_CONVENTION = DEFAULT_REPORT_CONVENTION
FILE_AXES = "ijk"


@dataclass(frozen=True)
class View:
    """How to cut a canonical (RAS) volume into tiles, and where each tile is in the file.

    axis: the RAS axis slices are taken along (0 sagittal, 1 coronal, 2 axial).
    pixel_aspect: height / width of one tile pixel, in mm / mm.
    oblique_degrees: tilt of the acquired slice axis from ``axis``.
    convention: :data:`RADIOLOGICAL` or :data:`NEUROLOGICAL` (axial and coronal tiles).
    file_axis: the file's voxel axis (0 i, 1 j, 2 k) that runs along ``axis``; None for a
    2-D image shown as stored. file_flipped: it runs against ``axis`` (canonical slice k is
    the file's slice depth - 1 - k).
    """

    axis: int
    pixel_aspect: float
    oblique_degrees: float = 0.0
    convention: str = DEFAULT_CONVENTION
    file_axis: int | None = None
    file_flipped: bool = False

    @property
    def plane(self) -> str:
        return PLANES[self.axis]

    def tile(self, volume: np.ndarray, k: int) -> np.ndarray:
        """Slice ``k`` of a canonical (X, Y, Z) volume, oriented for display (rows top down)."""
        if self.axis == 0:
            return np.fliplr(np.rot90(volume[k, :, :]))
        tile = np.rot90(volume[:, :, k] if self.axis == 2 else volume[:, k, :])
        # rot90 puts the subject's left (low x) on the left: the neurological convention
        return np.fliplr(tile) if self.convention == RADIOLOGICAL else tile

    def edge_letters(self) -> tuple[str, str, str, str] | None:
        """The orientation letters of a tile's (top, bottom, left, right) edges: where the
        subject's R/L, A/P and S/I are; None for a 2-D image shown as stored."""
        if self.file_axis is None:
            return None
        if self.axis == 0:
            return "S", "I", "A", "P"
        top, bottom = ("A", "P") if self.axis == 2 else ("S", "I")
        left, right = ("R", "L") if self.convention == RADIOLOGICAL else ("L", "R")
        return top, bottom, left, right

    def file_index(self, k: int, depth: int) -> int:
        """The file's voxel index of canonical slice ``k`` of ``depth`` slices."""
        return depth - 1 - k if self.file_flipped else k

    def tile_label(self, k: int, depth: int) -> str:
        """What a tile is labelled with: its slice's file index, e.g. ``k=4``."""
        if self.file_axis is None:
            return ""
        return f"{FILE_AXES[self.file_axis]}={self.file_index(k, depth)}"

    def describe(self, slices: list[int], depth: int) -> str:
        """The caption's first sentences: which slices of the file, in which order, how the
        tiles are oriented, and what their letters say."""
        if self.file_axis is None:
            return "The image's single slice, as stored (no orientation applied)."
        letter = FILE_AXES[self.file_axis]
        indices = ", ".join(str(self.file_index(k, depth)) for k in slices)
        if self.axis == 0:
            side = "anterior on the left"
        elif self.convention == RADIOLOGICAL:
            side = "the subject's right on the left (radiological convention)"
        else:
            side = "the subject's left on the left (neurological convention)"
        if depth == 1:
            where = f"{self.plane.capitalize()} slice {letter} = 0, the file's only one; "
        else:
            where = (
                f"{self.plane.capitalize()} slices {letter} = {indices} of the file (voxel "
                f"axis {letter}, 0–{depth - 1}), tiles in order from {_COUNTED[self.axis]}; "
            )
        text = (
            f"{where}{_UP[self.axis]}, {side}. Each tile is labelled with its {letter} index "
            "and carries the orientation letters (R/L, A/P, S/I) on its edges."
        )
        if self.oblique_degrees > OBLIQUE_DEGREES:
            text += (
                f" The acquisition is oblique ({self.oblique_degrees:.0f}° from {self.plane}):"
                " shown in the nearest plane, as stored, without resampling."
            )
        return text


#: The view of 2-D images: the stored slice, rows as stored.
FLAT = View(axis=2, pixel_aspect=1.0, convention=NEUROLOGICAL)


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder the axes of a 3-D volume to the closest RAS orientation (flips/transposes)."""
    return to_ras(volume, affine)


def choose_view(
    affine: np.ndarray, shape: tuple[int, ...], convention: str = DEFAULT_CONVENTION
) -> View:
    """The view of a 3-D volume of ``shape`` stored with ``affine`` (4x4, voxel -> mm)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r}: not one of {', '.join(CONVENTIONS)}")
    if len(shape) != 3:
        return FLAT
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    ornt = ras_orientation(affine)
    stored = slice_axis(shape)
    axis = int(ornt[stored, 0])
    direction = linear[:, stored] / max(float(sizes[stored]), 1e-12)
    tilt = math.degrees(math.acos(min(1.0, abs(float(direction[axis])))))
    canonical = np.empty(3)
    for j in range(3):
        canonical[int(ornt[j, 0])] = sizes[j]
    rows, columns = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[axis]
    return View(
        axis,
        float(canonical[rows] / canonical[columns]),
        tilt,
        convention,
        file_axis=stored,
        file_flipped=bool(ornt[stored, 1] < 0),
    )
