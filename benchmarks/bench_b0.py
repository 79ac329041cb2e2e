"""Through-slice field-gradient correction: accuracy against the integrating simulator, the
choice of the |F| threshold, and the cost of the correction against the complex fit.

    python benchmarks/bench_b0.py [--out benchmarks/B0.md] [--shape 96 96 16]

Data: :func:`t2starmap.sim.slices.make_slice_phantom`, which integrates the complex signal over
128 (rect) or 256 (gaussian) positions through each slice of a field that curves within the
slice (not the closed-form sinc); 2D slices of 3 mm, 11 echoes TE 2-40 ms, R2* 20-60 1/s,
complex Gaussian noise. The field map comes from the complex fit of the simulated signal (so it
is wrapped, and noisy), as in a real run, or from the phase differences without a fit (what a
run with a magnitude method uses). The uncorrected fit is ``nlls`` with the simulator's sigma
(noise-aware, as the app's default), or ``nlls-gaussian``; the corrected fit starts from it
with the same noise model. "steep": voxels whose field changes by >= 12 Hz
across the slice; "flat": no gradient. Errors are median |R2*/truth - 1| over the voxels the
correction ran on (status CORRECTED). Timings: best of 3, one torch thread (the fits barely
gain from a second thread on these machines, and lose much under load; benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2starmap.b0 import correction as b0
from t2starmap.b0.correction import SliceGeometry
from t2starmap.fit import NoiseModel, fit_complex, fit_t2star
from t2starmap.fit.phase import FieldMap, analyse_phase
from t2starmap.fit.status import Correction
from t2starmap.sim.slices import SlicePhantom, make_slice_phantom

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def _field(ph: SlicePhantom, source: str) -> FieldMap:
    signal = ph.magnitude * np.exp(1j * ph.phase)
    if source == "complex fit":
        return FieldMap.from_fit(
            fit_complex(signal, ph.echo_times, noise=NoiseModel(sigma=ph.sigma)), ph.echo_times
        )
    found = analyse_phase(signal, ph.echo_times, noise_sigma=ph.sigma).field_map()
    assert found is not None
    return found


def _correct(
    ph: SlicePhantom,
    threshold: float = b0.FACTOR_THRESHOLD,
    source: str = "phase differences",
    method: str = "nlls",
) -> b0.ThroughSliceCorrection:
    uncorrected = fit_t2star(
        ph.magnitude, ph.echo_times, method=method, noise=NoiseModel(sigma=ph.sigma)
    )
    return b0.correct_through_slice(
        ph.magnitude,
        ph.echo_times,
        SliceGeometry(ph.affine, mr_acquisition_type="2D", thickness_mm=ph.slice_thickness_mm),
        field=_field(ph, source),
        uncorrected=uncorrected,
        threshold=threshold,
    )


def _errors(ph: SlicePhantom, out: b0.ThroughSliceCorrection) -> dict[str, float]:
    done = out.status == Correction.CORRECTED
    steep = done & (ph.field_change_hz >= 12.0)
    flat = done & (ph.field_change_hz == 0.0)
    after = np.abs(out.corrected.r2star.numpy() / ph.r2star - 1.0)
    before = np.abs(out.uncorrected.r2star.numpy() / ph.r2star - 1.0)
    inside = out.status != Correction.OUTSIDE
    return {
        "steep_before": float(np.median(before[steep])),
        "steep_after": float(np.median(after[steep])),
        "past_zero": float(np.median(after[done & (ph.field_change_hz >= 25.0)]))
        if np.any(done & (ph.field_change_hz >= 25.0))
        else float("nan"),
        "flat_after": float(np.median(after[flat])),
        "gradient": float(np.median(np.abs(out.gradient_hz_per_mm - ph.gradient_hz_per_mm)[done])),
        "few": float(np.mean(out.status[inside] == Correction.FEW_ECHOES)),
        "phase": float(np.mean(out.status[inside] == Correction.FIELD_UNTRUSTED)),
    }


def _best(fn: Callable[[], Any], repeats: int = 3) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return float(best)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 16))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["# Through-slice correction (benchmarks/bench_b0.py)", ""]

    lines += [
        "## Accuracy (48 x 48 x 8, targets: steep after <= 5 % where before >= 15 %, flat <= 3 %)",
        "",
        "| profile | SNR | max dF (Hz) | field map | fit | steep before | steep after "
        "| flat after | median abs gradient error (Hz/mm) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for profile, snr, g_max in (
        ("rect", 100.0, 8.0),
        ("rect", 50.0, 8.0),
        ("rect", 20.0, 8.0),
        ("rect", 100.0, 10.0),
        ("gaussian", 100.0, 8.0),
    ):
        samples = 128 if profile == "rect" else 256
        ph = make_slice_phantom(
            (48, 48, 8), snr=snr, seed=7, profile=profile, samples=samples,
            max_gradient_hz_per_mm=g_max,
        )  # fmt: skip
        for source in ("complex fit", "phase differences"):
            for method in ("nlls-gaussian", "nlls"):
                e = _errors(ph, _correct(ph, source=source, method=method))
                lines.append(
                    f"| {profile} | {snr:.0f} | {3 * g_max:.0f} | {source} | {method} "
                    f"| {100 * e['steep_before']:.1f} % | {100 * e['steep_after']:.2f} % "
                    f"| {100 * e['flat_after']:.2f} % | {e['gradient']:.3f} |"
                )

    lines += [
        "",
        "## The |F| threshold (48 x 48 x 8, dF up to 36 Hz: at TE 40 ms the sinc passes its "
        "first zero where dF > 25 Hz)",
        "",
        "| threshold | rect SNR 100: steep after | dF >= 25 Hz | rect SNR 30: steep after "
        "| dF >= 25 Hz | gaussian SNR 100: steep after | few echoes (rect 100) "
        "| phase failed (rect 100) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    phantoms = [
        make_slice_phantom(
            (48, 48, 8), snr=snr, seed=8, profile=p, samples=128 if p == "rect" else 256,
            max_gradient_hz_per_mm=12.0,
        )
        for p, snr in (("rect", 100.0), ("rect", 30.0), ("gaussian", 100.0))
    ]  # fmt: skip
    for threshold in THRESHOLDS:
        cells = []
        for k, ph in enumerate(phantoms):
            e = _errors(ph, _correct(ph, threshold))
            cells.append(f"{100 * e['steep_after']:.2f} %")
            if k < 2:
                cells.append(f"{100 * e['past_zero']:.2f} %")
            if k == 0:
                tail = [f"{100 * e['few']:.1f} %", f"{100 * e['phase']:.1f} %"]
        lines.append(f"| {threshold:.1f} | " + " | ".join(cells + tail) + " |")

    shape = tuple(args.shape)
    ph = make_slice_phantom(shape, snr=100.0, seed=9, samples=64)
    signal = ph.magnitude * np.exp(1j * ph.phase)
    te = ph.echo_times
    plain = fit_t2star(ph.magnitude, te, noise=NoiseModel(sigma=ph.sigma))

    def correction() -> None:
        field = analyse_phase(signal, te, noise_sigma=ph.sigma).field_map()
        assert field is not None
        slices = SliceGeometry(ph.affine, mr_acquisition_type="2D", thickness_mm=3.0)
        b0.correct_through_slice(ph.magnitude, te, slices, field=field, uncorrected=plain)

    t_complex = _best(lambda: fit_complex(signal, te, noise=NoiseModel(sigma=ph.sigma)))
    t_plain = _best(lambda: fit_t2star(ph.magnitude, te, noise=NoiseModel(sigma=ph.sigma)))
    t_corr = _best(correction)
    t_field = _best(lambda: analyse_phase(signal, te, noise_sigma=ph.sigma).field_map())
    n = int(np.prod(shape))
    lines += [
        "",
        f"## Time ({shape[0]} x {shape[1]} x {shape[2]} = {n} voxels, 11 echoes, CPU, "
        "1 thread, best of 3; target: correction <= 2x the complex fit)",
        "",
        "| step | s | x complex fit |",
        "|---|---|---|",
        f"| complex fit (gives the field map) | {t_complex:.2f} | 1.00 |",
        f"| magnitude fit, nlls (the uncorrected maps) | {t_plain:.2f} "
        f"| {t_plain / t_complex:.2f} |",
        f"| field map with the phase checks (analyse_phase) | {t_field:.2f} "
        f"| {t_field / t_complex:.2f} |",
        f"| correction: field map + gradient + profile estimate + factor + corrected fit "
        f"| {t_corr:.2f} | {t_corr / t_complex:.2f} |",
        f"| correction less the field map | {t_corr - t_field:.2f} "
        f"| {(t_corr - t_field) / t_complex:.2f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        # Keep the slice-profile section bench_profiles.py records in the same file.
        marker, keep = "<!-- bench_profiles: begin -->", ""
        if args.out.exists() and marker in (old := args.out.read_text()):
            keep = "\n" + old[old.index(marker) :]
        args.out.write_text(text + keep)


if __name__ == "__main__":
    main()
