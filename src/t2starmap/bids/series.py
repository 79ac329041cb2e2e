"""The 4-D echo series of multi-echo BOLD (``t2starmap t2smap``): their shared geometry, the
mask, the samples inside it. Reads through :mod:`t2starmap.bids.nifti` (the one module that uses
nibabel); maps are written with :func:`t2starmap.bids.nifti_write.save_map`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from t2starmap.bids.nifti import Geometry, image_from_file, open_image, read_volume, stored_values
from t2starmap.errors import BadDataError


def series_geometry(paths: Sequence[Path], n_echoes: int) -> Geometry:
    """The 4-D geometry (x, y, z, T; zooms with the repetition time) every echo series shares,
    from the headers. One file with ``n_echoes`` > 1 is tedana's z-concatenated form (the
    echoes stacked along z): the geometry is one echo's. A 3-D image is one volume. Raises
    BadDataError naming the file whose shape or affine differs."""
    first = Path(paths[0])
    img = open_image(first)
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
        other = open_image(Path(path))
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
    img = open_image(Path(path))
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


#: Voxel columns of a slab transposed at once by :func:`voxel_rows` (a block in the cache).
SLAB_COLUMNS = 512


def read_echo_series(
    paths: Sequence[Path], n_echoes: int, geometry: Geometry, mask: np.ndarray
) -> list[np.ndarray]:
    """Each echo's samples inside ``mask`` as (V, T) float32, voxels in the file's order (see
    :func:`voxel_rows`), echoes in the order given (one z-concatenated file is split). Files
    are read one at a time: at most one whole echo besides the masked samples is in memory.
    Raises BadDataError naming the file."""
    out: list[np.ndarray] = []
    nz = geometry.shape[2]
    for path in paths:
        data = stored_values(Path(path), image_from_file(Path(path)), np.float32)
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
    """The samples of a 4-D series inside ``mask`` as (V, T) float32 rows, voxels in the
    file's order: x fastest, then y, then z (numpy's ``data.transpose(2, 1, 0, 3)[mask.T]``).
    NIfTI stores a series Fortran-ordered (x fastest, time slowest), so each z-slab's rows
    are one 2-D transpose of contiguous memory, done a cache-sized block at a time; numpy's
    boolean index of the whole series misses the cache (2-5x slower). :func:`unmask` and
    :func:`series_volumes` put the rows back."""
    inside = mask.T  # (z, y, x)
    if data.ndim != 4 or not data.flags.f_contiguous:
        return np.asarray(data.transpose(2, 1, 0, 3)[inside], dtype=np.float32)
    nt = data.shape[3]
    stored = data.T.reshape(nt, inside.shape[0], -1)  # (T, z, y * x), C-ordered
    counts = np.count_nonzero(inside.reshape(inside.shape[0], -1), axis=1)
    out = np.empty((int(counts.sum()), nt), dtype=np.float32)
    start = 0
    for k, n in enumerate(counts.tolist()):
        if n:
            where = inside[k].reshape(-1)
            slab = stored[:, k] if n == where.size else stored[:, k, where]  # (T, n)
            for a in range(0, n, SLAB_COLUMNS):
                out[start + a : start + min(a + SLAB_COLUMNS, n)] = slab[:, a : a + SLAB_COLUMNS].T
            start += n
    return out


def unmask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Values of the voxels inside ``mask`` ((V,) or (V, T), voxels in the file's order, see
    :func:`voxel_rows`) put back into the mask's volume (x, y, z[, T]); 0 outside (a view,
    not a copy, when the mask holds every voxel; Fortran-ordered for (V,) values)."""
    inside = mask.T
    if inside.all():
        out = values.reshape(inside.shape + values.shape[1:])
    else:
        out = np.zeros(inside.shape + values.shape[1:], dtype=values.dtype)
        out[inside] = values
    return out.transpose(2, 1, 0, *range(3, out.ndim))


#: Volumes of a 4-D map gathered from the voxel rows at a time by :func:`series_volumes`.
VOLUME_BLOCK = 16


def series_volumes(values: np.ndarray, mask: np.ndarray) -> Iterator[np.ndarray]:
    """The 3-D float32 volumes of a 4-D map given as voxel rows ``values`` (V, T) inside
    ``mask`` (voxels in the file's order, see :func:`voxel_rows`), 0 outside, in time order;
    floats clipped to float32's finite range. A few volumes' columns are gathered at once
    (rows of :data:`VOLUME_BLOCK` values, a cache line each): the series is never held in
    the file's order."""
    top = float(np.finfo(np.float32).max)
    inside = mask.T
    full = bool(inside.all())
    for a in range(0, values.shape[1], VOLUME_BLOCK):
        block = values[:, a : a + VOLUME_BLOCK]
        if not (block.dtype == np.float32 and np.isfinite(block).all()):
            block = np.clip(block, -top, top)
        block = np.ascontiguousarray(block.T, dtype=np.float32)  # (volumes, V)
        for row in block:
            if full:
                volume = row.reshape(inside.shape)
            else:
                volume = np.zeros(inside.shape, dtype=np.float32)
                volume[inside] = row
            yield volume.T  # (x, y, z), Fortran-ordered: the file's bytes as they are


def read_phase_series(
    paths: Sequence[Path], n_echoes: int, geometry: Geometry, mask: np.ndarray
) -> list[np.ndarray]:
    """Each echo's phase inside ``mask`` in radians, (V, T) float32 rows as
    :func:`read_echo_series` gives the magnitudes, from ``part-phase`` files that must share
    the magnitudes' ``geometry`` (shape, volumes, affine). Units from each file's sidecar
    (``rad`` or ``arbitrary``; no sidecar: ``arbitrary``, placed by its range, see
    :func:`t2starmap.bids.parts.phase_to_radians`). BadDataError naming the file."""
    from t2starmap.bids.parts import phase_to_radians, sidecar_of

    own = series_geometry(paths, n_echoes)
    if own.shape != geometry.shape or not np.allclose(own.affine, geometry.affine, atol=1e-4):
        raise BadDataError(
            f"{paths[0]}: phase shape {own.shape} or affine differs from the magnitude echoes "
            f"{geometry.shape}"
        )
    rows = read_echo_series(paths, n_echoes, geometry, mask)
    single = len(paths) == 1
    out = []
    for k, values in enumerate(rows):
        path = Path(paths[0 if single else k])
        units = str(sidecar_of(path).get("Units", "arbitrary"))
        out.append(phase_to_radians(values, units, path))
    return out
