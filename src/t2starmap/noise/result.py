"""The noise estimate: sigma, effective coils, how it was found and from what."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NoiseEstimate:
    """How noisy the image is, and how that was found out. Fields:

    sigma: noise SD of each real/imaginary channel (of each coil), in image units; None when it
        could not be estimated.
    n_background: number of voxels the estimate rests on (background candidates, windows or
        fitted voxels, by method).
    reason: why the estimate was refused, or why a fallback method was used (empty otherwise).
    coils: effective number L >= 1 of coils of a root-sum-of-squares magnitude (noncentral
        chi with L channel pairs; 1 means Rician).
    method: how sigma was obtained: "real-channel", "background-quantiles", "local-variance",
        "residuals", "given" (by hand), or "" when refused.
    zero_fraction: fraction of the finite voxels that are exactly 0 (zero-filled or masked).
    outlier_fraction: fraction of the background candidates above the 99.9 % point of the
        fitted noise distribution (ghosts, motion, aliasing); 0 when no background was used.
    """

    sigma: float | None
    n_background: int
    reason: str = ""
    coils: float = 1.0
    method: str = ""
    zero_fraction: float = 0.0
    outlier_fraction: float = 0.0
    #: Every estimate the choice was made from: method -> sigma (:func:`cross_check`).
    candidates: Mapping[str, float] = field(default_factory=dict)
    #: What each candidate is to the choice: method -> "estimate", "upper bound", "lower
    #: bound", "upper bound (rejected: ghosts)", or "upper bound (fewer than 6 echoes)".
    bounds: Mapping[str, str] = field(default_factory=dict)
    #: The smooth noise map (the image's spatial shape, image units) the fit is to use where
    #: the noise is not uniform (parallel imaging), else None; ``sigma`` is then its median
    #: over the tissue it was measured in.
    sigma_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: Why this sigma cannot be trusted to the accuracy the fit needs, where the data cannot
    #: tell (a magnitude-only set whose residuals change from echo to echo beyond the noise,
    #: with no decayed tissue of uniform noise to check it); empty where nothing is known
    #: against it. The run warns and the sidecars say it (``NoiseSigmaCaveat``).
    caveat: str = ""
    #: A thermal floor's share of the residual variance that decays with the signal (what
    #: changes from echo to echo besides the noise: ghosts, motion, misfit); None for the
    #: other estimates.
    decaying: float | None = None
