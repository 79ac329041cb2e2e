"""Every image read, with nibabel (with :mod:`t2starmap.bids.nifti_write`, which writes them,
the only modules that use it): echoes, parts and maps, headers, and the orientation of an
affine. Errors name the file.

gzip is most of the cost of reading and writing ``.nii.gz``: it goes through
:mod:`t2starmap.bids.gzipped` (isal when installed, else zlib); nibabel parses the headers and
arrays from the bytes either way. The echoes of a set are decompressed in a few threads.

nibabel is imported without pydicom (:func:`_pydicom_hidden`): its ``nifti1`` imports pydicom,
and with it scipy and Pillow, half of nibabel's import time (0.07 s of a ``t2smap`` run that
takes 0.6 s), only to parse DICOM header extensions, which this project never reads (nibabel
keeps them as plain bytes without pydicom).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.bids import gzipped
from t2starmap.bids.layout import annex_missing_message
from t2starmap.bids.tasks import raised, run_tasks
from t2starmap.errors import BadDataError, InputMissingError
from t2starmap.resources import available_cpus


@contextmanager
def _pydicom_hidden() -> Iterator[None]:
    """``import pydicom`` fails inside (an ImportError), when neither pydicom nor nibabel is
    loaded yet; afterwards pydicom imports as usual."""
    hide = "pydicom" not in sys.modules and "nibabel" not in sys.modules
    if hide:
        sys.modules["pydicom"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hide and "pydicom" in sys.modules and sys.modules["pydicom"] is None:
            del sys.modules["pydicom"]


with _pydicom_hidden():
    import nibabel as nib

#: Most threads that decompress echoes at once.
READ_THREADS = 4


@dataclass(frozen=True)
class Geometry:
    """What every echo of a set must share, and what every map is written with."""

    shape: tuple[int, ...]
    affine: np.ndarray
    zooms: tuple[float, ...]
    qform_code: int
    sform_code: int

    @property
    def slice_axis(self) -> int:
        """The voxel axis the slices are stacked along: :func:`slice_axis` of the shape."""
        return slice_axis(self.shape)


def slice_axis(shape: tuple[int, ...]) -> int:
    """The stored volume's slice axis: the voxel axis with the fewest voxels when one axis has
    strictly fewer than the others (a 256x256x5 slab, a single slice); otherwise the third
    voxel axis (the slice or partition axis of every NIfTI converter)."""
    if len(shape) < 3:
        return len(shape) - 1
    fewest = min(shape[:3])
    if list(shape[:3]).count(fewest) == 1:
        return list(shape[:3]).index(fewest)
    return 2


def _one_line(err: BaseException) -> str:
    """An error's text on one line (nibabel's messages may span several)."""
    return " ".join(str(err).split())


def open_image(path: Path) -> Any:
    """nibabel image (typed Any: nibabel's load() is typed as the file-based base class)."""
    if path.is_symlink() and not path.exists():
        raise InputMissingError(annex_missing_message(path))
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many kinds for unreadable files
        raise BadDataError(f"{path}: not a readable NIfTI image ({_one_line(err)})") from err


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        raise BadDataError(f"{path}: expected one 3-D volume per echo, found shape {shape}")
    return shape


def check_geometry(paths: Sequence[Path]) -> Geometry:
    """Read the headers only of one set's echo images (``paths``); every echo must share shape
    and affine. Raises BadDataError."""
    first = paths[0]
    img = open_image(first)
    shape = _spatial_shape(first, tuple(int(n) for n in img.shape))
    affine = np.asarray(img.affine, dtype=np.float64)
    for path in paths[1:]:
        other = open_image(path)
        other_shape = _spatial_shape(path, tuple(int(n) for n in other.shape))
        if other_shape != shape:
            raise BadDataError(
                f"{path}: shape {other_shape} differs from {first.name} {shape}; "
                "all echoes of a set must share shape and affine"
            )
        if not np.allclose(other.affine, affine, atol=1e-4):
            raise BadDataError(
                f"{path}: affine differs from {first.name}; all echoes of a set must "
                "share shape and affine"
            )
    header = img.header
    return Geometry(
        shape=shape,
        affine=affine,
        zooms=tuple(float(z) for z in header.get_zooms()[: len(shape)]),
        qform_code=int(header["qform_code"]) if "qform_code" in header else 1,
        sform_code=int(header["sform_code"]) if "sform_code" in header else 1,
    )


def _unreadable(path: Path, err: BaseException) -> BadDataError:
    """The error of an image whose data could not be read, naming the file."""
    return BadDataError(f"{path}: image data could not be read ({_one_line(err)})")


def image_from_file(path: Path) -> Any:
    """The nibabel image of ``path``, its data still bytes in memory (gzip undone here, with
    isal when installed). Raises BadDataError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise _unreadable(path, err) from err
    if data[:2] == gzipped.MAGIC:
        try:
            raw = gzipped.decompress(data)
        except gzipped.DAMAGED as err:
            raise _unreadable(path, err) from err
    else:
        raw = data
    try:
        return nib.Nifti1Image.from_bytes(raw)
    except Exception:  # NIfTI-2 and anything else nibabel can read: its own loader
        return open_image(path)


def stored_values(path: Path, image: Any, dtype: type[np.floating[Any]]) -> np.ndarray:
    """The data of ``image`` as stored (int16 stays int16) when the header's scaling is the
    identity, which gives the same values as nibabel's scaled read cast to ``dtype``; else
    nibabel's scaled read as ``dtype``. Raises BadDataError naming the file."""
    try:
        proxy = image.dataobj
        identity = getattr(proxy, "slope", None) == 1 and getattr(proxy, "inter", None) == 0
        stored = np.dtype(getattr(proxy, "dtype", np.float64))
        exact = stored.kind == "f" or (stored.kind in "iub" and stored.itemsize <= 4)
        if identity and exact and hasattr(proxy, "get_unscaled"):
            return np.asarray(proxy.get_unscaled())
        return np.asarray(proxy, dtype=dtype)
    except gzipped.DAMAGED as err:
        raise _unreadable(path, err) from err


def read_volume(path: Path, dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    """One image's data as ``dtype`` (float32 unless asked), scaled as its header says (shape
    as stored). Raises BadDataError naming the file when it cannot be read or parsed."""
    return stored_values(path, image_from_file(path), dtype).astype(dtype, copy=False)


def read_volumes(paths: Sequence[Path], workers: int | None = None) -> list[np.ndarray]:
    """:func:`read_volume` of each path, in order, decompressed in up to ``workers`` threads
    (default: :data:`READ_THREADS`, at most the CPUs this process may use)."""
    workers = read_workers(workers, len(paths))
    if workers == 1:
        return [read_volume(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t2starmap-read") as pool:
        return list(pool.map(read_volume, paths))


def read_workers(workers: int | None, n_files: int) -> int:
    """Threads that read ``n_files`` files: ``workers`` (default :data:`READ_THREADS`, at most
    the CPUs this process may use), at most one per file."""
    if workers is None:
        workers = min(READ_THREADS, available_cpus(os.environ)[0])
    return max(1, min(workers, n_files))


@dataclass(frozen=True)
class MagnitudeEchoes:
    """The stacked echoes of a set, and what reading them found out in the same pass.

    data: (*shape, n_echoes) float32, echoes in the set's (TE) order, as the files hold them.
    unusable: (*shape) bool, voxels with a NaN, inf or negative sample in any echo; None when
        there is none (the usual case: integer images cannot hold NaN).
    positive: whether a voxel without such a sample has a positive sample.
    """

    data: np.ndarray
    unusable: np.ndarray | None
    positive: bool


#: Integer types a stack of echoes may keep (:func:`read_magnitude`'s ``integers``): those
#: torch gathers and casts (no uint16), exact in float32.
STACK_INTEGERS = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))


def read_magnitude(
    paths: Sequence[Path], geometry: Geometry, workers: int | None = None, *, integers: bool = False
) -> MagnitudeEchoes:
    """Read and stack the echoes, checking every sample as it is read (one pass over the
    data, on the stored integers where the header does not scale them): see
    :class:`MagnitudeEchoes`. Echoes are decompressed in up to ``workers`` threads (default
    as :func:`read_volumes`), each written straight into the stack. ``integers``: when
    every echo is stored unscaled as one of :data:`STACK_INTEGERS` (scanners write int16),
    the stack keeps that type instead of float32: the same values in half the memory or
    less. Raises BadDataError naming the file."""
    out = magnitude_stack(paths, geometry, integers)
    tasks = [echo_task(paths, k, out) for k in range(len(paths))]
    return checked_stack(out, run_tasks(tasks, read_workers(workers, len(paths))))


def magnitude_stack(paths: Sequence[Path], geometry: Geometry, integers: bool) -> np.ndarray:
    """The empty stack :func:`read_magnitude` fills (:func:`echo_task`)."""
    kind = _stack_type(paths) if integers else np.dtype(np.float32)
    return np.empty((*geometry.shape, len(paths)), dtype=kind)


def echo_task(
    paths: Sequence[Path], k: int, out: np.ndarray, done: Callable[[int], None] | None = None
) -> Callable[[], tuple[np.ndarray | None, bool]]:
    """The task that reads echo ``k`` into ``out[..., k]`` and checks its samples (for
    :func:`checked_stack`), then calls ``done(k)``."""

    def read_one() -> tuple[np.ndarray | None, bool]:
        data = stored_values(paths[k], image_from_file(paths[k]), np.float32)
        if data.size != out[..., k].size:
            raise BadDataError(
                f"{paths[k]}: image data holds {data.size} voxels, its header says "
                f"{out[..., k].size}"
            )
        if out.dtype.kind != "f" and data.dtype.newbyteorder("=") != out.dtype:
            raise BadDataError(f"{paths[k]}: the image changed while it was read")
        data = data.reshape(out.shape[:-1])
        _copy_into(out[..., k], data)
        checks = _unusable_samples(data)
        if done is not None:
            done(k)
        return checks

    return read_one


def checked_stack(out: np.ndarray, outcomes: Sequence[Any]) -> MagnitudeEchoes:
    """The :class:`MagnitudeEchoes` of a stack from its :func:`echo_task` outcomes (as
    :func:`run_tasks` gives them); raises the first echo's error."""
    checks = [raised(outcome) for outcome in outcomes]
    flagged = [bad for bad, _ in checks if bad is not None]
    if not flagged:
        return MagnitudeEchoes(out, None, any(positive for _, positive in checks))
    unusable = np.logical_or.reduce(flagged)
    positive = any(bool(np.any((out[..., k] > 0) & ~unusable)) for k in range(out.shape[-1]))
    return MagnitudeEchoes(out, unusable, positive)


def _stack_type(paths: Sequence[Path]) -> np.dtype[Any]:
    """The type of the stack of these echoes with ``integers``: their stored type when it is
    one of :data:`STACK_INTEGERS` for all of them, unscaled; else float32 (headers only)."""
    kinds = set()
    for path in paths:
        image = open_image(path)  # the header only; nibabel moves its scaling onto the data proxy
        proxy = image.dataobj
        if getattr(proxy, "slope", None) != 1 or getattr(proxy, "inter", None) != 0:
            return np.dtype(np.float32)
        kinds.add(np.dtype(image.get_data_dtype()).newbyteorder("="))
    kind = kinds.pop() if len(kinds) == 1 else None
    return kind if kind in STACK_INTEGERS else np.dtype(np.float32)


def _copy_into(target: np.ndarray, data: np.ndarray) -> None:
    """``target[...] = data`` (cast to its dtype), one plane of the middle axis at a time for
    3-D volumes: NIfTI data run along the first axis, the stack along the last, and copying
    plane by plane keeps both sides in the CPU caches (3.4x faster at 256x256x176)."""
    if data.ndim != 3:
        target[...] = data
        return
    for j in range(data.shape[1]):
        target[:, j, :] = data[:, j, :]


def _unusable_samples(data: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """(voxels holding NaN, inf or a negative value, None when there are none; whether a
    value is positive, among the others when there are none), from the min and max alone
    in the usual case."""
    low, high = data.min(initial=0), data.max(initial=0)
    if data.dtype.kind in "iub" or (low >= 0 and high < np.inf):
        if low >= 0:
            return None, bool(high > 0)
        return data < 0, bool(high > 0)
    return ~((data >= 0) & (data < np.inf)), bool(high > 0)


def load_magnitude(paths: Sequence[Path], geometry: Geometry) -> np.ndarray:
    """Stack the echoes: float32 array (*shape, n_echoes), echoes in the set's (TE) order
    (:func:`read_magnitude`'s ``data``)."""
    return read_magnitude(paths, geometry).data


def read_part(path: Path, geometry: Geometry) -> np.ndarray:
    """A phase, real or imaginary part of a magnitude echo as float64, checked against the
    magnitude echoes' ``geometry`` (shape and affine). Read as the echoes are (the whole file
    decompressed in one call, which releases the GIL: :func:`image_from_file`), the values
    of nibabel's scaled read. Raises BadDataError naming the file (as nibabel's reader words
    it where that cannot open the file: "not a readable NIfTI image")."""
    try:
        img = image_from_file(path)
    except BadDataError:
        open_image(path)  # its message where nibabel cannot open the file either
        raise
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if shape != geometry.shape:
        raise BadDataError(
            f"{path}: shape {shape} differs from the magnitude echoes {geometry.shape}"
        )
    if not np.allclose(img.affine, geometry.affine, atol=1e-4):
        raise BadDataError(f"{path}: affine differs from the magnitude echoes")
    data = stored_values(path, img, np.float64).astype(np.float64, copy=False)
    return data.reshape(geometry.shape)


def read_map(path: Path) -> np.ndarray:
    """One written map as float64 (masks compare > 0). Raises OSError/ValueError when unreadable."""
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MapImage:
    """A written map as the report shows it: float32 data as stored, affine and voxel size."""

    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, ...]


def read_map_image(path: Path) -> MapImage:
    """A written map with its affine and voxel size. Raises FileNotFoundError when it is not
    there, BadDataError naming it when it cannot be read."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such map")
    img = open_image(Path(path))
    try:
        return MapImage(
            np.asarray(img.dataobj, dtype=np.float32),
            np.asarray(img.affine, dtype=np.float64),
            tuple(float(z) for z in img.header.get_zooms()[:3]),
        )
    except gzipped.DAMAGED as err:
        raise _unreadable(path, err) from err


def header_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) of an image from its header alone. Raises BadDataError (unreadable) or
    InputMissingError (a dangling DataLad link) naming the file."""
    img = open_image(Path(path))
    return tuple(int(n) for n in img.shape), np.asarray(img.affine, dtype=np.float64)


# --- orientation: which voxel axis points where ----------------------------------------------


def ras_orientation(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis of an image: (the world axis nearest to it, +1 or -1), world axes
    0 = left to right, 1 = posterior to anterior, 2 = inferior to superior (RAS+); the
    orientation nibabel's ``io_orientation`` gives, shape (3, 2)."""
    return np.asarray(nib.orientations.io_orientation(np.asarray(affine)), dtype=np.float64)


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder the axes of a 3-D volume (flips and transposes only, no resampling) so that
    they run as near as may be left to right, posterior to anterior, inferior to superior."""
    if volume.ndim != 3:
        return volume
    return np.asarray(nib.orientations.apply_orientation(volume, ras_orientation(affine)))
