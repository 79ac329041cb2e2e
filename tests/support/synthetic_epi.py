"""Synthetic multi-echo EPI (BOLD) and dual-echo field-map DICOM series, written with pydicom.

Each writer lays the images out as dcm2niix's documentation describes the vendor's export:

- :func:`write_siemens_mosaic`: Siemens V-series (CMRR multiband or product) mosaics, one file
  per volume and echo, every slice of the volume tiled into one image; the CSA image header
  (0029,1010) carries NumberOfImagesInMosaic, SliceNormalVector and MosaicRefAcqTimes (the
  slice times), and every file its EchoTime and EchoNumbers. ``phase=True`` adds the phase
  as series N+1 (ImageType ``P``), as the CMRR sequence saves it;
- :func:`write_enhanced_epi`: an enhanced multi-frame (Siemens XA-like) series, one file per
  volume and echo, one frame per slice, EffectiveEchoTime and TemporalPositionIndex per frame;
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
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from t2starmap.simulate import Phantom
from tests.support.synthetic_dicom import (
    ENHANCED_MR_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    _base,
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
    ds.PhaseEncodingDirection = "COL"
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
