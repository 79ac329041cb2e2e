"""The complex fit on real GE kidney data, against an independent per-voxel reference.

    t2starmap convert /work/shared/data/dicom/ge-mr750-kidney-megre /tmp/cx-ge \\
        --participant-label ge
    python benchmarks/complex_real.py /tmp/cx-ge [--voxels 2000] [--seed 0]

The GE set (12 echoes, TE 4.6 + 4.612 k ms, 256x256x5) has magnitude, real and imaginary parts.
Noise sigma = 1.4826 MAD of the real channel in the background (first-echo magnitude below the
Otsu threshold, exact zeros left out). Bright voxels: first-echo |x| / sigma > 10; a seeded
random subset is fitted voxel by voxel with scipy.optimize.least_squares (real and imaginary
residuals of the same model, float64, from the truth-free start of a log-linear fit and the
consecutive-echo phase), the reference. Printed:

1. the complex fit (t2starmap.fit_complex, float32) against the reference: median |relative
   difference| of R2* (target <= 2 %), median |f difference| in Hz (target <= 2 Hz), over all
   subset voxels and over those the fit does not flag;
2. per R2* bin (geometric mean of the two R2*; 0-60, 60-150, 150-400 1/s): the median signed
   relative difference of R2* against the reference for the complex fit, the magnitude default
   (``nlls`` with sigma: the noise-aware fit) and ``nlls-gaussian``;
3. the time of each fit of the whole volume, and of the reference on the subset.

The Markdown tables go to stdout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import least_squares

from t2starmap.fit import fit_t2star
from t2starmap.fit_complex import fit_complex
from t2starmap.layout import find_echo_sets
from t2starmap.nifti import check_geometry, load_magnitude
from t2starmap.noise import otsu_threshold
from t2starmap.parts import find_parts, load_complex

BINS = ((0.0, 60.0), (60.0, 150.0), (150.0, 400.0))


def background_sigma(signal: np.ndarray) -> float:
    """1.4826 MAD of the real channel over the background (all echoes)."""
    first = np.abs(signal[..., 0])
    background = (first < otsu_threshold(first[first > 0])) & (first > 0)
    real = signal[background].real.ravel()
    return float(1.4826 * np.median(np.abs(real - np.median(real))))


def reference_fit(x: np.ndarray, te: np.ndarray) -> np.ndarray:
    """(S0, R2*, phi0, f) of one voxel by scipy least_squares on real+imag residuals."""
    mag = np.abs(x)
    w = mag**2
    slope, intercept = np.polyfit(te, np.log(np.maximum(mag, 1e-30)), 1, w=np.sqrt(w))
    z = x[1:] * np.conj(x[:-1])
    f0 = np.angle(z.sum()) / (2 * np.pi * np.diff(te).min())
    phi0 = np.angle(np.sum(x * np.exp(-2j * np.pi * f0 * te) * np.exp(slope * te)))

    def residuals(p: np.ndarray) -> np.ndarray:
        model = p[0] * np.exp(-te * p[1] + 1j * (p[2] + 2 * np.pi * p[3] * te))
        r = model - x
        return np.concatenate([r.real, r.imag])

    start = np.array([np.exp(intercept), max(-slope, 1.0), phi0, f0])
    return np.asarray(least_squares(residuals, start, method="lm", xtol=1e-10, ftol=1e-10).x)


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    (echo_set,) = find_echo_sets(args.bids_dir)
    geometry = check_geometry(echo_set)
    magnitude = load_magnitude(echo_set, geometry)
    parts = find_parts(echo_set)
    assert parts is not None, "no phase/real/imag parts beside the magnitude echoes"
    signal = load_complex(parts, geometry, magnitude)
    te = np.asarray(echo_set.echo_times)
    sigma = background_sigma(signal)
    bright = np.abs(signal[..., 0]) / sigma > 10
    print(f"set {echo_set.name}: {parts.kind}, shape {geometry.shape}, {te.size} echoes")
    print(f"sigma (1.4826 MAD, background real) = {sigma:.4g}; bright voxels {bright.sum()}")
    both = bright[..., None] & (magnitude > 0)
    mag_consistency = np.median(np.abs(np.abs(signal[both]) / magnitude[both] - 1))
    print(f"median | |real + i imag| / magnitude - 1 | over bright voxels: {mag_consistency:.2%}")

    cx, t_cx = timed(lambda: fit_complex(signal, te, mask=bright, noise_sigma=sigma))
    nlls, t_nlls = timed(
        lambda: fit_t2star(magnitude, te, method="nlls", mask=bright, noise_sigma=sigma)
    )
    gauss, t_gauss = timed(
        lambda: fit_t2star(magnitude, te, method="nlls-gaussian", mask=bright, noise_sigma=sigma)
    )

    rng = np.random.default_rng(args.seed)
    where = np.flatnonzero(bright.ravel())
    subset = np.sort(rng.choice(where, size=min(args.voxels, where.size), replace=False))
    flat_signal = signal.reshape(-1, te.size).astype(np.complex128)
    start = time.perf_counter()
    ref = np.array([reference_fit(flat_signal[i], te) for i in subset])
    t_ref = time.perf_counter() - start

    def values(result: object, name: str) -> np.ndarray:
        return getattr(result, name).cpu().numpy().reshape(-1)[subset].astype(np.float64)

    r2_ref = ref[:, 1]
    f_ref = ref[:, 3]
    r2_cx = values(cx, "r2star")
    f_cx = values(cx, "frequency")
    ok = ~cx.failed.cpu().numpy().reshape(-1)[subset]
    # Frequencies are compared modulo the alias 1/dTE (even spacing: both are one model).
    alias = 1.0 / np.diff(te).min()
    df = (f_cx - f_ref + alias / 2) % alias - alias / 2
    valid = (r2_ref > 0) & (r2_ref < 1000)
    print()
    print("| voxels | n | R2* abs rel diff: median | p95 | f abs diff (Hz): median | p95 |")
    print("|---|---|---|---|---|---|")
    for label, sel in (("all in subset", valid), ("not flagged", valid & ok)):
        rel = np.abs(r2_cx[sel] / r2_ref[sel] - 1)
        fd = np.abs(df[sel])
        print(
            f"| {label} | {sel.sum()} | {np.median(rel):.3%} | {np.percentile(rel, 95):.3%} "
            f"| {np.median(fd):.3f} | {np.percentile(fd, 95):.3f} |"
        )
    print(
        f"\nflagged by the complex fit in the subset: {(~ok).mean():.1%}; reasons (bits): "
        f"{np.bincount(cx.reason.cpu().numpy().reshape(-1)[subset]).nonzero()[0].tolist()}"
    )

    r2_nlls, r2_gauss = values(nlls, "r2star"), values(gauss, "r2star")
    gm = np.sqrt(np.clip(r2_cx, 1e-9, None) * np.clip(r2_ref, 1e-9, None))
    for label, which in (("all voxels of the subset", valid), ("not flagged", valid & ok)):
        print(f"\nmedian signed relative difference of R2* against the reference, {label}")
        print("| R2* bin (1/s) | n | complex | nlls (sigma, noise-aware) | nlls-gaussian |")
        print("|---|---|---|---|---|")
        for lo, hi in BINS:
            sel = which & (gm >= lo) & (gm < hi)
            if not sel.any():
                print(f"| {lo:g}-{hi:g} | 0 | - | - | - |")
                continue
            cells = [np.median(r[sel] / r2_ref[sel] - 1) for r in (r2_cx, r2_nlls, r2_gauss)]
            row = " | ".join(f"{c:+.2%}" for c in cells)
            print(f"| {lo:g}-{hi:g} | {sel.sum()} | {row} |")

    print(f"\ntimes ({bright.sum()} bright voxels, {args.threads} thread(s))")
    print("| fit | s |")
    print("|---|---|")
    print(f"| complex (t2starmap) | {t_cx:.3f} |")
    print(f"| nlls noise-aware | {t_nlls:.3f} |")
    print(f"| nlls-gaussian | {t_gauss:.3f} |")
    print(f"| scipy least_squares reference, {subset.size} voxels | {t_ref:.2f} |")


if __name__ == "__main__":
    main()
