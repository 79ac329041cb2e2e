"""``--nprocs`` against the machine: the seconds each step of a participant run takes (from the
set's record) with 1 and with N chunk workers, for the default run (magnitude fit, field map
from the phase differences, corrected fit) and for ``--fit-method complex``; each step's
speed-up next to what the machine itself gave in the same run, their ratio and the verdict.

    .venv/bin/python benchmarks/bench_nprocs.py [--shape 128 128 24] [--rounds 3] [--nprocs 2]

The machine: N copies of a pure-Python loop at once against one (N on an idle machine; less
where other jobs hold CPUs, which caps every speed-up). It is measured between the runs, in the
same script, so that a step's speed-up is compared with what the machine delivered at that
moment. Target (issue 29): every step that runs per voxel (reading, the phase checks, the fit,
the correction) reaches >= 90 % of the machine's speed-up.

Data: :func:`t2starmap.sim.slices.make_slice_phantom` (magnitude + phase, 11 echoes, SNR 100)
written as BIDS; runs with ``--noise-sigma`` (the phantom has no air), validation skipped,
settings interleaved ``--rounds`` times in fresh processes; the median of each step, and the
median of the machine's samples. Then the same steps in this process, ``workers`` 1 and N
interleaved with a machine sample, best of ``--repeats`` each: reading the echoes and their
phase, the complex fit, the field map with its phase checks, the through-slice correction
(profile estimate, factor, corrected fit). A best-of in one process is steadier than step
medians on a shared machine.
"""

from __future__ import annotations

import os

# As the app's console scripts do (t2starmap.cli.entry), before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2starmap.b0 import correction as b0
from t2starmap.b0.correction import SliceGeometry
from t2starmap.bids.nifti import check_geometry
from t2starmap.bids.parts import Parts, read_echo_set
from t2starmap.fit import Compute, FitResult, NoiseModel, fit_complex, fit_t2star
from t2starmap.fit.phase import FieldMap, analyse_phase
from t2starmap.sim.slices import SlicePhantom, make_slice_phantom, write_slice_megre

STEPS = ("read", "noise", "phase", "fit", "correction", "maps")
#: The steps that run per voxel: the target is theirs.
PER_VOXEL = ("read", "phase", "fit", "correction")
#: A step's speed-up must reach this share of the machine's.
TARGET = 0.9
SPIN = "for i in range(10_000_000): pass\n"


