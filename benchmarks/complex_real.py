"""R2* of every fit on real GE kidney data, against an independent complex-domain reference.

    python benchmarks/complex_real.py [BIDS_DIR] [--dicom DIR] [--voxels 2000] [--seed 0]
        [--threads 1] [--append benchmarks/RESULTS.md]

BIDS_DIR is the GE kidney set converted by ``t2starmap convert ... --participant-label ge``;
without it the script converts ``../shared/data/dicom/ge-mr750-kidney-megre`` (or ``--dicom``)
into a temporary folder first. tedana (the ``bench`` extra) is optional: put it on PYTHONPATH,
e.g. ``pip install --target /tmp/tedana-pkgs tedana`` then
``PYTHONPATH=src:/tmp/tedana-pkgs``; without it its rows say why they are missing.

The GE set (12 echoes, TE 4.6 + 4.612 k ms, 256x256x5) has magnitude, real and imaginary parts.

Reference: noise sigma_ref = 1.4826 MAD of the real channel in the background (first-echo
magnitude below the Otsu threshold, exact zeros left out). Bright voxels: first-echo
|x| / sigma_ref > 10. A seeded random subset of them is fitted voxel by voxel with
scipy.optimize.least_squares on the real and imaginary residuals of
S0 exp(-TE R2* + i (phi0 + 2 pi f TE)), float64, from the truth-free start of a log-linear fit
and the consecutive-echo phase. The complex data have no noise floor, so this reference carries
no Rician bias.

Fits compared, each on the whole volume:

* the app's default fit as the participant run does it (without the through-slice correction,
  which the reference does not have either; a second row with it):
  :func:`t2starmap.workflows.echo_set.fit_echo_set` with the participant run's
  :class:`t2starmap.workflows.echo_set.Options` (``fit_method="nlls"``), so the noise level comes
  from the app's own pipeline and the mask is the app's;
* the same entry point with ``nlls-gaussian`` and with ``complex``;
* tedana's t2smap fits, ``tedana.decay.fit_decay`` with ``loglin`` (the app's mask) and
  ``curvefit`` (the reference subset only: it runs at ~1-2 k voxels/s, its whole-volume time
  is extrapolated linearly in voxel count).

Printed (Markdown): the noise level, method and coils each app fit used; the complex fit
against the reference (median |relative difference| of R2*, target <= 2 %; median |f
difference| in Hz, target <= 2 Hz); per R2* bin (the geometric mean of the method's and the
reference's R2*: 0-60, 60-150, 150-400 and the combined 60-400 1/s band, the target band:
|median signed difference| <= 2 % for the default) the median signed relative difference of
R2* against the reference, over all subset voxels and over those the method does not flag;
the time of each fit. ``--append FILE`` adds the same tables as one dated section to FILE.
(tedana's curvefit draws a progress bar on stderr.)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import least_squares

from t2starmap import __version__
from t2starmap.bids.layout import EchoSet, find_echo_sets
from t2starmap.bids.nifti import check_geometry, load_magnitude
from t2starmap.bids.parts import find_parts, load_complex
from t2starmap.cli.run import main as t2starmap_main
from t2starmap.fit import resolve_device
from t2starmap.noise import otsu_threshold
from t2starmap.workflows.echo_set import Options, SetFit, fit_echo_set

HERE = Path(__file__).resolve().parent
DEFAULT_DICOM = HERE.parent.parent / "shared" / "data" / "dicom" / "ge-mr750-kidney-megre"
#: R2* bins (1/s) of the geometric mean of a method's and the reference's R2*; the last is
#: the target band.
BINS = ((0.0, 60.0), (60.0, 150.0), (150.0, 400.0), (60.0, 400.0))
TARGET_BAND = (60.0, 400.0)
TARGET = 0.02
#: first-echo |x| / sigma_ref above which a voxel is bright
BRIGHT_SNR = 10.0


@dataclass(frozen=True)
class Row:
    """One fit's R2* on the reference subset and how long its whole-volume fit took."""

    name: str
    r2star: np.ndarray  # (n_subset,) 1/s
    flagged: np.ndarray  # (n_subset,) bool
    seconds: float
    voxels: int  # voxels of the timed fit
    note: str = ""  # e.g. "extrapolated"


