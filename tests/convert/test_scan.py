"""Reading DICOM headers for series detection (t2starmap.convert.scan), on synthetic files
whose contents are known: every vendor's layout, enhanced frames, files that are not DICOM,
and broken DICOM files."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from t2starmap.convert.scan import (
    CorruptDicomError,
    NotDicomError,
    ScanResult,
    holds_image,
    iter_files,
    read_image_headers,
    scan_dicom_dir,
)
from t2starmap.convert.series import ImageHeader
from t2starmap.sim.phantoms import Phantom
from tests.convert.helpers import SHARED_DICOM, VOXEL
from tests.support import synthetic_dicom
from tests.support.files import missing_data_reason


def ms(phantom: Phantom) -> list[float]:
    return [round(te * 1000, 4) for te in phantom.echo_times]


# --- walking the folder ----------------------------------------------------------------------


def test_iter_files_recursive_and_sorted(tmp_path: Path) -> None:
    for name in ("b/2", "b/10", "a/z/deep", "top", "a/x"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "empty-dir").mkdir()
    found = [str(p.relative_to(tmp_path)) for p in iter_files(tmp_path)]
    assert found == ["top", "a/x", "a/z/deep", "b/10", "b/2"]


# --- classic files of each vendor ------------------------------------------------------------


def test_siemens_classic_magnitude_and_phase(tmp_path: Path, small_phantom: Phantom) -> None:
    """Series 2 magnitude and series 3 phase, one file per slice and echo; what each header
    says is what the writer put there (echo time in ms, as DICOM stores it)."""
    files = synthetic_dicom.write_siemens_classic(tmp_path, small_phantom, voxel=VOXEL)
    (tmp_path / "README.txt").write_text("exported from the scanner\n")
    result = scan_dicom_dir(tmp_path)
    nx, ny, nz, ne = small_phantom.magnitude.shape
    assert len(result.images) == len(files) == 2 * nz * ne
    assert result.corrupt == ()
    assert result.ignored == (tmp_path / "README.txt",)
    assert {h.path for h in result.images} == set(files)

    by_series = {n: [h for h in result.images if h.series_number == n] for n in (2, 3)}
    assert {h.part for h in by_series[2]} == {"mag"}
    assert {h.part for h in by_series[3]} == {"phase"}
    for header in result.images:
        assert header.manufacturer == "SIEMENS"
        assert header.series_description == header.protocol_name == "gre_me_t2star"
        assert header.scanning_sequence == ("GR",)
        assert header.sequence_variant == ("SP", "OSP")
        assert header.sequence_names == ("*fl3d6r",)
        assert (header.rows, header.columns) == (ny, nx)
        assert header.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        assert header.frame is None and header.expected_echoes is None
        assert header.modality == "MR"
    mag = by_series[2]
    assert len({h.series_uid for h in mag}) == 1
    assert sorted({h.echo_time for h in mag}) == ms(small_phantom)
    assert Counter(h.echo_number for h in mag) == {e + 1: nz for e in range(ne)}
    assert sorted({h.position for h in mag}) == [(0.0, 0.0, k * VOXEL) for k in range(nz)]
    # echo number and echo time belong together
    assert {(h.echo_number, h.echo_time) for h in mag} == {
        (e + 1, t) for e, t in enumerate(ms(small_phantom))
    }


def test_ge_parts_and_echo_count_from_private_tags(tmp_path: Path, tiny_phantom: Phantom) -> None:
    files = synthetic_dicom.write_ge_classic(tmp_path, tiny_phantom, voxel=VOXEL)
    result = scan_dicom_dir(tmp_path)
    nz, ne = tiny_phantom.magnitude.shape[2:]
    assert len(result.images) == len(files) == 3 * nz * ne
    assert Counter(h.part for h in result.images) == {
        "mag": nz * ne,
        "real": nz * ne,
        "imag": nz * ne,
    }
    for header in result.images:
        assert header.series_number == 17
        assert header.expected_echoes == ne
        assert header.sequence_names == ("cuhpsd/mfgre_BOLD", "FGRE")
        assert header.scanning_sequence == ("RM",)
    assert sorted({h.echo_time for h in result.images}) == ms(tiny_phantom)


def test_philips_phase_and_derived_maps_in_one_series(
    tmp_path: Path, tiny_phantom: Phantom
) -> None:
    synthetic_dicom.write_philips_classic(tmp_path, tiny_phantom, voxel=VOXEL)
    result = scan_dicom_dir(tmp_path)
    nz, ne = tiny_phantom.magnitude.shape[2:]
    assert len({h.series_uid for h in result.images}) == 1
    derived = [h for h in result.images if h.image_type[0] == "DERIVED"]
    acquired = [h for h in result.images if h.image_type[0] == "ORIGINAL"]
    assert len(derived) == nz and "T2_STAR" in derived[0].image_type
    assert Counter(h.part for h in acquired) == {"mag": nz * ne, "phase": nz * ne}


def test_other_series_read_like_any_image(tmp_path: Path) -> None:
    synthetic_dicom.write_other_series(tmp_path, "epi", series_number=5, shape=(6, 4, 2))
    headers = scan_dicom_dir(tmp_path).images
    assert len(headers) == 2  # one echo, two slices
    assert {h.scanning_sequence for h in headers} == {("EP",)}
    assert {h.sequence_names for h in headers} == {("*epfid2d1_64",)}
    assert {(h.rows, h.columns) for h in headers} == {(4, 6)}


# --- enhanced multi-frame --------------------------------------------------------------------


def test_enhanced_file_gives_one_header_per_frame(tmp_path: Path, tiny_phantom: Phantom) -> None:
    files = synthetic_dicom.write_siemens_enhanced(tmp_path, tiny_phantom, voxel=VOXEL)
    nz, ne = tiny_phantom.magnitude.shape[2:]
    assert len(files) == ne
    first = read_image_headers(files[0])
    assert [h.frame for h in first] == list(range(nz))
    assert {h.path for h in first} == {files[0]}
    assert [h.position for h in first] == [(0.0, 0.0, k * VOXEL) for k in range(nz)]
    assert {h.orientation for h in first} == {(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)}  # shared group
    assert {h.echo_time for h in first} == {ms(tiny_phantom)[0]}
    assert {h.echo_number for h in first} == {None}
    assert {h.part for h in first} == {"mag"}
    assert {h.echo_pulse_sequence for h in first} == {"GRADIENT"}
    assert {h.sequence_names for h in first} == {("*fl3d6r",)}
    result = scan_dicom_dir(tmp_path)
    assert len(result.images) == nz * ne
    assert sorted({h.echo_time for h in result.images}) == ms(tiny_phantom)


def test_enhanced_phase_frames_are_told_apart(tmp_path: Path, tiny_phantom: Phantom) -> None:
    files = synthetic_dicom.write_siemens_enhanced(tmp_path, tiny_phantom, with_phase_frames=True)
    nz = tiny_phantom.magnitude.shape[2]
    headers = read_image_headers(files[0])
    assert [h.part for h in headers] == ["mag"] * nz + ["phase"] * nz
    assert [h.frame for h in headers] == list(range(2 * nz))


# --- not DICOM -------------------------------------------------------------------------------


def save(ds: Dataset, path: Path, *, preamble: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def minimal(sop_class: str, **fields: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    "content",
    [b"", b"not a DICOM file\n", bytes(range(256)) * 8, b"\x00" * 128 + b"DICX" + b"\x00" * 64],
    ids=["empty", "text", "binary", "wrong-magic"],
)
def test_files_that_are_not_dicom(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(NotDicomError):
        read_image_headers(path)
    assert scan_dicom_dir(tmp_path) == ScanResult(images=(), corrupt=(), ignored=(path,))


@pytest.mark.parametrize(
    ("sop_class", "why"),
    [
        ("1.2.840.10008.1.3.10", "DICOMDIR"),
        ("1.2.840.10008.5.1.4.1.1.88.11", "basic text structured report"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "grayscale presentation state"),
        ("1.2.840.10008.5.1.4.1.1.88.59", "key object selection"),
        ("1.2.840.10008.5.1.4.1.1.88.67", "x-ray radiation dose report"),
        ("1.2.840.10008.5.1.4.1.1.104.1", "encapsulated PDF"),
        ("1.2.840.10008.5.1.4.1.1.66", "raw data"),
        ("1.2.840.10008.5.1.4.1.1.481.3", "RT structure set"),
        ("1.3.12.2.1107.5.9.1", "Siemens CSA non-image"),
    ],
)
def test_dicom_without_an_image_is_ignored(tmp_path: Path, sop_class: str, why: str) -> None:
    path = save(minimal(sop_class, SeriesInstanceUID=generate_uid(), Modality="SR"), tmp_path / why)
    with pytest.raises(NotDicomError, match=f"SOP class {sop_class} holds no image"):
        read_image_headers(path)
    assert scan_dicom_dir(tmp_path).ignored == (path,)


def test_mr_spectroscopy_with_rows_and_columns_is_ignored(tmp_path: Path) -> None:
    """MR spectroscopy has Rows and Columns (its voxel grid) but no pixel data: not an image,
    and not a file whose pixel data are missing."""
    sop_class = "1.2.840.10008.5.1.4.1.1.4.2"
    ds = minimal(sop_class, SeriesInstanceUID=generate_uid(), Modality="MR", Rows=4, Columns=4)
    path = save(ds, tmp_path / "spectroscopy.dcm")
    assert scan_dicom_dir(tmp_path) == ScanResult(images=(), corrupt=(), ignored=(path,))


@pytest.mark.parametrize(
    ("sop_class", "image"),
    [
        ("1.2.840.10008.5.1.4.1.1.4", True),  # MR image
        ("1.2.840.10008.5.1.4.1.1.4.1", True),  # enhanced MR image
        ("1.2.840.10008.5.1.4.1.1.4.3", True),  # enhanced MR color image
        ("1.2.840.10008.5.1.4.1.1.7", True),  # secondary capture
        ("1.2.840.10008.5.1.4.1.1.7.3", True),  # multi-frame grayscale word secondary capture
        ("1.2.840.10008.5.1.4.1.1.2", True),  # CT image
        ("1.2.840.10008.5.1.4.1.1.66.4", True),  # segmentation (pixels), beside raw data 66
        ("1.2.840.10008.5.1.4.1.1.481.1", True),  # RT image, beside RT plans
        ("1.2.840.10008.5.1.4.1.1.481.23", True),  # enhanced RT image
        ("1.2.840.10008.5.1.4.1.1.4.2", False),  # MR spectroscopy
        ("1.2.840.10008.5.1.4.1.1.66", False),  # raw data
        ("1.2.840.10008.5.1.4.1.1.66.1", False),  # spatial registration
        ("1.2.840.10008.5.1.4.1.1.88.22", False),  # enhanced SR
        ("1.2.840.10008.5.1.4.1.1.88.34", False),  # comprehensive 3D SR
        ("1.2.840.10008.5.1.4.1.1.11.2", False),  # color presentation state
        ("1.2.840.10008.5.1.4.1.1.9.1.1", False),  # 12-lead ECG waveform
        ("1.2.840.10008.5.1.4.1.1.104.2", False),  # encapsulated CDA
        ("1.2.840.10008.5.1.4.1.1.481.5", False),  # RT plan
        ("1.2.840.10008.5.1.4.1.1.481.25", False),  # RT patient position acquisition
        ("1.2.840.10008.1.3.10", False),  # DICOMDIR
        ("1.3.12.2.1107.5.9.1", False),  # Siemens CSA non-image (private)
    ],
)
def test_holds_image(sop_class: str, image: bool) -> None:
    assert holds_image(sop_class) is image


def test_secondary_capture_is_read_as_an_image(tmp_path: Path) -> None:
    """Image storage classes other than MR are images too (series detection decides later)."""
    files = synthetic_dicom.write_other_series(tmp_path, "epi", series_number=5, shape=(6, 4, 2))
    path = files[0]
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.save_as(path, enforce_file_format=True)
    (header,) = read_image_headers(path)
    assert (header.rows, header.columns) == (4, 6)
    assert scan_dicom_dir(tmp_path).corrupt == ()


# --- broken DICOM ----------------------------------------------------------------------------


@pytest.fixture
def one_image(tmp_path: Path, tiny_phantom: Phantom) -> Path:
    """One classic Siemens magnitude file (8 x 8 uint16: 128 bytes of pixel data)."""
    files = synthetic_dicom.write_siemens_classic(
        tmp_path / "dicom", tiny_phantom, with_phase=False
    )
    return files[0]


def test_truncated_pixel_data_is_corrupt(one_image: Path) -> None:
    one_image.write_bytes(one_image.read_bytes()[:-100])
    with pytest.raises(CorruptDicomError, match=r"^pixel data truncated \(\d+ of 128 bytes\)$"):
        read_image_headers(one_image)
    result = scan_dicom_dir(one_image.parent)
    assert [p for p, _ in result.corrupt] == [one_image]
    assert result.corrupt[0][1].startswith("pixel data truncated")
    assert len(result.images) == 8 and one_image not in {h.path for h in result.images}


def test_one_missing_pixel_is_corrupt(one_image: Path) -> None:
    """The last pixel (2 bytes) missing. The element header of explicit-VR OW pixel data is
    12 bytes (tag, VR, 2 reserved, 4-byte length), not 8: 126 of 128 bytes are there."""
    one_image.write_bytes(one_image.read_bytes()[:-2])
    with pytest.raises(CorruptDicomError, match=r"^pixel data truncated \(126 of 128 bytes\)$"):
        read_image_headers(one_image)


def as_implicit_vr(path: Path) -> Path:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("encoding", ["explicit", "implicit"])
@pytest.mark.parametrize("missing", [0, 1, 2, 4, 8, 12])
def test_pixel_data_size_checked_to_the_byte(one_image: Path, encoding: str, missing: int) -> None:
    """Pixel Data's element header is 12 bytes in explicit VR (OW), 8 in implicit VR: a whole
    file passes and every missing byte is counted, in either encoding."""
    if encoding == "implicit":
        as_implicit_vr(one_image)
    assert pydicom.dcmread(one_image).original_encoding[0] is (encoding == "implicit")
    whole = one_image.read_bytes()
    one_image.write_bytes(whole[: len(whole) - missing])
    if missing == 0:
        assert len(read_image_headers(one_image)) == 1
        return
    with pytest.raises(CorruptDicomError, match=rf"^pixel data truncated \({128 - missing} of 128"):
        read_image_headers(one_image)


def bit_packed_image(path: Path, pixels: bytes) -> Path:
    """A 1-bit 8 x 8 image (a segmentation-like mask): 64 bits packed into 8 bytes."""
    ds = minimal(
        "1.2.840.10008.5.1.4.1.1.66.4",
        SeriesInstanceUID=generate_uid(),
        Modality="SEG",
        Rows=8,
        Columns=8,
        SamplesPerPixel=1,
        BitsAllocated=1,
        BitsStored=1,
        HighBit=0,
        PixelRepresentation=0,
        PhotometricInterpretation="MONOCHROME2",
    )
    ds.PixelData = pixels
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def test_bit_packed_pixel_data_are_checked(tmp_path: Path) -> None:
    whole = bit_packed_image(tmp_path / "mask.dcm", b"\x0f" * 8)
    assert len(read_image_headers(whole)) == 1
    cut = bit_packed_image(tmp_path / "cut.dcm", b"\x0f" * 8)
    cut.write_bytes(cut.read_bytes()[:-2])
    with pytest.raises(CorruptDicomError, match=r"^pixel data truncated \(6 of 8 bytes\)$"):
        read_image_headers(cut)


def test_deflated_file_is_not_reported_truncated(one_image: Path) -> None:
    """Deflated: the whole dataset is compressed, so offsets in the file say nothing about
    the pixel data; a whole deflated file must read, not be called truncated."""
    ds = pydicom.dcmread(one_image)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(one_image, enforce_file_format=True)
    assert pydicom.dcmread(one_image).file_meta.TransferSyntaxUID.is_deflated
    (header,) = read_image_headers(one_image)
    assert header.series_number == 2


def test_file_cut_before_the_pixel_data_is_corrupt(one_image: Path) -> None:
    """Cut right before the PixelData element: the header reads, no pixels follow."""
    whole = one_image.read_bytes()
    cut = whole.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) little endian
    one_image.write_bytes(whole[:cut])
    with pytest.raises(CorruptDicomError, match="no pixel data"):
        read_image_headers(one_image)


def test_file_cut_inside_the_header_is_corrupt(one_image: Path) -> None:
    one_image.write_bytes(one_image.read_bytes()[:300])
    with pytest.raises(CorruptDicomError):
        read_image_headers(one_image)


def test_dicom_preamble_without_series_is_corrupt(tmp_path: Path) -> None:
    """It says DICM but lacks what every image has: a broken file, reported."""
    path = save(minimal(synthetic_dicom.MR_IMAGE_STORAGE, Modality="MR"), tmp_path / "x.dcm")
    with pytest.raises(CorruptDicomError, match="no SeriesInstanceUID or Rows"):
        read_image_headers(path)
    assert scan_dicom_dir(tmp_path).corrupt == (
        (path, "no SeriesInstanceUID or Rows in the header"),
    )


def test_header_missing_columns_is_corrupt_not_a_crash(one_image: Path) -> None:
    """Rows without Columns: the file is reported as corrupt, the scan goes on."""
    ds = pydicom.dcmread(one_image)
    del ds.Columns
    ds.save_as(one_image, enforce_file_format=True)
    with pytest.raises(CorruptDicomError):
        read_image_headers(one_image)
    result = scan_dicom_dir(one_image.parent)
    assert result.corrupt == ((one_image, "Rows but no Columns in the header"),)
    assert len(result.images) == 8 and one_image not in {h.path for h in result.images}


@pytest.mark.parametrize("keyword", ["Rows", "Columns", "BitsAllocated"])
def test_empty_size_field_is_corrupt_not_a_crash(one_image: Path, keyword: str) -> None:
    """A size field present but empty cannot give the pixel data's size: corrupt, one line."""
    ds = pydicom.dcmread(one_image)
    ds[keyword].value = None
    ds.save_as(one_image, enforce_file_format=True)
    result = scan_dicom_dir(one_image.parent)
    assert [p for p, _ in result.corrupt] == [one_image]
    (why,) = (w for _, w in result.corrupt)
    assert why.startswith("inconsistent header") and "\n" not in why
    assert len(result.images) == 8


