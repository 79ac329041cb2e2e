"""``t2starmap t2smap`` against tedana 26.0.3's ``t2smap``, side by side: parity, speed,
memory, ``--fitmode ts`` and ``nlls`` against the truth (issue 28's targets, as a table).

    python benchmarks/bench_t2smap.py [--tedana PATH] [--parts parity speed ts nlls] [--busy]

``--tedana``: the tedana ``t2smap`` executable (default: ``t2smap`` on PATH, else
``/work/venv-bold/bin/t2smap``); without one the tedana rows are skipped with a message.
tedana is not a dependency of t2starmap: install it in a venv of its own
(``python -m venv V && V/bin/pip install tedana==26.0.3 six``).

Parts (each prints its table):

* ``parity``: tedana's 3-echo test data (``../shared/data/me-epi``, TE 14.5/38.5/62.5 ms, its
  mask) and a small synthetic run (48x48x24, 4 echoes, 40 volumes), loglin and curvefit:
  T2* relative differences over tedana's adaptive mask, the adaptive mask's agreement,
  optcom; curvefit's median where tedana's fit converged; the variance maps;
* ``speed``: whole commands, wall seconds and peak memory (``/usr/bin/time``): curvefit on the
  small run (target >= 30x tedana's), our curvefit against tedana's loglin on a realistic run
  (64x64x40, 4 echoes, 300 volumes; target: not slower, less memory);
* ``ts``: ``--fitmode ts`` (loglin and curvefit) on the realistic run against a fresh python
  that reads the echoes and writes two 4-D float32 maps with nibabel (target <= 3x), peak
  memory against the float32 echo data (target <= 2.5x);
* ``nlls``: on the realistic run, the dropout region (T2* 3-9 ms, echo 2 on the noise floor):
  the share tedana's adaptive mask drops, the share ``nlls`` gives a T2* (converged, no
  failure bit) and its median error; the median error elsewhere.

``--busy`` repeats the timed commands with one competing busy process (``while True: pass``).
Every command runs in a fresh process; ratios are from one run of this script.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from bench_busy import Busy  # the script's own folder is on sys.path

from t2starmap.fit.status import level_named
from t2starmap.sim.bold import BoldRun, make_bold_run, write_bold_run
from tests.support.bold import command_args as t2smap_args  # run with PYTHONPATH=src:.

REPO = Path(__file__).resolve().parents[1]
ME_EPI = REPO.parent / "shared" / "data" / "me-epi"
ME_EPI_TE = (0.0145, 0.0385, 0.0625)
SMALL = ((48, 48, 24), 40)
REALISTIC = ((64, 64, 40), 300)


def timed(command: Sequence[str]) -> tuple[float, float]:
    """Run ``command`` under /usr/bin/time; (wall s, peak resident MB). Raises on failure."""
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "TIME %e %M", *command], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {proc.stderr[-2000:]}")
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("TIME ")][-1]
    wall, kb = line.split()[1:]
    return float(wall), float(kb) / 1024


def ours(
    paths: Sequence[Path], te: Sequence[float], mask: Path, out: Path, *extra: str
) -> list[str]:
    return [sys.executable, "-m", "t2starmap", "t2smap", *t2smap_args(paths, te, mask, out, *extra)]


def tedana(
    exe: str, paths: Sequence[Path], te: Sequence[float], mask: Path, out: Path, *extra: str
) -> list[str]:
    return [exe, *t2smap_args(paths, te, mask, out, *extra)]


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)  # type: ignore[attr-defined]


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(a - b) / np.abs(b)


def row(name: str, value: str, target: str, met: bool | None) -> None:
    verdict = "-" if met is None else ("met" if met else "NOT met")
    print(f"| {name} | {value} | {target} | {verdict} |")


def header(title: str) -> None:
    print(f"\n### {title}\n\n| measure | value | target | |\n|---|---|---|---|")


def parity_case(
    label: str, exe: str, paths: list[Path], te: Sequence[float], mask: Path, work: Path
) -> None:
    inside = load(mask) > 0
    for fittype in ("loglin", "curvefit"):
        a, b = work / f"{label}-ours-{fittype}", work / f"{label}-tedana-{fittype}"
        t_ours = timed(ours(paths, te, mask, a, "--fittype", fittype, "--verbose", "--overwrite"))
        t_ted = timed(
            tedana(exe, paths, te, mask, b, "--fittype", fittype, "--verbose", "--overwrite")
        )
        count_a = load(a / "desc-adaptiveGoodSignal_mask.nii.gz")[inside]
        count_b = load(b / "desc-adaptiveGoodSignal_mask.nii.gz")[inside]
        sel = count_b > 0
        t2a, t2b = (load(x / "T2starmap.nii.gz")[inside][sel] for x in (a, b))
        header(f"{label}, --fittype {fittype} (ours {t_ours[0]:.1f} s, tedana {t_ted[0]:.1f} s)")
        row(
            "adaptive mask identical",
            f"{100 * np.mean(count_a == count_b):.3f} %",
            ">= 99.9 %",
            bool(np.mean(count_a == count_b) >= 0.999),
        )
        if fittype == "loglin":
            p99 = float(np.percentile(relative(t2a, t2b), 99))
            row("T2* rel. diff. p99 (adaptive mask)", f"{p99:.2e}", "<= 1e-3", p99 <= 1e-3)
            oa, ob = (load(x / "desc-optcom_bold.nii.gz")[inside][sel] for x in (a, b))
            ok = ob != 0
            p99 = float(np.percentile(relative(oa[ok], ob[ok]), 99))
            row("optcom rel. diff. p99", f"{p99:.2e}", "<= 1e-3", p99 <= 1e-3)
            continue
        failed = load(b / "desc-decayFitFailures_mask.nii.gz")[inside][sel] > 0
        med = float(np.median(relative(t2a[~failed], t2b[~failed])))
        row("T2* median rel. diff. where tedana converged", f"{med:.2e}", "<= 1 %", med <= 0.01)
        row("voxels tedana's curvefit failed", f"{failed.sum()} of {sel.sum()}", "-", None)
        va = load(a / "stat-variance_desc-t2star_statmap.nii.gz")[inside][sel][~failed]
        swapped = load(b / "stat-variance_desc-s0_statmap.nii.gz")[inside][sel][~failed] / 1e6
        ok = swapped > 0
        row(
            "T2* variance vs tedana's (its s0 file, ms^2: 26.0.3 swaps them) median rel.",
            f"{np.median(relative(va[ok], swapped[ok])):.2e}",
            "-",
            None,
        )


def part_parity(exe: str | None, work: Path) -> None:
    if exe is None:
        print("\nparity: no tedana t2smap found (--tedana PATH); skipped")
        return
    if ME_EPI.is_dir():
        paths = [ME_EPI / f"echo{k}.nii.gz" for k in (1, 2, 3)]
        parity_case("me-epi", exe, paths, ME_EPI_TE, ME_EPI / "mask.nii.gz", work)
    else:
        print(f"\nparity: {ME_EPI} not found; the real-data rows skipped")
    run, paths, mask = synthetic(work, *SMALL)
    parity_case("synthetic 48x48x24x40", exe, paths, run.te, mask, work)


def synthetic(
    work: Path, shape: tuple[int, ...], n_volumes: int
) -> tuple[BoldRun, list[Path], Path]:
    folder = work / ("syn-" + "x".join(map(str, (*shape, n_volumes))))
    run = make_bold_run(shape, n_volumes, seed=7)
    if not folder.is_dir():
        write_bold_run(folder, run)
    return run, sorted(folder.glob("echo-*_bold.nii.gz")), folder / "mask.nii.gz"


def pair(
    exe: str, case: tuple[BoldRun, list[Path], Path], out: Path, ours_fit: str, tedana_fit: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(ours, tedana) (wall s, peak MB) of one run, each with its fit type."""
    run, paths, mask = case
    a = timed(ours(paths, run.te, mask, out / "ours", "--fittype", ours_fit, "--overwrite"))
    b = timed(
        tedana(exe, paths, run.te, mask, out / "tedana", "--fittype", tedana_fit, "--overwrite")
    )
    return a, b


