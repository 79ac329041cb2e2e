"""Synthetic multi-echo EPI (BOLD) and dual-echo field-map DICOM series, written with pydicom.

Each writer lays the images out as dcm2niix's documentation describes the vendor's export:

- :func:`write_siemens_mosaic`: Siemens V-series (CMRR multiband or product) mosaics, one file
  per volume and echo, every slice of the volume tiled into one image; the CSA image header
  (0029,1010) carries NumberOfImagesInMosaic, SliceNormalVector and MosaicRefAcqTimes (the
  slice times), and every file its EchoTime and EchoNumbers. ``phase=True`` adds the phase
  as series N+1 (ImageType ``P``), as the CMRR sequence saves it;
- :func:`write_enhanced_epi`: an enhanced multi-frame series, one file per echo holding every
  volume (Philips-like) or one file per volume and echo (Siemens XA-like), EffectiveEchoTime
  and TemporalPositionIndex per frame;
- :func:`write_ge_epi`: GE product multi-echo EPI (hyperMEPI): one file per slice, volume and
  echo, with valid EchoTime and EchoNumbers per image (GE's research sequences write neither,
  which dcm2niix cannot convert either);
- :func:`write_philips_epi`: Philips classic FE-EPI: ScanningSequence ``GR`` with the EPI
  technique in private tag (2001,1020), a RescaleSlope per file, TemporalPositionIdentifier;
- :func:`write_siemens_fieldmap`: Siemens ``gre_field_mapping`` (``*fm2d2r``): magnitude of
  both echoes as series N, the phase difference (one image per slice, at the second echo
  time) as series N+1.

The signal of volume ``v`` is the phantom's ME-GRE magnitude times :func:`fluctuation` ``[v]``:
T2* and S0 stay known. Geometry as in :mod:`tests.support.synthetic_dicom`: phantom voxel
(i, j, k) sits at LPS (i, j, k) * voxel, so :func:`synthetic_dicom.phantom_index` maps back.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from t2starmap.sim.phantoms import Phantom
from tests.support.synthetic_dicom import (
    ENHANCED_MR_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    _base,
    _ClassicSeries,
    _geometry,
    _mag_to_int,
    _save,
    _set_pixels,
    _slice_image,
    _uid,
)

TR_MS = 1500.0
"""Repetition time of every synthetic EPI series."""


def fluctuation(n_volumes: int) -> np.ndarray:
    """The signal's scale in each volume: 1 +- 2 %, a slow sine (physiology, drift)."""
    return 1.0 + 0.02 * np.sin(2 * np.pi * np.arange(n_volumes) / max(n_volumes, 2))


def expected_volume(phantom: Phantom, volume: int, echo: int, n_volumes: int) -> np.ndarray:
    """The stored integer magnitude of ``volume`` (0-based) and ``echo`` (0-based), (x, y, z)."""
    return _mag_to_int(phantom.magnitude[..., echo] * fluctuation(n_volumes)[volume])


def _phase_stored(phantom: Phantom, echo: int) -> np.ndarray:
    """Siemens 12-bit phase: 0..4095 for -pi..pi before RescaleSlope 2, Intercept -4096."""
    assert phantom.phase is not None
    phase = phantom.phase[..., echo]
    return np.clip(np.rint((phase + math.pi) / (2 * math.pi) * 4096), 0, 4095)


def _epi_header(ds: Dataset, *, scanning: str, variant: str, name: str | None) -> None:
    ds.ScanningSequence = scanning
    ds.SequenceVariant = variant
    if name is not None:
        ds.SequenceName = name
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = TR_MS
    ds.FlipAngle = 70
    ds.InPlanePhaseEncodingDirection = "COL"


def _slice_times(nz: int) -> list[float]:
    """Interleaved slice acquisition times in ms (even slices first)."""
    order = [*range(0, nz, 2), *range(1, nz, 2)]
    step = TR_MS / nz
    times = [0.0] * nz
    for rank, k in enumerate(order):
        times[k] = round(rank * step, 2)
    return times


# --- Siemens mosaic -------------------------------------------------------------------------


def csa_header(tags: dict[str, tuple[str, Sequence[str]]]) -> bytes:
    """A Siemens CSA2 header (``SV10``): name -> (VR, item strings), as dcm2niix reads it."""
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<2I", len(tags), 77)
    for name, (vr, items) in tags.items():
        out += struct.pack("<64si4s3i", name.encode(), len(items), vr.encode(), 3, len(items), 77)
        for item in items:
            data = item.encode() + b"\x00"
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data + b"\x00" * (-len(data) % 4)
    return bytes(out)


