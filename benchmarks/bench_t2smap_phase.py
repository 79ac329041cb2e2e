"""Issue 28 part 1, the last two pieces: the per-voxel noise sigma of ``--fittype nlls`` and
the complex fit of ``--phase``, against the truth and in time.

1. ``sigma``: a seeded run under a g-factor-like noise map (1 at the edges, 3 by the dropout
   region; :func:`t2starmap.sim.bold.g_factor_map`): the nlls fit with the run's one sigma
   against the per-voxel sigma the rule chooses, the T2* bias where the SNR is low (dropout,
   g > 2) and elsewhere, the rule's cost; and the rule on the same run without g (one sigma).
2. ``phase``: a seeded run with phase (``part-phase`` echoes, a frequency map, drifting and
   breathing phase; :mod:`t2starmap.sim.bold_phase`): the whole ``t2starmap t2smap`` command
   with ``--fittype curvefit`` against ``--phase`` (wall s, peak MB, T2* against the truth),
   quiet and with ``--busy`` one competing busy process.

    python benchmarks/bench_t2smap_phase.py [--parts sigma phase] [--shape 64x64x40]
        [--volumes 100] [--busy]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from bench_busy import Busy  # the script's own folder is on sys.path
from bench_t2smap import header, load, ours, row, timed

from t2starmap.fit import bold, bold_sigma
from t2starmap.sim.bold import g_factor_map, make_bold_run, write_bold_run
from t2starmap.sim.bold_phase import make_complex_bold_run, write_phase


def _bias(t2: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(np.median(t2[where] / truth[where] - 1))


def part_sigma(shape: tuple[int, int, int], n_volumes: int) -> None:
    header(f"per-voxel sigma, {'x'.join(map(str, shape))} x {n_volumes}, g-factor 1-3")
    gf = g_factor_map(shape)
    run = make_bold_run(shape, n_volumes, seed=7, g_factor=gf)
    m = bold.echo_moments([run.echoes[..., k][run.brain].astype(np.float32) for k in range(4)])
    inside = np.ones(m.mean.shape[0], bool)
    bold_sigma.rician_table()  # torch loaded, as in the command
    start = time.perf_counter()
    choice = bold_sigma.choose_noise(m.mean[:, -1], m.diff_var[:, -1], inside, run.brain, n_volumes)
    rule_s = time.perf_counter() - start
    truth = run.t2star[run.brain]
    low = run.dropout[run.brain] & (gf[run.brain] > 2)
    rest = ~run.dropout[run.brain]
    timings = {}
    for name, sigma in (("one sigma", choice.median), ("per-voxel sigma", choice.sigma)):
        start = time.perf_counter()
        fit = bold.fit_nlls(m, run.te, inside, sigma, bold.Compute())
        timings[name] = time.perf_counter() - start
        row(f"{name}: median T2* bias, dropout & g > 2 ({int(low.sum())} voxels)",
            f"{_bias(fit.t2star, truth, low):+.3f}", "per-voxel lower", None)  # fmt: skip
        row(f"{name}: median T2* bias elsewhere", f"{_bias(fit.t2star, truth, rest):+.4f}",
            "|.| <= 0.01", abs(_bias(fit.t2star, truth, rest)) <= 0.01)  # fmt: skip
        row(f"{name}: fit s", f"{timings[name]:.2f}", "-", None)
    row("rule: per voxel?", f"{choice.per_voxel} (variation {choice.excess:.3f}, "
        f"correlation with signal {choice.follows:.2f})", "True", choice.per_voxel)  # fmt: skip
    row("rule s", f"{rule_s:.3f}", "-", None)
    plain = make_bold_run(shape, n_volumes, seed=7)
    mp = bold.echo_moments([plain.echoes[..., k][plain.brain].astype(np.float32) for k in range(4)])
    other = bold_sigma.choose_noise(
        mp.mean[:, -1], mp.diff_var[:, -1], inside, plain.brain, n_volumes
    )
    row("same run without g: per voxel?", f"{other.per_voxel} (variation {other.excess:.3f})",
        "False", not other.per_voxel)  # fmt: skip


def part_phase(work: Path, shape: tuple[int, int, int], n_volumes: int, busy: bool) -> None:
    header(f"--phase, {'x'.join(map(str, shape))} x {n_volumes}, 4 echoes")
    start = time.perf_counter()
    cr = make_complex_bold_run(shape, n_volumes, seed=3)
    mags = write_bold_run(work / "in", cr.magnitude)
    phase = write_phase(work / "in", cr)
    row("making the run s (not timed below)", f"{time.perf_counter() - start:.1f}", "-", None)
    run = cr.magnitude
    keep = run.brain & ~run.dropout
    mask = work / "in" / "mask.nii.gz"
    for loaded in (False, True) if busy else (False,):
        tag = " (one busy process)" if loaded else ""
        for name, extra in (("curvefit", ()), ("--phase", ("--phase", *map(str, phase)))):
            out = work / f"out-{name.strip('-')}{int(loaded)}"
            command = ours(mags, run.te, mask, out, "--fittype", "curvefit", *extra)
            if loaded:
                with Busy():
                    wall, mb = timed(command)
            else:
                wall, mb = timed(command)
            t2 = load(out / "T2starmap.nii.gz")
            err = float(np.median(np.abs(t2[keep] / run.t2star[keep] - 1)))
            made = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
            used = "complex" if made.get("ComplexFit") else "magnitude"
            row(f"{name}{tag}: wall s / peak MB", f"{wall:.1f} / {mb:.0f}", "-", None)
            row(f"{name}{tag}: median T2* error ({used})", f"{err:.4f}", "<= 0.01", err <= 0.01)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["sigma", "phase"])
    parser.add_argument("--shape", default="64x64x40")
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    assert len(shape) == 3
    if "sigma" in args.parts:
        part_sigma((48, 48, 24), 40)
    if "phase" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            part_phase(Path(tmp), shape, args.volumes, args.busy)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1:])