def background_sigma(signal: np.ndarray) -> float:
    """1.4826 MAD of the real channel over the background of the first echo."""
    first = np.abs(signal[..., 0])
    background = (first < otsu_threshold(first[first > 0])) & (first > 0)
    real = signal[background].real.ravel()
    return float(1.4826 * np.median(np.abs(real - np.median(real))))


def reference_fit(x: np.ndarray, te: np.ndarray) -> np.ndarray:
    """(S0, R2*, phi0, f, sum of squared residuals) of one voxel x (n_echoes,) complex, te
    (n_echoes,) s, by scipy least_squares on real+imag residuals."""
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
    solved = least_squares(residuals, start, method="lm", xtol=1e-10, ftol=1e-10)
    return np.append(solved.x, 2.0 * solved.cost)


def within_noise(ssr: np.ndarray, valid: np.ndarray, n_echo: int) -> tuple[np.ndarray, float]:
    """(voxels where the reference fits to within noise, the tissue's sigma that says so). The
    sigma: the residual SD of the reference fits in the band of least misfit, the lower
    quartile of SSR over its chi-square point (2E - 4 degrees of freedom); within noise: SSR
    below sigma^2 times the upper 1e-3 point of that chi-square (the app's misfit test)."""
    from t2starmap.fit.stats import chi2_upper

    dof = 2 * n_echo - 4
    sigma = float(np.sqrt(np.percentile(ssr[valid], 25) / chi2_upper(dof, 0.75)))
    return valid & (ssr <= sigma**2 * chi2_upper(dof, 1e-3)), sigma


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def convert(dicom: Path, target: Path) -> Path:
    """Convert the GE DICOM folder into ``target`` with the app's own converter."""
    code = t2starmap_main(["convert", str(dicom), str(target), "--participant-label", "ge", "-q"])
    if code != 0:
        sys.exit(f"t2starmap convert {dicom} failed with exit code {code}")
    return target


def app_fit(
    bids_dir: Path,
    echo_set: EchoSet,
    method: str,
    threads: int,
    sigma: float | None = None,
    b0: str = "none",
) -> tuple[SetFit, float]:
    """One participant-run fit of the set through the app's entry point, timed; ``sigma`` as
    ``--noise-sigma`` (coils 1) when given; ``b0`` the field-gradient correction (none by
    default: the reference is not corrected either)."""
    options = Options(
        fit_method=method,
        b0_correction=b0,
        noise_sigma=sigma,
        noise_coils=None if sigma is None else 1.0,
        device=resolve_device("auto"),
        workers=threads,
    )
    geometry = check_geometry(echo_set.paths)
    return timed(lambda: fit_echo_set(echo_set, geometry, options))


