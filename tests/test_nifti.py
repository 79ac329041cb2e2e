"""Reading echo sets and writing maps (t2starmap.bids.nifti): geometry checks, errors that name the
file, echo order and dtype, header round trip, atomic writes."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.bids import gzipped, nifti, nifti_write
from t2starmap.bids.layout import Echo, EchoSet, build_echo_set
from t2starmap.bids.nifti import Geometry, check_geometry, load_magnitude, read_map
from t2starmap.bids.nifti_write import save_map
from t2starmap.errors import BadDataError

ZOOMS = (2.0, 2.5, 3.0)
AFFINE = np.array(
    [
        [-2.0, 0.0, 0.0, 30.0],
        [0.0, 2.5, 0.0, -40.0],
        [0.0, 0.0, 3.0, 12.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def write_image(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray = AFFINE,
    *,
    qform_code: int = 1,
    sform_code: int = 1,
    slope: float | None = None,
) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return path


def echo_set(tmp_path: Path, volumes: Sequence[np.ndarray], echo_times: Sequence[float]) -> EchoSet:
    """One file per volume (echo index = position + 1), gathered into a set sorted by TE."""
    echoes = [
        Echo(write_image(tmp_path / f"sub-01_echo-{k + 1}_MEGRE.nii.gz", v), te, {})
        for k, (v, te) in enumerate(zip(volumes, echo_times, strict=True))
    ]
    return build_echo_set({"subject": "01"}, echoes)


def constant_volumes(shape: tuple[int, ...], values: Sequence[float]) -> list[np.ndarray]:
    return [np.full(shape, v, dtype=np.float32) for v in values]


# --- check_geometry --------------------------------------------------------------------------


def test_geometry_of_a_consistent_set(tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        data = np.zeros((5, 4, 3), np.int16)
        paths.append(write_image(tmp_path / f"e{k}.nii.gz", data, qform_code=1, sform_code=2))
    echoes = [Echo(p, 0.005 * (k + 1), {}) for k, p in enumerate(paths)]
    geometry = check_geometry(build_echo_set({"subject": "01"}, echoes).paths)
    assert geometry.shape == (5, 4, 3)
    np.testing.assert_allclose(geometry.affine, AFFINE)
    assert geometry.affine.dtype == np.float64
    assert geometry.zooms == pytest.approx(ZOOMS)
    assert (geometry.qform_code, geometry.sform_code) == (1, 2)


def test_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    first = write_image(tmp_path / "sub-01_echo-1_MEGRE.nii.gz", np.zeros((5, 4, 3), np.float32))
    second = write_image(tmp_path / "sub-01_echo-2_MEGRE.nii.gz", np.zeros((5, 4, 2), np.float32))
    echoes = build_echo_set({"subject": "01"}, [Echo(first, 0.004, {}), Echo(second, 0.008, {})])
    with pytest.raises(BadDataError, match="shape") as caught:
        check_geometry(echoes.paths)
    message = str(caught.value)
    assert message.startswith(str(second)), message
    assert "(5, 4, 2)" in message and "(5, 4, 3)" in message and "\n" not in message


def test_affine_mismatch_names_the_file(tmp_path: Path) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    first = write_image(tmp_path / "sub-01_echo-1_MEGRE.nii.gz", np.zeros((5, 4, 3), np.float32))
    second = write_image(
        tmp_path / "sub-01_echo-2_MEGRE.nii.gz", np.zeros((5, 4, 3), np.float32), shifted
    )
    echoes = build_echo_set({"subject": "01"}, [Echo(first, 0.004, {}), Echo(second, 0.008, {})])
    with pytest.raises(BadDataError, match="affine differs") as caught:
        check_geometry(echoes.paths)
    assert str(caught.value).startswith(str(second))


def test_affine_rounding_below_tolerance_is_accepted(tmp_path: Path) -> None:
    nudged = AFFINE.copy()
    nudged[1, 3] += 2e-5  # what float32 header storage and scanner rounding do
    first = write_image(tmp_path / "a.nii.gz", np.zeros((5, 4, 3), np.float32))
    second = write_image(tmp_path / "b.nii.gz", np.zeros((5, 4, 3), np.float32), nudged)
    echoes = build_echo_set({"subject": "01"}, [Echo(first, 0.004, {}), Echo(second, 0.008, {})])
    assert check_geometry(echoes.paths).shape == (5, 4, 3)


def test_4d_with_one_volume_is_one_echo(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volumes = [rng.uniform(0, 100, (5, 4, 3, 1)).astype(np.float32) for _ in range(2)]
    echoes = echo_set(tmp_path, volumes, (0.004, 0.008))
    geometry = check_geometry(echoes.paths)
    assert geometry.shape == (5, 4, 3)
    assert geometry.zooms == pytest.approx(ZOOMS)
    stacked = load_magnitude(echoes.paths, geometry)
    assert stacked.shape == (5, 4, 3, 2)
    np.testing.assert_array_equal(stacked[..., 1], volumes[1][..., 0])


@pytest.mark.parametrize("shape", [(5, 4, 3, 2), (5,), (5, 4, 3, 1, 2)])
def test_not_one_volume_per_echo_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    volumes = [np.zeros(shape, np.float32)] * 2
    with pytest.raises(BadDataError, match="one 3-D volume per echo") as caught:
        check_geometry(echo_set(tmp_path, volumes, (0.004, 0.008)).paths)
    assert str(caught.value).startswith(str(tmp_path / "sub-01_echo-1_MEGRE.nii.gz"))


def test_2d_images_load_and_save(tmp_path: Path) -> None:
    volumes = constant_volumes((6, 5), (300.0, 200.0, 100.0))
    echoes = echo_set(tmp_path, volumes, (0.004, 0.008, 0.012))
    geometry = check_geometry(echoes.paths)
    assert geometry.shape == (6, 5)
    assert geometry.zooms == pytest.approx(ZOOMS[:2])
    stacked = load_magnitude(echoes.paths, geometry)
    assert stacked.shape == (6, 5, 3)
    assert stacked[0, 0].tolist() == [300.0, 200.0, 100.0]
    out = save_map(tmp_path / "out" / "map.nii.gz", stacked[..., 0] / 1000.0, geometry)
    assert nib.Nifti1Image.from_filename(out).shape == (6, 5)
    np.testing.assert_allclose(read_map(out), 0.3, rtol=1e-6)


# --- unreadable files ------------------------------------------------------------------------


def test_not_a_nifti_names_the_file(tmp_path: Path) -> None:
    good = write_image(tmp_path / "sub-01_echo-1_MEGRE.nii.gz", np.zeros((4, 4, 2), np.float32))
    bad = tmp_path / "sub-01_echo-2_MEGRE.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti file"))
    echoes = build_echo_set({"subject": "01"}, [Echo(good, 0.004, {}), Echo(bad, 0.008, {})])
    with pytest.raises(BadDataError, match="not a readable NIfTI image") as caught:
        check_geometry(echoes.paths)
    assert str(caught.value).startswith(str(bad))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_image_data_names_the_file(tmp_path: Path, suffix: str) -> None:
    """The header is whole (check_geometry passes) but the data stop short: reading the
    echoes raises BadDataError naming that file, not a gzip or numpy error."""
    rng = np.random.default_rng(1)
    paths = []
    for k in range(2):
        data = rng.uniform(0, 1000, (16, 16, 8)).astype(np.float32)
        paths.append(write_image(tmp_path / f"sub-01_echo-{k + 1}_MEGRE{suffix}", data))
    whole = paths[1].read_bytes()
    paths[1].write_bytes(whole[: len(whole) // 2])
    echoes = build_echo_set(
        {"subject": "01"}, [Echo(p, 0.004 * (k + 1), {}) for k, p in enumerate(paths)]
    )
    geometry = check_geometry(echoes.paths)
    with pytest.raises(BadDataError) as caught:
        load_magnitude(echoes.paths, geometry)
    message = str(caught.value)
    assert message.startswith(str(paths[1])), message
    assert "\n" not in message


# --- load_magnitude --------------------------------------------------------------------------


def test_echoes_stacked_in_echo_time_order(tmp_path: Path) -> None:
    """Files written in the order TE 12, 4, 8 ms: the last axis follows TE, not the files."""
    volumes = constant_volumes((3, 3, 2), (100.0, 300.0, 200.0))
    echoes = echo_set(tmp_path, volumes, (0.012, 0.004, 0.008))
    assert echoes.echo_times == (0.004, 0.008, 0.012)
    stacked = load_magnitude(echoes.paths, check_geometry(echoes.paths))
    assert stacked.dtype == np.float32
    assert stacked.shape == (3, 3, 2, 3)
    assert stacked[1, 2, 1].tolist() == [300.0, 200.0, 100.0]


def test_integer_data_are_scaled_to_float32(tmp_path: Path) -> None:
    """Stored int16 with a scale slope (as dcm2niix may write): float32 in signal units."""
    raw = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    paths = [
        write_image(tmp_path / "a.nii.gz", raw, slope=0.5),
        write_image(tmp_path / "b.nii.gz", raw * 2, slope=0.5),
    ]
    assert nib.Nifti1Image.from_filename(paths[0]).get_data_dtype() == np.int16
    echoes = build_echo_set(
        {"subject": "01"}, [Echo(paths[0], 0.003, {}), Echo(paths[1], 0.006, {})]
    )
    stacked = load_magnitude(echoes.paths, check_geometry(echoes.paths))
    assert stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[..., 0], raw * 0.5)
    np.testing.assert_array_equal(stacked[..., 1], raw * 1.0)


# --- save_map --------------------------------------------------------------------------------


def geometry_of(qform_code: int = 1, sform_code: int = 2) -> Geometry:
    return Geometry(
        shape=(5, 4, 3), affine=AFFINE, zooms=ZOOMS, qform_code=qform_code, sform_code=sform_code
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [(np.float64, np.float32), (np.float32, np.float32), (np.int64, np.float32), (bool, np.uint8)],
)
def test_saved_dtype(tmp_path: Path, given: type, stored: type) -> None:
    data = (np.arange(60).reshape(5, 4, 3) % 2).astype(given)
    out = save_map(tmp_path / "map.nii.gz", data, geometry_of())
    img = nib.Nifti1Image.from_filename(out)
    assert img.get_data_dtype() == np.dtype(stored)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data.astype(stored))


def test_saved_header_round_trip(tmp_path: Path) -> None:
    """Affine, zooms, qform and sform (matrix and code) and units come back as given."""
    values = np.random.default_rng(2).uniform(0.001, 0.2, (5, 4, 3))
    out = save_map(tmp_path / "sub-01_T2starmap.nii.gz", values, geometry_of(1, 2))
    img = nib.Nifti1Image.from_filename(out)
    header = img.header
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    assert header.get_zooms() == pytest.approx(ZOOMS)
    qform, qcode = img.get_qform(coded=True)
    sform, scode = img.get_sform(coded=True)
    assert (int(qcode), int(scode)) == (1, 2)
    np.testing.assert_allclose(qform, AFFINE, atol=1e-5)
    np.testing.assert_allclose(sform, AFFINE, atol=1e-6)
    assert header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(read_map(out), values.astype(np.float32))
    assert read_map(out).dtype == np.float64


def test_zero_form_codes_are_written_as_scanner(tmp_path: Path) -> None:
    """An input with no qform/sform code still gets a usable orientation (code 1)."""
    out = save_map(tmp_path / "map.nii.gz", np.zeros((5, 4, 3)), geometry_of(0, 0))
    img = nib.Nifti1Image.from_filename(out)
    assert (int(img.get_qform(coded=True)[1]), int(img.get_sform(coded=True)[1])) == (1, 1)


def test_geometry_of_a_set_round_trips_through_save(tmp_path: Path) -> None:
    echoes = echo_set(tmp_path, constant_volumes((5, 4, 3), (10.0, 5.0)), (0.004, 0.008))
    geometry = check_geometry(echoes.paths)
    out = save_map(tmp_path / "out" / "map.nii.gz", np.ones(geometry.shape), geometry)
    again = check_geometry([out, echoes.echoes[1].path])
    assert again.shape == geometry.shape and again.zooms == pytest.approx(geometry.zooms)
    np.testing.assert_allclose(again.affine, geometry.affine, atol=1e-5)


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "anat" / "sub-01_T2starmap.nii.gz"
    save_map(target, np.ones((5, 4, 3)), geometry_of())
    save_map(target, np.full((5, 4, 3), 2.0), geometry_of())  # replacing an existing map
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    np.testing.assert_array_equal(read_map(target), 2.0)


def test_failed_save_leaves_the_old_map_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub-01_T2starmap.nii.gz"
    save_map(target, np.ones((5, 4, 3)), geometry_of())
    before = target.read_bytes()

    def broken_write(path: Path, image: object, compress: bool) -> None:
        path.write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(nifti_write, "_write_file", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_map(target, np.zeros((5, 4, 3)), geometry_of())
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


# --- gzip through isal or zlib, echoes read in threads ---------------------------------------


@pytest.mark.parametrize("library", ["isal", "zlib"])
def test_written_maps_are_plain_gzip_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str
) -> None:
    """With isal or without it (zlib), a written map is a gzip file that Python's own gzip
    and nibabel read back to the same values and header."""
    if library == "zlib":
        monkeypatch.setattr(gzipped, "gzip_lib", None)
    elif gzipped.gzip_lib is None:
        pytest.skip("isal is not installed here")
    values = np.random.default_rng(5).uniform(0.001, 0.2, (5, 4, 3))
    out = save_map(tmp_path / "map.nii.gz", values, geometry_of(1, 2))
    reference = tmp_path / "ref.nii.gz"
    image = nib.Nifti1Image(values.astype(np.float32), AFFINE)
    image.set_qform(AFFINE, code=1)
    image.set_sform(AFFINE, code=2)
    image.header.set_zooms(ZOOMS)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(reference))
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(reference.read_bytes())
    np.testing.assert_array_equal(read_map(out), values.astype(np.float32))


def test_threaded_reads_equal_serial_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    paths = [
        write_image(tmp_path / f"e{k}.nii.gz", rng.integers(0, 3000, (6, 5, 4)).astype(np.int16))
        for k in range(5)
    ]
    serial = nifti.read_volumes(paths, workers=1)
    threaded = nifti.read_volumes(paths, workers=3)
    for a, b, path in zip(serial, threaded, paths, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, np.asarray(nib.load(str(path)).dataobj))


def test_uncompressed_nifti_is_read(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = write_image(tmp_path / "echo.nii", data)
    np.testing.assert_array_equal(nifti.read_volume(path), data)


def test_cut_short_gzip_names_the_file(tmp_path: Path) -> None:
    path = write_image(tmp_path / "echo.nii.gz", np.ones((8, 8, 8), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(BadDataError, match=r"echo\.nii\.gz: image data could not be read"):
        nifti.read_volume(path)


# --- read_magnitude: the input checks made as the echoes are read ------------------------------


def test_every_kind_of_unusable_sample_is_flagged_per_voxel(tmp_path: Path) -> None:
    """NaN, +inf, -inf and negative samples in any echo flag their voxel, and only theirs;
    the stack holds the values as read."""
    volumes = [np.full((4, 3, 2), 100.0, np.float32) for _ in range(3)]
    volumes[1][0, 0, 0] = np.nan
    volumes[0][1, 2, 1] = np.inf
    volumes[2][2, 1, 0] = -np.inf
    volumes[2][3, 0, 1] = -0.5
    echoes = echo_set(tmp_path, volumes, (0.004, 0.008, 0.012))
    read = nifti.read_magnitude(echoes.paths, check_geometry(echoes.paths))
    assert read.unusable is not None and read.positive
    assert sorted(zip(*np.nonzero(read.unusable), strict=True)) == [
        (0, 0, 0),
        (1, 2, 1),
        (2, 1, 0),
        (3, 0, 1),
    ]
    np.testing.assert_array_equal(read.data, np.stack(volumes, axis=-1))


def test_clean_echoes_flag_nothing(tmp_path: Path) -> None:
    volumes = [np.full((4, 3, 2), v, np.float32) for v in (0.0, 7.0)]
    echoes = echo_set(tmp_path, volumes, (0.004, 0.008))
    read = nifti.read_magnitude(echoes.paths, check_geometry(echoes.paths))
    assert read.unusable is None and read.positive


def test_negative_integers_are_flagged(tmp_path: Path) -> None:
    volumes = [np.full((4, 3, 2), 50, np.int16) for _ in range(2)]
    volumes[1][1, 1, 1] = -3
    echoes = echo_set(tmp_path, volumes, (0.004, 0.008))
    for integers in (False, True):
        read = nifti.read_magnitude(echoes.paths, check_geometry(echoes.paths), integers=integers)
        assert read.unusable is not None
        assert list(zip(*np.nonzero(read.unusable), strict=True)) == [(1, 1, 1)]
        assert read.data[1, 1, 1, 1] == -3


@pytest.mark.parametrize(
    ("bright", "positive"),
    [("usable voxel", True), ("flagged voxel", False), ("nowhere", False)],
)
def test_positive_counts_usable_voxels_only(tmp_path: Path, bright: str, positive: bool) -> None:
    """``positive`` says whether a voxel WITHOUT an unusable sample has a positive sample: a
    bright voxel that is also flagged does not count."""
    volumes = [np.zeros((4, 3, 2), np.float32) for _ in range(2)]
    volumes[0][0, 0, 0] = np.nan
    if bright == "usable voxel":
        volumes[1][2, 2, 1] = 10.0
    elif bright == "flagged voxel":
        volumes[1][0, 0, 0] = 10.0
    echoes = echo_set(tmp_path, volumes, (0.004, 0.008))
    assert nifti.read_magnitude(echoes.paths, check_geometry(echoes.paths)).positive is positive


@pytest.mark.parametrize(
    ("stored", "slope", "stack"),
    [
        (np.int16, None, np.int16),
        (np.uint8, None, np.uint8),
        (np.int16, 0.5, np.float32),  # scaled: float32 in signal units
        (np.uint16, None, np.float32),  # torch cannot gather uint16
        (np.float64, None, np.float32),
    ],
)
def test_integer_stacks_keep_the_stored_type_with_the_same_values(
    tmp_path: Path, stored: type, slope: float | None, stack: type
) -> None:
    rng = np.random.default_rng(4)
    paths = [
        write_image(
            tmp_path / f"e{k}.nii.gz", rng.integers(0, 200, (6, 5, 4)).astype(stored), slope=slope
        )
        for k in range(3)
    ]
    echoes = build_echo_set(
        {"subject": "01"}, [Echo(p, 0.004 * (k + 1), {}) for k, p in enumerate(paths)]
    )
    geometry = check_geometry(echoes.paths)
    kept = nifti.read_magnitude(echoes.paths, geometry, integers=True)
    assert kept.data.dtype == stack
    floats = load_magnitude(echoes.paths, geometry)
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(kept.data.astype(np.float32), floats)
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(floats[..., k], np.asarray(nib.load(str(path)).dataobj))


def test_echoes_of_different_stored_types_stack_as_float32(tmp_path: Path) -> None:
    paths = [
        write_image(tmp_path / "a.nii.gz", np.full((3, 3, 2), 5, np.int16)),
        write_image(tmp_path / "b.nii.gz", np.full((3, 3, 2), 4, np.uint8)),
    ]
    echoes = build_echo_set(
        {"subject": "01"}, [Echo(paths[0], 0.003, {}), Echo(paths[1], 0.006, {})]
    )
    read = nifti.read_magnitude(echoes.paths, check_geometry(echoes.paths), integers=True)
    assert read.data.dtype == np.float32
    assert read.data[0, 0, 0].tolist() == [5.0, 4.0]


def test_reading_in_threads_stacks_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    volumes = [rng.uniform(0, 1000, (7, 6, 5)).astype(np.float32) for _ in range(5)]
    echoes = echo_set(tmp_path, volumes, (0.002, 0.004, 0.006, 0.008, 0.010))
    geometry = check_geometry(echoes.paths)
    serial = nifti.read_magnitude(echoes.paths, geometry, workers=1).data
    threaded = nifti.read_magnitude(echoes.paths, geometry, workers=3).data
    np.testing.assert_array_equal(serial, threaded)
    np.testing.assert_array_equal(serial, np.stack(volumes, axis=-1))


def test_a_written_map_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    """The gzip header carries no file name and no time: one map, one file content."""
    values = np.random.default_rng(2).uniform(0.0, 1.0, (6, 5, 4))
    first = save_map(tmp_path / "a" / "map.nii.gz", values, geometry_of())
    second = save_map(tmp_path / "b" / "map.nii.gz", values, geometry_of())
    data = first.read_bytes()
    assert data == second.read_bytes()
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # MTIME 0
    assert not data[3] & 0x08  # no FNAME field
    np.testing.assert_array_equal(read_map(first), values.astype(np.float32))


def test_concatenate_volumes_keeps_stored_values_or_scales(tmp_path: Path) -> None:
    """The converter's enhanced EPI volumes, one file each, joined along a 4th axis."""
    import nibabel as nib

    from t2starmap.bids.nifti_write import concatenate_volumes

    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    volumes = [rng.integers(0, 4000, size=(4, 3, 2)).astype(np.int16) for _ in range(3)]
    paths = []
    for i, data in enumerate(volumes):
        paths.append(tmp_path / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), paths[-1])
    out = concatenate_volumes(paths, tmp_path / "run.nii.gz")
    joined = nib.load(out)
    assert joined.shape == (4, 3, 2, 3) and joined.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(joined.dataobj), np.stack(volumes, axis=3))
    assert np.allclose(joined.affine, affine)
    scaled = nib.Nifti1Image(volumes[1] * 0.5 + 0.25, affine)  # float data stored as int16
    scaled.set_data_dtype(np.int16)
    nib.save(scaled, paths[1])
    assert nib.load(paths[1]).header.get_slope_inter() != (1.0, 0.0)
    mixed = nib.load(concatenate_volumes(paths, tmp_path / "mixed.nii.gz"))
    assert mixed.get_data_dtype() == np.float32
    assert np.allclose(np.asarray(mixed.dataobj)[..., 1], volumes[1] * 0.5 + 0.25, atol=0.05)
    assert np.array_equal(np.asarray(mixed.dataobj)[..., 0], volumes[0])
    nib.save(nib.Nifti1Image(volumes[2], np.diag([2.0, 2.0, 4.0, 1.0])), paths[2])
    with pytest.raises(BadDataError, match=r"v2\.nii\.gz: its grid differs"):
        concatenate_volumes(paths, tmp_path / "bad.nii.gz")


def test_nibabel_is_imported_without_pydicom_which_stays_importable(tmp_path: Path) -> None:
    """pydicom (with scipy and Pillow: half of nibabel's import time) is hidden from nibabel,
    which then keeps DICOM header extensions as bytes (an image with one still reads);
    pydicom itself still imports afterwards."""
    import os
    import subprocess
    import sys

    from tests.support.files import REPO

    image = nib.Nifti1Image(np.full((2, 2, 2), 3, np.float32), np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(2, b"\x08\x00\x05\x00CS\x00\x00"))
    nib.save(image, str(tmp_path / "ext.nii.gz"))
    code = (
        "import sys\nfrom pathlib import Path\nfrom t2starmap.bids import nifti\n"
        "import nibabel.nifti1 as n1\n"
        "print('pydicom' in sys.modules, n1.have_dicom)\n"
        f"print(nifti.read_volume(Path({str(tmp_path / 'ext.nii.gz')!r})).sum())\n"
        "import pydicom\n"
        "print(pydicom.Dataset.__name__)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", "False", "24.0", "Dataset"]
