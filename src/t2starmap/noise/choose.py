"""The candidates, and the choice of the noise level to fit with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from t2starmap.noise.air import _differences
from t2starmap.noise.background import _Air, _background_estimate, _check_coils
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.tissue import noise_from_residuals

#: Tissue residuals below this many times the background's sigma: the noise is not uniform.
_NONUNIFORM = 0.9


def noise_candidates(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    *,
    signal: np.ndarray | None = None,
    coils: float | None = None,
    workers: int | None = 1,
) -> tuple[NoiseEstimate, NoiseEstimate, NoiseEstimate]:
    """The estimates :func:`cross_check` chooses from, the first echo's background worked out
    once for the first two: (:func:`estimate_noise` of the first echo, with its real channel
    when the complex ``signal`` is given and ``coils`` when known; :func:`noise_from_echo_
    differences` with the coils that gives; :func:`noise_from_residuals`, which needs 3
    echoes). magnitude: (..., n_echoes); signal: the same shape, complex, or None."""
    _check_coils(coils)
    data = np.asarray(magnitude)
    air = _Air.of(np.ascontiguousarray(data[..., 0]))
    real = None if signal is None else signal[..., 0].real
    background = _background_estimate(air, real, coils, True)
    if data.shape[-1] < 2:
        differences = NoiseEstimate(None, 0, "echo differences need at least 2 echoes")
    else:
        differences = _differences(data, air, signal, background.coils)
    if data.shape[-1] >= 3:
        residuals = noise_from_residuals(data, echo_times, workers=workers)
    else:
        residuals = NoiseEstimate(None, 0, "residuals need at least 3 echoes")
    return background, differences, residuals


#: A background sigma above this many times the echo differences' is ghosts, not noise. On the
#: shared sets the ratio is 4.5 for the GE kidney (ghosted: NOTES.md), 1.3 for the Siemens
#: field map, 1.6 for the clean Prisma phantom and 2.3 for the XA30 field map (no ground truth:
#: left alone); 2.5 acts only on clear ghosting.
GHOST_RATIO = 2.5


def cross_check(
    background: NoiseEstimate, differences: NoiseEstimate, residuals: NoiseEstimate
) -> NoiseEstimate:
    """The noise level to fit with, from independent estimates that fail in opposite ways.

    Ghosts, motion and signal in the air push the ``background`` estimate up
    (:func:`estimate_noise`, first echo), while the echo ``differences`` in the same air
    (:func:`noise_from_echo_differences`) cancel them; model misfit pushes the tissue's
    ``residuals`` (:func:`noise_from_residuals`) up. So: a background more than
    ``GHOST_RATIO`` times the differences is ghosted and not used; then the tissue's residual
    sigma is used (it is the tissue's own noise, an upper bound), or the differences when
    there are none (2 echoes). A clean background is used unless the residuals are clearly
    below it (non-uniform noise: :func:`noise_for_fit`). Every candidate is kept in
    ``candidates`` and the reason in ``reason``."""
    candidates = {
        e.method: float(e.sigma)
        for e in (background, differences, residuals)
        if e.sigma is not None and e.method
    }
    ghosted = (
        background.sigma is not None
        and differences.sigma is not None
        and background.sigma > GHOST_RATIO * differences.sigma
    )
    if not ghosted:
        base = background if background.sigma is not None else differences
        return replace(noise_for_fit(base, residuals), candidates=candidates)
    assert background.sigma is not None and differences.sigma is not None
    why = (
        f"the first echo's background gives sigma {background.sigma:.4g}, "
        f"{background.sigma / differences.sigma:.1f} x what the echo differences in the same "
        f"air give ({differences.sigma:.4g}): ghosts, not noise; not used"
    )
    chosen = residuals if residuals.sigma is not None else differences
    source = (
        "the tissue's fit residuals are used (an upper bound on its noise)"
        if chosen is residuals
        else "the echo differences are used"
    )
    return replace(
        chosen,
        reason=f"{why}; {source}",
        coils=background.coils,
        zero_fraction=background.zero_fraction,
        outlier_fraction=background.outlier_fraction,
        candidates=candidates,
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