_TEDANA_FIT = """
import sys, time, numpy as np, nibabel as nib
from tedana import decay, utils
paths, mask, te = sys.argv[1:5], sys.argv[5], [float(t) * 1000 for t in sys.argv[6:]]
inside = np.asarray(nib.load(mask).dataobj) > 0
data = np.stack([np.asarray(nib.load(p).dataobj, dtype=np.float32)[inside] for p in paths], 1)
keep, count = utils.make_adaptive_mask(data, threshold=1, methods=["dropout"])
started = time.perf_counter()
decay.fit_decay(data[keep], te, count[keep], "curvefit", report=False)
print(time.perf_counter() - started)
"""


def fit_alone(exe: str, case: tuple[BoldRun, list[Path], Path]) -> tuple[float, float, float]:
    """(ours best, ours median, tedana) seconds of the curvefit fit alone, in process, after
    the imports and the reading: our fit_curvefit on the temporal moments, tedana's
    decay.fit_decay (its venv's python beside ``exe``)."""
    from t2starmap.fit import adaptive_mask, bold

    run, paths, mask = case
    inside = load(mask) > 0
    echoes = [load(p).astype(np.float32)[inside] for p in paths]
    m = bold.echo_moments(echoes)
    used = adaptive_mask.echoes_used(adaptive_mask.adaptive_mask(m.mean, m.bad, ["dropout"]))
    warm = np.where(np.arange(used.size) < 10, used, 0)
    bold.fit_curvefit(m, run.te, warm, bold.Compute("cpu", 1))  # torch loaded, caches warm
    mine = []
    for _ in range(5):  # a shared machine: the same call varies 10x; best and median of 5
        started = time.perf_counter()
        bold.fit_curvefit(m, run.te, used, bold.Compute("cpu", 1))
        mine.append(time.perf_counter() - started)
    python = str(Path(exe).parent / "python")
    te = [str(t) for t in run.te]
    proc = subprocess.run(
        [python, "-c", _TEDANA_FIT, *map(str, paths), str(mask), *te],
        capture_output=True,
        text=True,
        check=True,
    )
    return min(mine), float(np.median(mine)), float(proc.stdout.strip().splitlines()[-1])


