"""sigma from the magnitude of tissue whose signal has decayed into the noise (issue 27).

In a voxel whose signal has decayed away, the later echoes hold noise alone: a root-sum-of-
squares magnitude of L coils is then central chi, M^2 / (2 sigma^2) ~ Gamma(L) (Rayleigh for
L = 1), and sigma^2 = median(M^2) / (2 median(Gamma(L))). No decay model enters, so model
misfit cannot inflate it, and whatever is a share of the signal (ghosts of the object that
change from echo to echo, motion) has decayed with it. It is the noise of that tissue, which is
the tissue's where the noise is uniform.

Which echoes hold noise alone is decided by the echoes before them, never by the echo itself
(choosing the low echoes would bias sigma low): echo k of a voxel counts when its ``WINDOW``
preceding echoes all lie below the mean of pure noise plus ``LOW`` of its SDs (in M^2). Those
echoes then hold at most a few sigma of signal, and echo k, later, less (a decay); each
echo's noise is independent of the others'. A voxel whose echo rises above ``HIGH`` such SDs
once its echoes count holds signal that came back (ghosts of the object in air, drawn anew at
each echo; fat's beat): none of its echoes count (pure noise does so at 3e-4 of echoes, so
this leaves the median alone). sigma sets those thresholds, so it is found as a fixed point
from a first guess (``STEPS`` steps: from 0.5 x or 2 x the truth, the body simulator lands on
the same value).

Uniform or not: each voxel's own estimate (its counted M^2 / 2 over Gamma(L)'s mean) is
smoothed into a noise map (:func:`t2starmap.noise.spatial.noise_map`); where it varies
beyond chance (parallel imaging) the tail is the noise of the decayed tissue only, and it is
not used for the rest. A flat map of few voxels can miss it: where the tail's own noise
follows another estimate's map (:func:`follows`), it is local all the same
(:func:`t2starmap.noise.thermal._calibrated`). Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from t2starmap.noise.floor import LEAST_POWER, MIN_ECHOES_FLOOR, least_power
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.samples import MIN_BACKGROUND, _gamma_quantile
from t2starmap.noise.spatial import NoiseMap, noise_map

#: Echoes before echo k that must all be low for echo k to count as noise alone.
WINDOW = 3
#: "Low": M^2 below the mean of pure noise's plus this many of its SDs (2 sigma for L = 1;
#: for 8 coils 4.7 sigma, where the median's 1.7 x, 6.8 sigma, let in enough signal to put
#: the tail 5-9 % above the noise of the coil phantoms).
LOW = 1.0
#: A voxel with an echo whose M^2 lies above the mean of pure noise's plus this many of its
#: SDs once its echoes count (4 sigma for L = 1; pure noise: 3e-4 of echoes) holds signal
#: that came back: ghosts in air, fat's beat. None of its echoes count.
HIGH = 7.0
#: The decayed voxels must be at least this share of the tissue's: a few stray voxels (ghosts
#: in air that fell low for a while: 2-3 % of an 8 ms train where nothing decays, 1.3 x the
#: noise) are no tail; decaying tissue gave 35-55 % on the body simulator, 9 % on the GE
#: kidney.
MIN_SHARE = 0.05
#: Fixed-point steps on sigma.
STEPS = 6
#: A tail (or a level it sets) below this many times the magnitude floor is not the tissue's
#: noise: the noise where the signal has gone differs from the bright tissue's (the GE kidney,
#: magnitude only: tail 10.2 against a floor of 22.4 and the across-model 27.1, with the echo
#: differences in air at 12). Under ghosts that change by echo the tail is 0.79-1.92 x the
#: floor (body simulator, seeds 0-5), the floor's extrapolation the one that scatters. Where
#: the floor's noise map sets the level, the tail is compared with that map where its own
#: voxels lie (the GE kidney: 0.36 x; SENSE R 3 on the body simulator: 0.80-1.93 x).
TAIL_BELOW_FLOOR = 0.7
#: Times a first sigma too low to find any noise is doubled before the tail is refused.
_GROW = 2
#: The method name of the estimate.
TAIL = "decayed-tail"


@dataclass(frozen=True)
class Tail:
    """What :func:`decayed_tail` found: the estimate (sigma None when refused, with why);
    ``uniform``: whether its own noise map is flat within chance (then it stands for the
    tissue); ``spread``: that map's 5-95 % range over its median; ``voxels``: how many voxels
    gave echoes; ``index``, ``variance``: where they are and their own sigma^2; ``map``:
    their smooth noise map (None: not worked out)."""

    estimate: NoiseEstimate
    uniform: bool
    spread: float
    voxels: int
    #: (n,) the flattened positions of the voxels that gave echoes, and (n,) each one's own
    #: estimate of sigma^2 (its counted M^2 over 2 L): what calibrates a noise map's level.
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    variance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    map: NoiseMap | None = None


def decayed_tail(
    rows: np.ndarray,
    index: np.ndarray,
    shape: tuple[int, ...],
    start: float,
    coils: float | None,
) -> Tail:
    """The noise of the decayed tissue (module docstring). rows: (n, E) magnitudes of tissue
    voxels, echoes sorted by TE; index: (n,) their flattened positions in an image of spatial
    ``shape``; start: a first sigma (> 0); coils: L (>= 1; None: unknown, refused). Refused
    with fewer than ``MIN_ECHOES_FLOOR`` echoes, fewer than ``MIN_BACKGROUND`` counted echoes
    or fewer voxels than ``MIN_SHARE`` of the rows."""
    n_echo = rows.shape[1]
    if n_echo < MIN_ECHOES_FLOOR or not start > 0 or coils is None:
        why = (
            f"the decayed tail needs {MIN_ECHOES_FLOOR} echoes or more, a first sigma and the "
            "coils from air"
        )
        return Tail(NoiseEstimate(None, 0, why), False, 0.0, 0)
    squares = np.asarray(rows, dtype=np.float64) ** 2
    g_mid = float(_gamma_quantile(np.array([coils]), 0.5)[0])
    sigma, counted = start, np.zeros(rows.shape, dtype=bool)
    steps, grown = 0, 0
    while steps < STEPS:
        spread = math.sqrt(coils)  # M^2 / (2 sigma^2): mean L, SD sqrt(L)
        low, high = (2.0 * sigma * sigma * (coils + z * spread) for z in (LOW, HIGH))
        counted = _counted(squares, low, high)
        if int(counted.sum()) < MIN_BACKGROUND:
            if grown == _GROW:
                why = f"too few echoes of decayed tissue ({int(counted.sum())} < {MIN_BACKGROUND})"
                return Tail(NoiseEstimate(None, int(counted.sum()), why), False, 0.0, 0)
            sigma, grown = 2.0 * sigma, grown + 1  # a first guess too low finds no noise
            continue
        sigma = math.sqrt(float(np.median(squares[counted])) / (2.0 * g_mid))
        steps += 1
    voxel = counted.any(axis=1)
    if int(voxel.sum()) < MIN_SHARE * rows.shape[0]:
        why = (
            f"too little decayed tissue ({int(voxel.sum())} of {rows.shape[0]} voxels, under "
            f"{100 * MIN_SHARE:g} %): stray voxels, not a tail"
        )
        return Tail(NoiseEstimate(None, int(counted.sum()), why), False, 0.0, int(voxel.sum()))
    own = np.sum(np.where(counted, squares, 0.0), axis=1)[voxel] / counted.sum(axis=1)[voxel]
    where, own = np.asarray(index)[voxel], own / (2.0 * coils)
    found = noise_map(shape, where, own)
    uniform = found is not None and not found.nonuniform
    spread = 0.0 if found is None else found.spread
    how = (
        f"sigma from {int(counted.sum())} echoes of {int(voxel.sum())} tissue voxels whose "
        f"signal has decayed into the noise (the {WINDOW} echoes before each within "
        f"{LOW:g} SD of the noise's mean): central chi with {coils:.3g} coils, no decay model; "
        f"its noise map spans {100 * spread:.0f} % of its median"
        + ("" if uniform else " (beyond chance: the noise is not uniform)")
    )
    role = "estimate" if uniform else "cross-check (the decayed tissue's own noise)"
    estimate = NoiseEstimate(
        sigma, int(counted.sum()), how, coils=coils, method=TAIL, bounds={TAIL: role},
        caveat=_undecayed(squares),
    )  # fmt: skip
    return Tail(estimate, uniform, spread, int(voxel.sum()), where, own, found)


def level(tail: Tail, found: NoiseMap) -> float:
    """The factor that scales another estimate's smooth noise map ``found`` to the decayed
    voxels' own noise: the tail's own map (:attr:`Tail.map`) against ``found``, in mean
    square, each voxel weighted by how much both maps are measured there
    (:attr:`t2starmap.noise.spatial.NoiseMap.support`): two smooth maps compared where
    neither is spread from elsewhere. (Without the tail's map: ``found`` at the tail's voxels
    against their own variance.)

    Compared at the tail's voxels alone, a magnitude floor's map is extrapolated there: its
    voxels keep 6 echoes above 4 sigma (R2* below about 100 1/s on the body simulator), the
    tail's have decayed by then (30-120 of its 2000 voxels lie where the floor's do), and the
    map runs high there; levelled so by the tail's echoes, SENSE R 3 alone gives 0.85-0.95 x
    the truth (seeds 0-47), by its voxels' own means, which the signal left in voxels that
    counted few echoes raises (1.03-1.13 x the truth where the tail lies), 0.96-1.17 with
    ghosts, misfit and jitter too. Map against map: 0.90-0.97 and 0.93-1.13."""
    if tail.map is None:
        return at_voxels(tail, found)
    weight = np.ones(found.sigma.shape) if found.support is None else found.support
    if tail.map.support is not None:
        weight = weight * tail.map.support
    own = float(np.sum(weight * tail.map.sigma**2))
    return math.sqrt(own / max(float(np.sum(weight * found.sigma**2)), 1e-300))


def at_voxels(tail: Tail, found: NoiseMap) -> float:
    """The decayed voxels' own noise over another estimate's smooth noise map ``found`` at
    those voxels (root mean square of each): what ``TAIL_BELOW_FLOOR`` guards. A test of
    whether the tail can be the noise that map describes where the tail was measured, made on
    every decayed voxel (about 2000 on the body simulator), not on the few where both maps
    are measured that weigh most in :func:`level` (30-120 of them lie where a magnitude
    floor's do): :func:`level` is the better factor, this the steadier test. It reads above
    :func:`level` where signal left in voxels that counted few echoes raises their own
    variance (body simulator, SENSE R 3, ghosts, misfit and jitter, magnitude only, seed 51:
    0.745 against 0.698), and the guard was set on it (the GE kidney's tail 0.36, the body
    simulator's 0.80-1.93 over seeds 0-23)."""
    at = found.sigma.reshape(-1)[tail.index]
    own = float(np.mean(tail.variance))
    return math.sqrt(own / max(float(np.mean(at * at)), 1e-300))


def follows(tail: Tail, sigma_map: np.ndarray) -> float:
    """How far, in standard errors, the decayed voxels' own noise follows ``sigma_map`` (the
    image's shape; another estimate's smooth noise map): the log of the mean own variance
    of the voxels where the map is above its median there over that of the rest, over its
    standard error (0 with fewer than 4 voxels or a map flat there). Two estimates from
    different voxels, one of them without a model (no misfit, no ghosts that decayed with
    the signal), that vary alike beyond chance: the noise is not uniform, whether or not the
    tail's own map says so (the body simulator with SENSE R 3, ghosts, misfit and jitter,
    magnitude only: 3.2-13.7 against the floor's map on seeds 0-11; -4.0 to +3.4 over the
    other effects but SENSE R 3 alone, whose tail is not flat anyway)."""
    at = sigma_map.reshape(-1)[tail.index]
    upper = at > np.median(at)
    if tail.index.size < 4 or not 0 < int(upper.sum()) < at.size:
        return 0.0
    parts = (tail.variance[upper], tail.variance[~upper])
    means = [float(np.mean(v)) for v in parts]
    if not min(means) > 0:
        return 0.0
    error = math.sqrt(
        sum(float(np.var(v)) / v.size / m**2 for v, m in zip(parts, means, strict=True))
    )
    return math.log(means[0] / means[1]) / max(error, 1e-300)


def _undecayed(squares: np.ndarray) -> str:
    """The tail's caveat, or "": where the tissue's mean squared magnitude (``squares``: (n, E)
    M^2 of its voxels) falls over the train only to above ``LEAST_POWER`` of its greatest, no
    tissue decays into the noise, and the voxels found low are those that never held signal
    (ghosts in air that fell low for a while, dim edges of the mask), not a tail of decay.
    The body simulator (TE 4.6-55 ms, every effect): 0.02-0.03; echoes 0.7-8.3 ms (S0 2000,
    ghosts): 0.27-0.36, where magnitude only, seed 27, a flat tail of 462 such voxels (5.2 %
    of the tissue, above ``MIN_SHARE``) was used at 1.79 x the truth without a word."""
    power = np.mean(squares, axis=0)
    least = least_power(power)
    if not least > LEAST_POWER:
        return ""
    return (
        f"the tissue's mean squared magnitude falls only to {100 * least:.0f} % of its greatest "
        "over the train: no tissue decays into the noise, and the voxels found low are stray "
        "(ghosts in air, dim edges), not a tail; sigma may be off by more than 15 %"
    )


def _counted(squares: np.ndarray, low_square: float, high_square: float) -> np.ndarray:
    """(n, E) bool: echo k counts where the ``WINDOW`` echoes before it are all below the
    threshold (squared) ``low_square``, and no echo of the voxel from the first that counts
    on lies above ``high_square``."""
    low = squares < low_square
    counted = np.zeros(low.shape, dtype=bool)
    n_echo = low.shape[1]
    counted[:, WINDOW:] = low[:, : n_echo - WINDOW]
    for lag in range(1, WINDOW):  # echo k - WINDOW + lag, for every k at once
        counted[:, WINDOW:] &= low[:, lag : n_echo - WINDOW + lag]
    after = np.logical_or.accumulate(counted, axis=1)  # from the first counted echo on
    counted &= ~np.any(after & (squares > high_square), axis=1, keepdims=True)
    return counted
