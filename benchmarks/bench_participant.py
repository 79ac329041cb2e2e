"""A whole participant run against the read+fit+write baseline, and where its time goes.

Makes a temporary BIDS dataset (one participant, 192x192x64 int16, 11 echoes, from
``t2starmap.sim.phantoms``), then, interleaved ``--repeats`` times, each a fresh process:

* read+fit+write (the issue's baseline, :data:`baselines.READ_FIT_WRITE`): read the 11 echoes,
  fit them with ``t2starmap.fit.fit_t2star`` (the default nlls, Rician, at the phantom's known
  sigma, 2 chunk workers of one torch thread) and write the 10 maps;
* read+write (the older baseline, :data:`baselines.READ_WRITE`, kept so nothing is hidden):
  read the echoes and write 10 float32 images with nibabel, no torch;
* run: ``python -m t2starmap BIDS OUT participant --skip-bids-validation`` (default fit,
  report included);
* (``--busy``) the same three with one competing busy process (``while True: pass``) running.

Ratios are the run over each baseline, the median of the rounds' ratios (and each round's).
Then one more run in a child process with timers wrapped around the workflow's steps prints
where the time goes (seconds; steps that run in threads overlap, so the rows need not add up).

    .venv/bin/python benchmarks/bench_participant.py [--shape 192x192x64] [--repeats 3] [--busy]
        [--src DIR]

``--src`` runs another checkout's ``src`` (e.g. an older commit made with ``git archive``).
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

import nibabel as nib
import numpy as np
from baselines import READ_FIT_WRITE, READ_WRITE  # beside this script

from t2starmap.sim.phantoms import DEFAULT_ECHO_TIMES, make_phantom

SRC = str(Path(__file__).resolve().parents[1] / "src")

#: Run in a child: the workflow with timers around its steps (name -> dotted target).
PROFILE = """
import json, sys, time
from collections import defaultdict
started = time.perf_counter()
totals = defaultdict(float)
def wrap(module, name, label):
    original = getattr(module, name)
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - t
    setattr(module, name, timed)
t = time.perf_counter(); import torch; totals["import torch"] = time.perf_counter() - t
from t2starmap import noise
from t2starmap.bids import nifti
from t2starmap.cli import run as cli
from t2starmap.workflows import echo_set as estimate
from t2starmap.workflows import participant as workflow
from t2starmap.workflows import staging
from t2starmap.report import participant, figures, sections
import t2starmap.bids.layout as layout
totals["import t2starmap"] = time.perf_counter() - t - totals["import torch"]
wrap(workflow, "find_echo_sets", "pybids indexing")
wrap(workflow, "check_geometry", "read headers")
wrap(estimate, "read_magnitude", "read echoes")
wrap(estimate, "all_candidates", "noise: candidates")
wrap(estimate, "signal_mask", "signal mask")
wrap(estimate, "fit_t2star", "fit")
wrap(estimate, "fit_echo_set", "fit_echo_set (all of read..fit)")
wrap(staging, "save_map", "write maps (staging)")
wrap(workflow, "_publish", "publish (copy)")
wrap(participant, "load_set_maps", "report: read maps")
wrap(sections, "read_echoes", "report: read echoes")
wrap(figures, "montage_png", "report: montages")
wrap(figures, "histogram_png", "report: histogram")
wrap(figures, "decay_png", "report: decay plot")
wrap(participant, "set_section", "report: set sections")
wrap(participant, "render_page", "report: page HTML")
wrap(workflow, "stage_page_citation", "methods paragraphs: pages")
wrap(workflow, "write_output_citation", "methods paragraphs: logs/CITATION")
code = cli.main(sys.argv[1:])
totals["total (in process)"] = time.perf_counter() - started
print(json.dumps(dict(totals)))
sys.exit(code)
"""


#: The phantom's S0 and SNR: its noise sigma (S0 / SNR) is what the baseline fits with.
S0, SNR = 3000.0, 50.0


def make_dataset(root: Path, shape: tuple[int, ...]) -> Path:
    """One participant, int16 echoes (as scanners write them), sidecars with EchoTime."""
    bids = root / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    phantom = make_phantom(shape, DEFAULT_ECHO_TIMES, s0=S0, snr=SNR, seed=3)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for k, te in enumerate(phantom.echo_times, start=1):
        stem = anat / f"sub-01_echo-{k}_part-mag_MEGRE"
        data = np.clip(np.rint(phantom.magnitude[..., k - 1]), 0, 32767).astype(np.int16)
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, f"{stem}.nii.gz")
        Path(f"{stem}.json").write_text(json.dumps({"EchoTime": float(te)}))
    return bids


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


#: What one round times, in order: the two baselines, then the run.
WHAT = ("read+fit+write", "read+write", "run")


def one_round(bids: Path, scratch: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds of each of :data:`WHAT`, each a fresh process."""
    shutil.rmtree(scratch, ignore_errors=True)
    python, data, fit = sys.executable, str(bids), READ_FIT_WRITE
    return {
        "read+fit+write": wall([python, "-c", fit, data, str(scratch / "f"), str(S0 / SNR)], env),
        "read+write": wall([python, "-c", READ_WRITE, data, str(scratch / "b")], env),
        "run": wall(
            [python, "-m", "t2starmap", data, str(scratch / "out"), "participant",
             "--skip-bids-validation"],
            env,
        ),
    }  # fmt: skip


