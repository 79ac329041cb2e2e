"""The complex fit of multi-echo BOLD with phase (``part-phase`` echoes): S0, R2* and the
frequency from the complex echoes, with the MEGRE machinery (:mod:`t2starmap.fit.complex`,
its phase check in :mod:`t2starmap.fit.phase`).

Pure numpy and torch: no I/O, no logging. Voxels on the first axis, echoes on the last
(ascending), echo times in s, R2* in 1/s, T2* in s, phase in rad.

``fitmode all`` fits one set of complex echoes per voxel, as the magnitude fits fit the
temporal moments. The phase of a BOLD voxel is not constant over time: respiration and
scanner drift move the field, so each volume's phase offset (and, much less, its frequency)
changes, by up to radians over a run. Averaging the complex echoes as they are would let those
offsets cancel the signal (the mean shrinks, unevenly across echoes once the frequency
drifts). Fitting every volume's echoes (T complex fits per voxel) and averaging the maps costs
T times the fit and averages T noisy fits, biased at low SNR. So, per voxel
(:func:`aligned_mean`): the run's frequency from the echo products summed over the volumes
(each product x_{k+1} conj(x_k) is free of the volume's offset), then each volume demodulated
by its own offset (the phase of its echoes' sum after removing that frequency), then the mean
over the volumes. The mean keeps the run's frequency in its phase and the decay in its
magnitude, and its noise is that of T volumes; one complex fit of it gives S0, R2* and f
(:func:`fit_aligned`). Its limit: a volume's offset is estimated from the same echoes, so
where even the sum of the echoes has no signal (SNR below about 2 in the first echo), the
aligned noise keeps a floor, as a magnitude does. ``fitmode ts`` with phase is not done.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from t2starmap.fit.bold import Compute, DecayFit, empty_result, store_fit
from t2starmap.fit.status import Failure

#: Voxel rows demodulated at a time: bounds the (rows, T, E) complex temporaries.
ROWS = 1 << 12
#: Failure bits that make a complex voxel a failure (its fit map): as curvefit's, and phase
#: that follows no frequency.
FAILED_BITS = int(
    Failure.NOT_CONVERGED | Failure.BAD_INPUT | Failure.S0_NONPOSITIVE | Failure.PHASE_MODEL
)


def run_frequency(x: np.ndarray, te: np.ndarray) -> np.ndarray:
    """omega = 2 pi f (rad/s) of each row of ``x`` (n, T, E) complex: the phase of the echo
    products at the shortest echo spacing, summed over the volumes and pairs, over that
    spacing (known modulo 2 pi / spacing; the complex fit refines it). (n,)."""
    gaps = np.diff(te)
    shortest = gaps.min()
    pairs = np.flatnonzero(gaps <= shortest * (1.0 + 1e-3))
    z = (x[..., pairs + 1] * np.conj(x[..., pairs])).sum(axis=(1, 2))
    return np.asarray(np.angle(z) / shortest)


def _aligned_block(x: np.ndarray, te: np.ndarray) -> np.ndarray:
    omega = run_frequency(x, te)
    ramp = np.exp(-1j * omega[:, None] * te[None, :])  # (n, E)
    offset = (x * ramp[:, None, :]).sum(axis=2)  # (n, T): each volume's echoes demodulated
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.nan_to_num(np.conj(offset) / np.abs(offset), nan=1.0)
    return np.asarray((x * unit[..., None]).mean(axis=1))


def aligned_mean(
    magnitude: Sequence[np.ndarray],
    phase: Sequence[np.ndarray],
    te: np.ndarray,
    volumes: np.ndarray | None = None,
) -> np.ndarray:
    """The complex echoes of each voxel averaged over the volumes after removing each
    volume's phase offset (see the module): (V, E) complex128 from each echo's ``magnitude``
    and ``phase`` (rad) samples, (V, T) each, echoes ascending in ``te`` (s); ``volumes``:
    bool (T,), the volumes to use (None: all)."""
    te = np.asarray(te, dtype=np.float64)
    n = magnitude[0].shape[0]
    out = np.zeros((n, len(magnitude)), dtype=np.complex128)
    for a in range(0, n, ROWS):
        rows = []
        for m, p in zip(magnitude, phase, strict=True):
            mb, pb = m[a : a + ROWS], p[a : a + ROWS]
            if volumes is not None:
                mb, pb = mb[:, volumes], pb[:, volumes]
            rows.append(mb.astype(np.float64) * np.exp(1j * pb.astype(np.float64)))
        out[a : a + ROWS] = _aligned_block(np.stack(rows, axis=2), te)
    return out


def fit_aligned(
    mean: np.ndarray,
    te: np.ndarray,
    inside: np.ndarray,
    sigma: float | None,
    how: Compute,
    bipolar: bool = False,
) -> tuple[DecayFit, np.ndarray]:
    """The complex fit (:func:`t2starmap.fit.complex.fit_complex`) of ``mean`` (V, E)
    complex (:func:`aligned_mean`) in the voxels ``inside`` (V,) bool; ``sigma``: the noise
    SD of each channel of the mean (the temporal sigma over sqrt(T)), None: from the
    residuals; ``how``: the compute settings; ``bipolar``: the bipolar model (the phase
    check found a bipolar read-out). The decay fit (T2*, S0, their
    variances; Failure bits, PHASE_MODEL where the voxel's phase follows no frequency) and the
    frequency map (Hz), (V,)."""
    from t2starmap.fit.complex import fit_complex
    from t2starmap.fit.limits import NoiseModel

    out = empty_result(inside.size)
    sel = np.flatnonzero(inside)
    res = fit_complex(
        mean[sel].astype(np.complex64), te, noise=NoiseModel(sigma), compute=how.torch(),
        bipolar=bipolar,
    )  # fmt: skip
    s0 = res.s0.cpu().numpy().astype(np.float64)
    r2 = res.r2star.cpu().numpy().astype(np.float64)
    s0_se = res.s0_se.cpu().numpy().astype(np.float64)
    r2_se = res.r2star_se.cpu().numpy().astype(np.float64)
    store_fit(out, sel, (s0, r2, s0_se, r2_se), res.reason.cpu().numpy(), FAILED_BITS)
    frequency = np.zeros(inside.size)
    assert res.frequency is not None
    frequency[sel] = res.frequency.cpu().numpy()
    return DecayFit(**out), frequency
