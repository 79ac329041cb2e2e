"""The candidates, and the choice of the noise level to fit with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from t2starmap.noise.air import _differences
from t2starmap.noise.background import _Air, _background_estimate, _check_coils
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.tail import TAIL, TAIL_BELOW_FLOOR, decayed_tail
from t2starmap.noise.thermal import CAVEAT_DECAYING, thermal_estimate
from t2starmap.noise.tissue import noise_from_residuals, tissue_residuals, tissue_voxels

#: The background methods whose coil count the decayed tail may use (without air, L is
#: unknown and taken as 1, which the tail's central chi cannot take).
_COILS_FROM_AIR = ("background-quantiles", "real-channel")
#: Tissue residuals below this many times the background's sigma: the noise is not uniform.
_NONUNIFORM = 0.9


@dataclass(frozen=True)
class Candidates:
    """Every estimate :func:`cross_check` chooses from: the first echo's ``background``
    (:func:`estimate_noise`), the echo ``differences`` in its air, the tissue's
    ``residuals`` (an upper bound), its ``thermal`` noise
    (:func:`t2starmap.noise.thermal.thermal_estimate`) and the noise of its decayed ``tail``
    (:func:`t2starmap.noise.tail.decayed_tail`)."""

    background: NoiseEstimate
    differences: NoiseEstimate
    residuals: NoiseEstimate
    thermal: NoiseEstimate
    tail: NoiseEstimate = field(default_factory=lambda: NoiseEstimate(None, 0, "not estimated"))

    def chosen(self) -> NoiseEstimate:
        """:func:`cross_check` of them all."""
        return cross_check(
            self.background, self.differences, self.residuals, self.thermal, self.tail
        )


def all_candidates(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    *,
    signal: np.ndarray | None = None,
    coils: float | None = None,
    bipolar: bool = False,
    workers: int | None = 1,
) -> Candidates:
    """The estimates of :class:`Candidates`, the first echo's background worked out once for
    the first two (with its real channel when the complex ``signal`` is given and ``coils``
    when known; the echo differences with the coils that gives), one ``wls`` fit of the
    tissue for the next two (3 echoes or more), the decayed tail from the magnitude of the
    same tissue (started from the residuals' sigma, with the background's coils; it sets the
    level of a magnitude floor's noise map where its own noise is not uniform).
    magnitude: (..., n_echoes); signal: the same shape, complex, or None; ``bipolar``: the
    read-out is (the even echoes' phase offset)."""
    data = np.asarray(magnitude)
    background, differences = _air(data, signal, coils)
    if data.shape[-1] < 3:
        none = NoiseEstimate(None, 0, "residuals need at least 3 echoes")
        return Candidates(background, differences, none, none)
    flat = data.reshape(-1, data.shape[-1])
    index = tissue_voxels(flat, None, 50_000)
    residuals, tissue = tissue_residuals(data, echo_times, workers=workers, voxels=index)
    order = np.argsort(np.asarray(echo_times, dtype=np.float64), kind="stable")
    start = next((e.sigma for e in (residuals, background, differences) if e.sigma), 0.0)
    # the coils from air (a tail of 8 coils read as one gave 3.5 x the noise)
    found_coils = background.coils if background.method in _COILS_FROM_AIR else None
    tail = decayed_tail(flat[index][:, order], index, data.shape[:-1], start, found_coils)
    thermal = thermal_estimate(
        data.shape[:-1],
        echo_times,
        signal=signal,
        magnitude_residuals=tissue,
        bipolar=bipolar,
        tail=tail,
    )
    return Candidates(background, differences, residuals, thermal, tail.estimate)


def noise_candidates(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    *,
    signal: np.ndarray | None = None,
    coils: float | None = None,
    workers: int | None = 1,
) -> tuple[NoiseEstimate, NoiseEstimate, NoiseEstimate]:
    """(background, differences, residuals) of :func:`all_candidates` without the thermal
    estimate: what :func:`cross_check` chose from before it (benchmarks, tests)."""
    data = np.asarray(magnitude)
    background, differences = _air(data, signal, coils)
    if data.shape[-1] >= 3:
        residuals = noise_from_residuals(data, echo_times, workers=workers)
    else:
        residuals = NoiseEstimate(None, 0, "residuals need at least 3 echoes")
    return background, differences, residuals


def _air(
    data: np.ndarray, signal: np.ndarray | None, coils: float | None
) -> tuple[NoiseEstimate, NoiseEstimate]:
    """(the first echo's background, the echo differences in its air), the air worked out
    once: with the real channel when the complex ``signal`` is given and ``coils`` when
    known; the differences with the coils the background gives."""
    _check_coils(coils)
    air = _Air.of(np.ascontiguousarray(data[..., 0]))
    real = None if signal is None else signal[..., 0].real
    background = _background_estimate(air, real, coils, True)
    if data.shape[-1] < 2:
        return background, NoiseEstimate(None, 0, "echo differences need at least 2 echoes")
    return background, _differences(data, air, signal, background.coils)


#: A background sigma above this many times the echo differences' is ghosts, not noise. On the
#: shared sets the ratio is 4.5 for the GE kidney (ghosted: NOTES.md), 1.3 for the Siemens
#: field map, 1.6 for the clean Prisma phantom and 2.3 for the XA30 field map (no ground truth:
#: left alone); 2.5 acts only on clear ghosting.
GHOST_RATIO = 2.5


#: A thermal estimate within this fraction of a clean background's: the noise is uniform, and
#: the background (more voxels, no model) keeps the choice it had before the thermal one.
AGREE = 0.1
#: The echo differences in air are a cross-check, not a bound on the tissue's noise: ghosts that
#: change between echoes push them up (body simulator, magnitude: the pairs fall from 1.3-1.5 x
#: the noise at the first echoes to 1.02-1.08 x at the last), and where nothing changes between
#: echoes (its pairs agree within 4 %) they are the air's noise, which parallel imaging makes
#: differ from the tissue's either way: SENSE R 2 air 1.10 x the tissue's median (a lower bound
#: would push its sigma from 0.96-0.98 to 1.10 x), R 3 0.87 x, the GE kidney 12 against 27.
UPPER, ESTIMATE, CROSS = "upper bound", "estimate", "cross-check"
ACROSS = "across-model"
#: A background with more than this share of its voxels above the 99.9 % point of its fitted
#: noise (0.1 % expected; 0.1-0.2 % on the simulator's clean and SENSE backgrounds, 0.6-8 %
#: with ghosts) has a ghost tail.
GHOST_OUTLIERS = 0.005
#: A background above this many times the echo differences (1.0-1.1 on the simulator's clean
#: and SENSE sets, 1.2-1.6 with ghosts that change by echo) is suspect of ghosts: a magnitude
#: floor below it is then believed.
SUSPECT_RATIO = 1.2


def cross_check(
    background: NoiseEstimate,
    differences: NoiseEstimate,
    residuals: NoiseEstimate,
    thermal: NoiseEstimate | None = None,
    tail: NoiseEstimate | None = None,
) -> NoiseEstimate:
    """The noise level to fit with: the one rule set, from estimates that fail in opposite
    ways. Every candidate is kept (``candidates``), with what it is to the choice
    (``bounds``), and the reason (``reason``).

    Ghosts, motion and signal in the air push the ``background`` (:func:`estimate_noise`,
    first echo) up; the echo ``differences`` in the same air cancel ghosts that repeat from
    echo to echo (a cross-check); model misfit pushes the tissue's ``residuals`` up (an upper
    bound, always); the ``thermal`` noise of the tissue
    (:func:`t2starmap.noise.thermal.thermal_estimate`) is what neither ghosts nor misfit
    reach, with 6 echoes or more (an estimate; with fewer, an upper bound); the decayed
    ``tail`` (:func:`t2starmap.noise.tail.decayed_tail`) is the noise of tissue whose signal
    has decayed away, from no model at all (an estimate where its own map is flat, else a
    cross-check). On a magnitude-only set (no across-model residual) an estimate from the
    tail takes the place of the thermal one: the magnitude floor cannot tell noise from ghosts
    that change from echo to echo (on the body simulator 0.52-1.27 x the noise over seeds
    0-5, the tail 0.99-1.03). The choice:

    1. a background more than ``GHOST_RATIO`` times the differences is ghosted: rejected, and
       an upper bound;
    2. a thermal estimate within ``AGREE`` of a clean background, without a noise map, or
       below it but from the magnitude (whose floor can take misfit for decay) while the
       background is not suspect of ghosts (``GHOST_OUTLIERS``, ``SUSPECT_RATIO``): the
       background is used as before (:func:`noise_for_fit`); a thermal estimate that
       disagrees otherwise or found the noise not uniform, or a ghosted background: the
       thermal estimate (with its noise map);
    3. no thermal estimate: a clean background (:func:`noise_for_fit`); a ghosted one: the
       residuals, else the differences;
    4. never above an upper bound: the least of them caps the choice (its map scaled);
    5. a caveat (:attr:`NoiseEstimate.caveat`) where the magnitude floor remains the thermal
       estimate with much of its variance changing from echo to echo
       (:data:`t2starmap.noise.thermal.CAVEAT_DECAYING`), or the train is too short for the
       signal to decay (:data:`t2starmap.noise.thermal.LEAST_POWER`, whichever residual,
       the floor refused or not), and no clean background agrees with it (:func:`_caveat`),
       whichever candidate is chosen."""
    thermal = thermal or NoiseEstimate(None, 0, "not estimated")
    tail = tail or NoiseEstimate(None, 0, "not estimated")
    everything = (background, differences, residuals, thermal, tail)
    candidates = {e.method: float(e.sigma) for e in everything if e.sigma is not None and e.method}
    ghosted = background.sigma is not None and differences.sigma is not None
    ghosted = ghosted and (background.sigma or 0.0) > GHOST_RATIO * (differences.sigma or 0.0)
    bounds = _bounds(background, differences, residuals, thermal, tail, ghosted)
    thermal = _thermal_or_tail(thermal, tail, bounds)
    chosen = _choice(background, differences, residuals, thermal, ghosted, bounds)
    chosen = _capped(chosen, {m: candidates[m] for m, b in bounds.items() if b.startswith(UPPER)})
    return replace(
        chosen,
        caveat=_caveat(background, differences, thermal, tail, bounds),
        coils=background.coils if background.sigma is not None else chosen.coils,
        zero_fraction=background.zero_fraction,
        outlier_fraction=background.outlier_fraction,
        candidates=candidates,
        bounds=bounds,
    )


def _suspect(background: NoiseEstimate, differences: NoiseEstimate) -> bool:
    """The background is suspect of ghosts: a ghost tail (``GHOST_OUTLIERS``) or above
    ``SUSPECT_RATIO`` times the echo differences."""
    return background.outlier_fraction > GHOST_OUTLIERS or (
        differences.sigma is not None
        and background.sigma is not None
        and background.sigma > SUSPECT_RATIO * differences.sigma
    )


def _caveat(
    background: NoiseEstimate,
    differences: NoiseEstimate,
    thermal: NoiseEstimate,
    tail: NoiseEstimate,
    bounds: dict[str, str],
) -> str:
    """The thermal estimate's caveat (a magnitude floor with much of its variance decaying:
    :data:`t2starmap.noise.thermal.CAVEAT_DECAYING`), with what the decayed tail said; none
    where a background not suspect of ghosts agrees with it within ``AGREE`` (two estimates
    that fail in different ways: on the coil phantoms of 8 and 32 coils the floor's share is
    18-25 % from the noncentral chi's bias alone, and their backgrounds agree within 2 %).
    A floor refused with a caveat (a train too short to decay, whose residuals leave no part
    that does not decay) keeps it unless the background is clean: the short ghosted train,
    magnitude only, seeds 8 and 9, took a background with a ghost tail at 1.64 and 1.23 x
    the truth without a word."""
    if not thermal.caveat:
        return ""
    clean = background.sigma is not None and not _suspect(background, differences)
    if thermal.sigma is None:  # the floor was refused: only a clean background stands alone
        return "" if clean else f"{thermal.caveat}; the background's sigma is used"
    if clean and abs(thermal.sigma / float(background.sigma or 1.0) - 1.0) <= AGREE:
        return ""
    said = f"{tail.sigma:.4g}, {bounds[tail.method]}" if tail.sigma is not None else tail.reason
    return f"{thermal.caveat}; the decayed tail: {said}"


def _bounds(
    background: NoiseEstimate,
    differences: NoiseEstimate,
    residuals: NoiseEstimate,
    thermal: NoiseEstimate,
    tail: NoiseEstimate,
    ghosted: bool,
) -> dict[str, str]:
    """What each candidate with a sigma is to the choice (:func:`cross_check`)."""
    out = {}
    if background.sigma is not None:
        out[background.method] = f"{UPPER} (rejected: ghosts)" if ghosted else ESTIMATE
    if differences.sigma is not None:
        out[differences.method] = CROSS
    if residuals.sigma is not None:
        out[residuals.method] = UPPER
    if thermal.sigma is not None:
        out[thermal.method] = thermal.bounds.get(thermal.method, ESTIMATE)
    if tail.sigma is not None:
        out[tail.method] = tail.bounds.get(tail.method, CROSS)
    return out


def _thermal_or_tail(
    thermal: NoiseEstimate, tail: NoiseEstimate, bounds: dict[str, str]
) -> NoiseEstimate:
    """The thermal estimate :func:`_choice` works with: ``tail`` where it is an estimate (its
    own map flat), the floor has no noise map (a tail, from where the tissue decayed, stands
    for its own voxels then), the tail is not below ``TAIL_BELOW_FLOOR`` times the floor, and
    the floor is the magnitude's, or the residual across the complex model with more than
    :data:`t2starmap.noise.thermal.CAVEAT_DECAYING` of its variance decaying with the signal;
    with why, and the floor's caveat (a train too short to decay); else ``thermal`` (the
    tail's role in ``bounds`` then says why not).

    Ghosts that change from echo to echo reach the imaginary part too: what of them does not
    decay with the signal stays in the across-model floor (body simulator, ghosts alone,
    phase, seeds 0-35: 0.95-1.33 x the truth, 21-81 % decaying), while the tail, measured
    where they have decayed, is 0.99-1.04. The GE kidney (86 % decaying) keeps its
    across-model sigma: its tail is 0.38 x it."""
    if tail.sigma is None or bounds.get(tail.method) != ESTIMATE:
        return thermal
    if thermal.sigma is None:
        return tail
    decaying = thermal.decaying or 0.0
    if thermal.method == ACROSS and decaying <= CAVEAT_DECAYING:
        bounds[tail.method] = f"{CROSS} (the residual across the complex model is used)"
        return thermal
    if thermal.sigma_map is not None:  # the tail stands for its own voxels only
        bounds[tail.method] = f"{CROSS} (the noise is not uniform: the {thermal.method} map)"
        return thermal
    if tail.sigma < TAIL_BELOW_FLOOR * thermal.sigma:
        bounds[tail.method] = (
            f"{CROSS} (below {TAIL_BELOW_FLOOR:g} x the {thermal.method}: the decayed "
            "tissue's noise is not the bright tissue's)"
        )
        return thermal
    why = (
        f"the magnitude's residual floor ({thermal.sigma:.4g}, {thermal.method}) rests on a "
        f"decay model; the tail of decayed tissue ({tail.sigma:.4g}) on none: the tail is used"
    )
    keep = tail.caveat  # the magnitude floor's caveat is what the tail answers
    if thermal.method == ACROSS:
        keep = thermal.caveat
        why = (
            f"{100 * decaying:.0f} % of the variance across the complex model decays with the "
            f"signal (ghosts, motion): its floor ({thermal.sigma:.4g}) keeps what of them does "
            f"not; the tail of decayed tissue ({tail.sigma:.4g}), where they have decayed, is "
            "used"
        )
    return replace(tail, reason=f"{why}; {tail.reason}", caveat=keep)


def _choice(
    background: NoiseEstimate,
    differences: NoiseEstimate,
    residuals: NoiseEstimate,
    thermal: NoiseEstimate,
    ghosted: bool,
    bounds: dict[str, str],
) -> NoiseEstimate:
    """Steps 1-3 of :func:`cross_check`, before the cap."""
    usable = thermal.sigma is not None and bounds.get(thermal.method) == ESTIMATE
    if not ghosted:
        reference = background if background.sigma is not None else differences
        base = noise_for_fit(reference, residuals)
        if not usable or base.sigma is None or reference.sigma is None:
            return base
        assert thermal.sigma is not None
        ratio = thermal.sigma / reference.sigma
        agrees = abs(ratio - 1.0) <= AGREE and thermal.sigma_map is None
        # below a clean background without a ghost tail, only the residual across the
        # complex model and the decayed tail are trusted: the magnitude's floor can
        # extrapolate misfit below noise
        suspect = _suspect(background, differences)
        if agrees or (ratio < 1.0 and thermal.method not in (ACROSS, TAIL) and not suspect):
            why = f"the tissue's thermal noise {thermal.sigma:.4g} ({ratio:.2f} x): kept"
            return replace(base, reason="; ".join(r for r in (base.reason, why) if r))
        why = (
            f"the tissue's thermal noise ({thermal.sigma:.4g}) is {ratio:.2f} x the air's "
            f"{reference.method} ({reference.sigma:.4g}): the noise is not uniform, the "
            "tissue's is used"
        )
        return replace(thermal, reason=f"{why}; {thermal.reason}")
    assert background.sigma is not None and differences.sigma is not None
    why = (
        f"the first echo's background gives sigma {background.sigma:.4g}, "
        f"{background.sigma / differences.sigma:.1f} x what the echo differences in the same "
        f"air give ({differences.sigma:.4g}): ghosts, not noise; not used"
    )
    if usable:
        return replace(thermal, reason=f"{why}; {thermal.reason}")
    chosen = residuals if residuals.sigma is not None else differences
    source = (
        "the tissue's fit residuals are used (an upper bound on its noise)"
        if chosen is residuals
        else "the echo differences are used"
    )
    return replace(chosen, reason=f"{why}; {source}")


def _capped(chosen: NoiseEstimate, upper: dict[str, float]) -> NoiseEstimate:
    """``chosen``, or the least of the ``upper`` bounds (method -> sigma) where it exceeds it
    (a noise map scaled down alike)."""
    if chosen.sigma is None or not upper:
        return chosen
    method, cap = min(upper.items(), key=lambda item: item[1])
    if chosen.sigma <= cap or method == chosen.method:
        return chosen
    scaled = None if chosen.sigma_map is None else chosen.sigma_map * (cap / chosen.sigma)
    why = f"{chosen.method} sigma {chosen.sigma:.4g} is above the {method} upper bound {cap:.4g}"
    return replace(
        chosen,
        sigma=cap,
        reason=f"{chosen.reason}; {why}: capped there" if chosen.reason else f"{why}: capped",
        sigma_map=scaled,
    )


def noise_for_fit(background: NoiseEstimate, residuals: NoiseEstimate) -> NoiseEstimate:
    """The noise level to fit with: ``background`` (from :func:`estimate_noise`), unless the
    tissue's own residuals (:func:`noise_from_residuals`, an upper bound on the tissue's noise)
    are below ``_NONUNIFORM`` times its sigma. Then the noise is not uniform (parallel imaging,
    intensity correction: the GE kidney background is a mixture of noise levels) and the
    tissue's sigma is the one that sets its noise floor; the background's coils are kept.
    Either input may have sigma None; the other is then returned."""
    if residuals.sigma is None or (
        background.sigma is not None and residuals.sigma >= _NONUNIFORM * background.sigma
    ):
        return background
    if background.sigma is None:
        return residuals
    return NoiseEstimate(
        residuals.sigma,
        residuals.n_background,
        f"the fit residuals of bright tissue give sigma {residuals.sigma:.4g}, below the "
        f"{background.method} sigma {background.sigma:.4g} of the background: the noise is "
        f"not uniform and the tissue's is used (coils {background.coils:.3g} kept)",
        coils=background.coils,
        method="residuals",
        zero_fraction=background.zero_fraction,
        outlier_fraction=background.outlier_fraction,
    )
