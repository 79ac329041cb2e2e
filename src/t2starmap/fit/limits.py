"""What the fit accepts, without torch: T2* bounds, the fit methods, the echo-time rule.

The command line and the BIDS layer read these without loading torch (importing
:mod:`t2starmap.fit` loads none either). Echo times are in seconds everywhere. The help texts
are in :mod:`t2starmap.cli.parser`, the sidecar texts in :mod:`t2starmap.bids.outputs`, the
rules for echo times read from files in :mod:`t2starmap.bids.echo_times`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Shortest and longest T2* reported, in seconds. Fits outside are clamped and flagged failed.
T2STAR_MIN = 1e-3
T2STAR_MAX = 1.0
#: Echo times above this many seconds are taken as a unit mistake (milliseconds given).
MAX_ECHO_TIME = 1.0
#: Relative tolerance on the echo spacing for ``arlo``.
SPACING_RTOL = 1e-3

#: The fit methods; the first is the default (their help: :data:`t2starmap.cli.parser.METHOD_HELP`).
METHODS = ("nlls", "nlls-gaussian", "wls", "loglin", "arlo", "complex")
DEFAULT_METHOD = METHODS[0]
#: ``--fit-method`` choices: the methods, and ``auto`` (complex where phase or real/imaginary
#: parts exist, else the default).
FIT_CHOICES = (*METHODS, "auto")
#: ``--b0-correction`` choices; ``auto`` corrects where phase or real/imaginary parts exist.
B0_CORRECTIONS = ("auto", "none", "through-slice")
#: Methods that fit the magnitude alone; ``complex`` needs the complex signal
#: (:mod:`t2starmap.fit_complex`, which also gives the field map).
MAGNITUDE_METHODS = tuple(m for m in METHODS if m != "complex")


def check_echo_times(echo_times: Sequence[float] | np.ndarray) -> np.ndarray:
    """Echo times given to the fit, as float64 seconds (n_echoes,); refuse what cannot be right.

    Raises ValueError when they are not 1-D, not finite, negative, above ``MAX_ECHO_TIME``
    (milliseconds given for seconds), or when fewer than two distinct values are present.
    Repeated echo times are allowed here (the fit averages them); files are stricter
    (:func:`check_distinct_echo_times`).
    """
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
