"""A multi-echo BOLD run through the BIDS-App (``t2starmap BIDS OUT participant``) against the
same run through ``t2starmap t2smap --fittype nlls`` (no mask): what the BIDS wrapping costs
(pybids indexing, renaming, sidecars, the publication). Best of ``--repeat`` in-process runs
each, quiet, then with one competing busy process; the T2* maps of the two are checked equal.

    .venv/bin/python benchmarks/bench_func.py [--shape 48x48x24] [--volumes 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from t2starmap.cli.run import main as app_main
from t2starmap.cli.t2smap import main as t2smap_main
from t2starmap.sim.bold import make_bold_run, write_bold_bids

EXAMPLE = Path(__file__).resolve().parents[1] / "bids_example"


def _best(action: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def _dataset(root: Path, shape: tuple[int, ...], volumes: int) -> tuple[list[Path], tuple]:
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("sub-*"))
    run = make_bold_run(shape, volumes, seed=0)
    return write_bold_bids(root, "sub-01_task-rest", run, "rest"), tuple(run.te)


def _rows(work: Path, echoes: list[Path], te: tuple, repeat: int) -> tuple[float, float]:
    args = ["-d", *map(str, echoes), "-e", *map(str, te), "--fittype", "nlls", "--quiet"]

    def command() -> None:
        assert t2smap_main([*args, "--out-dir", str(work / "t2smap"), "--overwrite"]) == 0

    def app() -> None:
        shutil.rmtree(work / "out", ignore_errors=True)
        argv = [str(work / "bids"), str(work / "out"), "participant", "-q"]
        assert app_main([*argv, "--skip-bids-validation"]) == 0

    return _best(command, repeat), _best(app, repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="48x48x24")
    parser.add_argument("--volumes", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    shape = tuple(int(n) for n in opts.shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        echoes, te = _dataset(work / "bids", shape, opts.volumes)
        print(
            f"run {opts.shape} x {opts.volumes} volumes x {len(te)} echoes; best of {opts.repeat}"
        )
        print(f"{'load':<8}{'t2smap s':>10}{'participant s':>15}{'ratio':>8}")
        for load in ("quiet", "busy"):
            busy = None
            if load == "busy":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                command, app = _rows(work, echoes, te, opts.repeat)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            print(f"{load:<8}{command:>10.2f}{app:>15.2f}{app / command:>8.2f}")
        ours = nib.load(work / "out/sub-01/func/sub-01_task-rest_T2starmap.nii.gz").get_fdata()
        theirs = nib.load(work / "t2smap/T2starmap.nii.gz").get_fdata()
        print("T2* maps equal:", bool(np.allclose(ours, theirs, rtol=1e-6, atol=0)))


if __name__ == "__main__":
    main()
