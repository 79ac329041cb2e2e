"""Start-up time of ``t2starmap --help`` / ``--version`` against importing numpy and nibabel.

    python benchmarks/bench_startup.py [--repeats N] [--with-torch]

Each command runs in a fresh Python process, as the console script does (the source tree's
``src/`` first on the path), N times (default 5) interleaved; the table gives the best time of
each and its ratio to ``python -c "import numpy, nibabel"`` (target: <= 2.5x). With
``--with-torch``, ``import torch`` is timed too, to show what those paths avoid (it takes
several seconds a run, so it is not timed by default).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
_ENTRY = "import sys; sys.argv[0] = 't2starmap'; from t2starmap.cli.entry import run; run()"
TARGET_RATIO = 2.5

COMMANDS = {
    'python -c "import numpy, nibabel"': ["-c", "import numpy, nibabel"],
    "t2starmap --help": ["-c", _ENTRY, "--help"],
    "t2starmap --version": ["-c", _ENTRY, "--version"],
    "t2starmap convert --help": ["-c", _ENTRY, "convert", "--help"],
}
BASELINE = next(iter(COMMANDS))
TORCH = {'python -c "import torch" (for scale)': ["-c", "import torch"]}


def time_once(arguments: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *arguments], env=env, check=True, stdout=subprocess.DEVNULL, timeout=120
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (best kept)")
    parser.add_argument("--with-torch", action="store_true", help="time 'import torch' too")
    args = parser.parse_args()
    commands = {**COMMANDS, **(TORCH if args.with_torch else {})}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    for arguments in commands.values():  # warm the file cache once; not timed
        time_once(arguments, env)
    best = dict.fromkeys(commands, float("inf"))
    for _ in range(args.repeats):
        for name, arguments in commands.items():
            best[name] = min(best[name], time_once(arguments, env))
    width = max(len(name) for name in commands)
    print(f"best of {args.repeats}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print(f"| {'command':<{width}} | best (s) | × numpy+nibabel |")
    print(f"|{'-' * (width + 2)}|---------:|----------------:|")
    for name in commands:
        ratio = best[name] / best[BASELINE]
        print(f"| {name:<{width}} | {best[name]:8.3f} | {ratio:15.2f} |")
    worst = max(best[n] / best[BASELINE] for n in commands if n.startswith("t2starmap"))
    verdict = "meets" if worst <= TARGET_RATIO else "misses"
    print(f"\nslowest t2starmap start-up: {worst:.2f}x ({verdict} the {TARGET_RATIO}x target)")


if __name__ == "__main__":
    main()
