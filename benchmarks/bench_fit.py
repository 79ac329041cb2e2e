"""Speed and accuracy of t2starmap's fits against the notebook approach and today's tools.

Run with ``make bench`` (installs the ``bench`` extra: scipy, tedana), or directly:

    python benchmarks/bench_fit.py [--quick] [--skip-memory] [--out benchmarks/RESULTS.md]

One synthetic volume with known truth is fitted by every method: 192 x 192 x 64 voxels, 11
echoes TE 2-40 ms, T2* log-uniform 5-100 ms, S0 1000 +- 10 %, Rician noise at SNR 50 on S0,
every voxel tissue (no background, no mask: the worst case for speed). Methods too slow for
the whole volume run on a part of it and are extrapolated linearly in the voxel count (their
cost is per voxel; the part is said in the table). Accuracy is always measured on what was
actually fitted. Timings are the best of ``--repeats`` runs, wall clock, with torch's default
thread count; the machine's load at the start is recorded, since a busy machine slows
everything (the ratio column compares runs of the same process).

Then ``noise_floor.py`` compares noise-floor estimators (``benchmarks/NOISE_FLOOR.md``).

The memory check runs in a subprocess: a 512 x 512 x 256 x 12 float32 volume is fitted by
the default method and the peak resident set size (``resource.getrusage``) is compared with
the size of the input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import t2starmap
from t2starmap.fit import T2STAR_MAX, T2STAR_MIN, Compute, NoiseModel, fit_t2star
from t2starmap.sim.phantoms import add_rician_noise, decay

HERE = Path(__file__).resolve().parent
SHAPE = (192, 192, 64)
TE = np.linspace(0.002, 0.040, 11)
SNR = 50.0
S0 = 1000.0
SIGMA = S0 / SNR


@dataclass
class Row:
    name: str
    seconds: float  # for the whole volume (extrapolated where ``fitted`` < volume)
    fitted: int  # voxels actually fitted
    errors: np.ndarray  # relative T2* errors of the fitted voxels
    failed: float  # fraction of fitted voxels failed / unusable
    note: str = ""


def make_volume(shape: tuple[int, ...], te: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Magnitude (..., E) float32, true T2* (...) and S0 (...), filled slab by slab."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    t2 = np.exp(rng.uniform(np.log(0.005), np.log(0.100), n))
    s0 = S0 * (1.0 + 0.1 * rng.uniform(-1.0, 1.0, n))
    magnitude = np.empty((n, te.size), np.float32)
    step = 1 << 20
    for start in range(0, n, step):
        sl = slice(start, start + step)
        magnitude[sl], _ = add_rician_noise(decay(s0[sl], t2[sl], te), SIGMA, rng)
    return magnitude.reshape(*shape, te.size), t2.reshape(shape), s0.reshape(shape)


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def rel_errors(t2: np.ndarray, truth: np.ndarray) -> np.ndarray:
    t2 = np.nan_to_num(np.asarray(t2, np.float64), nan=np.inf, posinf=np.inf, neginf=np.inf)
    return np.abs(t2 / truth - 1.0)


def bad_t2(t2: np.ndarray) -> np.ndarray:
    """Outputs t2starmap would flag: not finite or outside its reported range."""
    t2 = np.asarray(t2, np.float64)
    return ~np.isfinite(t2) | (t2 < T2STAR_MIN) | (t2 > T2STAR_MAX)


def gpu_note(signal: torch.Tensor, repeats: int) -> str:
    """The default fit on the GPU with the volume already there (target <= 5 ms), or why not."""
    if not torch.cuda.is_available():
        return "GPU: no CUDA device on this machine, so the GPU target (<= 5 ms) was not measured."
    on_gpu = signal.cuda()

    def run() -> object:
        result = fit_t2star(
            on_gpu, TE, noise=NoiseModel(sigma=SIGMA), compute=Compute(device="cuda")
        )
        torch.cuda.synchronize()
        return result

    run()  # warm-up: CUDA context, kernels, allocator
    seconds, result = best_of(repeats, run)
    assert isinstance(result, t2starmap.FitResult)
    name = torch.cuda.get_device_name(0)
    return (
        f"GPU ({name}), default fit with the volume already on the GPU: {1000 * seconds:.2f} ms "
        f"(best of {repeats}; target <= 5 ms), {result.failed.float().mean().item():.2%} failed."
    )


# --- the peers -------------------------------------------------------------------------------


def loglin_pass(signal: torch.Tensor, te: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One ordinary log-linear least-squares pass: log of every sample, then the closed-form
    slope and intercept as one matrix-vector product with the centred echo times."""
    z = torch.log(signal.clamp_min(1e-30))
    x = te - te.mean()
    slope = (z @ x) / (x @ x)
    return torch.exp(z.mean(-1) - slope * te.mean()), -slope


