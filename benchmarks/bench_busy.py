"""The fit on a busy machine, and many participants at once on one node.

1. ``fit``: the default fit of one 192x192x64 x 11-echo phantom, in this one process, quiet,
   then with one competing busy process (``while True: pass``), then quiet again, for:
   torch's own threads (``torch.set_num_threads(N)``, one chunk at a time: what the app did
   before), one thread, and the API's default ``fit_t2star(signal, te)`` with torch's thread
   count left at N (it runs N chunk workers with one torch thread each, as the app does);
   N = the CPUs this process may use. The maps of every row are checked equal to the first
   row's.
2. ``node``: 8 small participants (8 echoes each) run as 8 ``python -m t2starmap`` processes
   at once into one output folder (as a SLURM array does) against the same 8 one after
   another; total seconds, and every map of the two runs compared.

    .venv/bin/python benchmarks/bench_busy.py [fit] [node] [--shape 192x192x64] [--src DIR]

``--src A B`` runs the ``node`` part with each checkout's ``src`` in turn, ``--rounds`` times
(e.g. an older commit made with ``git archive``), to compare before and after on one machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from t2starmap.fit import Compute, NoiseModel, fit_t2star
from t2starmap.resources import available_cpus
from t2starmap.sim.phantoms import make_phantom, write_bids_example

SRC = str(Path(__file__).resolve().parents[1] / "src")
MAP_KEYS = ("t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se", "failed")


class Busy:
    """One competing busy process while the block runs."""

    def __enter__(self) -> Busy:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def bench_fit(shape: tuple[int, ...], repeats: int) -> None:
    n = available_cpus(os.environ)[0]
    phantom = make_phantom(shape, s0=3000.0, snr=50.0, seed=3)
    configs = {
        f"torch threads {n}, 1 chunk at a time (before)": (n, 1),
        "1 torch thread, 1 chunk at a time": (1, 1),
        f"API default: {n} chunk workers, 1 torch thread each": (n, None),
    }
    reference = None
    times: dict[str, dict[str, list[float]]] = {c: {} for c in configs}

    def run(phase: str) -> None:
        nonlocal reference
        for name, (threads, workers) in configs.items():
            for _ in range(repeats):
                torch.set_num_threads(threads)
                started = time.perf_counter()
                result = fit_t2star(
                    phantom.magnitude,
                    phantom.echo_times,
                    mask=phantom.mask,
                    noise=NoiseModel(sigma=phantom.sigma),
                    compute=Compute(workers=workers),
                )
                times[name].setdefault(phase, []).append(time.perf_counter() - started)
                if reference is None:
                    reference = result
                for key in MAP_KEYS:
                    if not torch.equal(getattr(result, key), getattr(reference, key)):
                        raise SystemExit(f"{name}: map {key} differs from the first row's")

    run("quiet 1")
    with Busy():
        run("busy")
    run("quiet 2")
    one_busy = statistics.median(times["1 torch thread, 1 chunk at a time"]["busy"])
    print(
        f"fit: {'x'.join(map(str, shape))} x 11 echoes, default (nlls, Rician), "
        f"{int(phantom.mask.sum())} voxels; N = {n}; median of {repeats} per phase; "
        "maps equal in every row"
    )
    print(
        f"| {'dispatch':<46} | quiet 1 s | busy s | quiet 2 s | busy / quiet | "
        "busy / 1-thread busy |"
    )
    print(f"|{'-' * 48}|---:|---:|---:|---:|---:|")
    for name, phases in times.items():
        q1, busy, q2 = (statistics.median(phases[p]) for p in ("quiet 1", "busy", "quiet 2"))
        quiet = (q1 + q2) / 2
        print(
            f"| {name:<46} | {q1:.2f} | {busy:.2f} | {q2:.2f} | {busy / quiet:.2f} | "
            f"{busy / one_busy:.2f} |"
        )


def _maps(out: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {
        str(p.relative_to(out)): np.asarray(nib.load(str(p)).dataobj)
        for p in sorted(out.rglob("*.nii.gz"))
    }


def bench_node(
    sources: list[str], n_participants: int, shape: tuple[int, ...], rounds: int
) -> None:
    labels = [f"{k:02d}" for k in range(1, n_participants + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bids = write_bids_example(root / "bids", dict.fromkeys(labels, (None,)), shape=shape)

        def command(out: Path, label: str) -> list[str]:
            return [
                sys.executable,
                "-m",
                "t2starmap",
                str(bids),
                str(out),
                "participant",
                "--participant-label",
                label,
                "--skip-bids-validation",
            ]

        def one_after_another(out: Path, env: dict[str, str]) -> float:
            started = time.perf_counter()
            for label in labels:
                subprocess.run(command(out, label), check=True, env=env, capture_output=True)
            return time.perf_counter() - started

        def at_once(out: Path, env: dict[str, str]) -> tuple[float, set[int]]:
            started = time.perf_counter()
            jobs = [
                subprocess.Popen(
                    command(out, label),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for label in labels
            ]
            codes = {job.wait() for job in jobs}
            return time.perf_counter() - started, codes

        results: dict[str, list[tuple[float, float]]] = {src: [] for src in sources}
        notes = {}
        for k in range(rounds):
            for src in sources:  # interleaved: the machine's other load hits every row alike
                env = {**os.environ, "PYTHONPATH": src}
                seq_out, par_out = root / f"seq-{k}", root / f"par-{k}"
                sequential = one_after_another(seq_out, env)
                together, codes = at_once(par_out, env)
                results[src].append((sequential, together))
                seq_maps, par_maps = _maps(seq_out), _maps(par_out)
                same = seq_maps.keys() == par_maps.keys() and all(
                    np.array_equal(seq_maps[key], par_maps[key]) for key in seq_maps
                )
                pages = len(list(par_out.glob("sub-*.html")))
                notes[src] = (
                    f"exit codes {codes}; {len(par_maps)} maps, all equal to the sequential "
                    f"run's: {same}; {pages} pages"
                )
                shutil.rmtree(seq_out)
                shutil.rmtree(par_out)
        print(
            f"\nnode: {n_participants} participants of {'x'.join(map(str, shape))} x 8 echoes, "
            f"{rounds} interleaved round(s), medians"
        )
        print("| src | one after another s | at once s | at once / one after another |")
        print("|---|---:|---:|---:|")
        for src, rows in results.items():
            seq = statistics.median(a for a, _ in rows)
            par = statistics.median(b for _, b in rows)
            ratio = statistics.median(b / a for a, b in rows)
            print(f"| {src} | {seq:.1f} | {par:.1f} | {ratio:.2f} |")
        for src, note in notes.items():
            print(f"{src}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["fit", "node"], choices=["fit", "node"])
    parser.add_argument("--shape", default="192x192x64")
    parser.add_argument("--node-shape", default="64x64x24")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--src", nargs="+", default=[SRC], help="t2starmap sources to compare")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of node")
    args = parser.parse_args()
    if "fit" in args.parts:
        bench_fit(tuple(int(n) for n in args.shape.split("x")), args.repeats)
    if "node" in args.parts:
        shape = tuple(int(n) for n in args.node_shape.split("x"))
        sources = [str(Path(src).resolve()) for src in args.src]
        bench_node(sources, args.participants, shape, args.rounds)


if __name__ == "__main__":
    main()