def compile_package() -> None:
    """Byte-compile t2starmap's modules, as installing it does (pip compiles a wheel's
    modules; Python itself writes them on first import unless PYTHONDONTWRITEBYTECODE is set,
    as on these machines): a source tree run without them compiles every module each time
    (about 0.05 s of our 0.5 s run). tedana's installed modules are compiled already."""
    package = REPO / "src" / "t2starmap"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    print(f"(byte-compiled {package} first, as an installation does)")


def part_speed(exe: str | None, work: Path, busy: bool) -> None:
    if exe is None:
        print("\nspeed: no tedana t2smap found; skipped")
        return
    compile_package()
    small = synthetic(work, *SMALL)
    real = synthetic(work, *REALISTIC)
    for loaded in (False, True) if busy else (False,):
        with Busy() if loaded else _Quiet():
            tag = " (one busy process)" if loaded else ""
            a, b = pair(exe, small, work / "speed-small", "curvefit", "curvefit")
            header(
                f"speed{tag}: curvefit, small run 48x48x24 ({small[0].brain.sum()} brain "
                "voxels), 4 echoes, 40 volumes"
            )
            row(
                "ours / tedana wall s",
                f"{a[0]:.1f} / {b[0]:.1f} = {b[0] / a[0]:.0f}x faster",
                ">= 30x",
                b[0] / a[0] >= 30,
            )
            row("peak MB ours / tedana", f"{a[1]:.0f} / {b[1]:.0f}", "-", None)
            best, median, theirs = fit_alone(exe, small)
            row(
                "the fit alone (in process, 1 thread) ours best / median of 5, tedana s",
                f"{best:.2f} / {median:.2f}, {theirs:.1f} = {theirs / median:.0f}x faster (median)",
                "-",
                None,
            )
            c, d = pair(exe, real, work / "speed-real", "curvefit", "loglin")
            header(f"speed{tag}: our curvefit vs tedana's loglin, 64x64x40, 4 echoes, 300 volumes")
            row("wall s ours / tedana", f"{c[0]:.1f} / {d[0]:.1f}", "ours <= tedana", c[0] <= d[0])
            row("peak MB ours / tedana", f"{c[1]:.0f} / {d[1]:.0f}", "ours < tedana", c[1] < d[1])


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_BASELINE = """
import sys, numpy as np, nibabel as nib
paths, out = sys.argv[1:-1], sys.argv[-1]
data = [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in paths]
img = nib.load(paths[0])
for k in range(2):
    nib.save(nib.Nifti1Image(data[k], img.affine, img.header), f"{out}/map{k}.nii.gz")
"""


