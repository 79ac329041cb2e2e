"""What the fit accepts, without torch: T2* bounds, the fit methods, the echo-time rule.

The command line and the BIDS layer read these without loading torch (importing
:mod:`t2starmap.fit` loads none either). Echo times are in seconds everywhere. The help texts
are in :mod:`t2starmap.cli.parser`, the sidecar texts in :mod:`t2starmap.bids.outputs`, the
rules for echo times read from files in :mod:`t2starmap.bids.echo_times`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

#: Shortest and longest T2* reported, in seconds. Fits outside are clamped and flagged failed.
T2STAR_MIN = 1e-3
T2STAR_MAX = 1.0
#: Echo times above this many seconds are taken as a unit mistake (milliseconds given).
MAX_ECHO_TIME = 1.0
#: Relative tolerance on the echo spacing for ``arlo``.
SPACING_RTOL = 1e-3

#: A fit method; the first is the default (their help: :data:`t2starmap.cli.parser.METHOD_HELP`).
Method = Literal["nlls", "nlls-gaussian", "wls", "loglin", "arlo", "complex"]
METHODS: tuple[Method, ...] = get_args(Method)
DEFAULT_METHOD: Method = METHODS[0]
#: The noise model a fit used: Gaussian (no noise floor modelled), Rician (one channel) or
#: noncentral chi (a root-sum-of-squares image of L coils).
NoiseName = Literal["gaussian", "rician", "noncentral-chi"]
#: ``--fit-method`` choices: the methods, and ``auto`` (complex where phase or real/imaginary
#: parts exist, else the default).
FIT_CHOICES = (*METHODS, "auto")
#: ``--b0-correction`` choices; ``auto`` corrects where phase or real/imaginary parts exist.
B0_CORRECTIONS = ("auto", "none", "through-slice")
#: Methods that fit the magnitude alone; ``complex`` needs the complex signal
#: (:mod:`t2starmap.fit_complex`, which also gives the field map).
MAGNITUDE_METHODS = tuple(m for m in METHODS if m != "complex")


@dataclass(frozen=True)
class NoiseModel:
    """What a fit is told about the noise of its data, in one object.

    ``sigma``: the noise SD of each real/imaginary channel in signal units (None: unknown; the
    fit is then Gaussian and its standard errors come from the residuals). ``coils``: the
    effective coil count L >= 1 of a root-sum-of-squares magnitude (1: Rician; complex data
    have no coil count). ``floor``: whether a magnitude fit models the noise floor (the
    noise-aware fit) where sigma is known; False: Gaussian least squares, sigma setting only
    the standard errors and the tests against noise. Raises ValueError for a sigma that is not
    a positive finite number or a coil count below 1.
    """

    sigma: float | None = None
    coils: float = 1.0
    floor: bool = True

    def __post_init__(self) -> None:
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"noise sigma must be a positive number, got {self.sigma!r}")
        if not (math.isfinite(self.coils) and self.coils >= 1.0):
            raise ValueError(f"noise coils must be a number >= 1, got {self.coils!r}")

    @property
    def name(self) -> NoiseName:
        """The model a magnitude fit uses under this noise."""
        if self.sigma is None or not self.floor:
            return "gaussian"
        return "rician" if self.coils == 1.0 else "noncentral-chi"

    def gaussian(self) -> NoiseModel:
        """The same noise level with no floor modelled (and so no coil count)."""
        return NoiseModel(self.sigma, 1.0, floor=False)


def check_echo_times(echo_times: Sequence[float] | np.ndarray | Any) -> np.ndarray:
    """Echo times given to the fit, as float64 seconds (n_echoes,); refuse what cannot be right.

    Raises ValueError when they are not 1-D, not finite, negative, above ``MAX_ECHO_TIME``
    (milliseconds given for seconds), or when fewer than two distinct values are present.
    Repeated echo times are allowed here (the fit averages them); files are stricter
    (:func:`t2starmap.bids.echo_times.check_distinct_echo_times`). A torch tensor is taken as
    its values (without loading torch here).
    """
    if hasattr(echo_times, "detach"):  # a torch tensor, on any device
        echo_times = echo_times.detach().cpu().numpy()
    te = np.asarray(echo_times, dtype=np.float64)
    if te.ndim != 1:
        raise ValueError(f"echo times must be 1-D, got shape {te.shape}")
    if not np.all(np.isfinite(te)) or np.any(te < 0):
        raise ValueError(f"echo times must be finite and non-negative seconds, got {te.tolist()}")
    if np.any(te > MAX_ECHO_TIME):
        raise ValueError(
            f"echo times {te.tolist()} exceed {MAX_ECHO_TIME} s: they look like milliseconds; "
            "give them in seconds"
        )
    if np.unique(te).size < 2:
        raise ValueError(f"at least two distinct echo times are needed, got {te.tolist()}")
    return te
