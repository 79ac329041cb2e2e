"""Brain-scale participant runs: time, peak memory and where the time goes, side by side.

Makes (once, cached) a one-participant BIDS dataset of int16 echoes with the project's
simulator (:mod:`t2starmap.sim.phantoms`'s ellipsoid: T2* 5-100 ms, S0 3000 +-10 %, Rician noise
at SNR 50, 1 mm voxels), written slab by slab so that 512x512x256x12 fits in memory. Then,
interleaved ``--repeats`` times, each a fresh process:

* bare: ``python -c "import torch, nibabel"`` (the memory floor);
* baseline (``baselines.READ_FIT_WRITE``): read the echoes with
  :func:`t2starmap.bids.nifti.read_volumes` and stack them, ``fit_t2star`` (default nlls, the
  phantom's sigma, 2 chunk workers of one torch thread) on the first echo above 5 sigma, write
  10 maps with :func:`t2starmap.bids.nifti_write.save_map` (isal), one after another; with
  ``--baseline-src`` (default: this checkout);
* read + write (``baselines.READ_WRITE``, the smaller baseline, shown beside it): read the
  echoes and write 10 float32 images with nibabel, no torch, no fit;
* run: ``python -m t2starmap BIDS OUT participant --skip-bids-validation`` for each ``--src``;
* with ``--busy`` the same again with one competing busy process (``bench_busy.Busy``).

Prints medians, run / baseline and run / read+write ratios (median of the rounds' ratios),
peak RSS above the bare
process (``os.wait4``'s ru_maxrss) as a multiple of the float32 echo data, the record's
``steps`` (seconds per step of the set), and one cProfile run per source with the cumulative
seconds of the participant path's functions (cProfile sees the main thread only: maps written
in threads do not show; a function renamed between sources shows under both names).

    .venv/bin/python benchmarks/bench_brain.py [--shape 256x256x176] [--echoes 8]
        [--repeats 3] [--busy] [--src DIR ...] [--memory-only] [--no-profile] [--cache DIR]

``--src`` takes several checkouts' ``src`` (e.g. ``git archive <commit> src | tar -x -C
/tmp/before``), run side by side. ``--memory-only`` (for 512x512x256x12): one run of each
source, peak memory and the record's steps only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from baselines import READ_FIT_WRITE, READ_WRITE  # beside this script
from bench_busy import Busy

from t2starmap.sim.phantoms import (
    EXAMPLE_ECHO_TIMES,
    _object_truth,
    add_rician_noise,
    decay,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")
S0, SNR, SEED = 3000.0, 50.0, 11
#: Fraction of each axis left as air: 5.75 M of the 11.5 M voxels of 256x256x176 in the
#: object, as in the issue's data set.
BACKGROUND = 0.016
SLAB = 16

#: Functions on the participant path whose cumulative profile time is shown: label ->
#: (file name ending, function name); a source without one shows "-".
PROFILED = (
    ("pybids indexing (find_echo_sets)", ("layout.py", "find_echo_sets")),
    (
        "read echoes (load_magnitude / read_magnitude)",
        ("nifti.py", "load_magnitude|read_magnitude"),
    ),
    ("input checks (_usable_magnitude, with the read)", ("echo_set.py", "_usable_magnitude")),
    ("noise level (_noise_level)", ("echo_set.py", "_noise_level")),
    (
        "  background (estimate_noise / _background_estimate)",
        ("noise/background.py", "estimate_noise|_background_estimate"),
    ),
    ("    local variance", ("noise/local.py", "_local_variance_sigma")),
    ("  echo differences", ("noise/air.py", "noise_from_echo_differences|_differences")),
    ("  residuals (wls fit)", ("noise/tissue.py", "noise_from_residuals|tissue_residuals")),
    ("signal mask", ("noise/mask.py", "signal_mask")),
    ("fits (fit_t2star, all calls)", ("magnitude.py", "fit_t2star")),
    ("maps (_maps)", ("echo_set.py", "_maps")),
    ("fit_echo_set (all of the above)", ("echo_set.py", "fit_echo_set")),
    ("write maps (write_maps; in threads after)", ("staging.py", "write_maps")),
    ("record statistics", ("summary.py", "set_statistics")),
    ("report: echo samples", ("report/maps.py", "echo_samples")),
    ("report: section (figures, in threads)", ("report/sections.py", "set_section")),
    ("publish (copy)", ("publish.py", "publish")),
    ("participant run (run_participant)", ("workflows/participant.py", "run_participant")),
)


def echo_times(n: int) -> tuple[float, ...]:
    if n == len(EXAMPLE_ECHO_TIMES):
        return EXAMPLE_ECHO_TIMES
    return tuple(float(t) for t in np.linspace(0.003, 0.003 + 0.0045 * (n - 1), n))


def make_dataset(root: Path, shape: tuple[int, int, int], n_echoes: int) -> tuple[Path, float]:
    """The cached data set under ``root`` (made once): BIDS folder and the noise sigma."""
    bids = root / "bids"
    done = root / "complete"
    sigma = S0 / SNR
    if done.exists():
        return bids, sigma
    shutil.rmtree(root, ignore_errors=True)
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "bench brain", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    te = np.asarray(echo_times(n_echoes))
    echoes = np.empty((*shape, n_echoes), dtype=np.int16)
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    radius = 1.0 - BACKGROUND
    for z0 in range(0, shape[2], SLAB):  # the simulator's ellipsoid, one slab at a time
        grids = np.meshgrid(axes[0], axes[1], axes[2][z0 : z0 + SLAB], indexing="ij")
        mask = sum((g / radius) ** 2 for g in grids) <= 1.0
        t2star, s0_map = _object_truth(grids, radius, mask, (0.005, 0.100), S0)
        rng = np.random.default_rng([SEED, z0])
        magnitude, _ = add_rician_noise(decay(s0_map, t2star, te), sigma, rng)
        echoes[:, :, z0 : z0 + SLAB] = np.clip(np.rint(magnitude), 0, 32767).astype(np.int16)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for k in range(n_echoes):
        stem = anat / f"sub-01_echo-{k + 1}_part-mag_MEGRE"
        image = nib.Nifti1Image(np.ascontiguousarray(echoes[..., k]), affine)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, f"{stem}.nii.gz")
        sidecar = {"EchoTime": float(te[k]), "MRAcquisitionType": "3D", "SliceThickness": 1.0}
        Path(f"{stem}.json").write_text(json.dumps(sidecar))
    done.write_text("")
    return bids, sigma


def measure(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of a fresh process; raises when it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return seconds, usage.ru_maxrss * 1024


def run_command(src: str, bids: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": src}
    command = [sys.executable, "-m", "t2starmap", str(bids), str(out), "participant"]
    return [*command, "--skip-bids-validation", "-q"], env


def steps_of(out: Path) -> dict[str, float]:
    record = next(out.rglob("*_record.json"))
    data = json.loads(record.read_text())
    return {**data.get("steps", {}), "set (fit_echo_set)": data.get("seconds", float("nan"))}


def profile(src: str, bids: Path, out: Path) -> dict[str, float]:
    """Cumulative seconds of :data:`PROFILED` in one cProfile run of ``src``."""
    stats_file = out.parent / "profile.out"
    command, env = run_command(src, bids, out)
    command[1:3] = ["-m", "cProfile", "-o", str(stats_file), "-m", "t2starmap"]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    found: dict[str, float] = {}
    for label, (file_end, name) in PROFILED:
        total = [
            cum
            for (file, _, function), (_, _, _, cum, _) in stats.items()
            if function in name.split("|") and file.endswith(file_end)
        ]
        if total:
            found[label] = max(total)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="256x256x176")
    parser.add_argument("--echoes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="also with one busy process")
    parser.add_argument("--src", nargs="+", default=[SRC], help="t2starmap sources to run")
    parser.add_argument("--baseline-src", default=SRC)
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "t2starmap-bench"))
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    assert len(shape) == 3, "--shape X x Y x Z"
    sources = [str(Path(s).resolve()) for s in args.src]
    cache = Path(args.cache) / f"{args.shape}x{args.echoes}"
    started = time.perf_counter()
    # Made in a process of its own: a child's ru_maxrss starts at its parent's peak (Linux
    # keeps it across fork and exec), so a parent that held the volume would raise every
    # measured peak to its own.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        bids, sigma = pool.apply(make_dataset, (cache, shape, args.echoes))
    print(f"data set {bids} ready in {time.perf_counter() - started:.0f} s")
    echo_bytes = int(np.prod(shape)) * args.echoes * 4
    bare_env = {**os.environ, "PYTHONPATH": sources[0]}
    bare_command = [sys.executable, "-c", "import torch, nibabel"]
    base_env = {**os.environ, "PYTHONPATH": str(Path(args.baseline_src).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        modes = ["quiet", "busy"] if args.busy else ["quiet"]
        rows: dict[tuple[str, str], list[tuple[float, int]]] = {}
        steps: dict[str, dict[str, float]] = {}
        repeats = 1 if args.memory_only else args.repeats
        for _ in range(repeats):
            for mode in modes:
                hog = Busy() if mode == "busy" else None
                if hog is not None:
                    hog.__enter__()
                try:
                    rows.setdefault((mode, "bare"), []).append(measure(bare_command, bare_env))
                    if not args.memory_only:
                        base = [sys.executable, "-c", READ_FIT_WRITE, str(bids), str(scratch / "b")]
                        rows.setdefault((mode, "baseline"), []).append(
                            measure([*base, str(sigma)], base_env)
                        )
                        plain = [sys.executable, "-c", READ_WRITE, str(bids), str(scratch / "w")]
                        rows.setdefault((mode, "read+write"), []).append(measure(plain, base_env))
                        shutil.rmtree(scratch / "b")
                        shutil.rmtree(scratch / "w")
                    for src in sources:
                        out = scratch / "out"
                        command, env = run_command(src, bids, out)
                        rows.setdefault((mode, src), []).append(measure(command, env))
                        steps[f"{src} ({mode})"] = steps_of(out)
                        shutil.rmtree(out)
                finally:
                    if hog is not None:
                        hog.__exit__()
        report(args, shape, rows, steps, modes, sources, echo_bytes)
        if not (args.no_profile or args.memory_only):
            profiles = {src: profile(src, bids, scratch / f"p{i}" / "out") for i, src in
                        enumerate(sources)}  # fmt: skip
            print("\ncumulative seconds in one cProfile run each (quiet):")
            print("| step | " + " | ".join(f"src {i + 1}" for i in range(len(sources))) + " |")
            print("|---|" + "---:|" * len(sources))
            for label, _ in PROFILED:
                cells = [
                    f"{profiles[s][label]:.2f}" if label in profiles[s] else "-" for s in sources
                ]
                print(f"| {label} | " + " | ".join(cells) + " |")


def _ratio(got: list[tuple[float, int]], base: list[tuple[float, int]] | None) -> float:
    """The median of the rounds' seconds over ``base``'s (NaN without a base)."""
    if not base:
        return float("nan")
    return statistics.median(s / b for (s, _), (b, _) in zip(got, base, strict=True))


def report(
    args: argparse.Namespace,
    shape: tuple[int, ...],
    rows: dict[tuple[str, str], list[tuple[float, int]]],
    steps: dict[str, dict[str, float]],
    modes: list[str],
    sources: list[str],
    echo_bytes: int,
) -> None:
    print(
        f"\n{args.shape} x {args.echoes} echoes int16; float32 echo data "
        f"{echo_bytes / 2**30:.2f} GiB; {1 if args.memory_only else args.repeats} interleaved "
        f"round(s); load average at the end {os.getloadavg()[0]:.1f}"
    )
    for i, src in enumerate(sources):
        print(f"  src {i + 1}: {src}")
    print(
        "\n| mode | what | median s | / baseline (read+fit+write) | / read+write | peak RSS GiB "
        "| above bare / echo data |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in modes:
        bare = max(m for _, m in rows[(mode, "bare")])
        base = rows.get((mode, "baseline"))
        names = [("bare", "bare python (import torch, nibabel)")]
        names += [("baseline", "baseline: read + fit + write")] if base else []
        names += [("read+write", "read + write (nibabel, no fit)")] if base else []
        names += [(src, f"participant run, src {i + 1}") for i, src in enumerate(sources)]
        for key, label in names:
            got = rows[(mode, key)]
            seconds = statistics.median(s for s, _ in got)
            peak = max(m for _, m in got)
            ratios = [_ratio(got, rows.get((mode, b))) for b in ("baseline", "read+write")]
            print(
                f"| {mode} | {label} | {seconds:.2f} | {ratios[0]:.2f} | {ratios[1]:.2f} | "
                f"{peak / 2**30:.2f} | {(peak - bare) / echo_bytes:.2f} |"
            )
    print("\nthe record's steps (seconds, last round):")
    names = list(dict.fromkeys(k for values in steps.values() for k in values))
    print("| run | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for run, values in steps.items():
        index = sources.index(run.rsplit(" (", 1)[0]) + 1
        label = f"src {index} ({run.rsplit(' (', 1)[1]}"
        print(
            f"| {label} | " + " | ".join(f"{values.get(n, float('nan')):.2f}" for n in names) + " |"
        )


if __name__ == "__main__":
    main()
