"""A body-like multi-echo set whose thermal noise is known voxel by voxel (issue 27).

Everything that makes a body set's residuals larger than its noise, each switchable, seeded:

* parallel imaging: ``coils`` receive coils (:func:`t2starmap.sim.phantoms.coil_sensitivities`),
  k-space undersampled by ``acceleration`` (R) along the second axis and unfolded by SENSE
  (least squares over the aliased voxels). The unfolded noise is complex Gaussian of SD
  sigma_c sqrt([(C^H C)^-1]_rr): the g-factor map, computed exactly (``sigma_map``);
* ghosts that overlap the tissue and change from echo to echo (respiration): ``ghosts`` copies
  of the object shifted along the phase-encoding axis, each ``ghost_level`` of it with an
  amplitude and phase drawn anew at every echo; they decay with the object;
* motion-like jitter: at each echo the object moves by a random fraction of a voxel;
* decays that are not mono-exponential, in patches (:data:`BODY_KINDS`): two pools, water with
  fat, a dark first echo (:func:`t2starmap.sim.failures.decays`' kinds).

R2* spans 20-400 1/s along the first axis. A smooth off-resonance (+-40 Hz) and phase.
Units as in :mod:`t2starmap.sim.phantoms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from t2starmap.sim.failures import fat_signal
from t2starmap.sim.phantoms import coil_sensitivities

#: Echo times of the GE body series: 4.6 ms + 4.612 ms steps, 12 echoes (s).
BODY_ECHO_TIMES = tuple(0.0046 + 0.004612 * k for k in range(12))
#: Voxel kinds: 0 mono-exponential, 1 two pools, 2 water with fat, 3 dark first echo.
BODY_KINDS = ("mono", "two_pools", "fat", "dark_first_echo")


@dataclass(frozen=True)
class BodySet:
    """signal: (X, Y, Z, E) complex128, the unfolded image; magnitude: its modulus, float32;
    sigma_map: (X, Y, Z) the true thermal SD per real/imaginary channel; r2star: (X, Y, Z)
    the true R2* of the mono-exponential part (1/s, 0 outside); kind: (X, Y, Z) uint8 index
    into :data:`BODY_KINDS`; mask: the object; echo_times: (E,) s."""

    signal: np.ndarray
    magnitude: np.ndarray
    sigma_map: np.ndarray
    r2star: np.ndarray
    kind: np.ndarray
    mask: np.ndarray
    echo_times: np.ndarray


@dataclass(frozen=True)
class Effects:
    """What makes the residuals larger than the noise (:func:`make_body_set`): SENSE factor
    ``acceleration`` R (1: none) with ``coils`` coils; ``ghosts`` ghost copies of
    ``ghost_level`` each; ``jitter``, the largest per-echo shift of the object (voxels);
    ``misfit``, the share of 4 x 4 in-plane patches that are not mono-exponential (equal
    shares of two pools, fat, dark first echo)."""

    acceleration: int = 1
    coils: int = 8
    ghosts: int = 0
    ghost_level: float = 0.06
    jitter: float = 0.0
    misfit: float = 0.0


def make_body_set(
    shape: Sequence[int] = (64, 64, 3),
    echo_times: Sequence[float] = BODY_ECHO_TIMES,
    *,
    s0: float = 400.0,
    sigma: float = 8.0,
    seed: int = 0,
    **effects: Any,
) -> BodySet:
    """A body-like set (module docstring). sigma: the coil noise SD, scaled so that a fully
    sampled image has SD ``sigma``; ``effects``: the fields of :class:`Effects` by name."""
    chosen = Effects(**effects)
    acceleration, coils, misfit = chosen.acceleration, chosen.coils, chosen.misfit
    ghosts, ghost_level, jitter = chosen.ghosts, chosen.ghost_level, chosen.jitter
    rng = np.random.default_rng(seed)
    te = np.asarray(echo_times, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    clean, r2star, kind, mask = _object(shape, te, s0, misfit, rng)
    if jitter:
        for k in range(te.size):  # the object moves by a fraction of a voxel along x
            a = rng.uniform(0.0, jitter)
            clean[..., k] = (1.0 - a) * clean[..., k] + a * np.roll(clean[..., k], 1, axis=0)
    if ghosts:
        clean = clean + _ghosts(clean, ghosts, ghost_level, rng)
    signal, sigma_map = _sense(clean, coils, acceleration, sigma, rng)
    return BodySet(signal, np.abs(signal).astype(np.float32), sigma_map, r2star, kind, mask, te)


def _object(
    shape: tuple[int, ...], te: np.ndarray, s0: float, misfit: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(noise-free complex echoes (*shape, E), R2*, kind, mask) of an ellipse over the first
    two axes (80 % of each), every slice alike but for the patches' kinds."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    mask = (grids[0] / 0.8) ** 2 + (grids[1] / 0.8) ** 2 <= 1.0
    frac = np.clip((grids[0] / 0.8 + 1.0) / 2.0, 0.0, 1.0)
    r2star = np.where(mask, np.exp(np.log(20.0) + frac * np.log(400.0 / 20.0)), 0.0)
    field_hz = 40.0 * grids[1] * grids[0] + 15.0 * grids[0]
    phi0 = 0.8 * grids[1] - 0.5
    patches = rng.uniform(size=[-(-n // 4) for n in shape[:2]] + list(shape[2:]))
    patch = np.repeat(np.repeat(patches, 4, axis=0), 4, axis=1)[: shape[0], : shape[1]]
    kind = np.zeros(shape, dtype=np.uint8)
    for k in range(1, 4):
        kind[(patch >= 1.0 - misfit * k / 3.0) & (patch < 1.0 - misfit * (k - 1) / 3.0)] = k
    kind[~mask] = 0
    decay = np.exp(-te * r2star[..., None])
    pools = 0.5 * np.exp(-te / 0.003) + 0.5 * np.exp(-te / 0.050)
    fat = 0.65 * decay + 0.35 * fat_signal(te) * np.exp(-te / 0.015)
    dark = decay * np.where(np.arange(te.size) == 0, 0.85, 1.0)
    shapes = np.select(
        [kind[..., None] == 1, kind[..., None] == 2, kind[..., None] == 3],
        [np.broadcast_to(pools, decay.shape), fat, dark],
        decay,
    )
    s0_map = s0 * (1.0 + 0.1 * np.cos(np.pi * grids[1]))
    rotation = np.exp(1j * (phi0[..., None] + 2.0 * np.pi * field_hz[..., None] * te))
    clean = np.where(mask[..., None], s0_map[..., None] * shapes * rotation, 0.0)
    return clean, np.where(mask, r2star, 0.0), kind, mask


def _ghosts(clean: np.ndarray, copies: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """``copies`` shifted copies of ``clean`` along the second axis, each ``level`` of it
    times a factor (amplitude 0.5-1.5, any phase) drawn anew for every echo."""
    n_y, n_echo = clean.shape[1], clean.shape[-1]
    out = np.zeros_like(clean)
    for j in range(1, copies + 1):
        factor = rng.uniform(0.5, 1.5, n_echo) * np.exp(1j * rng.uniform(-np.pi, np.pi, n_echo))
        out += level * factor * np.roll(clean, j * n_y // (copies + 1), axis=1)
    return out


def _sense(
    clean: np.ndarray, coils: int, acceleration: int, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The SENSE-unfolded image of ``clean`` (*shape, E) from ``coils`` coils undersampled by
    ``acceleration`` along the second axis, and its true noise SD map."""
    shape, n_echo = clean.shape[:-1], clean.shape[-1]
    sens = coil_sensitivities(shape, coils)  # (L, *shape), sum |c|^2 = 1
    n_y = shape[1]
    if n_y % acceleration:
        raise ValueError(f"the second axis ({n_y}) must be a multiple of R = {acceleration}")
    fold = n_y // acceleration
    # each aliased voxel y (< fold) holds the voxels y + r fold, r < R: C (L, R) per voxel
    c = np.stack([sens[:, :, r * fold : (r + 1) * fold] for r in range(acceleration)], axis=-1)
    c = np.moveaxis(c, 0, -2)  # (X, fold, Z, L, R)
    gram_inv = np.linalg.inv(np.conj(np.swapaxes(c, -1, -2)) @ c)  # (X, fold, Z, R, R)
    unfold = gram_inv @ np.conj(np.swapaxes(c, -1, -2))  # (X, fold, Z, R, L)
    g2 = np.real(np.diagonal(gram_inv, axis1=-2, axis2=-1))  # (X, fold, Z, R)
    sigma_map = sigma * np.sqrt(np.concatenate([g2[..., r] for r in range(acceleration)], axis=1))
    parts = np.stack([clean[:, r * fold : (r + 1) * fold] for r in range(acceleration)], axis=-2)
    out = np.empty(clean.shape, dtype=np.complex128)
    for k in range(n_echo):
        aliased = c @ parts[..., k][..., None]  # (X, fold, Z, L, 1)
        noise = rng.standard_normal(aliased.shape) + 1j * rng.standard_normal(aliased.shape)
        unfolded = (unfold @ (aliased + sigma * noise))[..., 0]  # (X, fold, Z, R)
        out[..., k] = np.concatenate([unfolded[..., r] for r in range(acceleration)], axis=1)
    return out, sigma_map
