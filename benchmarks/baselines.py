"""The baselines a participant run is measured against: fresh pythons run as ``python -c``.

* :data:`READ_FIT_WRITE` (the issue's baseline): read the echoes with
  :func:`t2starmap.bids.nifti.read_volumes` (nibabel, isal) and stack them as float32; fit them
  with the app's own engine in its default form, :func:`t2starmap.fit.fit_t2star` (nlls with the
  Rician noise model) at the phantom's known sigma (so no noise estimate, no pybids, no checks),
  2 chunk workers of one torch thread as the app runs them, in the voxels of the first echo
  above 5 sigma; write the 10 maps a set publishes with :func:`t2starmap.bids.nifti_write.save_map`
  (8 float maps, the failed and signal masks). Arguments: ``BIDS OUT SIGMA``.
* :data:`READ_WRITE` (the older, smaller baseline, kept beside it): read the echoes and write
  10 float32 images with nibabel alone; no torch, no fit. Arguments: ``BIDS OUT``.
"""

from __future__ import annotations

READ_FIT_WRITE = """
import sys, json, numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)  # as the app: 2 chunk workers of one torch thread each
from t2starmap.bids.nifti import Geometry, read_volumes
from t2starmap.bids.nifti_write import save_map
from t2starmap.fit import Compute, NoiseModel, fit_t2star
bids, out, sigma = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
echoes = sorted(bids.rglob("*_MEGRE.nii.gz"))
te = [json.loads(p.with_name(p.name[:-7] + ".json").read_text())["EchoTime"] for p in echoes]
order = np.argsort(te)
echoes, te = [echoes[k] for k in order], [te[k] for k in order]
import nibabel as nib
header = nib.load(str(echoes[0]))
geometry = Geometry(tuple(header.shape), np.asarray(header.affine),
                    tuple(float(z) for z in header.header.get_zooms()), 1, 1)
data = np.empty((*geometry.shape, len(echoes)), dtype=np.float32)
for k, volume in enumerate(read_volumes(echoes)):
    data[..., k] = volume
result = fit_t2star(
    data, te, mask=data[..., 0] > 5 * sigma, noise=NoiseModel(sigma), compute=Compute(workers=2)
)
del data
out.mkdir(parents=True, exist_ok=True)
maps = ("t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se", "chisq")
for key in maps:
    save_map(out / f"{key}.nii.gz", getattr(result, key).numpy(), geometry)
save_map(out / "failed.nii.gz", result.failed.numpy(), geometry)
save_map(out / "signal.nii.gz", (result.t2star > 0).numpy(), geometry)
"""

READ_WRITE = """
import sys, nibabel as nib, numpy as np
from pathlib import Path
echoes = sorted(Path(sys.argv[1]).rglob("*_MEGRE.nii.gz"))
data = np.stack([np.asarray(nib.load(str(p)).dataobj, dtype=np.float32) for p in echoes], -1)
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
image = nib.load(str(echoes[0]))
for k in range(10):
    volume = data[..., k % data.shape[-1]]
    nib.save(nib.Nifti1Image(volume, image.affine), str(out / f"m{k}.nii.gz"))
"""
