"""Synthetic multi-echo GRE data with known S0 and T2*, and the bundled ``bids_example/``.

Everything here is seeded: the same arguments give the same arrays on every machine.
Units: echo times and T2* in seconds; S0 and noise sigma in arbitrary signal units.
Regenerate the bundled example with ``python -m t2starmap.sim.phantoms bids_example``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2starmap.bids.conventions import BIDS_VERSION

DEFAULT_ECHO_TIMES = tuple(float(t) for t in np.linspace(0.002, 0.040, 11))


@dataclass(frozen=True)
class Phantom:
    """A seeded phantom. Arrays have the spatial shape; ``magnitude`` adds the echo axis last.

    magnitude: (..., n_echoes) float32, Rician noise with standard deviation ``sigma``.
    phase: (..., n_echoes) float32 radians in [-pi, pi), or None when not asked for.
    t2star: (...) true T2* in s, 0 outside the object.
    s0: (...) true S0, 0 outside the object.
    mask: (...) bool, the object.
    echo_times: (n_echoes,) seconds, ascending.
    sigma: noise standard deviation of each real/imaginary channel (of each coil).
    coils: number of coils combined by root-sum-of-squares (1: a single complex channel,
        Rician magnitude; L > 1: noncentral chi with L coils, see :func:`make_coil_phantom`).
    """

    magnitude: np.ndarray
    phase: np.ndarray | None
    t2star: np.ndarray
    s0: np.ndarray
    mask: np.ndarray
    echo_times: np.ndarray
    sigma: float
    coils: int = 1


def decay(s0: np.ndarray, t2star: np.ndarray, echo_times: np.ndarray) -> np.ndarray:
    """Noise-free mono-exponential decay S0*exp(-TE/T2*); echo axis appended last.

    Voxels with T2* == 0 (outside the object) give 0.
    """
    te = np.asarray(echo_times, dtype=np.float64)
    t2 = np.asarray(t2star, dtype=np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(t2 > 0, 1.0 / np.where(t2 > 0, t2, 1.0), np.inf)
    out = np.asarray(s0, dtype=np.float64)[..., None] * np.exp(-te * rate)
    return np.nan_to_num(out, nan=0.0)


def add_rician_noise(
    signal: np.ndarray, sigma: float, rng: np.random.Generator, phase: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Complex Gaussian noise (sd ``sigma`` per channel) on ``signal``.

    Returns (magnitude, phase).
    """
    if phase is None:
        phase = np.zeros_like(signal)
    z = signal * np.exp(1j * phase)
    z = z + sigma * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape))
    return np.abs(z).astype(np.float32), np.angle(z).astype(np.float32)


def _object_truth(
    grids: Sequence[np.ndarray],
    radius: float,
    mask: np.ndarray,
    t2star_range: tuple[float, float],
    s0: float,
) -> tuple[np.ndarray, np.ndarray]:
    """True T2* (s) and S0 of the phantoms' object: T2* log-uniform along x over
    ``t2star_range`` with a gentle modulation along y, S0 within +-10 % of ``s0``; 0 outside
    ``mask``. ``grids``: the voxel coordinates in [-1, 1] per axis."""
    lo, hi = np.log(t2star_range[0]), np.log(t2star_range[1])
    frac = np.clip((grids[0] / radius + 1.0) / 2.0, 0.0, 1.0)
    if len(grids) > 1:
        frac = np.clip(frac + 0.05 * np.sin(np.pi * grids[1]), 0.0, 1.0)
    t2star = np.where(mask, np.exp(lo + frac * (hi - lo)), 0.0)
    s0_map = np.where(mask, s0 * (1.0 + 0.1 * np.cos(np.pi * grids[-1])), 0.0)
    return t2star, s0_map


def make_phantom(
    shape: Sequence[int] = (32, 32, 8),
    echo_times: Sequence[float] = DEFAULT_ECHO_TIMES,
    *,
    t2star_range: tuple[float, float] = (0.005, 0.100),
    s0: float = 1000.0,
    snr: float = 50.0,
    seed: int = 0,
    with_phase: bool = False,
    background: float = 0.2,
) -> Phantom:
    """An ellipsoid object in a noise-only background.

    T2* varies smoothly across the object from ``t2star_range[0]`` to ``t2star_range[1]``
    (log-uniform along x, with a gentle modulation along y), S0 varies by +-10 % around ``s0``.
    ``snr`` is S0 / sigma. ``background`` is the fraction of each axis left as air around the
    ellipsoid (the noise estimate needs it). With ``with_phase`` the object gets a smooth
    B0-like phase that grows linearly with TE.
    """
    rng = np.random.default_rng(seed)
    te = np.asarray(echo_times, dtype=np.float64)
    if te.ndim != 1 or te.size < 1 or np.any(np.diff(te) <= 0):
        raise ValueError("echo_times must be a 1-D ascending sequence in seconds")
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    radius = 1.0 - background
    r2 = sum((g / radius) ** 2 for g in grids)
    mask = np.asarray(r2 <= 1.0, dtype=bool)
    t2star, s0_map = _object_truth(grids, radius, mask, t2star_range, s0)
    sigma = s0 / snr
    clean = decay(s0_map, t2star, te)
    phase = None
    if with_phase:
        b0_hz = 20.0 * grids[0] + 10.0 * (grids[1] if len(shape) > 1 else 0.0)
        phase = np.where(mask, 1.0, 0.0)[..., None] * (2 * np.pi * b0_hz[..., None] * te + 0.3)
    magnitude, noisy_phase = add_rician_noise(clean, sigma, rng, phase)
    return Phantom(
        magnitude=magnitude,
        phase=noisy_phase if with_phase else None,
        t2star=t2star.astype(np.float32),
        s0=s0_map.astype(np.float32),
        mask=mask,
        echo_times=te,
        sigma=float(sigma),
    )


