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
3. Tiles are shown the way readers of that plane expect, in the neurological convention
   (subject's left on the left): axial anterior up; coronal superior up; sagittal superior up
   and anterior on the left. Pixels keep the voxels' aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from t2starmap.nifti import slice_axis

#: Tilt (degrees) of the slice axis from the nearest world axis above which a caption says
#: the acquisition is oblique.
OBLIQUE_DEGREES = 5.0
PLANES = ("sagittal", "coronal", "axial")
_COUNTED = ("left to right", "posterior to anterior", "inferior to superior")
_ORIENTATION = (
    "superior up, anterior on the left",
    "superior up, subject's left on the left",
    "anterior up, subject's left on the left",
)


@dataclass(frozen=True)
class View:
    """How to cut a canonical (RAS) volume into tiles.

    axis: the RAS axis slices are taken along (0 sagittal, 1 coronal, 2 axial).
    pixel_aspect: height / width of one tile pixel, in mm / mm.
    oblique_degrees: tilt of the acquired slice axis from ``axis``.
    """

    axis: int
    pixel_aspect: float
    oblique_degrees: float = 0.0

    @property
    def plane(self) -> str:
        return PLANES[self.axis]

    def tile(self, volume: np.ndarray, k: int) -> np.ndarray:
        """Slice ``k`` of a canonical (X, Y, Z) volume, oriented for display (rows top down)."""
        if self.axis == 2:
            return np.rot90(volume[:, :, k])
        if self.axis == 1:
            return np.rot90(volume[:, k, :])
        return np.fliplr(np.rot90(volume[k, :, :]))

    def describe(self, slices: list[int], depth: int) -> str:
        """The caption's first sentence: which slices, counted how, oriented how."""
        text = (
            f"{self.plane.capitalize()} slices {', '.join(str(k) for k in slices)} of {depth} "
            f"(counted from 0, {_COUNTED[self.axis]}), {_ORIENTATION[self.axis]}."
        )
        if self.oblique_degrees > OBLIQUE_DEGREES:
            text += (
                f" The acquisition is oblique ({self.oblique_degrees:.0f}° from {self.plane}):"
                " shown in the nearest plane, as stored, without resampling."
            )
        return text


#: The view of 2-D images: the stored slice, rows as stored.
FLAT = View(axis=2, pixel_aspect=1.0)


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder the axes of a 3-D volume to the closest RAS orientation (flips/transposes)."""
    if volume.ndim != 3:
        return volume
    ornt = nib.orientations.io_orientation(affine)
    return np.asarray(nib.orientations.apply_orientation(volume, ornt))


def choose_view(affine: np.ndarray, shape: tuple[int, ...]) -> View:
    """The view of a 3-D volume of ``shape`` stored with ``affine`` (4x4, voxel -> mm)."""
    if len(shape) != 3:
        return FLAT
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    ornt = nib.orientations.io_orientation(affine)
    stored = slice_axis(shape)
    axis = int(ornt[stored, 0])
    direction = linear[:, stored] / max(float(sizes[stored]), 1e-12)
    tilt = math.degrees(math.acos(min(1.0, abs(float(direction[axis])))))
    canonical = np.empty(3)
    for j in range(3):
        canonical[int(ornt[j, 0])] = sizes[j]
    rows, columns = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[axis]
    return View(axis, float(canonical[rows] / canonical[columns]), tilt)
