"""Two checkouts' participant runs on the same data, interleaved: whole-run wall time and the
time of each step of the set (the record's ``steps``: read, noise, phase, fit, correction,
maps), with their ratios in one run.

Data: the magnitude set of ``bench_participant.py`` (192x192x64 int16, 11 echoes; ``--shape``)
and, when given, a converted real set with phase or real/imaginary parts (``--real BIDS``, e.g.
the GE kidney set: ``t2starmap convert ../shared/data/dicom/ge-mr750-kidney-megre /tmp/ge
--participant-label ge``).

    python benchmarks/bench_sources.py --base /work/main/src [--real /tmp/ge] [--repeats 3]
        [--busy]

``--busy``: the runs again with one competing busy process (``while True: pass``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
sys.path.insert(0, str(HERE))

from bench_participant import make_dataset  # noqa: E402


def one_run(src: str, bids: Path, out: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of a fresh participant run, and the steps of its (first) set's record."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "t2starmap", str(bids), str(out), "participant"]
    started = time.perf_counter()
    subprocess.run([*command, "--skip-bids-validation", "-q"], check=True, env=env)
    seconds = time.perf_counter() - started
    record = next(out.rglob("*_record.json"))
    return seconds, dict(json.loads(record.read_text()).get("steps", {}))


def table(name: str, bids: Path, base: str, repeats: int, scratch: Path) -> list[str]:
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {"base": [], "this": []}
    for _ in range(repeats):
        for label, src in (("base", base), ("this", SRC)):
            runs[label].append(one_run(src, bids, scratch / label))
    lines = [f"| {name} | base (s) | this (s) | this / base |", "|---|---:|---:|---:|"]
    wall = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
    lines.append(f"| whole run | {wall['base']:.2f} | {wall['this']:.2f} | "
                 f"{wall['this'] / wall['base']:.3f} |")  # fmt: skip
    steps = list(runs["this"][0][1])
    for step in steps:
        b = statistics.median(s.get(step, 0.0) for _, s in runs["base"])
        t = statistics.median(s.get(step, 0.0) for _, s in runs["this"])
        ratio = f"{t / b:.3f}" if b > 0 else "-"
        lines.append(f"| step: {step} | {b:.3f} | {t:.3f} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other checkout's src folder")
    parser.add_argument("--real", type=Path, help="a converted real BIDS set")
    parser.add_argument("--shape", default="192x192x64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    print(f"base: {args.base}; this: {SRC}; median of {args.repeats} interleaved runs each")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="t2starmap-sources-") as tmp:
        scratch = Path(tmp)
        sets = [(f"magnitude {args.shape}", make_dataset(scratch / "data", shape))]
        if args.real is not None:
            sets.append((f"real set {args.real.name}", args.real))
        busy = [False, True] if args.busy else [False]
        for loaded in busy:
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
            try:
                for name, bids in sets:
                    print()
                    print("\n".join(table(name + (", busy" if loaded else ""), bids, args.base,
                                          args.repeats, scratch)))  # fmt: skip
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()


if __name__ == "__main__":
    main()