def notebook_fit(signal: np.ndarray, te: np.ndarray, steps: int = 20_000) -> np.ndarray:
    """The seed notebook: M0 exp(-TE/T2*) by MSE loss and ADAM (lr 1e-3), T2* starting at
    20 ms, M0 at the first echo, TE in seconds, all voxels in one batch."""
    y = torch.as_tensor(signal.reshape(-1, te.size), dtype=torch.float32)
    t = torch.as_tensor(te, dtype=torch.float32)
    m0 = y[:, 0].clone().requires_grad_(True)
    t2 = torch.full((y.shape[0],), 0.020, requires_grad=True)
    opt = torch.optim.Adam([m0, t2], lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(m0[:, None] * torch.exp(-t / t2[:, None]), y)
        loss.backward()
        opt.step()
    return t2.detach().numpy()


def scipy_fit(signal: np.ndarray, te: np.ndarray) -> np.ndarray:
    """scipy.optimize.least_squares per voxel (what ukat and similar tools do): S0 exp(-TE R2*),
    start S0 = first echo, T2* = 20 ms, R2* >= 0."""
    from scipy.optimize import least_squares

    out = np.empty(signal.shape[0])
    for i, y in enumerate(signal.astype(np.float64)):

        def resid(p: np.ndarray, y: np.ndarray = y) -> np.ndarray:
            return p[0] * np.exp(-te * p[1]) - y

        fit = least_squares(resid, x0=[y[0], 50.0], bounds=([0.0, 0.0], [np.inf, np.inf]))
        out[i] = 1.0 / fit.x[1] if fit.x[1] > 0 else np.inf
    return out


def tedana_fit(signal: np.ndarray, te: np.ndarray, fittype: str) -> tuple[np.ndarray, np.ndarray]:
    """tedana's t2smap fit (tedana.decay.fit_decay), TE in ms as it wants; returns T2* in s."""
    from tedana.decay import fit_decay

    adaptive = np.full(signal.shape[0], te.size, dtype=int)
    t2s, _s0, failures, *_ = fit_decay(signal, list(te * 1000.0), adaptive, fittype, report=False)
    failed = np.zeros(signal.shape[0], bool) if failures is None else np.asarray(failures, bool)
    return np.asarray(t2s, np.float64) / 1000.0, failed


# --- memory ----------------------------------------------------------------------------------

MEMORY_SHAPE = (512, 512, 256)
MEMORY_ECHOES = 12


def memory_child() -> None:
    """In a fresh process: build the big volume in place, fit it, report sizes as JSON."""
    te = np.linspace(0.003, 0.036, MEMORY_ECHOES)
    n = int(np.prod(MEMORY_SHAPE))
    magnitude = np.empty((n, MEMORY_ECHOES), np.float32)
    rng = np.random.default_rng(1)
    step = 1 << 20
    for start in range(0, n, step):
        stop = min(start + step, n)
        t2 = np.exp(rng.uniform(np.log(0.005), np.log(0.1), stop - start))
        clean = S0 * np.exp(-te / t2[:, None])
        noise = rng.standard_normal((2, stop - start, MEMORY_ECHOES)) * SIGMA
        magnitude[start:stop] = np.hypot(clean + noise[0], noise[1])
    volume = magnitude.reshape(*MEMORY_SHAPE, MEMORY_ECHOES)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start_t = time.perf_counter()
    result = fit_t2star(volume, te, noise=NoiseModel(sigma=SIGMA))
    seconds = time.perf_counter() - start_t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "input_bytes": volume.nbytes,
                "peak_rss_before_fit": before,
                "peak_rss": peak,
                "seconds": seconds,
                "failed": float(result.failed.float().mean()),
            }
        )
    )