def test_headers_are_image_headers(one_image: Path) -> None:
    (header,) = read_image_headers(one_image)
    assert isinstance(header, ImageHeader)
    assert header.path == one_image and header.series_number == 2 and header.echo_number == 1


# --- real scanner files ----------------------------------------------------------------------

REAL_FOLDERS = [
    "ge-mr750-kidney-megre",  # implicit VR little endian
    "siemens-prisma-megre-phantom/mag",  # explicit VR little endian
    "siemens-xa30-enhanced-dual-echo/8_gre_field_mapping",  # explicit VR, 33 frames
]


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason=missing_data_reason(SHARED_DICOM))
@pytest.mark.parametrize("folder", REAL_FOLDERS)
def test_real_file_size_check_to_the_byte(tmp_path: Path, folder: str) -> None:
    """A real scanner file passes whole and is caught two bytes short, with the available
    count exact: the element header length is right for the file's encoding."""
    source = next(p for p in iter_files(SHARED_DICOM / folder) if p.suffix == ".dcm")
    whole = source.read_bytes()
    copy = tmp_path / source.name
    copy.write_bytes(whole)
    assert len(read_image_headers(copy)) >= 1
    copy.write_bytes(whole[:-2])
    with pytest.raises(CorruptDicomError, match=r"^pixel data truncated") as caught:
        read_image_headers(copy)
    counts = re.fullmatch(r"pixel data truncated \((\d+) of (\d+) bytes\)", str(caught.value))
    assert counts is not None
    available, expected = int(counts[1]), int(counts[2])
    assert available == expected - 2