def print_table(times: dict[str, list[dict[str, float]]]) -> None:
    """Medians, the run over each baseline (median of the rounds' ratios) and every round's."""
    print(
        f"{'mode':>6} {'read+fit+write s':>16} {'read+write s':>12} {'run s':>7} "
        f"{'run / read+fit+write':>20} {'run / read+write':>16}"
    )
    for mode, rounds in times.items():
        median = {w: statistics.median(r[w] for r in rounds) for w in WHAT}
        fit_ratio = statistics.median(r["run"] / r["read+fit+write"] for r in rounds)
        io_ratio = statistics.median(r["run"] / r["read+write"] for r in rounds)
        print(
            f"{mode:>6} {median['read+fit+write']:16.2f} {median['read+write']:12.2f} "
            f"{median['run']:7.2f} {fit_ratio:20.2f} {io_ratio:16.2f}"
        )
    for mode, rounds in times.items():
        fit_rows = ", ".join(f"{r['run'] / r['read+fit+write']:.2f}" for r in rounds)
        io_rows = ", ".join(f"{r['run'] / r['read+write']:.2f}" for r in rounds)
        print(f"  {mode} per round: run / read+fit+write {fit_rows}; run / read+write {io_rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="192x192x64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="also with one busy process")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--src", default=SRC, help="the t2starmap sources to run")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    env = {**os.environ, "PYTHONPATH": str(Path(args.src).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bids = make_dataset(root, shape)
        modes = ["quiet", "busy"] if args.busy else ["quiet"]
        times: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode in modes:
                hog = None
                if mode == "busy":
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    time.sleep(0.5)
                try:
                    times[mode].append(one_round(bids, root / "scratch", env))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
        print(
            f"shape {args.shape}, 11 echoes int16; {args.repeats} interleaved rounds; "
            f"load average at the end {os.getloadavg()[0]:.1f}; src {Path(args.src).resolve()}"
        )
        print_table(times)
        if args.no_profile:
            return
        shutil.rmtree(root / "scratch", ignore_errors=True)
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                PROFILE,
                str(bids),
                str(root / "scratch" / "out"),
                "participant",
                "--skip-bids-validation",
            ],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        totals = json.loads(result.stdout.strip().splitlines()[-1])
        totals["total (wall, with start-up)"] = time.perf_counter() - started
        print("\nwhere the time goes (one profiled run, seconds):")
        for name, seconds in totals.items():
            print(f"  {name:<36} {seconds:7.2f}")


if __name__ == "__main__":
    main()
