"""``--nprocs`` against the machine: the seconds each step of a participant run takes (from the
set's record) with 1 and with N chunk workers, for the default run (magnitude fit, field map
from the phase differences, corrected fit) and for ``--fit-method complex``; each step's
speed-up next to what the machine itself gave in the same run, their ratio and the verdict.

    .venv/bin/python benchmarks/bench_nprocs.py [--shape 128 128 24] [--rounds 3] [--nprocs 2]
    .venv/bin/python benchmarks/bench_nprocs.py --chunks 8192 16384 32768   # the fits only
    .venv/bin/python benchmarks/bench_nprocs.py --account                   # where time goes

The machine: N copies of a pure-Python loop at once against one (N on an idle machine; less
where other jobs hold CPUs, which caps every speed-up), measured after each round or repeat
in the same script, so that a step's speed-up is compared with what the machine delivered at
that moment. Beside it, the memory system: N threads streaming over arrays far beyond the
caches against one (:func:`stream_sample`); on a VM whose memory bandwidth does not grow with
its cores, a step whose working set per worker leaves the caches cannot pass that ceiling.
The verdict is against the pure-Python machine. Target (issue 29): every step that runs per
voxel (reading, the phase checks, the fit, the correction) reaches >= 90 % of the machine's
speed-up.

In one process, the last column is the step's own ceiling: N forked copies of the step, each
with 1 worker, started at once, against one alone (not for the participant runs: N runs
started together drift apart by more than a step lasts). Nothing is split and no
interpreter is shared, so this is about the best any way of splitting the step over N CPUs
can do at that moment; where it is below the target, the machine, not the engine, holds the
step back, and the gap between it and the step's own speed-up is what the engine loses (the
GIL, hand-offs, the caller).

Data: :func:`t2starmap.sim.slices.make_slice_phantom` (magnitude + phase, 11 echoes, SNR 100)
written as BIDS; runs with ``--noise-sigma`` (the phantom has no air), validation skipped,
``--rounds`` rounds in fresh processes, 1 and N in turn first. Then the same steps in this
process, ``--repeats`` times, 1 and N workers in turn first, each repeat followed by a machine
sample: reading the echoes and their phase, the complex fit, the field map with its phase
checks, the through-slice correction (profile estimate, factor, corrected fit); with
``--chunks``, the fits only, at each chunk size. Each round's (repeat's) ratio is its
speed-up over the machine of that moment; a step's ratio is their median, printed with their
range: a best-of pairs one lucky sample of each side and swung by 20-30 points run to run.
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
from t2starmap.resources import prepare_allocator
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


#: Bytes of each array of the memory-streaming reference: far beyond the CPU's caches.
STREAM_BYTES = 32 << 20


def stream_sample(n: int, passes: int = 8) -> float:
    """The memory system's speed-up at this moment: ``n`` threads each streaming ``passes``
    times over its own two float32 arrays of :data:`STREAM_BYTES` (numpy releases the GIL),
    against one thread doing the same alone. A step whose working set per worker is this far
    beyond the caches cannot scale better than this (section 8 of RESULTS_PARTICIPANT.md)."""
    size = STREAM_BYTES // 4
    arrays = [(np.ones(size, np.float32), np.ones(size, np.float32)) for _ in range(n)]

    def stream(pair: tuple[np.ndarray, np.ndarray]) -> None:
        a, b = pair
        for _ in range(passes):
            np.multiply(a, 1.5, out=b)
            np.add(b, a, out=a)

    start = time.perf_counter()
    stream(arrays[0])
    one = time.perf_counter() - start
    with ThreadPoolExecutor(max_workers=n) as pool:
        start = time.perf_counter()
        list(pool.map(stream, arrays))
        together = time.perf_counter() - start
    return n * one / together


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 24))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="in one process")
    parser.add_argument(
        "--chunks", type=int, nargs="*", default=[],
        help="only the fits in one process, with these voxels per chunk (each a table)",
    )  # fmt: skip
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
        if not args.chunks:
            participant_runs(bids, Path(tmp), args)
            in_process(phantom, bids, args)
        for chunk in args.chunks:
            in_process(phantom, bids, args, chunk)


def participant_runs(bids: Path, root: Path, args: argparse.Namespace) -> None:
    """The participant runs, ``--nprocs`` 1 and N (in turn first) with a machine sample per
    round; each step's ratio per round, its median."""
    settings = {"default": [], "complex": ["--fit-method", "complex"]}
    seconds: dict[tuple[str, int], list[dict[str, float]]] = {}
    machine: list[float] = []
    memory: list[float] = []
    for r in range(args.rounds):
        for name, extra in settings.items():
            for n in (1, args.nprocs)[:: 1 if r % 2 == 0 else -1]:
                out = root / f"out-{name}-{n}-{r}"
                seconds.setdefault((name, n), []).append(run(bids, out, n, extra))
        one, together = machine_sample(args.nprocs)
        machine.append(args.nprocs * one / together)
        memory.append(stream_sample(args.nprocs))
    shape = "x".join(map(str, args.shape))
    print(f"{shape} x 11 echoes, mag + phase; {args.rounds} rounds, seconds per step (median)")
    print(header(args.nprocs, machine, memory))
    print(f"| run | step | --nprocs 1 | --nprocs {args.nprocs} | speed-up | machine | ratio | |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in settings:
        for step in STEPS:
            rounds = [
                (a[step], b[step])
                for a, b in zip(seconds[(name, 1)], seconds[(name, args.nprocs)], strict=True)
                if step in a
            ]
            if rounds:
                print(f"| {name} | {step} | " + row(rounds, machine, step in PER_VOXEL) + " |")


def header(n: int, machine: list[float], memory: list[float]) -> str:
    """The two machine references of a table, medians and ranges."""
    return (
        f"the machine: {n} pure-Python loops at once against one, median "
        f"{statistics.median(machine):.2f}x ({min(machine):.2f}-{max(machine):.2f}); memory: "
        f"{n} threads streaming {STREAM_BYTES >> 20} MB arrays against one, median "
        f"{statistics.median(memory):.2f}x ({min(memory):.2f}-{max(memory):.2f}); target: a "
        f"per-voxel step's ratio to the machine (median of each round's) >= {TARGET:.0%}"
    )


def row(pairs: list[tuple[float, float]], machine: list[float], target: bool) -> str:
    """Median seconds with 1 and N, the median speed-up, the machine's median and the median
    of each round's ratio (speed-up / that round's machine) with their range, and the verdict:
    a ratio per round pairs each speed-up with the machine of its own moment, and the median
    does not reward one lucky round as a best-of does."""
    one = statistics.median(p[0] for p in pairs)
    many = statistics.median(p[1] for p in pairs)
    speedup = statistics.median(a / b for a, b in pairs)
    head = f"{one:.3f} | {many:.3f} | {speedup:.2f} | {statistics.median(machine):.2f}"
    if not target:
        return head + " | | not per voxel"
    ratios = [a / b / m for (a, b), m in zip(pairs, machine, strict=True)]
    ratio = statistics.median(ratios)
    spread = f"{100 * min(ratios):.0f}-{100 * max(ratios):.0f}"
    return f"{head} | {100 * ratio:.0f} % ({spread}) | {'met' if ratio >= TARGET else 'below'}"


def in_process(
    ph: SlicePhantom, bids: Path, args: argparse.Namespace, chunk: int | None = None
) -> None:
    """The per-voxel steps with 1 and N workers in this process (in turn first), each repeat
    followed by a machine sample; the median of the repeats. One torch thread in this
    thread, as ``--nprocs 1`` sets (each worker thread sets its own), and the C allocator as
    a run prepares it. ``chunk``: the fits' voxels per chunk (None: their defaults)."""
    torch.set_num_threads(1)
    prepare_allocator(args.nprocs)  # as a participant run does before it reads
    n = args.nprocs
    size = "default chunks" if chunk is None else f"chunks of {chunk} voxels"
    print(f"\nin one process ({size}), workers 1 and {n}, {args.repeats} repeats (median s)")
    table = []
    machine: list[float] = []
    memory: list[float] = []
    for name, step in steps(ph, bids, chunk).items():
        pairs, ceiling = [], []
        with Copies(step, n) as copies:
            for r in range(args.repeats):
                took = {}
                for workers in (1, n)[:: 1 if r % 2 == 0 else -1]:
                    start = time.perf_counter()
                    step(workers)
                    took[workers] = time.perf_counter() - start
                pairs.append((took[1], took[n]))
                ceiling.append(n * took[1] / copies.run())
                one, together = machine_sample(n)
                machine.append(n * one / together)
                memory.append(stream_sample(n))
        table.append(
            f"| {name} | " + row(pairs, machine[-args.repeats :], True)
            + f" | {ceiling_cell(ceiling, machine[-args.repeats :])} |"
        )  # fmt: skip
    print(header(n, machine, memory))
    print(
        f"| step | workers 1 | workers {n} | speed-up | machine | ratio | | {n} copies "
        "in processes: speed-up, ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    print("\n".join(table))
    print(
        f"{n} copies: {n} processes each running the step with 1 worker at once, against one "
        "alone; nothing split, no interpreter shared: what the machine gives the step's own "
        "work at that moment, about the best any way of splitting it can do"
    )


def ceiling_cell(ceiling: list[float], machine: list[float]) -> str:
    """The copies' median speed-up and the median of each repeat's ratio to its machine."""
    ratios = [c / m for c, m in zip(ceiling, machine, strict=True)]
    return f"{statistics.median(ceiling):.2f}, {100 * statistics.median(ratios):.0f} %"


class Copies:
    """N forked processes, each ready to run ``step(1)`` (one worker) on a word from the
    caller: :meth:`run` starts them at once and returns the seconds until the last is done.
    Forked once, before the repeats, each warmed by one run of the step, so that neither the
    fork nor the first touch of copied pages is timed."""

    def __init__(self, step: Callable[[int], object], n: int) -> None:
        self.step, self.n = step, n
        self.children: list[tuple[int, int, int]] = []  # pid, write end, read end

    def __enter__(self) -> Copies:
        for _ in range(self.n):
            go_read, go_write = os.pipe()
            done_read, done_write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: run the step on every b"g", stop on anything else
                for _, go, done in self.children:  # the earlier children's ends: theirs alone
                    os.close(go)
                    os.close(done)
                os.close(go_write)
                os.close(done_read)
                code = 0
                try:
                    self.step(1)
                    os.write(done_write, b"d")
                    while os.read(go_read, 1) == b"g":
                        self.step(1)
                        os.write(done_write, b"d")
                except BaseException:
                    code = 1
                os._exit(code)
            os.close(go_read)
            os.close(done_write)
            self.children.append((pid, go_write, done_read))
        for _, _, done in self.children:
            self._wait(done)
        return self

    def run(self) -> float:
        start = time.perf_counter()
        for _, go, _ in self.children:
            os.write(go, b"g")
        for _, _, done in self.children:
            self._wait(done)
        return time.perf_counter() - start

    @staticmethod
    def _wait(done: int) -> None:
        if os.read(done, 1) != b"d":
            raise RuntimeError("a copy of the step failed")

    def __exit__(self, *exc: object) -> None:
        for pid, go, done in self.children:
            os.close(go)
            os.close(done)
            os.waitpid(pid, 0)


def steps(
    ph: SlicePhantom, bids: Path, chunk: int | None = None
) -> dict[str, Callable[[int], object]]:
    """Each per-voxel step as a function of the worker count; ``chunk``: the fits' voxels
    per chunk (None: their defaults)."""
    signal = ph.magnitude * np.exp(1j * ph.phase)
    te, noise = ph.echo_times, NoiseModel(sigma=ph.sigma)
    plain = fit_t2star(ph.magnitude, te, noise=noise)
    field = analyse_phase(signal, te, noise_sigma=ph.sigma).field_map()
    assert field is not None
    slices = SliceGeometry(ph.affine, mr_acquisition_type="2D", thickness_mm=ph.slice_thickness_mm)
    anat = sorted((bids / "sub-01" / "anat").glob("*.nii.gz"))
    number = lambda p: int(p.name.split("_echo-")[1].split("_")[0])  # noqa: E731
    mag = sorted((p for p in anat if "part-mag" in p.name), key=number)
    phase = sorted((p for p in anat if "part-phase" in p.name), key=number)
    geometry = check_geometry(mag)
    parts = Parts("phase", tuple((p,) for p in phase), ("rad",) * len(phase))
    how = lambda w: Compute(workers=w, chunk_size=chunk)  # noqa: E731

    def read(workers: int) -> object:
        # the echoes and the phase in one pool, as a run reads them
        return read_echo_set(mag, parts, geometry, workers, integers=True).signal()

    fits: dict[str, Callable[[int], object]] = {
        "complex fit": lambda w: fit_complex(signal, te, noise=noise, compute=how(w)),
        "field map with the phase checks": lambda w: analyse_phase(
            signal, te, noise_sigma=ph.sigma, compute=how(w)
        ),
        "magnitude fit": lambda w: fit_t2star(ph.magnitude, te, noise=noise, compute=how(w)),
        "correction (profile estimate, factor, corrected fit)": lambda w: correct(
            ph, slices, field, plain, how(w)
        ),
    }
    return fits if chunk is not None else {"reading (echoes and phase)": read, **fits}


def correct(
    ph: SlicePhantom, slices: SliceGeometry, field: FieldMap, plain: FitResult, how: Compute
) -> object:
    """The through-slice correction of the phantom as ``how`` says."""
    return b0.correct_through_slice(
        ph.magnitude, ph.echo_times, slices, field=field, uncorrected=plain, compute=how
    )


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
