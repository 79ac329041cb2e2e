"""The 4-D echo series of multi-echo BOLD (``t2starmap t2smap``): their shared geometry, the
mask, the samples inside it. Reads through :mod:`t2starmap.bids.nifti` (the one module that uses
nibabel); maps are written with :func:`t2starmap.bids.nifti.save_map`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from t2starmap.bids.nifti import Geometry, _image_from_file, _open, _stored, read_volume
from t2starmap.errors import BadDataError


def series_geometry(paths: Sequence[Path], n_echoes: int) -> Geometry:
    """The 4-D geometry (x, y, z, T; zooms with the repetition time) every echo series shares,
    from the headers. One file with ``n_echoes`` > 1 is tedana's z-concatenated form (the
    echoes stacked along z): the geometry is one echo's. A 3-D image is one volume. Raises
    BadDataError naming the file whose shape or affine differs."""
    first = Path(paths[0])
    img = _open(first)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4:
        raise BadDataError(f"{first}: expected a 3-D or 4-D image, found shape {shape}")
    if len(paths) == 1 and n_echoes > 1:
        if shape[2] % n_echoes:
            raise BadDataError(
                f"{first}: {shape[2]} slices cannot hold {n_echoes} z-concatenated echoes"
            )
        shape = (shape[0], shape[1], shape[2] // n_echoes, shape[3])
    affine = np.asarray(img.affine, dtype=np.float64)
    for path in paths[1:]:
        other = _open(Path(path))
        other_shape = tuple(int(n) for n in other.shape)
        if other_shape[:3] != shape[:3] or (*other_shape, 1)[3] != shape[3]:
            raise BadDataError(
                f"{path}: shape {other_shape} differs from {first.name} {shape}; every echo "
                "must have the same shape and number of volumes"
            )
        if not np.allclose(other.affine, affine, atol=1e-4):
            raise BadDataError(f"{path}: affine differs from {first.name}")
    header = img.header
    zooms = [float(z) for z in header.get_zooms()]
    zooms = (zooms + [1.0] * 4)[:4]
    return Geometry(
        shape=shape,
        affine=affine,
        zooms=tuple(zooms),
        qform_code=int(header["qform_code"]) if "qform_code" in header else 1,
        sform_code=int(header["sform_code"]) if "sform_code" in header else 1,
    )


def read_mask(path: Path, geometry: Geometry) -> np.ndarray:
    """A mask image as bool (x, y, z) (non-zero is inside), checked against ``geometry``.
    Raises BadDataError naming the file."""
    img = _open(Path(path))
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if shape != tuple(geometry.shape[:3]):
        raise BadDataError(
            f"{path}: mask shape {shape} differs from the echoes' {geometry.shape[:3]}"
        )
    if not np.allclose(img.affine, geometry.affine, atol=1e-4):
        raise BadDataError(f"{path}: mask affine differs from the echoes'")
    data = read_volume(Path(path), np.float32).reshape(shape)
    return np.asarray(data != 0)


#: y rows of a z-slab copied at once by :func:`voxel_rows`.
SLAB_ROWS = 8


def read_echo_series(
    paths: Sequence[Path], n_echoes: int, geometry: Geometry, mask: np.ndarray
) -> list[np.ndarray]:
    """Each echo's samples inside ``mask`` as (V, T) float32, echoes in the order given (one
    z-concatenated file is split). Files are read one at a time: at most one whole echo
    besides the masked samples is in memory. Raises BadDataError naming the file."""
    out: list[np.ndarray] = []
    nz = geometry.shape[2]
    for path in paths:
        data = _stored(Path(path), _image_from_file(Path(path)), np.float32)
        if data.ndim == 3:
            data = data[..., None]
        parts = [data] if len(paths) > 1 else [
            data[:, :, k * nz : (k + 1) * nz] for k in range(n_echoes)
        ]  # fmt: skip
        for part in parts:
            out.append(voxel_rows(part, mask))
        del data, parts
    return out


def voxel_rows(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``data[mask]`` of a 4-D series as (V, T) float32, a z-slab at a time when ``data`` is
    Fortran-ordered (as NIfTI stores it, time slowest): the rows want time fastest, and
    numpy's boolean index transposes the whole series with strides that miss the cache
    (2-5x slower than slab by slab)."""
    if data.ndim != 4 or not data.flags.f_contiguous:
        return np.asarray(data[mask], dtype=np.float32)
    nx, ny, nz, nt = data.shape
    out = np.empty((int(np.count_nonzero(mask)), nt), dtype=np.float32)
    stored = data.T  # (T, z, y, x), C-ordered
    if mask.all():
        out4 = out.reshape(nx, ny, nz, nt)
        for k in range(nz):
            for y in range(0, ny, SLAB_ROWS):  # a few rows at a time: in the cache
                out4[:, y : y + SLAB_ROWS, k, :] = stored[:, k, y : y + SLAB_ROWS].T
        return out
    rows = (np.cumsum(mask.ravel()) - 1).reshape(mask.shape)
    for k in range(nz):
        inside = mask[:, :, k]
        if inside.any():
            slab = np.ascontiguousarray(stored[:, k].T, dtype=np.float32)  # (x, y, T)
            out[rows[:, :, k][inside]] = slab[inside]
    return out


def unmask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Values of the voxels inside ``mask`` ((V,) or (V, T)) put back into the mask's volume;
    0 outside (a view, not a copy, when the mask holds every voxel)."""
    if mask.all():
        return values.reshape(mask.shape + values.shape[1:])
    out = np.zeros(mask.shape + values.shape[1:], dtype=values.dtype)
    out[mask] = values
    return out


#: Volumes of a 4-D map gathered from the voxel rows at a time by :func:`series_volumes`.
VOLUME_BLOCK = 16


def series_volumes(values: np.ndarray, mask: np.ndarray) -> Iterator[np.ndarray]:
    """The 3-D float32 volumes of a 4-D map given as voxel rows ``values`` (V, T) inside
    ``mask``, 0 outside, in time order; floats clipped to float32's finite range. A few
    volumes' columns are gathered at once (rows of :data:`VOLUME_BLOCK` values, a cache line
    each): the series is never held in the file's order."""
    top = float(np.finfo(np.float32).max)
    full = bool(mask.all())
    for a in range(0, values.shape[1], VOLUME_BLOCK):
        block = values[:, a : a + VOLUME_BLOCK]
        if not (block.dtype == np.float32 and np.isfinite(block).all()):
            block = np.clip(block, -top, top)
        block = np.ascontiguousarray(block.T, dtype=np.float32)  # (volumes, V)
        for row in block:
            if full:
                yield row.reshape(mask.shape)
            else:
                volume = np.zeros(mask.shape, dtype=np.float32)
                volume[mask] = row
                yield volume
