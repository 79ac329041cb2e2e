"""Synthetic multi-echo BOLD runs with known S0 and T2*: the tests' and benchmarks' data.

Seeded: the same arguments give the same arrays. A brain-like ellipsoid (S0 smooth, T2*
30-60 ms), a CSF-like core (T2* 100-150 ms) and a dropout region (T2* 3-9 ms, where echo 2
sits on the noise floor for the default echo times 12-60 ms). Each volume multiplies S0 by a
physiological fluctuation (respiration and cardiac sines, about 1 %) and adds a small BOLD
change of R2*; complex Gaussian noise of standard deviation ``sigma`` per channel gives a
Rician magnitude, stored as int16 (rounded, clipped), as scanners store EPI.

Units: echo times and T2* in s, S0 and sigma in signal units.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2starmap.bids.nifti import Geometry
from t2starmap.bids.nifti_write import save_map, write_image

DEFAULT_TES = (0.012, 0.028, 0.044, 0.060)
#: T2* ranges (s) of the regions.
BRAIN_T2STAR = (0.030, 0.060)
CSF_T2STAR = (0.100, 0.150)
DROPOUT_T2STAR = (0.003, 0.009)
BRAIN_RADIUS = 0.89


@dataclass(frozen=True)
class BoldRun:
    """``echoes``: (x, y, z, T, E) int16; ``t2star``, ``s0``: the truth (0 outside the
    brain); ``brain``, ``dropout``: bool regions; ``te`` (E,) s; ``sigma``; ``tr`` s."""

    echoes: np.ndarray
    t2star: np.ndarray
    s0: np.ndarray
    brain: np.ndarray
    dropout: np.ndarray
    te: np.ndarray
    sigma: float
    tr: float = 2.0


def _regions(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(brain, csf, dropout) bool: an ellipsoid filling :data:`BRAIN_RADIUS` of each axis
    (a third of the box: 19 k voxels of 48x48x24); a central core; a blob at the
    front-bottom edge (where sinus dropout sits)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g * g for g in grids) / BRAIN_RADIUS**2
    brain = r2 <= 1.0
    csf = brain & (r2 <= 0.08)
    front = (grids[0] / 0.7) ** 2 + ((grids[1] - 0.6) / 0.25) ** 2 + ((grids[2] + 0.3) / 0.3) ** 2
    dropout = brain & (front <= 1.0) & ~csf
    return np.asarray(brain), np.asarray(csf), np.asarray(dropout)


def g_factor_map(shape: Sequence[int]) -> np.ndarray:
    """A g-factor-like noise amplification (as SENSE's at R = 3-4): 1 at the edges of the box,
    3 at a centre by the front-bottom dropout region, smooth in between."""
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = g[0] ** 2 + (g[1] - 0.6) ** 2 / 0.5 + (g[2] + 0.3) ** 2 / 0.5
    return np.asarray(1.0 + 2.0 * np.exp(-r2 / 0.5))


def make_bold_run(
    shape: Sequence[int] = (24, 24, 12),
    n_volumes: int = 40,
    te: Sequence[float] = DEFAULT_TES,
    *,
    sigma: float = 40.0,
    seed: int = 0,
    physio: float = 0.01,
    g_factor: np.ndarray | None = None,
) -> BoldRun:
    """A seeded run (see the module). ``physio``: amplitude of the S0 fluctuation (fraction);
    ``g_factor``: None, or a map (``shape``) multiplying ``sigma`` voxel by voxel (parallel
    imaging's noise amplification)."""
    rng = np.random.default_rng(seed)
    brain, csf, dropout = _regions(shape)
    tes = np.asarray(te, dtype=np.float64)
    smooth = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape], indexing="ij")
    s0 = np.where(brain, 2000.0 + 600.0 * np.sin(smooth[0]) * np.cos(smooth[1]), 0.0)
    t2 = rng.uniform(*BRAIN_T2STAR, size=tuple(shape))
    t2 = np.where(csf, rng.uniform(*CSF_T2STAR, size=tuple(shape)), t2)
    t2 = np.where(dropout, rng.uniform(*DROPOUT_T2STAR, size=tuple(shape)), t2)
    t2 = np.where(brain, t2, 0.0)
    t = np.arange(n_volumes) * 2.0
    wave = physio * (0.7 * np.sin(2 * np.pi * 0.3 * t) + 0.3 * np.sin(2 * np.pi * 1.1 * t + 1))
    bold = 0.3 * np.sin(2 * np.pi * 0.05 * t)  # a task-like R2* change, 1/s
    r2 = np.where(brain, 1.0 / np.where(brain, t2, 1.0), 0.0)
    echoes = np.empty((*shape, n_volumes, tes.size), dtype=np.int16)
    block = max(1, (1 << 22) // max(int(np.prod(shape)), 1))  # bounded temporaries
    noise = sigma if g_factor is None else sigma * np.asarray(g_factor, dtype=np.float64)[..., None]
    for a in range(0, n_volumes, block):
        b = min(a + block, n_volumes)
        for k, tk in enumerate(tes):
            rate = r2[..., None] + bold[a:b] * brain[..., None]
            clean = s0[..., None] * (1.0 + wave[a:b]) * np.exp(-tk * rate)
            noisy = np.hypot(
                clean + rng.normal(0.0, noise, clean.shape), rng.normal(0.0, noise, clean.shape)
            )
            echoes[..., a:b, k] = np.clip(np.rint(noisy), 0, np.iinfo(np.int16).max)
    return BoldRun(echoes, t2, s0, brain, dropout, tes, float(sigma))


def write_bold_run(folder: Path, run: BoldRun, voxel_size: float = 3.0) -> list[Path]:
    """``echo-<k>_bold.nii.gz`` (4-D int16, TR in the header) and ``mask.nii.gz`` (the brain)
    in ``folder``; returns the echo files."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = run.echoes.shape[:3]
    affine = np.diag([voxel_size] * 3 + [1.0])
    zooms = (voxel_size,) * 3 + (run.tr,)
    g3 = Geometry(tuple(shape), affine, (voxel_size,) * 3, 1, 1)
    paths = []
    for k in range(run.te.size):
        path = folder / f"echo-{k + 1}_bold.nii.gz"
        write_image(path, run.echoes[..., k], affine, zooms)
        paths.append(path)
    save_map(folder / "mask.nii.gz", run.brain, g3)
    return paths


def write_bold_bids(
    root: Path, name: str, run: BoldRun, task: str, desc: str | None = None
) -> list[Path]:
    """A run as BIDS writes it into the dataset ``root``:
    ``sub-<s>[/ses-<t>]/func/<name>_echo-<k>[_desc-<desc>]_bold.nii.gz`` (4-D int16) with
    ``EchoTime`` in each echo's sidecar, and ``RepetitionTime`` and ``TaskName`` in the
    dataset's ``task-<task>[_desc-<desc>]_bold.json``, which every echo inherits. ``name``: the
    run's entities (``sub-01_ses-1_task-rest_run-1``); returns the echo files."""
    parts = dict(part.split("-", 1) for part in name.split("_"))
    func = root / f"sub-{parts['sub']}"
    if "ses" in parts:
        func = func / f"ses-{parts['ses']}"
    func = func / "func"
    func.mkdir(parents=True, exist_ok=True)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    tail = f"_desc-{desc}_bold" if desc else "_bold"
    paths = []
    for k in range(run.te.size):
        path = func / f"{name}_echo-{k + 1}{tail}.nii.gz"
        write_image(path, run.echoes[..., k], affine, (3.0, 3.0, 3.0, run.tr))
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            json.dumps({"EchoTime": float(run.te[k])}), encoding="utf-8"
        )
        paths.append(path)
    shared = {"RepetitionTime": run.tr, "TaskName": task}
    (root / f"task-{task}{tail}.json").write_text(json.dumps(shared), encoding="utf-8")
    return paths
