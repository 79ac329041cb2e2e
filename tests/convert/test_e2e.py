"""Synthetic DICOM with known T2* -> ``t2starmap convert`` -> ``t2starmap ... participant``:
the T2* map recovers the truth (median error within 3 % in the object)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.cli.run import main
from t2starmap.sim.phantoms import Phantom, make_phantom
from tests.convert.helpers import VOXEL
from tests.support import synthetic_dicom

WRITERS = {
    "siemens": synthetic_dicom.write_siemens_classic,
    "enhanced": synthetic_dicom.write_siemens_enhanced,
    "philips": synthetic_dicom.write_philips_classic,
    "ge": synthetic_dicom.write_ge_classic,
}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    echo_times = tuple(0.002 + 0.004 * k for k in range(10))
    return make_phantom(
        (24, 24, 6), echo_times, t2star_range=(0.008, 0.06), snr=60.0, seed=11, with_phase=True
    )


@pytest.mark.parametrize("vendor", sorted(WRITERS))
def test_convert_then_fit_recovers_t2star(
    tmp_path: Path, phantom: Phantom, vendor: str, capsys: pytest.CaptureFixture[str]
):
    dicom, bids, out = tmp_path / "dicom", tmp_path / "bids", tmp_path / "out"
    WRITERS[vendor](dicom, phantom, voxel=VOXEL)
    assert main(["convert", str(dicom), str(bids), "--participant-label", "01"]) == 0
    # images and sidecars counted for what they are (not "20 files" for 10 of each)
    images = len(list((bids / "sub-01" / "anat").glob("*.nii.gz")))
    assert images == len(list((bids / "sub-01" / "anat").glob("*.json"))) > 0
    said = f"wrote {images} images and their {images} JSON sidecars to"
    assert said in capsys.readouterr().err
    assert main([str(bids), str(out), "participant", "--skip-bids-validation"]) == 0

    maps = [
        p for p in (out / "sub-01" / "anat").glob("*_T2starmap.nii.gz") if "_desc-" not in p.name
    ]
    assert len(maps) == 1, sorted(p.name for p in out.rglob("*.nii.gz"))
    image = nib.Nifti1Image.from_filename(maps[0])
    fitted = np.asarray(image.dataobj, dtype=np.float64)
    i, j, k = synthetic_dicom.phantom_index(image.affine, image.shape, VOXEL)
    truth = phantom.t2star[i, j, k].astype(np.float64)
    inside = phantom.mask[i, j, k]
    error = np.abs(fitted[inside] - truth[inside]) / truth[inside]
    print(f"{vendor}: median T2* error {np.median(error):.3%}")
    assert np.median(error) <= 0.03, f"median T2* error {np.median(error):.3%}"
