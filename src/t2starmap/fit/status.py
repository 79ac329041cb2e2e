"""Why a voxel's fit is (not) to be trusted: the one table of fit-status codes.

Torch-free (the pages and the derivatives read it without loading torch). Three things are
written down here and nowhere else:

* :class:`Failure`, the bits every fit sets per voxel (``FitResult.reason``); ``failed`` is
  ``reason != 0``; of those, only :data:`FIT_FAILED` bits mean the fit failed (no usable
  estimate): ``MISFIT`` means the model is inadequate there (an estimate exists, its SE
  inflated), counted apart (:func:`fit_failed`, :func:`misfit`);
* :class:`Correction`, the per-voxel outcome of the through-slice field-gradient correction
  (:mod:`t2starmap.b0.correction`); a voxel it did not correct keeps its uncorrected fit,
  which is not a failure;
* :data:`LEVELS`, the labels of the published fit-status map (``desc-fitstatus_dseg``, its
  ``.tsv`` beside it): index, BIDS name, what it means, advice for a warning, and the Failure
  bit or Correction outcomes behind it. A voxel with several reasons gets the label of the
  first in :data:`PRIORITY`.

The labels follow the BIDS ``dseg`` convention that 0 is background: 0 is "not fitted"
(outside the signal mask), 1 is a good fit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: False-alarm rate per voxel of the goodness-of-fit test (``Failure.MISFIT``) for data that
#: follow the model with the noise level given.
MISFIT_P = 1e-3


class Failure(enum.IntFlag):
    """The bits of ``FitResult.reason`` (uint8); what each means for each fit:
    :class:`t2starmap.fit.result.FitResult`."""

    R2STAR_LOW = 1  # R2* below 1/T2STAR_MAX (clamped there): signal not decaying
    R2STAR_HIGH = 2  # R2* above 1/T2STAR_MIN (clamped there)
    NOT_CONVERGED = 4
    BAD_INPUT = 8  # NaN/inf in a sample, or fewer than two non-zero echoes
    S0_NONPOSITIVE = 16
    PHASE_MODEL = 32  # the phase does not follow phi0 + 2 pi f TE (complex fit only)
    MISFIT = 64  # residuals improbably large for the noise: the decay does not follow the model
    REFITTED = 128  # the first fit did not converge; a 1-D search over R2* found the minimum


#: The bits that mean the fit failed: no usable estimate. MISFIT is not among them: the model
#: is inadequate there (two pools, fat, a bright or dark echo), the estimate exists.
FIT_FAILED = int(
    Failure.R2STAR_LOW
    | Failure.R2STAR_HIGH
    | Failure.NOT_CONVERGED
    | Failure.BAD_INPUT
    | Failure.S0_NONPOSITIVE
    | Failure.PHASE_MODEL
)


def fit_failed(reason: np.ndarray) -> np.ndarray:
    """Voxels whose fit failed (a :data:`FIT_FAILED` bit), bool, from ``reason`` (uint8)."""
    return np.asarray((np.asarray(reason) & FIT_FAILED) != 0)


def misfit(reason: np.ndarray) -> np.ndarray:
    """Voxels whose fit stands but whose decay does not follow the model (MISFIT alone)."""
    bits = np.asarray(reason)
    return np.asarray(((bits & int(Failure.MISFIT)) != 0) & ((bits & FIT_FAILED) == 0))


class Correction(enum.IntEnum):
    """Per-voxel outcome of the through-slice correction (uint8 map; 0 outside the mask)."""

    OUTSIDE = 0
    CORRECTED = 1
    EDGE_SLICE = 2  # first or last slice: no central difference
    MASK_BORDER = 3  # a slice neighbour is outside the mask
    FIELD_UNTRUSTED = 4  # this voxel's or a neighbour's field estimate is not to be trusted
    FEW_ECHOES = 5  # fewer than the minimum of echoes with |F| >= the threshold


#: What each :class:`Correction` outcome other than CORRECTED means, for records and pages.
CORRECTION_REASONS: Mapping[Correction, str] = {
    Correction.EDGE_SLICE: "edge slice (no slice on one side to measure the gradient)",
    Correction.MASK_BORDER: "a slice neighbour is outside the mask",
    Correction.FIELD_UNTRUSTED: "the field map there (or at a slice neighbour) is not trusted",
    Correction.FEW_ECHOES: "too few echoes left where the dephasing factor is large enough",
}


@dataclass(frozen=True)
class Level:
    """One label of the fit-status map. ``bit``: the :class:`Failure` bit it stands for (0 for
    the labels that are not failures); ``corrections``: the :class:`Correction` outcomes it
    stands for. ``advice`` is added to the warning when many voxels share it. ``failure``:
    the fit failed there (False for a good fit, an uncorrected one and the misfit label:
    an estimate exists)."""

    index: int
    name: str
    meaning: str
    advice: str = ""
    bit: int = 0
    corrections: tuple[Correction, ...] = ()

    @property
    def failure(self) -> bool:
        return bool(self.bit & FIT_FAILED)


NOT_FITTED = Level(0, "not_fitted", "outside the signal mask: not fitted")
GOOD = Level(1, "good", "good fit")
NOT_CORRECTED = Level(
    9,
    "not_gradient_corrected",
    "good fit, but not corrected for the field gradient (edge slice, mask border, too few "
    "echoes, or the field there is not to be trusted)",
    corrections=(
        Correction.EDGE_SLICE,
        Correction.MASK_BORDER,
        Correction.FIELD_UNTRUSTED,
        Correction.FEW_ECHOES,
    ),
)
REFITTED = Level(
    10,
    "refitted",
    "good fit after a refit: the first fit did not converge, a bounded 1-D search over R2* "
    "(the amplitude in closed form) found the minimum",
    bit=Failure.REFITTED,
)

#: The failure labels, most telling first: a voxel with several Failure bits (LM pushing
#: against the R2* >= 0 bound also fails to converge) gets the first that applies. The misfit
#: label comes after every failure: it is not one (the estimate stands), so a voxel whose fit
#: failed AND whose residuals are large is labelled by its failure, as the failed mask and
#: FitFailedFraction count it (misfit first put 333 failed GE voxels under the misfit label).
PRIORITY: tuple[Level, ...] = (
    Level(
        2,
        "unusable_input",
        "unusable input: NaN, inf or negative samples, or fewer than two positive echoes",
        "check the images for masking or scaling problems",
        bit=Failure.BAD_INPUT,
    ),
    Level(
        3,
        "r2star_at_lower_bound",
        "R2* at its lower bound: signal rising with TE (echo 2 brighter than echo 1) or flat",
        "check the echo order and the sequence (flow, B1, imperfect spoiling)",
        bit=Failure.R2STAR_LOW,
    ),
    Level(
        4,
        "r2star_at_upper_bound",
        "R2* at its upper bound: the signal decays before the first echo can see it",
        "a shorter first echo time is needed for this tissue",
        bit=Failure.R2STAR_HIGH,
    ),
    Level(
        5,
        "nonpositive_s0",
        "S0 came out zero or negative (signal below the noise)",
        bit=Failure.S0_NONPOSITIVE,
    ),
    Level(
        6,
        "phase_not_following_model",
        "complex fit: the phase does not follow one frequency (bipolar readout, flow, fat)",
        "for bipolar readouts use a magnitude fit (--fit-method nlls)",
        bit=Failure.PHASE_MODEL,
    ),
    Level(7, "not_converged", "the fit did not converge", bit=Failure.NOT_CONVERGED),
    Level(
        8,
        "decay_not_following_model",
        "the decay does not follow the model: its residuals are improbably large for the noise "
        "(reduced chi-square above its p < 0.001 point): two T2* pools, fat, a bright or dark "
        "echo, motion",
        "the maps there are the closest mono-exponential, not a T2*; their standard errors "
        "are inflated by the misfit",
        bit=Failure.MISFIT,
    ),
)

#: Every label of the fit-status map, in index order.
LEVELS: tuple[Level, ...] = tuple(
    sorted((NOT_FITTED, GOOD, *PRIORITY, NOT_CORRECTED, REFITTED), key=lambda level: level.index)
)
#: Mask share of one failure label above which the run warns.
WARN_FRACTION = 0.05


def level_named(name: str) -> Level:
    """The level called ``name``; KeyError naming the known ones otherwise."""
    for level in LEVELS:
        if level.name == name:
            return level
    raise KeyError(f"no fit-status level {name!r}; known: {', '.join(lv.name for lv in LEVELS)}")


def labels(
    reason: np.ndarray | None, mask: np.ndarray, correction: np.ndarray | None = None
) -> np.ndarray:
    """The fit-status map (uint8, :data:`LEVELS` indices) of one fit.

    ``reason``: the fit's :class:`Failure` bits (uint8, the mask's shape; None: no failures
    known); ``mask``: bool, the voxels fitted; ``correction``: the :class:`Correction` outcome
    of each voxel when a field-gradient correction ran (None: none ran)."""
    bits = np.zeros(mask.shape, dtype=np.uint8) if reason is None else np.asarray(reason)
    out = np.where(mask, np.uint8(GOOD.index), np.uint8(NOT_FITTED.index))
    if correction is not None:
        out[mask & np.isin(correction, [int(c) for c in NOT_CORRECTED.corrections])] = (
            NOT_CORRECTED.index
        )
    out[mask & ((bits & REFITTED.bit) != 0)] = REFITTED.index
    for level in reversed(PRIORITY):  # the first in the order is written last
        out[mask & ((bits & level.bit) != 0)] = level.index
    return out


def counts(status: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    """Voxels of the mask under each label, by label name (every label, zeros included)."""
    inside = np.bincount(status[mask].ravel(), minlength=len(LEVELS))
    return {level.name: int(inside[level.index]) for level in LEVELS if level is not NOT_FITTED}


def warnings(share_of: Mapping[str, float]) -> list[str]:
    """One sentence per failure label that covers at least :data:`WARN_FRACTION` of the
    mask; ``share_of``: label name -> fraction of the mask."""
    out = []
    for level in PRIORITY:
        share = share_of.get(level.name, 0.0)
        if share >= WARN_FRACTION:
            advice = f"; {level.advice}" if level.advice else ""
            out.append(f"{100 * share:.0f} % of the mask: {level.meaning}{advice}")
    return out


def levels_tsv() -> str:
    """The ``desc-fitstatus_dseg.tsv``: columns ``index``, ``name``, ``description``."""
    lines = ["index\tname\tdescription"]
    lines += [f"{level.index}\t{level.name}\t{level.meaning}" for level in LEVELS]
    return "\n".join(lines) + "\n"