def run(bids: Path, out: Path, nprocs: int, extra: list[str]) -> dict[str, float]:
    command = [
        sys.executable, "-m", "t2starmap", str(bids), str(out), "participant",
        "--skip-bids-validation", "-q", "--noise-sigma", "10", "--nprocs", str(nprocs), *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    (record,) = out.rglob("*_record.json")
    steps: dict[str, float] = json.loads(record.read_text())["steps"]
    return steps


def machine_sample(n: int) -> tuple[float, float]:
    """(seconds of one pure-Python loop alone, seconds of ``n`` of them at once, each its own
    process): n * first / second is the machine's speed-up at that moment."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", SPIN], check=True)
    one = time.perf_counter() - start
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    for proc in procs:
        proc.wait()
    return one, time.perf_counter() - start


def verdict(speedup: float, machine: float) -> str:
    ratio = speedup / machine
    return f"{machine:.2f} | {100 * ratio:.0f} % | {'met' if ratio >= TARGET else 'below'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 24))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="best of, in one process")
    parser.add_argument(
        "--account", action="store_true", help="only where each step's time goes (Linux)"
    )
    args = parser.parse_args()
    phantom = make_slice_phantom(tuple(args.shape), snr=100.0, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        write_slice_megre(bids, phantom)
        (bids / "dataset_description.json").write_text(
            json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"})
        )
        if args.account:
            account(phantom, bids, args)
            return
        participant_runs(bids, Path(tmp), args)
        in_process(phantom, bids, args)


def participant_runs(bids: Path, root: Path, args: argparse.Namespace) -> None:
    """The participant runs, ``--nprocs`` 1 and N interleaved with a machine sample."""
    settings = {"default": [], "complex": ["--fit-method", "complex"]}
    seconds: dict[tuple[str, int], list[dict[str, float]]] = {}
    machine: list[float] = []
    for r in range(args.rounds):
        for name, extra in settings.items():
            for n in (1, args.nprocs):
                out = root / f"out-{name}-{n}-{r}"
                seconds.setdefault((name, n), []).append(run(bids, out, n, extra))
            one, together = machine_sample(args.nprocs)
            machine.append(args.nprocs * one / together)
    scale = statistics.median(machine)
    shape = "x".join(map(str, args.shape))
    print(f"{shape} x 11 echoes, mag + phase; median of {args.rounds} rounds, seconds per step")
    print(
        f"the machine: {args.nprocs} pure-Python loops at once against one, median "
        f"{scale:.2f}x (samples {min(machine):.2f}-{max(machine):.2f}); target: a per-voxel "
        f"step >= {TARGET:.0%} of it"
    )
    print(f"| run | step | --nprocs 1 | --nprocs {args.nprocs} | speed-up | machine | ratio | |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in settings:
        for step in STEPS:
            one = [s[step] for s in seconds[(name, 1)] if step in s]
            many = [s[step] for s in seconds[(name, args.nprocs)] if step in s]
            if not one:
                continue
            a, b = statistics.median(one), statistics.median(many)
            tail = verdict(a / b, scale) if step in PER_VOXEL else f"{scale:.2f} | | not per voxel"
            print(f"| {name} | {step} | {a:.2f} | {b:.2f} | {a / b:.2f} | {tail} |")


def in_process(ph: SlicePhantom, bids: Path, args: argparse.Namespace) -> None:
    """The per-voxel steps with 1 and N workers in this process, each repeat followed by a
    machine sample; best of ``--repeats`` of each. One torch thread in this thread, as
    ``--nprocs 1`` sets (each worker thread sets its own)."""
    torch.set_num_threads(1)
    print(f"\nin one process, workers 1 and {args.nprocs} interleaved with the machine, best of")
    print(f"{args.repeats} each (s)")
    print(f"| step | workers 1 | workers {args.nprocs} | speed-up | machine | ratio | |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, fit in steps(ph, bids).items():
        best = {1: np.inf, args.nprocs: np.inf}
        alone = together = np.inf
        for _ in range(args.repeats):
            for workers in best:
                start = time.perf_counter()
                fit(workers)
                best[workers] = min(best[workers], time.perf_counter() - start)
            sample = machine_sample(args.nprocs)
            alone, together = min(alone, sample[0]), min(together, sample[1])
        one, many = best[1], best[args.nprocs]
        tail = verdict(one / many, args.nprocs * alone / together)
        print(f"| {name} | {one:.3f} | {many:.3f} | {one / many:.2f} | {tail} |")


def steps(ph: SlicePhantom, bids: Path) -> dict[str, Callable[[int], object]]:
    """Each per-voxel step as a function of the worker count."""
    signal = ph.magnitude * np.exp(1j * ph.phase)
    te, sigma = ph.echo_times, ph.sigma
    plain = fit_t2star(ph.magnitude, te, noise=NoiseModel(sigma=sigma))
    field = analyse_phase(signal, te, noise_sigma=sigma).field_map()
    assert field is not None
    slices = SliceGeometry(ph.affine, mr_acquisition_type="2D", thickness_mm=ph.slice_thickness_mm)
    anat = sorted((bids / "sub-01" / "anat").glob("*.nii.gz"))
    number = lambda p: int(p.name.split("_echo-")[1].split("_")[0])  # noqa: E731
    mag = sorted((p for p in anat if "part-mag" in p.name), key=number)
    phase = sorted((p for p in anat if "part-phase" in p.name), key=number)
    geometry = check_geometry(mag)
    parts = Parts("phase", tuple((p,) for p in phase), ("rad",) * len(phase))

    def read(workers: int) -> object:
        # the echoes and the phase in one pool, as a run reads them
        return read_echo_set(mag, parts, geometry, workers, integers=True).signal()

    return {
        "reading (echoes and phase)": read,
        "complex fit": lambda w: fit_complex(
            signal, te, noise=NoiseModel(sigma=sigma), compute=Compute(workers=w)
        ),
        "field map with the phase checks": lambda w: analyse_phase(
            signal, te, noise_sigma=sigma, compute=Compute(workers=w)
        ),
        "magnitude fit": lambda w: fit_t2star(
            ph.magnitude, te, noise=NoiseModel(sigma=sigma), compute=Compute(workers=w)
        ),
        "correction (profile estimate, factor, corrected fit)": lambda w: correct(
            ph, slices, field, plain, w
        ),
    }


def correct(
    ph: SlicePhantom, slices: SliceGeometry, field: FieldMap, plain: FitResult, workers: int
) -> object:
    """The through-slice correction of the phantom on ``workers``."""
    return b0.correct_through_slice(
        ph.magnitude, ph.echo_times, slices, field=field, uncorrected=plain,
        compute=Compute(workers=workers),
    )  # fmt: skip


def schedstat() -> tuple[float, float]:
    """(seconds this thread ran on a CPU, seconds it waited, runnable, for a CPU that other
    threads held) from the kernel's scheduler statistics."""
    with open("/proc/thread-self/schedstat") as stats:
        ran, waited = (int(x) for x in stats.read().split()[:2])
    return ran / 1e9, waited / 1e9


class Tasks:
    """Every task given to a thread pool, with the CPU time it ran, the time it waited for a
    CPU (other threads or processes held it) and its wall time, summed while installed."""

    def __init__(self) -> None:
        self.ran = self.waited = self.wall = 0.0
        self.original = ThreadPoolExecutor.submit

    def __enter__(self) -> Tasks:
        tasks, original = self, self.original

        def submit(pool: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            def timed() -> Any:
                (ran, waited), start = schedstat(), time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    after = schedstat()
                    tasks.ran += after[0] - ran
                    tasks.waited += after[1] - waited
                    tasks.wall += time.perf_counter() - start

            return original(pool, timed)

        ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        ThreadPoolExecutor.submit = self.original  # type: ignore[method-assign]


def account(ph: SlicePhantom, bids: Path, args: argparse.Namespace) -> None:
    """Where each per-voxel step's time goes with N workers, best of ``--repeats``: the CPU
    seconds of its workers' tasks (against the whole step with 1 worker: more means the
    threads slow each other, e.g. through memory), the calling thread's CPU seconds (serial:
    nothing else runs for the step meanwhile unless tasks are in flight), the tasks' waits for
    a CPU held by other processes (the machine's load), and the rest of the tasks' wall time
    (waits for the GIL, a lock, the memory system's stalls are CPU time, not here)."""
    torch.set_num_threads(1)
    n = args.nprocs
    print(f"with {n} workers, best of {args.repeats} (s); 1 worker: its whole CPU time")
    print(
        "| step | 1 worker CPU | tasks' CPU | caller's CPU | tasks' CPU wait | tasks' other wait |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, step in steps(ph, bids).items():
        one = many = (np.inf,) * 4
        for _ in range(args.repeats):
            start = time.process_time()
            step(1)
            one = min(one, (time.process_time() - start,) * 4)
            with Tasks() as tasks:
                caller = schedstat()[0]
                step(n)
                caller = schedstat()[0] - caller
            many = min(
                many, (tasks.ran, caller, tasks.waited, tasks.wall - tasks.ran - tasks.waited)
            )
        print(f"| {name} | {one[0]:.3f} | " + " | ".join(f"{x:.3f}" for x in many) + " |")


if __name__ == "__main__":
    main()
