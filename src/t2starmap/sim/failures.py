"""Synthetic data that break the app's assumptions, each with known truth and seeded.

Real scanner data break the models the app fits; each failure mode the app checks for is made
here, so that the tests can show it is noticed:

* decays that are not mono-exponential (:func:`decays`): two T2* pools, water with fat (the
  6-peak spectrum), a first echo darker than the decay (B1, imperfect spoiling);
* phase that cannot give a field map: bipolar read-outs (:func:`bipolar`: the even echoes
  carry a phase offset, constant or varying in space), phase that follows no frequency
  (:func:`incoherent_phase`: each echo's phase map smooth, the steps between them jumping);
* backgrounds that are not noise (:func:`ghosted`: copies of the object shifted along the
  phase-encoding axis, as motion and aliasing make them).

Units as in :mod:`t2starmap.sim.phantoms`: TE and T2* in s, frequencies in Hz, field in T.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The 6-peak fat spectrum (Hamilton et al., NMR Biomed 2011;24:784; the liver model also used
#: by Yu et al., MRM 2008): chemical shifts from water in ppm, and relative amplitudes.
FAT_PPM = (-3.80, -3.40, -2.60, -1.94, -0.39, 0.60)
FAT_AMPLITUDES = (0.087, 0.693, 0.128, 0.004, 0.039, 0.048)
#: Proton gyromagnetic ratio over 2 pi, Hz per tesla per ppm.
PROTON_HZ_PER_T_PPM = 42.577
#: The kinds of decay :func:`decays` makes.
DECAY_KINDS = ("mono", "two_pools", "fat", "dark_first_echo")


def fat_signal(echo_times: Sequence[float] | np.ndarray, field_t: float = 3.0) -> np.ndarray:
    """The normalised complex signal of fat at each echo time, sum_p a_p exp(i 2 pi f_p TE)
    (sum a_p = 1), f_p its peaks' frequencies from water at ``field_t`` tesla. (E,)"""
    te = np.asarray(echo_times, dtype=np.float64)
    amplitudes = np.asarray(FAT_AMPLITUDES) / np.sum(FAT_AMPLITUDES)
    hz = np.asarray(FAT_PPM) * PROTON_HZ_PER_T_PPM * field_t
    return (amplitudes[:, None] * np.exp(2j * np.pi * hz[:, None] * te)).sum(0)


def decays(
    kind: str,
    n: int,
    echo_times: Sequence[float] | np.ndarray,
    *,
    s0: float = 1000.0,
    sigma: float = 5.0,
    field_t: float = 3.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` voxels of one kind of decay, with complex Gaussian noise of SD ``sigma`` per
    channel: (complex signal (n, E) complex128, its magnitude (n, E) float32 (Rician), the
    T2* (n,) of the mono-exponential part, s).

    ``mono``: S0 exp(-TE/T2*), T2* log-uniform in 10-60 ms, the null case. ``two_pools``: half
    the signal with T2* 3 ms, half with 50 ms. ``fat``: 65 % water (T2* log-uniform 10-60
    ms) and 35 % fat (the 6-peak spectrum, T2* 15 ms), echoes not in phase. ``dark_first_echo``:
    mono-exponential with the first echo 15 % too dark. Every voxel has a phase of its own
    and an off-resonance of up to +-40 Hz."""
    if kind not in DECAY_KINDS:
        raise ValueError(f"kind must be one of {DECAY_KINDS}, got {kind!r}")
    te = np.asarray(echo_times, dtype=np.float64)
    rng = np.random.default_rng(seed)
    t2 = np.exp(rng.uniform(np.log(0.010), np.log(0.060), n))
    decay = np.exp(-te / t2[:, None])
    if kind == "two_pools":
        t2 = np.full(n, np.nan)
        decay = 0.5 * np.exp(-te / 0.003) + 0.5 * np.exp(-te / 0.050) + 0j * te
        decay = np.broadcast_to(decay, (n, te.size))
    elif kind == "fat":
        decay = 0.65 * decay + 0.35 * fat_signal(te, field_t) * np.exp(-te / 0.015)
    elif kind == "dark_first_echo":
        decay = decay.copy()
        decay[:, 0] *= 0.85
    phase = rng.uniform(-np.pi, np.pi, (n, 1)) + 2 * np.pi * rng.uniform(-40, 40, (n, 1)) * te
    clean = s0 * decay * np.exp(1j * phase)
    noise = sigma * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape))
    signal = clean + noise
    return signal, np.abs(signal).astype(np.float32), t2


def bipolar(signal: np.ndarray, offset: float | np.ndarray) -> np.ndarray:
    """A bipolar read-out: the even echoes (2nd, 4th, ...; echo axis last) of a complex
    ``signal`` (..., E) shifted in phase by ``offset`` (rad; a number, or a map of the
    signal's spatial shape)."""
    out = np.array(signal, dtype=np.complex128)
    shift = np.exp(1j * np.asarray(offset, dtype=np.float64))
    out[..., 1::2] *= shift[..., None] if np.ndim(shift) else shift
    return out


def spatial_offset(shape: Sequence[int], amplitude: float = 1.5, seed: int = 0) -> np.ndarray:
    """A smooth map (``shape``) of phase offsets in [-amplitude, amplitude] rad, as a bipolar
    read-out's gradient delays and eddy currents make them: a random plane plus a constant."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = rng.uniform(-1, 1) + sum(rng.uniform(-1, 1) * g for g in grids)
    return amplitude * np.asarray(field) / max(float(np.abs(field).max()), 1e-12)


def incoherent_phase(signal: np.ndarray, seed: int = 0, max_step: float = 3.0) -> np.ndarray:
    """Phase that follows no frequency: each echo of a complex ``signal`` (X, Y, Z, E) gets a
    smooth phase map of its own (a random constant and plane), so that each echo's phase is
    smooth in space while the steps between consecutive echoes jump by up to ``max_step``
    rad (1-3 rad seen on real vendor data)."""
    rng = np.random.default_rng(seed)
    out = np.array(signal, dtype=np.complex128)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in out.shape[:-1]], indexing="ij")
    offset = 0.0
    for k in range(out.shape[-1]):
        if k:
            offset += rng.uniform(1.0, max_step) * rng.choice([-1.0, 1.0])
        plane = sum(rng.uniform(-0.5, 0.5) * g for g in grids)
        out[..., k] *= np.exp(1j * (offset + plane))
    return out


def ghosted(signal: np.ndarray, axis: int = 1, error_rad: float = 0.3, seed: int = 0) -> np.ndarray:
    """Motion ghosts: the complex ``signal`` (X, Y, Z, E) with a random phase error on each
    phase-encoding line (along ``axis``) of its k-space, the same for every echo (one shot
    reads all the echoes of a line), of SD ``error_rad``. The object's energy spreads along
    that axis over the whole field of view, as breathing makes it in body images; the ghosts
    decay with the object, echo by echo."""
    rng = np.random.default_rng(seed)
    k = np.fft.fft(np.asarray(signal, dtype=np.complex128), axis=axis)
    errors = np.exp(1j * rng.normal(0.0, error_rad, signal.shape[axis]))
    shape = [1] * k.ndim
    shape[axis] = -1
    return np.fft.ifft(k * errors.reshape(shape), axis=axis)
