"""The noise level chosen on the body simulator (issue 27), against the true thermal noise.

For each effect (SENSE g-factor, ghosts that change from echo to echo, fat and two pools,
motion-like jitter, and together), with phase (real/imaginary parts) and magnitude only, over
seeds: the median over the tissue of (sigma used / true sigma), the sigma used being the
noise map where one is used; how many seeds carried a caveat (the data cannot tell the
noise); and the same without the thermal candidates (the choice before them). The last
effect, a train too short for the signal to decay, is no target: it shows the caveat. Then
the R2* bias of the default fit on the mono-exponential voxels with the sigma chosen and
with the true one.

    PYTHONPATH=src python benchmarks/noise_body.py [--seeds 6] [--first-seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from t2starmap.fit import NoiseModel, fit_t2star
from t2starmap.noise import NoiseEstimate, all_candidates, cross_check
from t2starmap.sim.body import BODY_ECHO_TIMES, BodySet, make_body_set

EFFECTS = {
    "clean": {},
    "ghosts (6 at 6 %)": {"ghosts": 6},
    "fat, two pools, dark echo": {"misfit": 0.3},
    "jitter": {"jitter": 0.3},
    "SENSE R 2": {"acceleration": 2},
    "SENSE R 3": {"acceleration": 3, "sigma": 4.0, "shape": (64, 66, 3)},
    "together, R 2": {"acceleration": 2, "ghosts": 6, "misfit": 0.3, "jitter": 0.3},
    "together, R 3": {
        "acceleration": 3,
        "ghosts": 6,
        "misfit": 0.3,
        "jitter": 0.3,
        "sigma": 4.0,
        "shape": (64, 66, 3),
    },
    # a train too short for the signal to decay: the caveat (not a target), with phase too
    "echoes 0.7-8.3 ms, S0 2000, ghosts": {
        "echo_times": tuple(0.15 * t for t in BODY_ECHO_TIMES),
        "s0": 2000.0,
        "ghosts": 6,
    },
}


def ratio(body: BodySet, estimate: NoiseEstimate) -> float:
    if estimate.sigma is None:
        return float("nan")
    used = estimate.sigma_map if estimate.sigma_map is not None else estimate.sigma
    return float(
        np.median(np.broadcast_to(used, body.mask.shape)[body.mask] / body.sigma_map[body.mask])
    )


def row(name: str, kwargs: dict, seeds: range, complex_parts: bool) -> str:
    new, old, maps, caveats = [], [], 0, 0
    for seed in seeds:
        body = make_body_set(**kwargs, seed=seed)
        found = all_candidates(
            body.magnitude, body.echo_times, signal=body.signal if complex_parts else None
        )
        chosen = found.chosen()
        before = cross_check(found.background, found.differences, found.residuals)
        new.append(ratio(body, chosen))
        old.append(ratio(body, before))
        maps += chosen.sigma_map is not None
        caveats += bool(chosen.caveat)
    parts = "phase" if complex_parts else "magnitude"
    return (
        f"| {name} | {parts} | {np.median(new):.2f} ({min(new):.2f}-{max(new):.2f}) "
        f"| {maps}/{len(seeds)} | {caveats}/{len(seeds)} "
        f"| {np.median(old):.2f} ({min(old):.2f}-{max(old):.2f}) |"
    )


def bias_rows() -> list[str]:
    out = []
    for name, kwargs in (("fat, two pools, dark echo", {"misfit": 0.3}), ("clean", {})):
        body = make_body_set((64, 64, 4), **kwargs, seed=7)
        found = all_candidates(body.magnitude, body.echo_times, signal=body.signal)
        chosen = found.chosen()
        truth = float(np.median(body.sigma_map[body.mask]))
        mono = body.mask & (body.kind == 0)
        cells = []
        for sigma in (chosen.sigma, truth):
            r2 = fit_t2star(
                body.magnitude, body.echo_times, mask=body.mask, noise=NoiseModel(sigma=sigma)
            ).r2star.numpy()
            for lo, hi in ((60, 150), (150, 400)):
                where = mono & (body.r2star >= lo) & (body.r2star < hi)
                cells.append(f"{100 * (np.median(r2[where] / body.r2star[where]) - 1):+.1f} %")
        out.append(f"| {name} | {chosen.sigma:.3g} / {truth:.3g} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=0, help="check other seeds too")
    args = parser.parse_args()
    print("sigma used / true sigma in tissue: median over seeds (range); S0 400, sigma 8 (R 3: 4)")
    print("| effect | parts | chosen | map used | caveat | without the thermal candidates |")
    print("|---|---|---|---|---|---|")
    for name, kwargs in EFFECTS.items():
        for complex_parts in (True, False):
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            print(row(name, kwargs, seeds, complex_parts))
    print()
    print("R2* median bias, mono-exponential voxels (seed 7, 64 x 64 x 4), default fit")
    print("| set | sigma chosen / true | 60-150 | 150-400 | 60-150 (true sigma) | 150-400 (true) |")
    print("|---|---|---|---|---|---|")
    for line in bias_rows():
        print(line)


if __name__ == "__main__":
    main()
