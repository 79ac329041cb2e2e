"""Tuning table for the fit's two speed knobs, on the benchmark volume of ``bench_fit.py``.

    python benchmarks/tune_fit.py --chunks 15 16 17        # chunk sizes 2^k voxels
    python benchmarks/tune_fit.py --tols 1e-4 1e-3 2e-3    # LM step tolerance

Settings are run interleaved, ``--rounds`` times each, in one process (this machine's speed
drifts by tens of per cent within minutes, so only side-by-side numbers compare). For the
tolerance, the table also gives how far T2* moves, in units of its reported standard error,
from the first tolerance listed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_fit import SHAPE, SIGMA, TE, make_volume

import t2starmap.fit.solver as solver
from t2starmap import fit as fit_module
from t2starmap.fit import NoiseModel


def timed(signal: torch.Tensor, **kwargs: int) -> tuple[float, fit_module.FitResult]:
    start = time.perf_counter()
    result = fit_module.fit_t2star(signal, TE, **kwargs, noise=NoiseModel(sigma=SIGMA))
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    knob = parser.add_mutually_exclusive_group(required=True)
    knob.add_argument("--chunks", type=int, nargs="+", metavar="K", help="chunk sizes 2^K")
    knob.add_argument("--tols", type=float, nargs="+", metavar="TOL", help="LM tolerances")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    magnitude, _, _ = make_volume(SHAPE, TE)
    signal = torch.from_numpy(magnitude)
    settings = args.chunks if args.chunks else args.tols
    seconds: dict[float, list[float]] = {s: [] for s in settings}
    results: dict[float, fit_module.FitResult] = {}
    default_tol = solver.TOL
    try:
        for _ in range(args.rounds):
            for setting in settings:
                if args.chunks:
                    took, results[setting] = timed(signal, chunk_size=1 << int(setting))
                else:
                    solver.TOL = float(setting)
                    took, results[setting] = timed(signal)
                seconds[setting].append(took)
    finally:
        solver.TOL = default_tol
    reference = results[settings[0]]
    print("| setting | median s | best s | max abs dT2*/SE | p99 abs dT2*/SE |")
    print("|---|---:|---:|---:|---:|")
    for setting in settings:
        moved = (results[setting].t2star - reference.t2star).abs()
        in_se = (moved / reference.t2star_se.clamp_min(1e-12)).numpy()
        label = f"chunk 2^{setting}" if args.chunks else f"tol {setting:g}"
        print(
            f"| {label} | {np.median(seconds[setting]):.3f} | {min(seconds[setting]):.3f} "
            f"| {in_se.max():.4f} | {np.percentile(in_se, 99):.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
