"""The tissue's thermal noise: the floor of the residual across the complex model where the set
has phase, else of the magnitude fit's residuals (:mod:`t2starmap.noise.floor`), with a smooth
noise map where the data show the noise is not uniform (:mod:`t2starmap.noise.spatial`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TypeGuard

import numpy as np

from t2starmap.noise.across import across_residuals
from t2starmap.noise.floor import (
    LEAST_POWER,
    MIN_ECHOES_FLOOR,
    Floor,
    Residuals,
    thermal_floor,
)
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.samples import MIN_BACKGROUND
from t2starmap.noise.spatial import NONUNIFORM_Z, NoiseMap, noise_map
from t2starmap.noise.tail import TAIL_BELOW_FLOOR, Tail, at_voxels, follows, level

#: A map is not used where more than this share of the residual variance decays with the
#: signal: ghosts overlapping the tissue then shape it more than the noise does. Each voxel's
#: own intercept already leaves out what decays with its signal: on the body simulator with
#: SENSE R = 3, ghosts, misfit and jitter together (13-39 % decaying, seeds 0-5) the map
#: is within 5 % of the true noise in tissue, one sigma 0.79-0.85 of it (the median of a
#: mixture); the GE kidney's across-model residual (86 %) and its magnitude floor (54 %)
#: stay without one. The magnitude floor keeps a fifth: its voxels' own intercepts rest on
#: the echoes each keeps above its SNR (6 and more), and under ghosts alone (uniform noise)
#: maps from them came out up to 1.5-1.7 x the truth at half. Across the complex model, a map
#: the decayed tail follows beyond chance is used whatever decays (:func:`_shape_holds`); the
#: magnitude floor's map takes the tail's level first wherever it can (:func:`_chosen_map`).
MAP_MAX_DECAYING = {"across-model": 0.5, "residual-floor": 0.2}
#: A magnitude floor with more than this share of its residual variance decaying with the
#: signal, and no noise map, carries a caveat (:attr:`NoiseEstimate.caveat`): the magnitude
#: cannot tell noise from what changes from echo to echo there. On the body simulator (seeds
#: 0-5) the floor's share is 0-5 % clean, 0-3 % with SENSE R = 3, 16-40 % with SENSE R = 3,
#: ghosts, misfit and jitter, 48-93 % with misfit alone or ghosts alone (where the decayed
#: tail answers instead: :func:`t2starmap.noise.choose.cross_check`).
CAVEAT_DECAYING = 0.1


def thermal_estimate(
    shape: tuple[int, ...],
    echo_times: Sequence[float] | np.ndarray,
    *,
    signal: np.ndarray | None,
    magnitude_residuals: Residuals | None,
    bipolar: bool = False,
    tail: Tail | None = None,
) -> NoiseEstimate:
    """The tissue's thermal sigma: ``across-model`` from the complex ``signal`` (..., E) when
    given and enough of its voxels are coherent (the even echoes' offset fitted for a
    ``bipolar`` train, or where too few are coherent without it), else ``residual-floor``
    from the magnitude fit's ``magnitude_residuals``
    (:func:`t2starmap.noise.tissue.tissue_residuals`), its map's level from the decayed
    ``tail`` where the noise is not uniform (:func:`_calibrated`). ``shape``: the image's
    spatial shape. sigma None (and why) when neither can be had."""
    te = np.asarray(echo_times, dtype=np.float64)
    why = ""
    if signal is not None:
        residuals, why = across_residuals(signal, te, offset=bipolar)
        if residuals is None and not bipolar and te.size > 3:  # an unknown bipolar train?
            residuals, _ = across_residuals(signal, te, offset=True)
        if residuals is not None:
            floor = thermal_floor(residuals, MIN_BACKGROUND)
            if floor.sigma is not None:
                return _estimate(floor, "across-model", shape, tail)
            why = floor.reason
    if magnitude_residuals is None:
        return NoiseEstimate(None, 0, why or "no residuals of bright tissue")
    floor = thermal_floor(magnitude_residuals, MIN_BACKGROUND)
    if floor.sigma is None:  # a train too short to decay still says so (no sigma of its own)
        caveat = _floor_caveat("", floor, False)
        return NoiseEstimate(None, floor.n_voxels, floor.reason, caveat=caveat)
    estimate = _estimate(floor, "residual-floor", shape, tail)
    return replace(estimate, reason=f"{why}; {estimate.reason}") if why else estimate


def _estimate(
    floor: Floor, method: str, shape: tuple[int, ...], tail: Tail | None = None
) -> NoiseEstimate:
    """The NoiseEstimate of a floor, with its map when the noise is not uniform (or, from the
    magnitude, the map's shape with its level from a ``tail`` whose noise is not uniform:
    :func:`_calibrated`)."""
    assert floor.sigma is not None
    n_echo = floor.per_echo.size
    how = (
        f"the part of the residual variance that does not decay with the signal "
        f"({100 * floor.decaying:.0f} % does) over {floor.n_voxels} voxels"
        if n_echo >= MIN_ECHOES_FLOOR
        else f"the median residual over {floor.n_voxels} voxels (fewer than "
        f"{MIN_ECHOES_FLOOR} echoes: misfit is not told from noise)"
    )
    found = noise_map(shape, floor.index, floor.voxel_variance) if n_echo >= 3 else None
    sigma_map, sigma, why = _chosen_map(found, floor, method, tail)
    how += why
    role = "estimate" if n_echo >= MIN_ECHOES_FLOOR else "upper bound (fewer than 6 echoes)"
    caveat = _floor_caveat(method, floor, sigma_map is not None)
    return NoiseEstimate(
        sigma, floor.n_voxels, f"sigma from {how}", coils=1.0, method=method,
        bounds={method: role}, sigma_map=sigma_map, caveat=caveat, decaying=floor.decaying,
    )  # fmt: skip


def _chosen_map(
    found: NoiseMap | None, floor: Floor, method: str, tail: Tail | None
) -> tuple[np.ndarray | None, float, str]:
    """(noise map or None, sigma, what was done, to append to the reason) for a floor whose
    smooth map is ``found``. The magnitude floor's map takes its level from the decayed
    ``tail`` wherever that measures the noise as not uniform (:func:`_calibrated`), before
    its own: a level measured without a model beats one extrapolated to no signal (body
    simulator, SENSE R 3 with ghosts, misfit and jitter, magnitude only, seeds 16 and 22:
    the floor's own map, 16-18 % of its variance decaying, 1.21 and 0.71 x the truth; scaled
    to the tail's own map where both are measured, 1.04 and 1.10; 0.94-1.13 on the seeds 0-47
    of the row it levels, 0.90-0.97 with SENSE R 3 alone). Else the map is used as found
    where it varies beyond chance and its shape holds (:func:`_shape_holds`), an
    across-model map levelled to the tail where that sees the noise vary
    (:func:`_levelled`)."""
    assert floor.sigma is not None
    if found is None:
        return None, floor.sigma, ""
    if method == "residual-floor" and floor.per_echo.size >= MIN_ECHOES_FLOOR:
        calibrated = _calibrated(found, floor, tail)
        if calibrated is not None:
            return calibrated[0], calibrated[1], f"; {calibrated[2]}"
    if not found.nonuniform:
        return None, floor.sigma, ""
    spans = f"its smooth map spans {100 * found.spread:.0f} % of its median"
    holds, confirmed = _shape_holds(found, floor, method, tail)
    if not holds:
        why = confirmed or (
            f"{100 * floor.decaying:.0f} % of the residual variance decays with the signal "
            "(ghosts over the tissue)"
        )
        return None, floor.sigma, f"; {spans}, but {why}: the map is not used"
    sigma_map, levelled = found.sigma, _levelled(found, method, tail)
    if levelled:
        sigma_map = levelled[0] * found.sigma
    sigma = float(np.median(sigma_map.reshape(-1)[floor.index]))
    why = (
        f"; the noise is not uniform ({spans}, chance {100 * found.chance:.0f} %"
        f"{confirmed}): the map is used{levelled[1] if levelled else ''}"
    )
    return sigma_map, sigma, why


def _levelled(found: NoiseMap, method: str, tail: Tail | None) -> tuple[float, str] | None:
    """(the factor, why) that levels an across-model map ``found`` to the decayed ``tail``,
    or None: where the tail's own noise map varies beyond chance (it sees the noise is not
    uniform on its own) and follows ``found`` by more than ``NONUNIFORM_Z`` standard errors
    (:func:`t2starmap.noise.tail.follows`), and the tail at its own voxels is not below
    ``TAIL_BELOW_FLOOR`` times the map there (:func:`t2starmap.noise.tail.at_voxels`, the
    guard's own quantity). The map's shape is then confirmed by a measurement without a
    model, whose own map also measures its level where both are measured
    (:func:`t2starmap.noise.tail.level`), while the map's own level rests on the voxels left
    after trimming those whose residuals exceed a chi-square bound on the pooled noise, which
    under a g-factor of 2 and more drops the noisiest (body simulator, SENSE R 3, phase:
    0.88-0.92 x the truth over seeds 0-47, levelled 0.97-1.03; with ghosts, misfit and jitter
    too, seed 32, 40 % decaying: 0.82, levelled 0.98). A flat tail is the tissue's noise
    itself and levels nothing: with SENSE R 2, ghosts, misfit and jitter it follows the maps
    used by 4.2-6.7 standard errors, and levelled to it they ran 1.11-1.21 x the truth.
    The magnitude floor's map is levelled by the tail before (:func:`_calibrated`)."""
    if method != "across-model" or not _measured(tail) or tail.uniform:
        return None
    z = follows(tail, found.sigma)
    if z <= NONUNIFORM_Z or at_voxels(tail, found) < TAIL_BELOW_FLOOR:
        return None
    scale = level(tail, found)
    return scale, (
        f", levelled by {scale:.3g} to the noise of the decayed tissue where it lies (its "
        f"own map not flat, following this one by {z:.1f} standard errors)"
    )


def _shape_holds(found: NoiseMap, floor: Floor, method: str, tail: Tail | None) -> tuple[bool, str]:
    """(whether the shape of the floor's map ``found`` is the noise's, what confirmed it):
    where no more than ``MAP_MAX_DECAYING`` of the residual variance decays with the signal,
    or, across the complex model, where the decayed ``tail``'s own noise follows the map by
    more than ``NONUNIFORM_Z`` standard errors (:func:`t2starmap.noise.tail.follows`): two
    measurements from different voxels, one with no model at all, vary alike, so ghosts
    over the tissue did not shape it; its level stays the across-model one, which misfit
    cannot inflate (the body simulator, SENSE R 3 with ghosts, misfit and jitter, seed 16:
    63 % decaying, one sigma 0.80 x the truth, the map 0.95 x, the tail following it by 16
    standard errors; 14-18 on every seed 0-23 of the row, the GE kidney's -0.5). Ghosts
    alone (uniform noise) can make the two follow each other too (up to 8.0 over seeds 0-23),
    but only where the map was flat within chance: the map must vary beyond chance as well
    (``found.nonuniform``, checked by the caller). The magnitude floor's map under much
    decay is left to the tail's level (:func:`_calibrated`). First, either floor's map is
    refused where a flat tail does not follow it and more than a tenth decays
    (:func:`_flat_tail_disowns`)."""
    within = floor.decaying <= MAP_MAX_DECAYING.get(method, MAP_MAX_DECAYING["residual-floor"])
    if not _measured(tail):
        return within, ""
    z = follows(tail, found.sigma)
    if _flat_tail_disowns(floor, tail, z):
        return False, (
            f"{100 * floor.decaying:.0f} % of the residual variance decays with the signal and "
            f"the decayed tissue's noise, flat within chance, follows the map by only {z:.1f} "
            "standard errors"
        )
    if within:
        return True, ""
    if method != "across-model" or z <= NONUNIFORM_Z:
        return False, ""
    return True, (
        f"; {100 * floor.decaying:.0f} % of the residual variance decays with the signal, "
        f"but the decayed tissue's noise follows the map by {z:.1f} standard errors"
    )


def _measured(tail: Tail | None) -> TypeGuard[Tail]:
    """Whether ``tail`` is there and gave a sigma."""
    return tail is not None and tail.estimate.sigma is not None


def _flat_tail_disowns(floor: Floor, tail: Tail, z: float) -> bool:
    """Whether a decayed ``tail`` whose own noise map is flat within chance (an estimate of
    the tissue's noise, from no model) follows the floor's map by no more than
    ``NONUNIFORM_Z`` standard errors (``z``: :func:`t2starmap.noise.tail.follows`) while more
    than ``CAVEAT_DECAYING`` of the floor's residual variance decays with the signal: the
    map's shape is then what changes from echo to echo over the tissue (ghosts), not the
    noise. The body simulator with ghosts alone (uniform noise), seeds 25, 29 and 32 with
    phase: across-model maps (34-40 % decaying) at 1.16-1.25 x the truth, the tail flat at
    1.00-1.03, following them by -0.6 to 4.0; seed 24, magnitude only: the floor's map
    (10.5 % decaying) at 1.49 x, the tail 1.02 following it by 3.8. Under SENSE R 3 with
    everything the tail follows the across-model map by 12-20 wherever its own map looks
    flat (and sets the magnitude floor's map's level first: :func:`_calibrated`)."""
    return tail.uniform and floor.decaying > CAVEAT_DECAYING and z <= NONUNIFORM_Z


def _floor_caveat(method: str, floor: Floor, mapped: bool) -> str:
    """Why the floor's sigma may be off by more than 15 %, or "": the signal decays too
    little over the train for what decays with it to be told from the noise
    (``LEAST_POWER``, whichever the residual), or the magnitude floor has more than
    ``CAVEAT_DECAYING`` of its variance decaying and no noise map (``mapped``)."""
    if floor.per_echo.size < MIN_ECHOES_FLOOR:
        return ""
    said = []
    if floor.least_power > LEAST_POWER:
        said.append(
            f"the tissue's mean squared signal falls only to {100 * floor.least_power:.0f} % "
            "of the first echoes' over the train: what decays with it (ghosts, motion, "
            "misfit) cannot be told from the thermal noise"
        )
    if method == "residual-floor" and floor.decaying > CAVEAT_DECAYING and not mapped:
        said.append(
            f"magnitude only: {100 * floor.decaying:.0f} % of the tissue's residual variance "
            "changes with the signal from echo to echo (ghosts, motion, misfit), which the "
            "magnitude cannot tell from the thermal noise"
        )
    return "; ".join(said) + "; sigma may be off by more than 15 %" if said else ""


def _calibrated(
    found: NoiseMap, floor: Floor, tail: Tail | None
) -> tuple[np.ndarray, float, str] | None:
    """(map, its median over the floor's voxels, why): the floor's smooth map ``found``
    scaled to the decayed ``tail``'s own map where both are measured (the decayed tissue's
    noise, no model: :func:`t2starmap.noise.tail.level`), where
    the noise is not uniform: the tail's own map varies beyond chance, or the tail, flat on
    its own, follows the floor's map by more than ``NONUNIFORM_Z`` standard errors
    (:func:`t2starmap.noise.tail.follows`) while it lies below ``TAIL_BELOW_FLOOR`` times the
    floor's sigma (it cannot be the tissue's noise, yet varies as the floor's map does: it
    is where that noise is low); and the tail at its own voxels is not below
    ``TAIL_BELOW_FLOOR`` times the map there (:func:`t2starmap.noise.tail.at_voxels`: the
    guard is held on every decayed voxel, the factor is the two maps where both are measured,
    :func:`t2starmap.noise.tail.level`; SENSE R 3 with ghosts, misfit and jitter, magnitude
    only, seed 51: the maps 0.698, the voxels 0.745, the scaled map 0.95 x the truth, the
    floor's own 1.37); else None.

    The tail is a local measurement: its voxels are where the tissue has decayed, and under
    SENSE where the g-factor is low (the noise is easier to fall under there; body simulator,
    R 3, seeds 0-11: the truth at the tail's voxels 0.67 x the tissue's median), so its own
    map can look flat within chance while the floor's does not (seeds 7 and 10: the tail
    0.71 x the tissue's truth, 1.05-1.07 x the truth at its own voxels), and the floor's map
    can look flat within chance too (SENSE R 3 with ghosts, misfit and jitter, seed 40: 0.55
    x its chance bound against 0.60, the tail following it by 9.6 standard errors at 0.55 x
    the floor; one sigma 1.38 x the truth, the scaled map 0.99). A flat tail not far below
    the floor is the tissue's noise itself: it follows a map that ghosts shaped by chance
    (SENSE R 2 with ghosts, misfit and jitter, seed 46: 4.1 standard errors at 0.87 x the
    floor, the scaled map 1.40 x the truth, the tail 1.05: :func:`t2starmap.noise.choose
    ._thermal_or_tail`). Its level is compared with the map where it was measured: the GE
    kidney's decayed voxels (magnitude only) lie at 0.36 x the floor's map there and stay
    out. Under ghosts that change by echo the floor's map keeps the g-factor's shape but not
    its level (0.52-1.37 x the truth on the body simulator with SENSE R 3, ghosts, misfit and
    jitter, magnitude only)."""
    if not _measured(tail) or tail.index.size < 2:
        return None
    assert floor.sigma is not None and tail.estimate.sigma is not None
    if tail.uniform and not (
        follows(tail, found.sigma) > NONUNIFORM_Z
        and tail.estimate.sigma < TAIL_BELOW_FLOOR * floor.sigma
    ):
        return None
    if at_voxels(tail, found) < TAIL_BELOW_FLOOR:
        return None
    scale = level(tail, found)
    sigma_map = scale * found.sigma
    sigma = float(np.median(sigma_map.reshape(-1)[floor.index]))
    whose = "the floor's" if tail.uniform else "the decayed tissue's own"
    spread = found.spread if tail.uniform else tail.spread
    why = (
        f"the noise is not uniform ({whose} map spans {100 * spread:.0f} % of its median): "
        f"the floor's smooth map, scaled by {scale:.3g} to the noise of {tail.voxels} decayed "
        "voxels where they lie, is used"
    )
    return sigma_map, sigma, why