def tedana_r2star(magnitude: np.ndarray, te: np.ndarray, fittype: str) -> tuple[np.ndarray, Any]:
    """R2* (1/s) and failures of tedana.decay.fit_decay on (n, n_echoes) magnitudes, every echo
    used (adaptive mask = n_echoes); tedana takes TE in ms and returns T2* in ms."""
    from tedana.decay import fit_decay

    adaptive = np.full(magnitude.shape[0], te.size, dtype=int)
    t2s, _s0, failures, *_ = fit_decay(
        magnitude, list(te * 1000.0), adaptive, fittype, report=False
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1000.0 / np.asarray(t2s, np.float64).reshape(-1)
    failed = np.zeros(r2.size, bool) if failures is None else np.asarray(failures, bool).ravel()
    return r2, failed


def signed_table(
    rows: list[Row], r2_ref: np.ndarray, valid: np.ndarray, flagged: bool
) -> list[str]:
    """Median signed relative difference of R2* per bin; cells '+x.xx % (n)'."""
    head = " | ".join(
        f"{lo:g}-{hi:g}" + (" (target)" if (lo, hi) == TARGET_BAND else "") for lo, hi in BINS
    )
    lines = [f"| method | {head} |", "|---|" + "---:|" * len(BINS)]
    for row in rows:
        r2 = row.r2star
        usable = valid & np.isfinite(r2) & (r2 > 0)
        if flagged:
            usable &= ~row.flagged
        gm = np.sqrt(np.where(usable, r2, 1.0) * np.where(valid, r2_ref, 1.0))
        cells = []
        for lo, hi in BINS:
            sel = usable & (gm >= lo) & (gm < hi)
            if not sel.any():
                cells.append("- (0)")
                continue
            diff = r2[sel] / r2_ref[sel] - 1
            cell = f"{np.median(diff):+.2%}"
            if (lo, hi) == TARGET_BAND:
                low, high = bootstrap_interval(diff)
                cell += f" [{low:+.2%}, {high:+.2%}]"
            cells.append(f"{cell} ({sel.sum()})")
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return lines


def bootstrap_interval(values: np.ndarray, draws: int = 2000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median of ``values`` (seeded)."""
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(values, size=(draws, values.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def band_difference(row: Row, r2_ref: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Signed relative differences of R2* in the target band (bins as in signed_table)."""
    r2 = row.r2star
    usable = valid & np.isfinite(r2) & (r2 > 0)
    gm = np.sqrt(np.where(usable, r2, 1.0) * np.where(valid, r2_ref, 1.0))
    sel = usable & (gm >= TARGET_BAND[0]) & (gm < TARGET_BAND[1])
    return r2[sel] / r2_ref[sel] - 1


def noise_line(name: str, fitted: SetFit, seconds: float) -> str:
    info = fitted.fit_info
    sigma = info["NoiseSigma"]
    sigma_text = "none" if sigma is None else f"{sigma:.4g}"
    return (
        f"| {name} | {fitted.fit_method} | {fitted.noise_model} | {sigma_text} "
        f"| {info['NoiseSigmaMethod']} | {info['NoiseCoils']:.3g} | {fitted.n_voxels} "
        f"| {fitted.failed_fraction:.2%} | {seconds:.2f} |"
    )


def machine() -> str:
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs "
        f"(shared with other jobs: load average {load} at start), Linux {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread(s)), t2starmap {__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "bids_dir", type=Path, nargs="?", help="converted GE set (default: convert)"
    )
    parser.add_argument("--dicom", type=Path, default=DEFAULT_DICOM)
    parser.add_argument("--voxels", type=int, default=2000, help="reference subset size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep", type=float, nargs="*", default=(), help="also fit with these sigmas given"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--append", type=Path, help="append a dated section to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.UTC)
    where_run = machine()

    with tempfile.TemporaryDirectory(prefix="t2starmap-ge-") as tmp:
        bids_dir = args.bids_dir or convert(args.dicom, Path(tmp) / "bids")
        lines = run(bids_dir, args)

    path = os.environ.get("PYTHONPATH")
    command = (f"PYTHONPATH={path} " if path else "") + "python benchmarks/complex_real.py "
    command += " ".join(sys.argv[1:])
    section = [
        "## Real GE kidney data: R2* against a complex-domain reference "
        f"({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`.",
        "",
        f"Machine: {where_run}. Times are one run each on this shared machine.",
        "",
        *lines,
    ]
    print("\n".join(section))
    if args.append is not None:
        with args.append.open("a", encoding="utf-8") as out:
            out.write("\n" + "\n".join(section) + "\n")
        print(f"\nappended to {args.append}")


def read(echo_set: EchoSet) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude (x, y, z, n_echoes) float32 and complex signal (same shape) of the set."""
    geometry = check_geometry(echo_set.paths)
    magnitude = load_magnitude(echo_set.paths, geometry)
    parts = find_parts(echo_set)
    if parts is None:
        sys.exit(f"{echo_set.echoes[0].path}: no real/imag or phase parts beside the magnitude")
    return magnitude, load_complex(parts, geometry, magnitude)


def run(bids_dir: Path, args: argparse.Namespace) -> list[str]:
    """Fit everything, return the Markdown lines."""
    out: list[str] = []
    (echo_set,) = find_echo_sets(bids_dir)
    geometry = check_geometry(echo_set.paths)
    (magnitude, signal), t_read = timed(lambda: read(echo_set))
    te = np.asarray(echo_set.echo_times)
    sigma_ref = background_sigma(signal)
    bright = np.abs(signal[..., 0]) / sigma_ref > BRIGHT_SNR
    both = bright[..., None] & (magnitude > 0)
    consistency = np.median(np.abs(np.abs(signal[both]) / magnitude[both] - 1))
    out += [
        f"Set {echo_set.name}: shape {geometry.shape}, {te.size} echoes, TE "
        f"{te[0] * 1e3:.3f}-{te[-1] * 1e3:.3f} ms; reading magnitude + real/imag took "
        f"{t_read:.2f} s. Reference sigma (1.4826 MAD of the background's real channel) "
        f"{sigma_ref:.4g}; {bright.sum()} voxels with first-echo SNR > {BRIGHT_SNR:g}; "
        f"median | |real + i imag| / magnitude - 1 | over them {consistency:.2%}.",
        "",
    ]

    default, t_default = app_fit(bids_dir, echo_set, "nlls", args.threads)
    corrected, t_corrected = app_fit(bids_dir, echo_set, "nlls", args.threads, b0="auto")
    gauss, t_gauss = app_fit(bids_dir, echo_set, "nlls-gaussian", args.threads)
    cx, t_cx = app_fit(bids_dir, echo_set, "complex", args.threads)
    app_mask = np.asarray(default.maps["signal"], bool)

    rng = np.random.default_rng(args.seed)
    candidates = np.flatnonzero(bright.ravel())
    subset = np.sort(rng.choice(candidates, size=min(args.voxels, candidates.size), replace=False))
    flat_signal = signal.reshape(-1, te.size).astype(np.complex128)
    ref, t_ref = timed(lambda: np.array([reference_fit(flat_signal[i], te) for i in subset]))
    r2_ref, f_ref = ref[:, 1], ref[:, 3]
    valid = (r2_ref > 0) & (r2_ref < 1000)
    holds, sigma_tissue = within_noise(ref[:, 4], valid, te.size)

    def app_row(name: str, fitted: SetFit, seconds: float) -> Row:
        r2 = np.asarray(fitted.maps["r2star"], np.float64).reshape(-1)[subset]
        fitted_here = np.asarray(fitted.maps["signal"], bool).reshape(-1)[subset]
        r2 = np.where(fitted_here, r2, np.nan)  # outside the app's mask: not fitted
        flagged = np.asarray(fitted.maps["failed"], bool).reshape(-1)[subset]
        return Row(name, r2, flagged, seconds, fitted.n_voxels)

    rows = [
        app_row("t2starmap default (fit_echo_set, nlls)", default, t_default),
        app_row("t2starmap default with --b0-correction auto", corrected, t_corrected),
        app_row("t2starmap nlls-gaussian", gauss, t_gauss),
        app_row("t2starmap complex", cx, t_cx),
    ]
    try:
        import tedana

        have_tedana, tedana_note = True, f"tedana {tedana.__version__}"
    except ImportError as err:
        have_tedana, tedana_note = False, f"{err}; see the module docstring"
    if have_tedana:
        in_mask = magnitude[app_mask].astype(np.float64)
        (r2_loglin, _), t_loglin = timed(lambda: tedana_r2star(in_mask, te, "loglin"))
        full = np.full(app_mask.size, np.nan)
        full[app_mask.reshape(-1)] = r2_loglin
        rows.append(
            Row(
                "tedana t2smap loglin",
                full[subset],
                np.zeros(subset.size, bool),
                t_loglin,
                in_mask.shape[0],
            )
        )
        sub_mag = magnitude.reshape(-1, te.size)[subset].astype(np.float64)
        (r2_curve, fail_curve), t_curve = timed(lambda: tedana_r2star(sub_mag, te, "curvefit"))
        rows.append(
            Row(
                "tedana t2smap curvefit",
                r2_curve,
                fail_curve,
                t_curve * app_mask.sum() / subset.size,
                int(app_mask.sum()),
                f"extrapolated from {subset.size} voxels ({t_curve:.2f} s)",
            )
        )

    out += [
        "Noise level and mask of each app fit (fit_echo_set, as the participant run calls it):",
        "",
        "| fit | method | noise model | sigma | sigma from | coils | mask voxels | flagged | s |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
        noise_line("default", default, t_default),
        noise_line("nlls-gaussian", gauss, t_gauss),
        noise_line("complex", cx, t_cx),
        "",
    ]
    note = default.fit_info.get("NoiseSigmaNote")
    if note:
        out += [f"Default's noise note: {note}.", ""]
    outside = int((~app_mask.reshape(-1)[subset]).sum())
    out += [
        f"Reference subset: {subset.size} seeded voxels (seed {args.seed}) of the bright ones, "
        f"{valid.sum()} with 0 < reference R2* < 1000 1/s; {outside} outside the default's mask.",
        "",
    ]

    # The complex fit against the reference (same model, same data): R2* and f.
    r2_cx = rows[3].r2star
    f_cx = np.asarray(cx.maps["frequency"], np.float64).reshape(-1)[subset]
    alias = 1.0 / np.diff(te).min()  # f is only known modulo 1/dTE
    df = (f_cx - f_ref + alias / 2) % alias - alias / 2
    out += [
        "The complex fit against the reference:",
        "",
        "| voxels | n | R2* abs rel diff: median | p95 | f abs diff (Hz): median | p95 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, sel in (("all in subset", valid), ("not flagged", valid & ~rows[3].flagged)):
        sel = sel & np.isfinite(r2_cx)
        rel = np.abs(r2_cx[sel] / r2_ref[sel] - 1)
        fd = np.abs(df[sel])
        out.append(
            f"| {label} | {sel.sum()} | {np.median(rel):.3%} | {np.percentile(rel, 95):.3%} "
            f"| {np.median(fd):.3f} | {np.percentile(fd, 95):.3f} |"
        )
    out.append("")

    for flagged, label in ((False, "all subset voxels"), (True, "voxels the method does not flag")):
        out += [
            f"Median signed relative difference of R2* against the reference (n), {label}; "
            "bins on the geometric mean of the two R2* (1/s):",
            "",
            *signed_table(rows, r2_ref, valid, flagged),
            "",
        ]
    out += [
        f"The same on the {int(holds.sum())} voxels where the reference fits to within noise "
        f"(its residual sigma in the band of least misfit, the lower quartile: "
        f"{sigma_tissue:.4g}; SSR below its chi-square p < 0.001 point), where a true R2* is "
        "defined (issue 27):",
        "",
        *signed_table(rows, r2_ref, holds, False),
        "",
    ]
    if not have_tedana:
        out += [f"tedana t2smap loglin / curvefit: not available: {tedana_note}.", ""]

    # How the default's bias moves with the noise level it is given (--noise-sigma).
    candidates_sigma = [
        ("this script's reference (background, all echoes)", sigma_ref),
        ("the app's default (" + default.noise.method + ")", default.noise.sigma),
        ("the app's complex fit's (" + cx.noise.method + ")", cx.noise.sigma),
        ("the reference's residual in tissue (least misfit)", sigma_tissue),
    ] + [("sweep", value) for value in args.sweep]
    given = []
    for label, value in candidates_sigma:
        if value is None:
            continue
        fitted, seconds = app_fit(bids_dir, echo_set, "nlls", args.threads, value)
        given.append(app_row(f"nlls, sigma {value:.4g} given: {label}", fitted, seconds))
    out += [
        "The default (nlls, Rician) with the noise level given by hand (--noise-sigma, coils 1), "
        "all subset voxels, then those where the reference fits to within noise:",
        "",
        *signed_table(given, r2_ref, valid, False),
        "",
        *signed_table(given, r2_ref, holds, False),
        "",
    ]

    band = band_difference(rows[0], r2_ref, valid)
    median = float(np.median(band)) if band.size else float("nan")
    low, high = bootstrap_interval(band) if band.size else (median, median)
    verdict = "meets" if abs(median) <= TARGET else "misses"
    inside = "inside" if low >= -TARGET and high <= TARGET else "not wholly inside"
    out += [
        f"Default in {TARGET_BAND[0]:g}-{TARGET_BAND[1]:g} 1/s ({band.size} voxels): median "
        f"signed difference {median:+.2%}: {verdict} the target |median| <= {TARGET:.0%}; its "
        f"95 % bootstrap interval [{low:+.2%}, {high:+.2%}] is {inside} +-{TARGET:.0%}. "
        "Target-band cells carry the same interval in brackets.",
        "",
        f"Times of the whole-volume fits ({args.threads} thread(s); the app's rows are whole "
        f"fit_echo_set calls: reading {t_read:.2f} s, noise, mask and fit):",
        "",
        "| fit | voxels | s | voxels/s | note |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        out.append(
            f"| {row.name} | {row.voxels} | {row.seconds:.2f} | {row.voxels / row.seconds:,.0f} "
            f"| {row.note} |"
        )
    out.append(
        f"| scipy least_squares reference | {subset.size} | {t_ref:.2f} "
        f"| {subset.size / t_ref:,.0f} | subset only |"
    )
    if have_tedana:
        out += ["", f"({tedana_note}.)"]
    return out


if __name__ == "__main__":
    main()