def test_mosaic_slices_from_the_siemens_tag_or_the_csa_header(tmp_path: Path) -> None:
    from t2starmap.convert.scan import csa_item
    from t2starmap.sim.phantoms import make_phantom
    from tests.support import synthetic_epi

    phantom = make_phantom((6, 4, 5), (0.01, 0.03), seed=1)
    files = synthetic_epi.write_siemens_mosaic(tmp_path, phantom, n_volumes=1)
    assert {h.mosaic_slices for h in scan_dicom_dir(tmp_path).images} == {5}
    ds = pydicom.dcmread(files[0])
    csa = ds[0x0029, 0x1010].value
    assert csa_item(csa, "NumberOfImagesInMosaic") == "5"
    assert csa_item(csa, "SliceNormalVector") == "0.0"
    assert csa_item(csa, "Missing") is None and csa_item(b"garbage", "x") is None
    del ds[0x0019, 0x100A]  # without Siemens' own tag the CSA header still says it
    ds.save_as(files[0], enforce_file_format=True)
    (header,) = read_image_headers(files[0])
    assert header.mosaic_slices == 5
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]  # not a mosaic: no count
    ds.save_as(files[0], enforce_file_format=True)
    assert read_image_headers(files[0])[0].mosaic_slices is None


def test_enhanced_echo_planar_flag_reads_as_epi(tmp_path: Path) -> None:
    from t2starmap.sim.phantoms import make_phantom
    from tests.support import synthetic_epi

    phantom = make_phantom((6, 4, 3), (0.01, 0.03), seed=1)
    files = synthetic_epi.write_enhanced_epi(tmp_path, phantom, n_volumes=2)
    ds = pydicom.dcmread(files[0])
    del ds.PulseSequenceName  # only EchoPlanarPulseSequence YES says EPI now
    ds.save_as(files[0], enforce_file_format=True)
    headers = read_image_headers(files[0])
    assert len(headers) == 6 and {h.scanning_sequence for h in headers} == {("EP",)}
