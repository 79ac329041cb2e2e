"""Every image written, with nibabel: the maps (atomically, float32 or uint8 labels), a 4-D
series a volume at a time, the converter's phase in radians and its joined EPI volumes, and
the simulator's raw datasets. gzip goes through :mod:`t2starmap.bids.gzipped`.

nibabel is loaded by :mod:`t2starmap.bids.nifti` first, with pydicom hidden from it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.bids import gzipped
from t2starmap.bids.atomic import atomic_path
from t2starmap.bids.nifti import Geometry, nib, open_image
from t2starmap.errors import BadDataError

#: Where a single-file NIfTI-1 map's data start: the header and an empty extension flag.
_DATA_OFFSET = 352


def save_like(path: Path, data: np.ndarray, template: Path) -> Path:
    """Write ``data`` as float32 (no scaling) with the header and affine of the image
    ``template`` (the converter's phase in radians beside dcm2niix's integers)."""
    source: Any = nib.load(str(template))
    out = nib.Nifti1Image(np.asarray(data, dtype=np.float32), source.affine, source.header)
    out.header.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, str(path))
    return Path(path)


def concatenate_volumes(paths: Sequence[Path], out: Path) -> Path:
    """The images ``paths`` (3-D, or 4-D runs) joined in order along a 4th axis into ``out``
    (the converter's enhanced EPI volumes, one file each). Values stay as stored when every
    file has the stored type of the first and no scaling, else become float32 (scaled). Raises
    BadDataError naming the file whose grid differs from the first's."""
    images = [open_image(Path(p)) for p in paths]
    first = images[0]
    for path, image in zip(paths, images, strict=True):
        if image.shape[:3] != first.shape[:3] or not np.allclose(image.affine, first.affine):
            raise BadDataError(f"{path}: its grid differs from that of {paths[0]}")
    raw = all(
        image.get_data_dtype() == first.get_data_dtype() and _scaling(image) == (1.0, 0.0)
        for image in images
    )
    arrays = [
        np.asanyarray(image.dataobj.get_unscaled() if raw else image.get_fdata(dtype=np.float32))
        for image in images
    ]
    data = np.concatenate([a.reshape(*a.shape[:3], -1) for a in arrays], axis=3)
    joined = nib.Nifti1Image(data, first.affine, first.header)
    if not raw:
        joined.header.set_data_dtype(np.float32)
        joined.header.set_slope_inter(1.0, 0.0)
    nib.save(joined, str(out))
    return Path(out)


def _scaling(image: Any) -> tuple[float, float]:
    """(slope, intercept) of a loaded image: nibabel keeps them on the data proxy."""
    proxy = image.dataobj
    return float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))


def _map_image(array: np.ndarray, geometry: Geometry) -> Any:
    """The NIfTI image of a map: ``geometry``'s affine (both forms), zooms, mm / s units."""
    img = nib.Nifti1Image(array, geometry.affine)
    img.set_qform(geometry.affine, code=geometry.qform_code or 1)
    img.set_sform(geometry.affine, code=geometry.sform_code or 1)
    img.header.set_zooms(geometry.zooms)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(array.dtype)
    return img


def save_map(path: Path, data: np.ndarray, geometry: Geometry) -> Path:
    """Write one map atomically: float maps as float32, boolean masks and label maps (uint8)
    as uint8."""
    kind = np.uint8 if data.dtype in (bool, np.uint8) else np.float32
    array = data.astype(kind, copy=False)
    img = _map_image(array, geometry)
    with atomic_path(path) as tmp:
        _write_file(Path(tmp), img, Path(path).name.endswith(".gz"))
    return path


def save_volumes(
    path: Path, shape: tuple[int, ...], volumes: Iterable[np.ndarray], geometry: Geometry
) -> Path:
    """Write a 4-D float32 map of ``shape`` atomically from its 3-D ``volumes`` (float32, in
    time order), one at a time: the same bytes as :func:`save_map` of the whole series,
    without the series in the file's order in memory."""
    img = _map_image(np.broadcast_to(np.float32(0.0), shape), geometry)  # the header only
    img.update_header()
    header = img.header
    header.set_data_offset(_DATA_OFFSET)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0  # as nibabel writes float32 data
    compress = Path(path).name.endswith(".gz")
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as stream,
        gzipped.output(stream, compress) as out,
    ):
        out.write(header.binaryblock)
        out.write(b"\0" * (_DATA_OFFSET - len(header.binaryblock)))  # no extension
        for volume in volumes:
            out.write(np.asarray(volume, dtype=np.float32).tobytes(order="F"))
    return path


def write_image(
    path: Path | str,
    data: np.ndarray,
    affine: np.ndarray,
    zooms: tuple[float, ...] | None = None,
) -> Path:
    """Write ``data`` as it is (its own dtype) with ``affine`` and mm / s units, gzipped by the
    ``.gz`` suffix: the simulator's writer of raw datasets (not atomic; maps go through
    :func:`save_map`). ``zooms``: voxel sizes and, for a 4-D series, the repetition time
    (default: from the affine, TR 1)."""
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    if zooms is not None:
        image.header.set_zooms(zooms)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return Path(path)


def _write_file(path: Path, image: Any, compress: bool) -> None:
    """Write ``image`` to ``path``, through gzip when ``compress``: nibabel streams it a
    plane at a time into the compressor (isal when installed), so no copy of the whole
    image, raw or compressed, is held."""
    with open(path, "wb") as stream, gzipped.output(stream, compress) as out:
        image.to_stream(out)