def full_mask(work: Path, brain_mask: Path) -> Path:
    """An all-ones mask of the run's field of view: every voxel fitted (the issue's 49 M
    fits), written with the project's writer."""
    from t2starmap.bids.nifti import Geometry
    from t2starmap.bids.nifti_write import save_map

    img = nib.load(str(brain_mask))
    path = work / "fov-mask.nii.gz"
    shape = tuple(int(n) for n in img.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms())  # type: ignore[attr-defined]
    save_map(path, np.ones(shape, bool), Geometry(shape, img.affine, zooms, 1, 1))  # type: ignore[attr-defined]
    return path


#: ``--fitmode ts`` rows: (label, fit type, mask: "brain" or "fov", extra arguments).
TS_ROWS = (
    ("loglin, brain mask", "loglin", "brain", ()),
    ("loglin, whole field of view", "loglin", "fov", ()),
    ("curvefit, brain mask, --n-threads 1", "curvefit", "brain", ()),
    ("curvefit, brain mask, --n-threads -1", "curvefit", "brain", ("--n-threads", "-1")),
)


def part_ts(work: Path, busy: bool) -> None:
    run, paths, mask = synthetic(work, *REALISTIC)
    masks = {"brain": mask, "fov": full_mask(work, mask)}
    fits = {"brain": int(run.brain.sum()) * 300, "fov": run.brain.size * 300}
    float_mb = run.echoes.size * 4 / 2**20
    (work / "base").mkdir(exist_ok=True)
    for loaded in (False, True) if busy else (False,):
        with Busy() if loaded else _Quiet():
            base = timed([sys.executable, "-c", _BASELINE, *map(str, paths), str(work / "base")])
            header(
                f"--fitmode ts{' (one busy process)' if loaded else ''}, 64x64x40, 4 echoes, "
                f"300 volumes; read 4 echoes + write two 4-D maps: {base[0]:.1f} s; float32 "
                f"echoes {float_mb:.0f} MB"
            )
            for label, fittype, where, extra in TS_ROWS:
                out = work / f"ts-{fittype}-{where}"
                command = ours(
                    paths,
                    run.te,
                    masks[where],
                    out,
                    "--fitmode",
                    "ts",
                    "--fittype",
                    fittype,
                    "--overwrite",
                    *extra,
                )
                t = timed(command)
                name = f"{label} ({fits[where] / 1e6:.0f} M fits)"
                row(
                    f"{name}: wall / baseline",
                    f"{t[0]:.1f} s = {t[0] / base[0]:.1f}x",
                    "<= 3x",
                    t[0] / base[0] <= 3,
                )
                row(
                    f"{name}: peak MB / float32 echoes",
                    f"{t[1]:.0f} = {t[1] / float_mb:.2f}x",
                    "<= 2.5x",
                    t[1] / float_mb <= 2.5,
                )