SHIM_KEYS = (
    "sGRADSPEC.asGPAData[0].lOffsetX",
    "sGRADSPEC.asGPAData[0].lOffsetY",
    "sGRADSPEC.asGPAData[0].lOffsetZ",
    *(f"sGRADSPEC.alShimCurrent[{i}]" for i in range(5)),
)


def add_shim(ds: Dataset, shim: Sequence[int]) -> None:
    """The CSA series header (0029,1020) with the protocol's shim currents, where dcm2niix
    reads ``ShimSetting`` (8 values: the gradient offsets X, Y, Z and 5 shim currents)."""
    lines = [f"{key}\t = \t{value}" for key, value in zip(SHIM_KEYS, shim, strict=True)]
    text = "### ASCCONV BEGIN ###\n" + "\n".join(lines) + "\n### ASCCONV END ###\n"
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x20, "OB", csa_header({"MrPhoenixProtocol": ("UN", [text])}))


def set_shim(files: Sequence[Path], shim: Sequence[int]) -> None:
    """Give already written Siemens files the shim of :func:`add_shim`."""
    for path in files:
        ds = pydicom.dcmread(path)
        add_shim(ds, shim)
        ds.save_as(path, enforce_file_format=True)


def _mosaic(volume: np.ndarray) -> tuple[np.ndarray, int]:
    """Tile the slices of (x, y, z) into one rows x columns image; returns it and the grid."""
    nx, ny, nz = volume.shape
    grid = math.ceil(math.sqrt(nz))
    tiled = np.zeros((grid * ny, grid * nx), dtype=volume.dtype)
    for k in range(nz):
        r, c = divmod(k, grid)
        tiled[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = _slice_image(volume, k)
    return tiled, grid


def _mosaic_geometry(ds: Dataset, voxel: float, shape: tuple[int, int], grid: int) -> None:
    """Siemens writes the position of the whole mosaic as if it were one large image: the
    first slice's corner moved back by half the mosaic's extra size (dcm2niix undoes this)."""
    ny, nx = shape
    shift_x = (grid * nx - nx) / 2.0 * voxel
    shift_y = (grid * ny - ny) / 2.0 * voxel
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-shift_x, -shift_y, 0.0]
    ds.PixelSpacing = [voxel, voxel]
    ds.SliceThickness = voxel
    ds.SpacingBetweenSlices = voxel
    ds.SliceLocation = 0.0


def write_siemens_mosaic(
    root: Path,
    phantom: Phantom,
    *,
    n_volumes: int = 4,
    series_number: int = 10,
    protocol: str = "cmrr_mbep2d_ME_rest",
    voxel: float = 2.0,
    study: str = "study",
    phase: bool = False,
) -> list[Path]:
    """Siemens mosaics: series ``series_number`` magnitude (and N+1 phase with ``phase``)."""
    nx, ny, nz, ne = phantom.magnitude.shape
    csa = csa_header(
        {
            "NumberOfImagesInMosaic": ("US", [str(nz)]),
            "SliceNormalVector": ("FD", ["0.0", "0.0", "1.0"]),
            "MosaicRefAcqTimes": ("FD", [f"{t:.2f}" for t in _slice_times(nz)]),
        }
    )
    parts = [("M", series_number)] + ([("P", series_number + 1)] if phase else [])
    written = []
    for letter, number in parts:
        uid = _uid(study, protocol, number)
        instance = 0
        for v in range(n_volumes):
            for e in range(ne):
                instance += 1
                ds = _base(
                    sop_class=MR_IMAGE_STORAGE, study=study, series_uid=uid,
                    series_number=number, description=protocol, manufacturer="SIEMENS",
                    instance=instance,
                )  # fmt: skip
                _epi_header(ds, scanning="EP", variant="SK\\SS", name="epfid2d1_64")
                ds.ImageType = ["ORIGINAL", "PRIMARY", letter, "ND", "MOSAIC"]
                ds.EchoTime = round(float(phantom.echo_times[e]) * 1000, 4)
                ds.EchoNumbers = e + 1
                ds.EchoTrainLength = 1
                ds.AcquisitionNumber = v + 1
                ds.AcquisitionTime = _clock(v * TR_MS)
                if letter == "M":
                    volume = expected_volume(phantom, v, e, n_volumes)
                else:
                    volume = _phase_stored(phantom, e)
                    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -4096, "US"
                tiled, grid = _mosaic(volume)
                _mosaic_geometry(ds, voxel, (ny, nx), grid)
                block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
                block.add_new(0x10, "OB", csa)
                mr = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
                mr.add_new(0x0A, "US", nz)
                _set_pixels(ds, tiled, signed=False)
                path = Path(root) / f"{number:02d}_{protocol}" / f"MR.{number}.{instance:05d}.IMA"
                written.append(_save(ds, path))
    return written