def measure_memory(threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", "--threads", str(threads)]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# --- report ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {gpu}; {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), t2starmap {t2starmap.__version__}; load average "
        f"at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


def table(rows: list[Row], default_seconds: float, n_volume: int) -> str:
    head = (
        "| method | seconds | voxels/s | speed vs default | median abs rel err T2* | "
        "p90 abs rel err T2* | failed |\n|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        extrap = "*" if r.fitted < n_volume else ""
        lines.append(
            f"| {r.name}{(' (' + r.note + ')') if r.note else ''} | {r.seconds:.3g}{extrap} | "
            f"{n_volume / r.seconds:,.0f} | {r.seconds / default_seconds:.3g}x | "
            f"{100 * np.median(r.errors):.2f}% | {100 * np.percentile(r.errors, 90):.2f}% | "
            f"{100 * r.failed:.2f}% |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="t2starmap methods only")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--notebook-steps", type=int, default=20_000)
    parser.add_argument("--subset", type=int, default=2000, help="voxels for per-voxel peers")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child()
        return 0

    described = machine()
    print(described, flush=True)
    magnitude, truth, _ = make_volume(SHAPE, TE)
    n_volume = int(np.prod(SHAPE))
    flat = magnitude.reshape(-1, TE.size)
    flat_truth = truth.reshape(-1)
    signal = torch.from_numpy(magnitude)
    rows: list[Row] = []
    notes: list[str] = []

    te_t = torch.as_tensor(TE, dtype=torch.float32)
    ref_seconds, ref = best_of(args.repeats, lambda: loglin_pass(signal, te_t))
    assert isinstance(ref, tuple)
    ref_t2 = (1.0 / ref[1]).reshape(-1).numpy()
    rows.append(
        Row(
            "one plain log-linear pass (reference)",
            ref_seconds,
            n_volume,
            rel_errors(ref_t2, flat_truth),
            float(bad_t2(ref_t2).mean()),
        )
    )

    subset = f"{args.subset} voxels"

    def extrapolated(
        name: str,
        seconds: float,
        t2: np.ndarray,
        truth_part: np.ndarray,
        part: str,
        failed: np.ndarray | None = None,
    ) -> Row:
        """A method timed on part of the volume (``truth_part``'s voxels), extrapolated
        linearly in the voxel count; failed = flagged by the method or out of range."""
        bad = bad_t2(t2) if failed is None else failed | bad_t2(t2)
        return Row(
            name,
            seconds * n_volume / truth_part.size,
            truth_part.size,
            rel_errors(t2, truth_part),
            float(bad.mean()),
            part,
        )

    first_seconds: dict[str, float] = {}

    def t2starmap_row(label: str, note: str = "", **kwargs: Any) -> Row:
        # The first call is timed on its own (the process's first torch work warms it up).
        start = time.perf_counter()
        fit_t2star(signal, TE, **kwargs)
        first_seconds[label] = time.perf_counter() - start
        seconds, result = best_of(args.repeats, lambda: fit_t2star(signal, TE, **kwargs))
        assert isinstance(result, t2starmap.FitResult)
        t2 = result.t2star.reshape(-1).numpy()
        failed = result.failed.reshape(-1).numpy()
        row = Row(label, seconds, n_volume, rel_errors(t2, flat_truth), float(failed.mean()), note)
        print(f"{label}: {seconds:.3f} s (first call {first_seconds[label]:.2f} s)", flush=True)
        return row

    default = t2starmap_row("t2starmap default (nlls, Rician)", noise=NoiseModel(SIGMA))
    rows.append(default)
    rows.append(t2starmap_row("t2starmap nlls-gaussian", method="nlls-gaussian"))
    rows.append(t2starmap_row("t2starmap wls", method="wls"))
    rows.append(t2starmap_row("t2starmap loglin", method="loglin"))
    rows.append(t2starmap_row("t2starmap arlo", method="arlo"))
    notes.append(
        "First call of each t2starmap row (no compilation: every row runs eager torch): "
        + ", ".join(f"{k.removeprefix('t2starmap ')} {v:.2f} s" for k, v in first_seconds.items())
        + "."
    )
    notes.append(gpu_note(signal, repeats=max(args.repeats, 10)))
    notes.append(
        f"Default fit / one plain log-linear pass: {default.seconds / ref_seconds:.2f}x "
        f"(target <= 6x); default fit {default.seconds:.3f} s (target <= 0.25 s)."
    )

    if not args.quick:
        # tedana
        try:
            seconds, out = best_of(1, lambda: tedana_fit(flat, TE, "loglin"))
            assert isinstance(out, tuple)
            t2, failed = out
            rows.append(
                Row(
                    "tedana t2smap loglin",
                    seconds,
                    n_volume,
                    rel_errors(t2, flat_truth),
                    float((failed | bad_t2(t2)).mean()),
                )
            )
            print(f"tedana loglin: {seconds:.3f} s", flush=True)
            sub = slice(0, args.subset)
            seconds, out = best_of(1, lambda: tedana_fit(flat[sub], TE, "curvefit"))
            assert isinstance(out, tuple)
            t2, failed = out
            rows.append(
                extrapolated("tedana t2smap curvefit", seconds, t2, flat_truth[sub], subset, failed)
            )
            print(f"tedana curvefit on {args.subset}: {seconds:.3f} s", flush=True)
        except ImportError as err:
            notes.append(f"tedana not installed ({err}); `make bench` installs it.")

        # scipy per voxel
        try:
            sub = slice(0, args.subset)
            seconds, t2 = best_of(1, lambda: scipy_fit(flat[sub], TE))
            assert isinstance(t2, np.ndarray)
            rows.append(
                extrapolated("scipy least_squares per voxel", seconds, t2, flat_truth[sub], subset)
            )
            print(f"scipy on {args.subset}: {seconds:.3f} s", flush=True)
        except ImportError as err:
            notes.append(f"scipy not installed ({err}); `make bench` installs it.")

        # the notebook, on one 128 x 128 slice
        slice_signal = magnitude[:128, :128, 0]
        slice_truth = truth[:128, :128, 0].reshape(-1)
        start = time.perf_counter()
        t2 = notebook_fit(slice_signal, TE, args.notebook_steps)
        seconds = time.perf_counter() - start
        name = f"notebook: MSE + ADAM lr 1e-3, {args.notebook_steps} steps"
        rows.append(extrapolated(name, seconds, t2, slice_truth, "one 128x128 slice"))
        print(f"notebook on one slice: {seconds:.1f} s", flush=True)

    if not args.quick:
        # The same voxels the partial peers fitted, by the default fit.
        sub_err = default.errors[: args.subset]
        ii, jj = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
        slice_err = default.errors[np.ravel_multi_index((ii, jj, 0 * ii), SHAPE).ravel()]
        notes.append(
            f"On the same voxels the partial rows fitted, the default fit's median / p90 error: "
            f"first {args.subset} voxels {100 * np.median(sub_err):.2f}% / "
            f"{100 * np.percentile(sub_err, 90):.2f}%; the notebook's 128x128 slice "
            f"{100 * np.median(slice_err):.2f}% / {100 * np.percentile(slice_err, 90):.2f}%."
        )
    body = table(rows, default.seconds, n_volume)
    if not args.skip_memory:
        mem = measure_memory(args.threads)
        ratio = mem["peak_rss"] / mem["input_bytes"]
        notes.append(
            f"Memory: {MEMORY_SHAPE[0]}x{MEMORY_SHAPE[1]}x{MEMORY_SHAPE[2]}x{MEMORY_ECHOES} "
            f"float32 ({mem['input_bytes'] / 2**30:.2f} GiB) fitted by the default method in "
            f"{mem['seconds']:.1f} s; peak resident memory of the whole process "
            f"{mem['peak_rss'] / 2**30:.2f} GiB = {ratio:.2f}x the input (target < 3x); "
            f"{mem['peak_rss_before_fit'] / 2**30:.2f} GiB before the fit."
        )
    report = (
        "# Benchmark: T2* fitting\n\n"
        f"Machine: {described}.\n\n"
        f"Data: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels x {TE.size} echoes (TE 2-40 ms), "
        f"float32, T2* log-uniform 5-100 ms, S0 1000 +- 10 %, Rician noise SNR {SNR:g}, every "
        "voxel tissue, no mask. Seconds are for the whole volume, best of "
        f"{args.repeats} (t2starmap) or 1 (peers); * = extrapolated linearly in voxel count "
        "from the part named. Errors are |T2*/truth - 1| on the voxels actually fitted; "
        "failed = flagged by the method, or T2* not finite or outside "
        f"[{T2STAR_MIN}, {T2STAR_MAX}] s.\n\n"
        "Command: `make bench` (= `python benchmarks/bench_fit.py`).\n\n"
        + body
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
    print("\n" + body + "\n" + "\n".join(notes))
    if not args.quick:
        args.out.write_text(report)
        print(f"written to {args.out}")
        # The noise-floor estimator comparison (writes benchmarks/NOISE_FLOOR.md).
        sys.path.insert(0, str(HERE))
        from noise_floor import main as noise_floor

        noise_floor()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
