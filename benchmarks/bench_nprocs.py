"""``--nprocs`` reaches every fit: the seconds each step of a participant run takes (from the
set's record) with 1 and with N chunk workers, for the default run (magnitude fit, field map
from the phase differences, corrected fit) and for ``--fit-method complex``.

    .venv/bin/python benchmarks/bench_nprocs.py [--shape 128 128 24] [--rounds 2] [--nprocs 2]

Data: :func:`t2starmap.simulate.make_slice_phantom` (magnitude + phase, 11 echoes, SNR 100)
written as BIDS; runs with ``--noise-sigma`` (the phantom has no air), validation skipped,
settings interleaved ``--rounds`` times in fresh processes; the median of each step. Target
(issue 17): on 2 quiet cores, N = 2 makes the complex fit and the corrected fit >= 1.5x faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from t2starmap.simulate import make_slice_phantom, write_slice_megre

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


if __name__ == "__main__":
    main()