def _clock(ms: float) -> str:
    """DICOM time (HHMMSS.ffffff) ``ms`` after 10:10:10."""
    total = 10 * 3600 + 10 * 60 + 10 + ms / 1000.0
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{int(hours):02d}{int(minutes):02d}{seconds:09.6f}"


# --- one file per slice: GE and Philips ---------------------------------------------------------


def _classic_epi(
    root: Path, phantom: Phantom, n_volumes: int, vendor: dict[str, object], voxel: float
) -> list[Path]:
    """One file per (volume, echo, slice): the layout of GE and Philips classic exports."""
    nz, ne = phantom.magnitude.shape[2:]
    number, protocol = int(vendor["number"]), str(vendor["protocol"])  # type: ignore[call-overload]
    uid = _uid(vendor["study"], protocol, number)
    written, instance = [], 0
    for v in range(n_volumes):
        for e in range(ne):
            volume = expected_volume(phantom, v, e, n_volumes)
            for k in range(nz):
                instance += 1
                ds = _base(
                    sop_class=MR_IMAGE_STORAGE, study=str(vendor["study"]), series_uid=uid,
                    series_number=number, description=protocol,
                    manufacturer=str(vendor["manufacturer"]), instance=instance,
                )  # fmt: skip
                _epi_header(ds, scanning=str(vendor["scanning"]), variant="SK", name=None)
                ds.ImageType = list(vendor["image_type"])  # type: ignore[call-overload]
                ds.EchoTime = round(float(phantom.echo_times[e]) * 1000, 4)
                ds.EchoNumbers = e + 1
                ds.EchoTrainLength = 1
                ds.TemporalPositionIdentifier = v + 1
                ds.NumberOfTemporalPositions = n_volumes
                ds.AcquisitionNumber = 1
                ds.AcquisitionTime = _clock(v * TR_MS + _slice_times(nz)[k])
                _geometry(ds, k, voxel)
                stored = _slice_image(volume, k)
                extra = vendor["extra"]
                assert callable(extra)
                stored = extra(ds, stored, v, e, k)
                _set_pixels(ds, stored, signed=False)
                name = f"{vendor['prefix']}{instance:05d}{vendor['suffix']}"
                written.append(_save(ds, Path(root) / f"{vendor['folder']}{number}" / name))
    return written


def _ge_private(ds: Dataset, stored: np.ndarray, v: int, e: int, k: int) -> np.ndarray:
    ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    ge.add_new(0x9C, "LO", "research/hyperMEPI")
    ge.add_new(0x9E, "SH", "EPI")
    parm = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    parm.add_new(0x2F, "SS", 0)
    return stored


def write_ge_epi(
    root: Path,
    phantom: Phantom,
    *,
    n_volumes: int = 4,
    series_number: int = 5,
    protocol: str = "ME-EPI rest",
    voxel: float = 2.0,
    study: str = "study",
) -> list[Path]:
    """GE product multi-echo EPI: ScanningSequence ``EP\\GR``, files without extension."""
    vendor = {
        "number": series_number, "protocol": protocol, "study": study,
        "manufacturer": "GE MEDICAL SYSTEMS", "scanning": "EP\\GR",
        "image_type": ["ORIGINAL", "PRIMARY", "EPI", "NONE"], "extra": _ge_private,
        "folder": "ge", "prefix": "i", "suffix": "",
    }  # fmt: skip
    return _classic_epi(root, phantom, n_volumes, vendor, voxel)


