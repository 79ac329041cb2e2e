"""Synthetic multi-echo GRE DICOM series with known T2*, written with pydicom.

They imitate what the scanners write, closely enough for dcm2niix and for the series
detection to treat them like the real thing:

- :func:`write_siemens_classic`: magnitude series N and phase series N+1 (12-bit phase,
  RescaleSlope 2, RescaleIntercept -4096), one file per slice and echo;
- :func:`write_ge_classic`: magnitude, real and imaginary images in ONE series, told apart
  by GE's private tag (0043,102F);
- :func:`write_philips_classic`: magnitude and phase in one series with a different
  RescaleSlope in every file, plus scanner-made T2* map images inside the same series;
- :func:`write_siemens_enhanced`: an enhanced multi-frame (XA-like) series, one file per echo;
- :func:`write_other_series`: series that are not ME-GRE (EPI, spin echo, single echo,
  derived map) for the detection tests.

Geometry: phantom index (i, j, k) sits at LPS position (i*dx, j*dx, k*dx) mm, so a converted
NIfTI voxel maps back to the phantom through its affine (see :func:`phantom_index`).
Patient fields carry made-up identifying text so tests can check it never reaches BIDS.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from t2starmap.sim.phantoms import Phantom

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"

FAKE_PATIENT = {
    "PatientName": "Doe^Jane^Secret",
    "PatientID": "SECRET-ID-4711",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "PatientAge": "055Y",
    "PatientAddress": "1 Secret Street, Hidden Town",
    "InstitutionName": "Secret Hospital",
    "InstitutionAddress": "2 Private Road, Hidden Town",
    "ReferringPhysicianName": "Who^Doctor",
    "OperatorsName": "Op^Erator",
    "StationName": "SECRETSTATION",
    "AccessionNumber": "ACC12345",
}
"""Identifying values written into every synthetic file; none may appear in the BIDS output."""


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _base(
    *,
    sop_class: str,
    study: str,
    series_uid: str,
    series_number: int,
    description: str,
    manufacturer: str,
    instance: int,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(_uid(series_uid, instance))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "Synthetic"
    ds.StudyInstanceUID = _uid(study)
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(study, "frame")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101010.000000"
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.InstanceNumber = instance
    ds.AcquisitionNumber = 1
    ds.MagneticFieldStrength = 3
    ds.ImagingFrequency = 123.2
    ds.RepetitionTime = 50
    ds.FlipAngle = 15
    ds.PatientPosition = "HFS"
    for key, value in FAKE_PATIENT.items():
        setattr(ds, key, value)
    return ds


def _set_pixels(ds: Dataset, image: np.ndarray, *, signed: bool) -> None:
    """Store a 2-D (rows, columns) or 3-D (frames, rows, columns) integer image."""
    array = np.ascontiguousarray(image.astype(np.int16 if signed else np.uint16))
    ds.Rows, ds.Columns = array.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = array.tobytes()


def _geometry(ds: Dataset, k: int, voxel: float) -> None:
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(k * voxel)]
    ds.PixelSpacing = [voxel, voxel]
    ds.SliceThickness = voxel
    ds.SpacingBetweenSlices = voxel
    ds.SliceLocation = float(k * voxel)


def _slice_image(volume: np.ndarray, k: int) -> np.ndarray:
    """Phantom slice k as DICOM rows x columns: row index j (y), column index i (x)."""
    return volume[:, :, k].T


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass(frozen=True)
class _ClassicSeries:
    """What every image of one classic (one file per slice) MR series shares."""

    study: str
    uid: str
    number: int
    description: str
    manufacturer: str
    scanning: str
    variant: str
    sequence_name: str | None  # None: no SequenceName tag (GE, Philips)
    n_echoes: int
    acquisition_type: str
    voxel: float

    def image(self, instance: int, te_ms: float, echo: int, k: int) -> Dataset:
        """The header of image ``instance``: echo ``echo`` at ``te_ms``, slice ``k``."""
        ds = _base(
            sop_class=MR_IMAGE_STORAGE,
            study=self.study,
            series_uid=self.uid,
            series_number=self.number,
            description=self.description,
            manufacturer=self.manufacturer,
            instance=instance,
        )
        ds.ScanningSequence = self.scanning
        ds.SequenceVariant = self.variant
        if self.sequence_name is not None:
            ds.SequenceName = self.sequence_name
        ds.MRAcquisitionType = self.acquisition_type
        ds.EchoTime = round(te_ms, 4)
        ds.EchoNumbers = echo
        ds.EchoTrainLength = self.n_echoes
        _geometry(ds, k, self.voxel)
        return ds


def _mag_to_int(magnitude: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(magnitude), 0, 65535)


def write_siemens_classic(
    root: Path,
    phantom: Phantom,
    *,
    series_number: int = 2,
    protocol: str = "gre_me_t2star",
    voxel: float = 2.0,
    study: str = "study",
    with_phase: bool = True,
    acquisition_type: str = "3D",
) -> list[Path]:
    """Siemens classic: magnitude series ``series_number``, phase series ``series_number+1``.

    Files are named like Siemens exports (``MR.<series>.<instance>.IMA``) in one folder per
    series. Returns the files written.
    """
    parts = [("mag", series_number)]
    if with_phase:
        if phantom.phase is None:
            raise ValueError("the phantom has no phase: make it with with_phase=True")
        parts.append(("phase", series_number + 1))
    written = []
    nz, ne = phantom.magnitude.shape[2:]
    for part, number in parts:
        series = _ClassicSeries(
            study=study,
            uid=_uid(study, protocol, number),
            number=number,
            description=protocol,
            manufacturer="SIEMENS",
            scanning="GR",
            variant="SP\\OSP",
            sequence_name="*fl3d6r",
            n_echoes=ne,
            acquisition_type=acquisition_type,
            voxel=voxel,
        )
        folder = Path(root) / f"{number:02d}_{protocol}"
        instance = 0
        for e in range(ne):
            for k in range(nz):
                instance += 1
                ds = series.image(instance, phantom.echo_times[e] * 1000, e + 1, k)
                if part == "mag":
                    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
                    _set_pixels(
                        ds, _mag_to_int(_slice_image(phantom.magnitude[..., e], k)), signed=False
                    )
                else:
                    assert phantom.phase is not None
                    ds.ImageType = ["ORIGINAL", "PRIMARY", "P", "ND"]
                    ds.RescaleSlope = 2
                    ds.RescaleIntercept = -4096
                    ds.RescaleType = "US"
                    phase = _slice_image(phantom.phase[..., e], k)
                    stored = np.clip(np.rint((phase + math.pi) / (2 * math.pi) * 4096), 0, 4095)
                    _set_pixels(ds, stored, signed=False)
                written.append(_save(ds, folder / f"MR.{number}.{instance}.IMA"))
    return written


def write_ge_classic(
    root: Path,
    phantom: Phantom,
    *,
    series_number: int = 17,
    protocol: str = "mfgre kidney",
    voxel: float = 2.0,
    study: str = "study",
) -> list[Path]:
    """GE classic: magnitude, real and imaginary images in one series, files without extension.

    The image kind is in private tag (0043,102F) (0 magnitude, 2 real, 3 imaginary); the
    sequence says ``RM`` (research mode) in ScanningSequence and its name only in GE's private
    tags, as on the real MR750 data.
    """
    if phantom.phase is None:
        raise ValueError("the phantom has no phase: make it with with_phase=True")
    nz, ne = phantom.magnitude.shape[2:]
    series = _ClassicSeries(
        study=study,
        uid=_uid(study, protocol, series_number),
        number=series_number,
        description=protocol,
        manufacturer="GE MEDICAL SYSTEMS",
        scanning="RM",
        variant="NONE",
        sequence_name=None,
        n_echoes=ne,
        acquisition_type="2D",
        voxel=voxel,
    )
    kinds = {
        0: phantom.magnitude,
        2: phantom.magnitude * np.cos(phantom.phase),
        3: phantom.magnitude * np.sin(phantom.phase),
    }
    written = []
    instance = 0
    for e in range(ne):
        for code, data in kinds.items():
            for k in range(nz):
                instance += 1
                ds = series.image(instance, phantom.echo_times[e] * 1000, e + 1, k)
                ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
                ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
                ge.add_new(0x9C, "LO", "cuhpsd/mfgre_BOLD")
                ge.add_new(0x9E, "SH", "FGRE")
                ge.add_new(0x7E, "SS", ne)
                parm = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
                parm.add_new(0x2F, "SS", code)
                image = np.rint(_slice_image(data[..., e], k))
                _set_pixels(ds, np.clip(image, -32768, 32767), signed=True)
                written.append(_save(ds, Path(root) / f"ge{series_number}" / f"i{instance:05d}"))
    return written


def write_philips_classic(
    root: Path,
    phantom: Phantom,
    *,
    series_number: int = 501,
    protocol: str = "FFE_ME T2star",
    voxel: float = 2.0,
    study: str = "study",
    with_maps: bool = True,
) -> list[Path]:
    """Philips classic: magnitude and phase in ONE series, a RescaleSlope per file, maps inside.

    Magnitude is stored as round(value / slope) with a slope that differs in every file, so
    only a converter that applies each file's slope gets the decay right; phase is stored so
    that slope and intercept give radians. With ``with_maps`` the series also holds
    scanner-made T2* map images (ImageType DERIVED), which must be left out.
    """
    if phantom.phase is None:
        raise ValueError("the phantom has no phase: make it with with_phase=True")
    nz, ne = phantom.magnitude.shape[2:]
    series = _ClassicSeries(
        study=study,
        uid=_uid(study, protocol, series_number),
        number=series_number,
        description=protocol,
        manufacturer="Philips Medical Systems",
        scanning="GR",
        variant="SP",
        sequence_name=None,
        n_echoes=ne,
        acquisition_type="3D",
        voxel=voxel,
    )
    written = []
    instance = 0
    phase_slope = 2 * math.pi / 4095

    def new(te_ms: float, echo: int, k: int) -> Dataset:
        nonlocal instance
        instance += 1
        return series.image(instance, te_ms, echo, k)

    for e in range(ne):
        for k in range(nz):
            ds = new(phantom.echo_times[e] * 1000, e + 1, k)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]
            slope = 0.5 + 0.05 * ((k * ne + e) % 7)
            ds.RescaleSlope = f"{slope:.6g}"
            ds.RescaleIntercept = 0
            stored = _mag_to_int(_slice_image(phantom.magnitude[..., e], k) / slope)
            _set_pixels(ds, stored, signed=False)
            written.append(_save(ds, Path(root) / "philips" / f"IM_{instance:04d}.dcm"))
            ds = new(phantom.echo_times[e] * 1000, e + 1, k)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"]
            ds.RescaleSlope = f"{phase_slope:.10g}"
            ds.RescaleIntercept = f"{-math.pi:.10g}"
            phase = _slice_image(phantom.phase[..., e], k)
            stored = np.clip(np.rint((phase + math.pi) / phase_slope), 0, 4095)
            _set_pixels(ds, stored, signed=False)
            written.append(_save(ds, Path(root) / "philips" / f"IM_{instance:04d}.dcm"))
    if with_maps:
        for k in range(nz):
            ds = new(phantom.echo_times[0] * 1000, 1, k)
            ds.ImageType = ["DERIVED", "PRIMARY", "T2_STAR", "T2_STAR", "UNSPECIFIED"]
            _set_pixels(ds, np.rint(_slice_image(phantom.t2star, k) * 1000), signed=False)
            written.append(_save(ds, Path(root) / "philips" / f"IM_{instance:04d}.dcm"))
    return written


def write_siemens_enhanced(
    root: Path,
    phantom: Phantom,
    *,
    series_number: int = 8,
    protocol: str = "gre_me_xa",
    voxel: float = 2.0,
    study: str = "study",
    with_phase_frames: bool = False,
) -> list[Path]:
    """Siemens XA-like enhanced multi-frame magnitude series: one file per echo, one frame per
    slice, echo time and position per frame.

    With ``with_phase_frames`` every file also holds the phase frames of its echo (a second
    stack, ComplexImageComponent PHASE), as some scanners export enhanced DICOM; dcm2niix
    v1.0.20260724 does not separate those (it stacks both), so the converter refuses them.
    """
    nz, ne = phantom.magnitude.shape[2:]
    if with_phase_frames and phantom.phase is None:
        raise ValueError("the phantom has no phase: make it with with_phase=True")
    series_uid = _uid(study, protocol, series_number)
    written = []
    for e in range(ne):
        ds = _base(
            sop_class=ENHANCED_MR_IMAGE_STORAGE,
            study=study,
            series_uid=series_uid,
            series_number=series_number,
            description=protocol,
            manufacturer="Siemens Healthineers",
            instance=e + 1,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.EchoPulseSequence = "GRADIENT"
        ds.PulseSequenceName = "*fl3d6r"
        ds.MRAcquisitionType = "3D"
        ds.ComplexImageComponent = "MAGNITUDE"
        ds.AcquisitionContrast = "UNKNOWN"
        ds.NumberOfFrames = nz
        ds.ContentQualification = "PRODUCT"
        ds.ImageComments = ""
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = [voxel, voxel]
        measures.SliceThickness = voxel
        measures.SpacingBetweenSlices = voxel
        shared.PixelMeasuresSequence = DicomSequence([measures])
        orient = Dataset()
        orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PlaneOrientationSequence = DicomSequence([orient])
        timing = Dataset()
        timing.RepetitionTime = 50
        timing.FlipAngle = 15
        timing.EchoTrainLength = ne
        shared.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
        # The rescale goes in every frame (PixelValueTransformationSequence), as XA writes it.
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        frames = []
        for k in range(nz):
            frame = Dataset()
            echo = Dataset()
            echo.EffectiveEchoTime = round(phantom.echo_times[e] * 1000, 4)
            frame.MREchoSequence = DicomSequence([echo])
            position = Dataset()
            position.ImagePositionPatient = [0.0, 0.0, float(k * voxel)]
            frame.PlanePositionSequence = DicomSequence([position])
            content = Dataset()
            content.InStackPositionNumber = k + 1
            content.StackID = "1"
            content.TemporalPositionIndex = 1
            content.DimensionIndexValues = [1, k + 1]
            frame.FrameContentSequence = DicomSequence([content])
            frame_type = Dataset()
            frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
            frame_type.ComplexImageComponent = "MAGNITUDE"
            frame_type.AcquisitionContrast = "UNKNOWN"
            frame_type.PixelPresentation = "MONOCHROME"
            frame_type.VolumetricProperties = "VOLUME"
            frame_type.VolumeBasedCalculationTechnique = "NONE"
            frame.MRImageFrameTypeSequence = DicomSequence([frame_type])
            transform = Dataset()
            transform.RescaleSlope = 1
            transform.RescaleIntercept = 0
            transform.RescaleType = "US"
            frame.PixelValueTransformationSequence = DicomSequence([transform])
            frames.append(frame)
        stack = np.stack(
            [_mag_to_int(_slice_image(phantom.magnitude[..., e], k)) for k in range(nz)]
        )
        if with_phase_frames:
            assert phantom.phase is not None
            for k in range(nz):
                frame = copy.deepcopy(frames[k])
                frame.MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "P", "NONE"]
                frame.MRImageFrameTypeSequence[0].ComplexImageComponent = "PHASE"
                frame.PixelValueTransformationSequence[0].RescaleSlope = 2
                frame.PixelValueTransformationSequence[0].RescaleIntercept = -4096
                frame.FrameContentSequence[0].StackID = "2"
                frame.FrameContentSequence[0].DimensionIndexValues = [2, k + 1]
                frames.append(frame)
            phase = np.stack([_slice_image(phantom.phase[..., e], k) for k in range(nz)])
            stored = np.clip(np.rint((phase + math.pi) / (2 * math.pi) * 4096), 0, 4095)
            stack = np.concatenate([stack, stored])
            ds.NumberOfFrames = 2 * nz
            ds.ImageType = ["ORIGINAL", "PRIMARY", "MIXED", "NONE"]
            ds.ComplexImageComponent = "MIXED"
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
        dim_stack = Dataset()
        dim_stack.DimensionIndexPointer = 0x00209056  # StackID
        dim_stack.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        dim_pos = Dataset()
        dim_pos.DimensionIndexPointer = 0x00209057  # InStackPositionNumber
        dim_pos.FunctionalGroupPointer = 0x00209111
        ds.DimensionIndexSequence = DicomSequence([dim_stack, dim_pos])
        _set_pixels(ds, stack, signed=False)
        name = f"{e + 1:04d}_{series_uid}.dcm"
        written.append(_save(ds, Path(root) / f"{series_number}_{protocol}" / name))
    return written


def write_other_series(
    root: Path,
    kind: str,
    *,
    series_number: int,
    shape: Sequence[int] = (8, 8, 2),
    echo_times_ms: Sequence[float] = (5.0, 10.0),
    study: str = "study",
) -> list[Path]:
    """A small series that is not converted: ``epi`` (single-echo EPI), ``spin_echo``,
    ``single_echo`` or ``derived`` (a scanner-made T2* map, ImageType DERIVED)."""
    settings = {
        # single-echo EPI: a multi-echo EPI run is converted (tests.support.synthetic_epi)
        "epi": ("EP", "SK", "*epfid2d1_64", ["ORIGINAL", "PRIMARY", "M", "ND"], echo_times_ms[:1]),
        "spin_echo": ("SE", "SK", "*tse2d1_5", ["ORIGINAL", "PRIMARY", "M", "ND"], echo_times_ms),
        "single_echo": (
            "GR",
            "SP",
            "*fl2d1",
            ["ORIGINAL", "PRIMARY", "M", "ND"],
            echo_times_ms[:1],
        ),
        "derived": (
            "GR",
            "SP",
            "*fl3d6r",
            ["DERIVED", "PRIMARY", "T2_STAR", "ND"],
            echo_times_ms[:1],
        ),
    }
    if kind not in settings:
        raise ValueError(f"unknown kind {kind!r}")
    scanning, variant, name, image_type, tes = settings[kind]
    nx, ny, nz = shape
    series = _ClassicSeries(
        study=study,
        uid=_uid(study, kind, series_number),
        number=series_number,
        description=f"{kind}_series",
        manufacturer="SIEMENS",
        scanning=scanning,
        variant=variant,
        sequence_name=name,
        n_echoes=len(tes),
        acquisition_type="2D",
        voxel=2.0,
    )
    written = []
    instance = 0
    rng = np.random.default_rng(series_number)
    for e, te in enumerate(tes):
        for k in range(nz):
            instance += 1
            ds = series.image(instance, te, e + 1, k)
            ds.ImageType = image_type
            _set_pixels(ds, rng.integers(0, 1000, size=(ny, nx)), signed=False)
            written.append(_save(ds, Path(root) / f"{kind}{series_number}" / f"{instance}.dcm"))
    return written


def phantom_index(
    affine: np.ndarray, shape: Sequence[int], voxel: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phantom indices (i, j, k) of every voxel of a converted NIfTI of ``shape``.

    The synthetic series put phantom voxel (i, j, k) at LPS (i, j, k) * voxel; NIfTI world
    coordinates are RAS, so i = -R / voxel, j = -A / voxel, k = S / voxel.
    """
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij"), axis=-1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    i = np.rint(-world[..., 0] / voxel).astype(int)
    j = np.rint(-world[..., 1] / voxel).astype(int)
    k = np.rint(world[..., 2] / voxel).astype(int)
    return i, j, k
