"""``--nprocs`` reaches every fit: the seconds each step of a participant run takes (from the
set's record) with 1 and with N chunk workers, for the default run (magnitude fit, field map
from the phase differences, corrected fit) and for ``--fit-method complex``.

    .venv/bin/python benchmarks/bench_nprocs.py [--shape 128 128 24] [--rounds 2] [--nprocs 2]

Data: :func:`t2starmap.sim.slices.make_slice_phantom` (magnitude + phase, 11 echoes, SNR 100)
written as BIDS; runs with ``--noise-sigma`` (the phantom has no air), validation skipped,
settings interleaved ``--rounds`` times in fresh processes; the median of each step. Target
(issue 17): on 2 quiet cores, N = 2 makes the complex fit and the corrected fit >= 1.5x faster.

Then the same fits in this process, ``workers`` 1 and N interleaved, best of ``--repeats``:
the complex fit, the field map with its phase checks, and the through-slice correction (profile
estimate, factor, corrected fit). A best-of in one process is steadier than step medians on a
shared machine, where those move by a quarter between runs. Last, what the machine itself
delivered meanwhile: N copies of a pure-Python loop at once against one (N on an idle machine;
less where the host takes CPU time from this one, which caps every speed-up above).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from t2starmap.b0 import correction as b0
from t2starmap.b0.correction import SliceGeometry
from t2starmap.fit import Compute, NoiseModel, fit_complex, fit_t2star
from t2starmap.fit.phase import analyse_phase
from t2starmap.sim.slices import SlicePhantom, make_slice_phantom, write_slice_megre

STEPS = ("read", "noise", "phase", "fit", "correction", "maps")


def run(bids: Path, out: Path, nprocs: int, extra: list[str]) -> dict[str, float]:
    command = [
        sys.executable, "-m", "t2starmap", str(bids), str(out), "participant",
        "--skip-bids-validation", "-q", "--noise-sigma", "10", "--nprocs", str(nprocs), *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    (record,) = out.rglob("*_record.json")
    steps: dict[str, float] = json.loads(record.read_text())["steps"]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 24))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="best of, in one process")
    args = parser.parse_args()
    settings = {
        "default": [],
        "complex": ["--fit-method", "complex"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bids = root / "bids"
        write_slice_megre(bids, make_slice_phantom(tuple(args.shape), snr=100.0, seed=5))
        (bids / "dataset_description.json").write_text(
            json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"})
        )
        seconds: dict[tuple[str, int], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for name, extra in settings.items():
                for n in (1, args.nprocs):
                    out = root / f"out-{name}-{n}-{r}"
                    seconds.setdefault((name, n), []).append(run(bids, out, n, extra))
    shape = "x".join(map(str, args.shape))
    print(f"{shape} x 11 echoes, mag + phase; median of {args.rounds} rounds, seconds per step")
    print(f"| run | step | --nprocs 1 | --nprocs {args.nprocs} | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name in settings:
        for step in STEPS:
            one = [s[step] for s in seconds[(name, 1)] if step in s]
            many = [s[step] for s in seconds[(name, args.nprocs)] if step in s]
            if not one:
                continue
            a, b = statistics.median(one), statistics.median(many)
            print(f"| {name} | {step} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    in_process(make_slice_phantom(tuple(args.shape), snr=100.0, seed=5), args)
    scaling = machine(args.nprocs)
    print(f"\nthe machine: {args.nprocs} pure-Python loops at once give {scaling:.2f}x one")


SPIN = "import time\nt = time.perf_counter()\nfor i in range(10_000_000): pass\n"


def machine(n: int, repeats: int = 3) -> float:
    """Throughput of ``n`` one-thread processes at once against one (best times of
    ``repeats``, interleaved)."""
    one = together = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", SPIN], check=True)
        one = min(one, time.perf_counter() - start)
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
        for proc in procs:
            proc.wait()
        together = min(together, time.perf_counter() - start)
    return float(n * one / together)


def in_process(ph: SlicePhantom, args: argparse.Namespace) -> None:
    """The fits with 1 and N workers in this process, interleaved, best of ``--repeats``; one
    torch thread in this thread, as ``--nprocs 1`` sets (each worker thread sets its own)."""
    torch.set_num_threads(1)
    signal = ph.magnitude * np.exp(1j * ph.phase)
    te, sigma = ph.echo_times, ph.sigma
    plain = fit_t2star(ph.magnitude, te, noise=NoiseModel(sigma=sigma))
    field = analyse_phase(signal, te, noise_sigma=sigma).field_map()
    assert field is not None

    def correction(workers: int) -> None:
        slices = SliceGeometry(
            ph.affine, mr_acquisition_type="2D", thickness_mm=ph.slice_thickness_mm
        )
        b0.correct_through_slice(
            ph.magnitude, te, slices, field=field, uncorrected=plain,
            compute=Compute(workers=workers),
        )  # fmt: skip

    fits: dict[str, Callable[[int], object]] = {
        "complex fit": lambda w: fit_complex(
            signal, te, noise=NoiseModel(sigma=sigma), compute=Compute(workers=w)
        ),
        "field map with the phase checks": lambda w: analyse_phase(
            signal, te, noise_sigma=sigma, compute=Compute(workers=w)
        ),
        "correction (profile estimate, factor, corrected fit)": correction,
    }
    print(f"\nin one process, workers 1 and {args.nprocs} interleaved, best of {args.repeats} (s)")
    print(f"| fit | workers 1 | workers {args.nprocs} | speed-up |")
    print("|---|---:|---:|---:|")
    for name, fit in fits.items():
        best = {1: np.inf, args.nprocs: np.inf}
        for _ in range(args.repeats):
            for workers in best:
                start = time.perf_counter()
                fit(workers)
                best[workers] = min(best[workers], time.perf_counter() - start)
        one, many = best[1], best[args.nprocs]
        print(f"| {name} | {one:.3f} | {many:.3f} | {one / many:.2f} |")


if __name__ == "__main__":
    main()