def _philips_scale(ds: Dataset, stored: np.ndarray, v: int, e: int, k: int) -> np.ndarray:
    """A RescaleSlope per file, as Philips writes it; the stored value is value / slope."""
    philips = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
    philips.add_new(0x20, "LO", "FEEPI")
    slope = 0.5 + 0.05 * ((v + k + e) % 5)
    ds.RescaleSlope = f"{slope:.6g}"
    ds.RescaleIntercept = 0
    ds.RescaleType = "normalized"
    return _mag_to_int(stored / slope)


def write_philips_epi(
    root: Path,
    phantom: Phantom,
    *,
    n_volumes: int = 4,
    series_number: int = 601,
    protocol: str = "FE_EPI multiecho",
    voxel: float = 2.0,
    study: str = "study",
) -> list[Path]:
    """Philips classic FE-EPI: ScanningSequence ``GR``; the technique name ``FEEPI`` only in
    private tag (2001,1020); every file its own RescaleSlope."""
    vendor = {
        "number": series_number, "protocol": protocol, "study": study,
        "manufacturer": "Philips Medical Systems", "scanning": "GR",
        "image_type": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], "extra": _philips_scale,
        "folder": "philips", "prefix": "IM_", "suffix": ".dcm",
    }  # fmt: skip
    return _classic_epi(root, phantom, n_volumes, vendor, voxel)


# --- enhanced multi-frame --------------------------------------------------------------------


def _item(**fields: object) -> DicomSequence:
    ds = Dataset()
    for key, value in fields.items():
        setattr(ds, key, value)
    return DicomSequence([ds])


def _enhanced_frame(te_ms: float, k: int, v: int, voxel: float) -> Dataset:
    frame = Dataset()
    frame.MREchoSequence = _item(EffectiveEchoTime=te_ms)
    frame.PlanePositionSequence = _item(ImagePositionPatient=[0.0, 0.0, float(k * voxel)])
    frame.FrameContentSequence = _item(
        InStackPositionNumber=k + 1, StackID="1", TemporalPositionIndex=v + 1,
        DimensionIndexValues=[1, v + 1, k + 1],
        FrameAcquisitionDateTime="20240102" + _clock(v * TR_MS + 10.0 * k),
    )  # fmt: skip
    frame.MRImageFrameTypeSequence = _item(
        FrameType=["ORIGINAL", "PRIMARY", "M", "NONE"], ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast="UNKNOWN", PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
    )  # fmt: skip
    frame.PixelValueTransformationSequence = _item(
        RescaleSlope=1, RescaleIntercept=0, RescaleType="US"
    )
    return frame


