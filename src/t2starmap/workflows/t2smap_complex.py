"""``t2starmap t2smap --phase``: the complex fit of a run whose phase echoes are given, or
the reason it is refused (then the magnitude fit of ``--fittype`` is used).

The phase echoes are aligned and averaged over the volumes
(:func:`t2starmap.fit.bold_complex.aligned_mean`: why, in its module), checked as the MEGRE
sets' phase is (:func:`t2starmap.fit.phase.analyse_phase`: phase that follows no frequency is
refused with its reason), then fitted (:func:`t2starmap.fit.bold_complex.fit_aligned`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from t2starmap.bids.outputs import phase_sidecar
from t2starmap.fit import bold

if TYPE_CHECKING:
    from t2starmap.workflows.t2smap import T2smapSettings
    from t2starmap.workflows.t2smap_write import Run

log = logging.getLogger("t2starmap.t2smap")


def complex_fit(
    s: T2smapSettings, run: Run, m: bold.EchoMoments, volumes: np.ndarray | None
) -> tuple[bold.DecayFit | None, dict[str, object]]:
    """The complex fit of the run's aligned mean echoes in the voxels with usable input, and
    what the provenance records of it; (None, the reason) when the phase check refuses it."""
    from t2starmap.fit.bold_complex import aligned_mean, fit_aligned
    from t2starmap.fit.phase import INCOHERENT, analyse_phase

    assert run.phase is not None
    inside = np.asarray(~m.bad.all(axis=1))
    sigma = bold.temporal_noise(m, inside)
    mean_sigma = sigma / np.sqrt(m.n_volumes) if np.isfinite(sigma) else None
    mean = aligned_mean(run.echoes, run.phase, run.te, volumes)
    how = bold.Compute(s.device, s.workers)
    phase = analyse_phase(
        mean.astype(np.complex64), run.te, mask=inside, noise_sigma=mean_sigma,
        compute=how.torch(),
    )  # fmt: skip
    notes: dict[str, object] = {
        "PhaseFiles": [str(p) for p in s.phase],
        **phase_sidecar(phase),
    }
    if phase.verdict == INCOHERENT:
        reason = f"complex fit refused: {phase.reason}; fitted by {s.fittype} on the magnitude"
        log.warning("%s", reason)
        return None, {**notes, "ComplexFit": False, "ComplexFitNote": reason}
    log.info("complex fit: %s", phase.reason)
    fit, _frequency = fit_aligned(mean, run.te, inside, mean_sigma, how, phase.bipolar)
    note = (
        "S0 and R2* (and the frequency) fitted to the complex echoes, each volume's phase "
        "offset removed before the mean over the volumes; " + phase.reason
    )
    return fit, {**notes, "ComplexFit": True, "ComplexFitNote": note}
