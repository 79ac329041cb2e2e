"""Multi-echo BOLD series: the voxel rows of a Fortran-ordered series, read slab by slab, are
numpy's ``data[mask]``; a 4-D map written a few volumes at a time is the whole map's file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from t2starmap.bids.nifti import Geometry, read_volume
from t2starmap.bids.nifti_write import save_map, save_volumes
from t2starmap.bids.series import SLAB_COLUMNS, VOLUME_BLOCK, series_volumes, unmask, voxel_rows
from t2starmap.bids.t2smap_outputs import Stage


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
@pytest.mark.parametrize("masked", ["all", "some", "none", "big"])
def test_voxel_rows_are_the_masked_samples(order: str, dtype: type, masked: str) -> None:
    rng = np.random.default_rng(4)
    shape = (5, 4, 3, 7) if masked != "big" else (SLAB_COLUMNS // 8 + 3, 9, 3, 5)
    data = np.asarray(rng.integers(-500, 500, shape), dtype=dtype, order=order)  # type: ignore[call-overload]
    mask = {
        "all": np.ones(shape[:3], bool),
        "some": rng.random(shape[:3]) < 0.4,
        "none": np.zeros(shape[:3], bool),
        "big": rng.random(shape[:3]) < 0.9,  # slabs of more than one block of columns
    }[masked]
    got = voxel_rows(data, mask)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, _file_order(data, mask).astype(np.float32))
    np.testing.assert_array_equal(unmask(got, mask), np.where(mask[..., None], data, 0))
    first = unmask(got[:, 0].copy(), mask)
    np.testing.assert_array_equal(first, np.where(mask, data[..., 0], 0))


def _file_order(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of ``data`` inside ``mask``, x fastest, then y, then z."""
    return data.transpose(2, 1, 0, *range(3, data.ndim))[mask.T]


@pytest.mark.parametrize("masked", ["all", "some"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_streamed_4d_map_has_the_bytes_of_the_whole_map(
    tmp_path: Path, masked: str, suffix: str
) -> None:
    """save_volumes(series_volumes(...)) writes what save_map writes of the whole 4-D map
    (header, offsets, scaling, data order and gzip stream), floats clipped to float32's
    range, non-finite values kept."""
    rng = np.random.default_rng(2)
    shape = (6, 5, 4)
    n_vol = VOLUME_BLOCK * 2 + 3  # a block left over
    mask = np.ones(shape, bool) if masked == "all" else rng.random(shape) < 0.5
    values = rng.normal(0, 100, (int(mask.sum()), n_vol))  # float64, clipped and cast
    values[0, 1], values[-1, -1], values[1, 2] = 1e300, np.nan, -np.inf
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.5)
    geometry = Geometry((*shape, n_vol), affine, (2.0, 2.5, 3.0, 1.5), 1, 2)
    whole = np.zeros((*shape, n_vol), np.float32)
    top = np.finfo(np.float32).max
    whole.transpose(2, 1, 0, 3)[mask.T] = np.clip(values, -top, top).astype(np.float32)
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    save_map(a, whole, geometry)
    save_volumes(b, whole.shape, series_volumes(values, mask), geometry)
    assert a.read_bytes() == b.read_bytes()
    back = read_volume(b)
    np.testing.assert_array_equal(back, whole)


def test_stage_writes_4d_float_maps_streamed(tmp_path: Path) -> None:
    stage = Stage(tmp_path / "out", "", "bids", overwrite=False)
    mask = np.zeros((3, 4, 2), bool)
    mask[1:, 1:3] = True
    values = np.arange(mask.sum() * 5, dtype=np.float32).reshape(-1, 5)
    geometry = Geometry((3, 4, 2, 5), np.eye(4), (1.0, 1.0, 1.0, 2.0), 1, 1)
    stage.image("t2star img", values, mask, geometry)
    placed = stage.publish()
    back = read_volume(placed["t2star img"])
    np.testing.assert_array_equal(_file_order(back, mask), values)
    assert not back[~mask].any()