def coil_sensitivities(shape: Sequence[int], coils: int) -> np.ndarray:
    """Smooth complex sensitivities of ``coils`` coils placed around the first two axes,
    normalised so that sum_l |c_l|^2 = 1 in every voxel: a root-sum-of-squares of c_l S is S.
    Returns (coils, *shape) complex128."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    x = grids[0]
    y = grids[1] if len(shape) > 1 else np.zeros_like(x)
    maps = []
    for k in range(coils):
        angle = 2.0 * np.pi * k / coils
        cx, cy = 1.5 * np.cos(angle), 1.5 * np.sin(angle)
        distance2 = (x - cx) ** 2 + (y - cy) ** 2
        maps.append(np.exp(-distance2 / 2.0) * np.exp(1j * (angle + 0.5 * (x * cy - y * cx))))
    sens = np.stack(maps)
    return sens / np.sqrt(np.sum(np.abs(sens) ** 2, axis=0))


def make_coil_phantom(
    shape: Sequence[int] = (48, 48, 4),
    echo_times: Sequence[float] = DEFAULT_ECHO_TIMES,
    *,
    coils: int = 8,
    t2star_range: tuple[float, float] = (0.005, 0.100),
    s0: float = 1000.0,
    snr: float = 50.0,
    seed: int = 0,
    background: float = 0.4,
    ghost: float = 0.0,
    zero_corners: bool = False,
    air: bool = True,
) -> Phantom:
    """A multi-coil acquisition combined by root-sum-of-squares: M = sqrt(sum_l |c_l S + n_l|^2)
    with complex Gaussian noise n_l (SD sigma = s0 / snr per channel and coil, independent
    between coils) and the sensitivities of :func:`coil_sensitivities`. M is noncentral chi
    with ``coils`` degrees of freedom (pairs): E[M^2] = S^2 + 2 L sigma^2; ``coils=1`` is Rician.

    The object is :func:`make_phantom`'s ellipsoid (``background``: the fraction of each axis
    left as air; T2* log-uniform along x in ``t2star_range``; S0 within +-10 % of ``s0``).
    ``ghost``: a faint copy of the object, ``ghost`` times its complex signal, shifted by half
    the field of view along the second axis (an N/2 ghost) and added in every coil, so that part
    of the air is not noise alone (a heavy-tailed background). ``zero_corners``: voxels outside
    the disc inscribed in the first two axes are set to exactly 0, as a scanner's zero-filled
    (or masked) corners. ``air=False``: no air at all; the object fills the whole volume (T2*
    and S0 vary as inside the ellipsoid). The truth (``t2star``, ``s0``, ``mask``) is of the
    object only; ``phase`` is None.
    """
    rng = np.random.default_rng(seed)
    te = np.asarray(echo_times, dtype=np.float64)
    if te.ndim != 1 or te.size < 1 or np.any(np.diff(te) <= 0):
        raise ValueError("echo_times must be a 1-D ascending sequence in seconds")
    if coils < 1:
        raise ValueError("coils must be at least 1")
    shape = tuple(int(n) for n in shape)
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    radius = 1.0 - background if air else 1.0
    if air:
        mask = np.asarray(sum((g / radius) ** 2 for g in grids) <= 1.0, dtype=bool)
    else:
        mask = np.ones(shape, dtype=bool)
    t2star, s0_map = _object_truth(grids, radius, mask, t2star_range, s0)
    sigma = s0 / snr
    clean = decay(s0_map, t2star, te)  # (*shape, E), real and positive
    if ghost:
        axis = 1 if len(shape) > 1 else 0
        clean = clean + ghost * np.roll(clean, shape[axis] // 2, axis=axis)
    sens = coil_sensitivities(shape, coils)
    power = np.zeros(clean.shape)
    for c in sens:
        z = c[..., None] * clean
        z = z + sigma * (rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape))
        power += np.abs(z) ** 2
    magnitude = np.sqrt(power)
    if zero_corners and len(shape) > 1:
        outside = grids[0] ** 2 + grids[1] ** 2 > 1.0
        magnitude[outside] = 0.0
    return Phantom(
        magnitude=magnitude.astype(np.float32),
        phase=None,
        t2star=t2star.astype(np.float32),
        s0=s0_map.astype(np.float32),
        mask=mask,
        echo_times=te,
        sigma=float(sigma),
        coils=int(coils),
    )


def truth_maps(
    phantom: Phantom, *, failed_fraction: float = 0.01, seed: int = 0
) -> dict[str, np.ndarray]:
    """Stand-in fit outputs for report tests and benchmarks, keyed like
    ``derivatives.OUTPUTS``: the phantom's true T2*, R2* and S0, made-up standard errors and
    RMSE, its object as the signal mask and a seeded ``failed_fraction`` of it marked failed."""
    rng = np.random.default_rng(seed)
    mask = phantom.mask
    t2 = phantom.t2star.astype(np.float64)
    return {
        "t2star": t2,
        "r2star": np.where(t2 > 0, 1.0 / np.where(t2 > 0, t2, 1.0), 0.0),
        "s0": phantom.s0,
        "t2star_se": 0.05 * t2,
        "r2star_se": np.where(mask, 1.0, 0.0),
        "s0_se": np.where(mask, 5.0, 0.0),
        "rmse": np.where(mask, rng.random(mask.shape) * 20, 0.0),
        "signal": mask,
        "failed": mask & (rng.random(mask.shape) < failed_fraction),
    }


# --- the bundled example dataset -------------------------------------------------------------

EXAMPLE_ECHO_TIMES = tuple(round(0.003 + 0.0045 * k, 4) for k in range(8))
EXAMPLE_SUBJECTS: dict[str, tuple[str | None, ...]] = {"01": (None,), "02": ("1", "2")}
ACQUISITION = {
    "MagneticFieldStrength": 3,
    "Manufacturer": "Siemens",
    "ManufacturerModelName": "Simulated",
    "PulseSequenceType": "GR",
    "MRAcquisitionType": "3D",
    "RepetitionTime": 0.05,
    "FlipAngle": 15,
}


def write_megre(
    root: Path,
    phantom: Phantom,
    subject: str,
    session: str | None = None,
    *,
    voxel_size: float = 2.0,
    extra_entities: str = "",
) -> list[Path]:
    """Write a phantom as BIDS MEGRE magnitude files (one NIfTI + JSON per echo); return them."""
    from t2starmap.bids.nifti_write import write_image

    anat = Path(root) / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "") + extra_entities
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    written = []
    for k, te in enumerate(phantom.echo_times, start=1):
        stem = anat / f"{prefix}_echo-{k}_part-mag_MEGRE"
        write_image(f"{stem}.nii.gz", phantom.magnitude[..., k - 1], affine)
        sidecar = {"EchoTime": float(te), **ACQUISITION}
        Path(f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        written.append(Path(f"{stem}.nii.gz"))
    return written


def write_bids_example(
    root: Path,
    subjects: Mapping[str, Sequence[str | None]] = EXAMPLE_SUBJECTS,
    *,
    shape: Sequence[int] = (24, 24, 6),
    snr: float = 60.0,
    first_seed: int = 1,
    name: str = "t2starmap example: simulated multi-echo GRE",
) -> Path:
    """(Re)create a synthetic BIDS dataset: one MEGRE echo set per participant and session
    (``subjects`` maps labels to session labels, None for no session), seeds counting up from
    ``first_seed``. The defaults make the bundled example: sub-01 (no session), sub-02
    (sessions 1 and 2).

    The true T2* of each set is kept in ``root/truth/`` which ``.bidsignore`` hides from BIDS.
    """
    from t2starmap.bids.nifti_write import write_image

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": name,
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw",
                "License": "CC0",
                "Authors": ["t2starmap simulator"],
                "GeneratedBy": [{"Name": "t2starmap.sim.phantoms"}],
            },
            indent=2,
        )
        + "\n"
    )
    (root / "README").write_text(
        "Simulated multi-echo gradient-echo data made by t2starmap.sim.phantoms (seeded).\n"
        "Each echo set is an ellipsoid with known S0 and T2* in Rician noise; the true\n"
        "maps are in truth/ (listed in .bidsignore).\n"
    )
    (root / ".bidsignore").write_text("truth\n")
    rows = ["participant_id"]
    seed = first_seed
    for subject, sessions in subjects.items():
        rows.append(f"sub-{subject}")
        for session in sessions:
            phantom = make_phantom(shape, EXAMPLE_ECHO_TIMES, snr=snr, seed=seed)
            seed += 1
            write_megre(root, phantom, subject, session)
            truth = root / "truth"
            truth.mkdir(exist_ok=True)
            stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            affine = np.diag([2.0, 2.0, 2.0, 1.0])
            write_image(truth / f"{stem}_T2star.nii.gz", phantom.t2star, affine)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the bundled BIDS example dataset.")
    parser.add_argument("root", type=Path, help="folder to (re)create, e.g. bids_example")
    write_bids_example(parser.parse_args(argv).root)


if __name__ == "__main__":
    _main()