def _enhanced_shared(ds: Dataset, voxel: float) -> None:
    """What every frame shares (spacing, orientation, timing), and the frame dimensions:
    stack, volume (TemporalPositionIndex), slice (InStackPositionNumber)."""
    shared = Dataset()
    shared.PixelMeasuresSequence = _item(
        PixelSpacing=[voxel, voxel], SliceThickness=voxel, SpacingBetweenSlices=voxel
    )
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    shared.MRTimingAndRelatedParametersSequence = _item(
        RepetitionTime=TR_MS, FlipAngle=70, EchoTrainLength=1
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    pointers = []
    for tag in (0x00209056, 0x00209128, 0x00209057):
        item = Dataset()
        item.DimensionIndexPointer = tag
        item.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        pointers.append(item)
    ds.DimensionIndexSequence = DicomSequence(pointers)


def write_enhanced_epi(
    root: Path,
    phantom: Phantom,
    *,
    n_volumes: int = 4,
    series_number: int = 20,
    protocol: str = "FEEPI ME enhanced",
    voxel: float = 2.0,
    study: str = "study",
    per_volume: bool = False,
) -> list[Path]:
    """Enhanced multi-frame ME-EPI, EchoPlanarPulseSequence YES, EffectiveEchoTime and
    TemporalPositionIndex per frame, in one of two layouts:

    - Philips-like (default): one file per echo holding every volume, frames ordered by
      volume, then slice. dcm2niix v1.0.20260724 orders such frames by their
      DimensionIndexValues only for Philips; with another manufacturer it sorts them by
      position, mixing volumes and slices (shape right, values wrong);
    - Siemens XA-like (``per_volume``): one file per volume and echo, named so that the file
      names run backwards in time. dcm2niix converts every enhanced file on its own, so the
      converter stacks the volumes itself, in the order of their acquisition times.
    """
    ne = phantom.magnitude.shape[3]
    uid = _uid(study, protocol, series_number)
    groups = [[v] for v in range(n_volumes)] if per_volume else [list(range(n_volumes))]
    written = []
    for volumes in groups:
        for e in range(ne):
            instance = len(written) + 1
            ds = _base(
                sop_class=ENHANCED_MR_IMAGE_STORAGE, study=study, series_uid=uid,
                series_number=series_number, description=protocol, instance=instance,
                manufacturer="Siemens Healthineers" if per_volume else "Philips Medical Systems",
            )  # fmt: skip
            _enhanced_image(ds, phantom, e, volumes, n_volumes, voxel)
            ds.PulseSequenceName = "*epfid2d1_64" if per_volume else "FEEPI"
            name = f"{n_volumes - volumes[0]:04d}_e{e + 1}.dcm" if per_volume else f"e{e + 1}.dcm"
            written.append(_save(ds, Path(root) / f"{series_number}_{protocol}" / name))
    return written


def _enhanced_image(
    ds: Dataset, phantom: Phantom, e: int, volumes: list[int], n_volumes: int, voxel: float
) -> None:
    """Echo ``e`` of ``volumes`` as the frames of one enhanced file (volume, then slice)."""
    nz = phantom.magnitude.shape[2]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.EchoPulseSequence = "GRADIENT"
    ds.EchoPlanarPulseSequence = "YES"
    ds.MRAcquisitionType = "2D"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.NumberOfFrames = nz * len(volumes)
    ds.EchoNumbers = e + 1
    ds.AcquisitionDateTime = "20240102" + _clock(volumes[0] * TR_MS)
    te_ms = round(float(phantom.echo_times[e]) * 1000, 4)
    _enhanced_shared(ds, voxel)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [_enhanced_frame(te_ms, k, v, voxel) for v in volumes for k in range(nz)]
    )
    frames = [
        _slice_image(expected_volume(phantom, v, e, n_volumes), k)
        for v in volumes
        for k in range(nz)
    ]
    _set_pixels(ds, np.stack(frames), signed=False)


# --- Siemens dual-echo field map -------------------------------------------------------------


def write_siemens_fieldmap(
    root: Path,
    phantom: Phantom,
    *,
    series_number: int = 30,
    protocol: str = "gre_field_mapping",
    voxel: float = 2.0,
    study: str = "study",
) -> list[Path]:
    """Siemens gre_field_mapping (``*fm2d2r``) from a 2-echo phantom with phase: series N the
    magnitude of both echoes, series N+1 the phase difference (echo 2 minus echo 1, wrapped)
    at the second echo time, 12-bit as Siemens stores phase."""
    nz, ne = phantom.magnitude.shape[2:]
    if ne != 2 or phantom.phase is None:
        raise ValueError("a field map needs a 2-echo phantom with phase")
    difference = fieldmap_difference(phantom)
    written = []
    for number, letter in ((series_number, "M"), (series_number + 1, "P")):
        series = _ClassicSeries(
            study=study, uid=_uid(study, protocol, number), number=number, description=protocol,
            manufacturer="SIEMENS", scanning="GR", variant="SP", sequence_name="*fm2d2r",
            n_echoes=2, acquisition_type="2D", voxel=voxel,
        )  # fmt: skip
        echoes = (0, 1) if letter == "M" else (1,)
        instance = 0
        for e in echoes:
            for k in range(nz):
                instance += 1
                ds = series.image(instance, float(phantom.echo_times[e]) * 1000, e + 1, k)
                ds.ImageType = ["ORIGINAL", "PRIMARY", letter, "ND"]
                if letter == "M":
                    stored = _mag_to_int(_slice_image(phantom.magnitude[..., e], k))
                else:
                    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -4096, "US"
                    wrapped = _slice_image(difference, k)
                    stored = np.clip(np.rint((wrapped + math.pi) / (2 * math.pi) * 4096), 0, 4095)
                _set_pixels(ds, stored, signed=False)
                path = Path(root) / f"{number:02d}_{protocol}" / f"MR.{number}.{instance}.IMA"
                written.append(_save(ds, path))
    return written


def fieldmap_difference(phantom: Phantom) -> np.ndarray:
    """The phase difference (rad, wrapped) a converted ``phasediff`` should hold, (x, y, z)."""
    assert phantom.phase is not None
    return np.angle(np.exp(1j * (phantom.phase[..., 1] - phantom.phase[..., 0])))
