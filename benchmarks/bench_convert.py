"""Time ``t2starmap convert`` on the 180-file GE series and say where the time goes.

    python benchmarks/bench_convert.py [DICOM_DIR] [--repeats N] [--epi VOLUMES] [--busy]

DICOM_DIR defaults to ../shared/data/dicom/ge-mr750-kidney-megre; without it a synthetic GE
series of the same size (256x256x5, 12 echoes, magnitude/real/imaginary) is written first.
``--epi VOLUMES`` converts a synthetic Siemens mosaic multi-echo EPI run instead (64x64x36,
4 echoes, VOLUMES volumes: one mosaic file per volume and echo). ``--busy`` measures each step
quiet and then with one competing busy process (``while True: pass``) in the same run.
Prints one table: reading headers, deciding, dcm2niix (all calls), renaming/sidecars/moving,
the whole conversion, and dcm2niix alone on the whole folder for comparison (median of N),
and the whole conversion over dcm2niix alone.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from t2starmap.convert import dcm2niix as d2n
from t2starmap.convert import staging, workflow
from t2starmap.convert.plan import plan_acquisitions
from t2starmap.convert.scan import scan_dicom_dir
from t2starmap.convert.series import classify_series, group_series

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared/data/dicom/ge-mr750-kidney-megre"


def _synthetic_ge(root: Path) -> Path:
    # The synthetic DICOM writers are test support, not part of the installed package: they
    # are imported from the repository's tests/ package, so its root goes on the path.
    sys.path.insert(0, str(REPO))
    from t2starmap.sim.phantoms import make_phantom
    from tests.support.synthetic_dicom import write_ge_classic

    echo_times = tuple(0.0046 + 0.004612 * k for k in range(12))
    phantom = make_phantom((256, 256, 5), echo_times, with_phase=True, seed=0)
    write_ge_classic(root, phantom)
    return root


def _synthetic_epi(root: Path, volumes: int) -> Path:
    sys.path.insert(0, str(REPO))
    from t2starmap.sim.phantoms import make_phantom
    from tests.support.synthetic_epi import write_siemens_mosaic

    phantom = make_phantom((64, 64, 36), (0.0125, 0.0281, 0.0437, 0.0593), seed=0)
    write_siemens_mosaic(root, phantom, n_volumes=volumes)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dicom_dir", type=Path, nargs="?", default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epi", type=int, default=0, metavar="VOLUMES")
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.epi:
            dicom = _synthetic_epi(Path(tmp) / "epi", args.epi)
        elif args.dicom_dir.is_dir():
            dicom = args.dicom_dir
        else:
            dicom = _synthetic_ge(Path(tmp) / "ge")
        n_files = sum(1 for p in dicom.rglob("*") if p.is_file())
        tables = {"quiet": _measure(dicom, Path(tmp), args.repeats)}
        if args.busy:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from bench_busy import Busy

            with Busy():
                tables["1 busy process"] = _measure(dicom, Path(tmp), args.repeats)
    print(f"{dicom} ({n_files} files), median of {args.repeats} runs, seconds")
    print(f"{'step':32s} " + " ".join(f"{name:>15s}" for name in tables))
    for step in next(iter(tables.values())):
        print(f"{step:32s} " + " ".join(f"{t[step]:15.3f}" for t in tables.values()))


def _measure(dicom: Path, tmp: Path, repeats: int) -> dict[str, float]:
    """Median seconds of each step over ``repeats`` conversions of ``dicom``."""
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "read headers",
            "decide (pure)",
            "dcm2niix (all calls)",
            "rename, sidecars, move",
            "whole conversion",
            "dcm2niix alone, whole folder",
        )
    }
    original = staging.run_dcm2niix
    spent: list[float] = []

    def timed(*a, **k):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            spent.append(time.perf_counter() - t)

    staging.run_dcm2niix = timed  # type: ignore[assignment]
    for r in range(repeats):
        t = time.perf_counter()
        scan = scan_dicom_dir(dicom)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        plan_acquisitions([classify_series(s) for s in group_series(scan.images)])
        rows["decide (pure)"].append(time.perf_counter() - t)
        rows["read headers"].append(t_read)
        spent.clear()
        t = time.perf_counter()
        workflow.convert(dicom, tmp / f"bids{r}", "01")
        total = time.perf_counter() - t
        rows["whole conversion"].append(total)
        rows["dcm2niix (all calls)"].append(sum(spent))
        rows["rename, sidecars, move"].append(
            total - sum(spent) - t_read - rows["decide (pure)"][-1]
        )
        out = tmp / f"raw{r}"
        out.mkdir()
        t = time.perf_counter()
        subprocess.run(
            [d2n.dcm2niix_command(), *d2n.DCM2NIIX_FLAGS, "-o", str(out), str(dicom)],
            capture_output=True,
            check=True,
        )
        rows["dcm2niix alone, whole folder"].append(time.perf_counter() - t)
        shutil.rmtree(tmp / f"bids{r}")
        shutil.rmtree(out)
    staging.run_dcm2niix = original
    table = {name: statistics.median(values) for name, values in rows.items()}
    table["whole / dcm2niix alone"] = (
        table["whole conversion"] / table["dcm2niix alone, whole folder"]
    )
    return table


if __name__ == "__main__":
    main()