#: The fit-status labels the nlls part counts in the dropout region.
NLLS_LABELS = ("good", "refitted", "r2star_at_upper_bound", "not_converged")


def part_nlls(work: Path) -> None:
    run, paths, mask = synthetic(work, *REALISTIC)
    out = {ft: work / f"n-{ft}" for ft in ("loglin", "nlls")}
    for ft, folder in out.items():
        timed(ours(paths, run.te, mask, folder, "--fittype", ft, "--overwrite"))
    drop, other = run.dropout, run.brain & ~run.dropout
    count = load(out["loglin"] / "desc-adaptiveGoodSignal_mask.nii.gz")
    t2 = load(out["nlls"] / "T2starmap.nii.gz")
    status = load(out["nlls"] / "desc-fitstatus_dseg.nii.gz")
    err = relative(t2, run.t2star)
    index = {name: level_named(name).index for name in NLLS_LABELS}
    inside = np.isin(status, [index["good"], index["refitted"]])
    bound = status == index["r2star_at_upper_bound"]
    header(
        f"nlls against the truth, 64x64x40 x 300, sigma {run.sigma:g}, dropout region "
        f"{drop.sum()} voxels (T2* 3-9 ms, TE 12-60 ms)"
    )
    row(
        "dropout: tedana's adaptive mask drops (0 good echoes)",
        f"{100 * np.mean(count[drop] == 0):.0f} %",
        "most",
        None,
    )
    for name in NLLS_LABELS:
        row(f"dropout: fit status {name}", f"{100 * np.mean(status[drop] == index[name]):.1f} %",
            "-", None)  # fmt: skip
    row(
        "dropout: nlls ends in a converged minimum (inside the range or on its bound)",
        f"{100 * np.mean((inside | bound)[drop]):.1f} %",
        ">= 90 %",
        np.mean((inside | bound)[drop]) >= 0.9,
    )
    row(
        "dropout: nlls T2* reported at all (> 0)", f"{100 * np.mean(t2[drop] > 0):.0f} %", "-", None
    )
    med = float(np.median(err[drop]))
    row("dropout: median |error| (all its voxels)", f"{100 * med:.1f} %", "<= 20 %", med <= 0.2)
    row(
        "dropout: median |error| inside the range (good, refitted)",
        f"{100 * np.median(err[drop & inside]):.1f} %",
        "-",
        None,
    )
    row(
        "dropout: median true T2* where on the bound",
        f"{1e3 * np.median(run.t2star[drop & bound]):.1f} ms" if (drop & bound).any() else "-",
        "-",
        None,
    )
    med = float(np.median(err[other]))
    row("elsewhere: median |error|", f"{100 * med:.2f} %", "<= 1 %", med <= 0.01)
    ll = load(out["loglin"] / "T2starmap.nii.gz")
    row(
        "elsewhere: loglin median |error|",
        f"{100 * np.median(relative(ll, run.t2star)[other]):.2f} %",
        "-",
        None,
    )


def find_tedana(given: str | None) -> str | None:
    for candidate in (given, shutil.which("t2smap"), "/work/venv-bold/bin/t2smap"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tedana", default=None, help="tedana's t2smap executable")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["parity", "speed", "ts", "nlls"],
        choices=["parity", "speed", "ts", "nlls"],
    )
    parser.add_argument("--busy", action="store_true", help="also with one busy process")
    parser.add_argument("--work", type=Path, default=None, help="keep the files here")
    args = parser.parse_args(argv)
    exe = find_tedana(args.tedana)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-t2smap-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"tedana: {exe or 'not found'}; python {sys.version.split()[0]}; work {work}")
    try:
        if "parity" in args.parts:
            part_parity(exe, work)
        if "speed" in args.parts:
            part_speed(exe, work, args.busy)
        if "ts" in args.parts:
            part_ts(work, args.busy)
        if "nlls" in args.parts:
            part_nlls(work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
