"""Cost of the participant report for one echo set, by volume size.

Writes a simulated MEGRE set (8 echoes) and its maps (the phantom's truth standing in for a
fit, 1 % of voxels marked failed) into a temporary folder, then times
``write_participant_reports`` and its parts (wall seconds), and the CPU seconds of all its
threads (``time.process_time``: steadier than wall time on a shared machine). The fit itself
is not timed: this is what the report adds to a participant run.

    .venv/bin/python benchmarks/bench_report.py [--shapes 24x24x6 192x192x64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t2starmap.report import participant, sections

# The report tests' synthetic output folder (raw MEGRE, maps and record) serves here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.report.helpers import synthetic_output


def timed(name: str, totals: dict[str, float], func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["24x24x6", "96x96x32", "192x192x64"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'shape':>12} {'total s':>8} {'read maps':>9} {'read echoes':>11} "
        f"{'figures+html':>12} {'CPU s':>6} {'page KB':>8}"
    )
    for text in args.shapes:
        shape = tuple(int(n) for n in text.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            outcome = synthetic_output(root, shape=shape, failed_fraction=0.01)
            best: dict[str, float] | None = None
            for _ in range(args.repeats):
                totals: dict[str, float] = defaultdict(float)
                originals = (participant.load_set_maps, sections.read_echoes)
                participant.load_set_maps = timed("maps", totals, originals[0])
                sections.read_echoes = timed("echoes", totals, originals[1])
                started, cpu = time.perf_counter(), time.process_time()
                try:
                    pages = participant.write_participant_reports(
                        root / "out", root / "bids", [outcome]
                    )
                finally:
                    participant.load_set_maps, sections.read_echoes = originals
                totals["total"] = time.perf_counter() - started
                totals["cpu"] = time.process_time() - cpu
                if best is None or totals["total"] < best["total"]:
                    best = {**dict(totals), "cpu": min(totals["cpu"], best["cpu"] if best else 1e9)}
                else:
                    best["cpu"] = min(best["cpu"], totals["cpu"])
            assert best is not None
            rest = best["total"] - best["maps"] - best["echoes"]
            size = pages[0].stat().st_size / 1024
            print(
                f"{text:>12} {best['total']:8.2f} {best['maps']:9.2f} {best['echoes']:11.2f} "
                f"{rest:12.2f} {best['cpu']:6.2f} {size:8.0f}"
            )
    print(
        f"best of {args.repeats} runs (CPU: the least); 8 echoes; echoes read in up to 4 "
        f"threads; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
