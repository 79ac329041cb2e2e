"""Synthetic multi-echo BOLD runs with phase (``part-mag`` and ``part-phase`` echoes) and a
known frequency map: the complex fit's tests.

Seeded. The decay and its regions are those of :mod:`t2starmap.sim.bold` (the same truth
for the same arguments); the phase is phi0(x) + 2 pi f(x) TE plus, per volume, a phase
offset that drifts and breathes (respiration moves the field: up to about 1 rad) and a small
frequency change (0.5 Hz), with complex Gaussian noise of ``sigma`` per channel; magnitude
stored as int16, phase as float32 radians in [-pi, pi). ``coherent=False`` gives phase that
follows no frequency (each echo's phase an independent random image, the same in every
volume), as a broken phase reconstruction does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2starmap.bids.nifti_write import write_image
from t2starmap.sim.bold import DEFAULT_TES, BoldRun, make_bold_run

#: The frequency map's range (Hz): a gradient across the box, as near the sinuses.
FREQUENCY_RANGE = (-15.0, 15.0)


@dataclass(frozen=True)
class ComplexBoldRun:
    """``magnitude``: a :class:`~t2starmap.sim.bold.BoldRun` (its ``echoes`` the int16
    magnitudes, its truth S0 and T2*); ``phase`` (x, y, z, T, E) float32 rad; ``frequency``
    (x, y, z) Hz, the truth."""

    magnitude: BoldRun
    phase: np.ndarray
    frequency: np.ndarray


def make_complex_bold_run(
    shape: Sequence[int] = (16, 16, 8),
    n_volumes: int = 30,
    te: Sequence[float] = DEFAULT_TES,
    *,
    sigma: float = 40.0,
    seed: int = 0,
    coherent: bool = True,
) -> ComplexBoldRun:
    """A seeded run with phase (see the module)."""
    truth = make_bold_run(shape, 1, te, sigma=sigma, seed=seed, physio=0.0)
    rng = np.random.default_rng(seed + 1000)
    grid = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    frequency = FREQUENCY_RANGE[0] + (FREQUENCY_RANGE[1] - FREQUENCY_RANGE[0]) * grid[0]
    phi0 = 2.0 * np.pi * (grid[1] - 0.5)
    t = np.arange(n_volumes) * truth.tr
    offset = 0.02 * np.arange(n_volumes) + 0.8 * np.sin(2 * np.pi * 0.3 * t)
    df = 0.5 * np.sin(2 * np.pi * 0.05 * t)
    tes = truth.te
    brain = truth.brain[..., None]
    r2 = np.where(truth.brain, 1.0 / np.where(truth.brain, truth.t2star, 1.0), 0.0)
    mag = np.empty((*shape, n_volumes, tes.size), dtype=np.int16)
    phase = np.empty((*shape, n_volumes, tes.size), dtype=np.float32)
    broken = rng.uniform(-np.pi, np.pi, (*shape, tes.size))
    for k, tk in enumerate(tes):
        amplitude = (truth.s0 * np.exp(-tk * r2))[..., None] * brain
        if coherent:
            angle = phi0[..., None] + offset + 2 * np.pi * (frequency[..., None] + df) * tk
        else:
            angle = np.broadcast_to(broken[..., k, None], (*shape, n_volumes))
        noise = rng.normal(0.0, sigma, (2, *shape, n_volumes))
        x = amplitude * np.exp(1j * angle) + noise[0] + 1j * noise[1]
        mag[..., k] = np.clip(np.rint(np.abs(x)), 0, np.iinfo(np.int16).max)
        phase[..., k] = np.angle(x).astype(np.float32)
    return ComplexBoldRun(
        BoldRun(mag, truth.t2star, truth.s0, truth.brain, truth.dropout, tes, float(sigma)),
        phase,
        np.where(truth.brain, frequency, 0.0),
    )


def write_phase(folder: Path, run: ComplexBoldRun) -> list[Path]:
    """``echo-<k>_part-phase_bold.nii.gz`` (4-D float32, rad) with a sidecar saying
    ``Units: rad`` in ``folder``; returns the phase files."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    paths = []
    for k in range(run.magnitude.te.size):
        path = folder / f"echo-{k + 1}_part-phase_bold.nii.gz"
        write_image(path, run.phase[..., k], affine, (3.0, 3.0, 3.0, run.magnitude.tr))
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            json.dumps({"Units": "rad", "EchoTime": float(run.magnitude.te[k])}), encoding="utf-8"
        )
        paths.append(path)
    return paths
