"""What the fit accepts and reports, without torch: constants, fit methods, echo-time rules.

The command line, the layout, the NIfTI reader, the converter and the report read these
without loading torch (importing :mod:`t2starmap.fit` loads none either). Echo times are in
seconds everywhere.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t2starmap.errors import BadDataError

#: Shortest and longest T2* reported, in seconds. Fits outside are clamped and flagged failed.
T2STAR_MIN = 1e-3
T2STAR_MAX = 1.0
#: Echo times above this many seconds are taken as a unit mistake (milliseconds given).
MAX_ECHO_TIME = 1.0
#: Two echoes of one set whose EchoTime differ by at most this (s) are the same echo time.
DUPLICATE_ECHO_TIME = 1e-6
#: Relative tolerance on the echo spacing for ``arlo``.
SPACING_RTOL = 1e-3

#: Fit method -> one line of help for ``--fit-method``. The first is the default.
METHOD_HELP: Mapping[str, str] = {
    "nlls": "noise-aware (Rician) least squares when the noise level is known or estimated, "
    "else Gaussian",
    "nlls-gaussian": "plain Levenberg-Marquardt least squares",
    "wls": "weighted log-linear",
    "loglin": "ordinary log-linear",
    "arlo": "auto-regression on linear operations (evenly spaced echoes only)",
    "complex": "complex-domain least squares on magnitude and phase (needs part-phase or "
    "part-real + part-imag); also gives a field map",
}
METHODS = tuple(METHOD_HELP)
DEFAULT_METHOD = METHODS[0]
#: ``--fit-method`` choices: the methods, and ``auto`` (complex where phase or real/imaginary
#: parts exist, else the default).
FIT_CHOICES = (*METHODS, "auto")
AUTO_HELP = "complex where part-phase or part-real/imag files exist, else " + DEFAULT_METHOD
#: ``--b0-correction`` choices; ``auto`` corrects where phase or real/imaginary parts exist.
B0_CORRECTIONS = ("auto", "none", "through-slice")
#: Methods that fit the magnitude alone; ``complex`` needs the complex signal
#: (:mod:`t2starmap.fit_complex`, which also gives the field map).
MAGNITUDE_METHODS = tuple(m for m in METHODS if m != "complex")

#: (method, noise model) -> the ``EstimationAlgorithm`` text of the map sidecars.
ESTIMATION_ALGORITHMS: Mapping[tuple[str, str], str] = {
    ("nlls", "rician"): "Noise-aware least squares: the squared magnitude fitted to its Rician "
    "expectation S0^2 exp(-2 TE R2*) + 2 sigma^2 by iteratively reweighted Levenberg-Marquardt "
    "from a weighted log-linear start",
    ("nlls", "noncentral-chi"): "Noise-aware least squares for a root-sum-of-squares image of "
    "L coils: the squared magnitude fitted to its noncentral chi expectation "
    "S0^2 exp(-2 TE R2*) + 2 L sigma^2 by iteratively reweighted Levenberg-Marquardt from a "
    "weighted log-linear start",
    ("nlls", "gaussian"): "Levenberg-Marquardt least squares on (S0, R2*) from a weighted "
    "log-linear start (no noise level known, so no noise-floor correction)",
    ("nlls-gaussian", "gaussian"): "Levenberg-Marquardt least squares on (S0, R2*) from a "
    "weighted log-linear start",
    ("wls", "gaussian"): "Weighted (S^2) linear least squares on log signal",
    ("loglin", "gaussian"): "Ordinary linear least squares on log signal",
    ("arlo", "gaussian"): "Auto-regression on linear operations (ARLO, Pei et al. 2015)",
    ("through-slice", "any"): "S(TE) = S0 exp(-TE R2*) |F(TE)| fitted with the noise model "
    "above, started from the uncorrected fit, G the through-slice gradient of the field map "
    "and F(TE) the normalised Fourier transform of the slice profile (B0SliceProfile) at "
    "G dz TE, dz the slice thickness; echoes with |F| below the threshold left out",
    ("complex", "gaussian"): "Levenberg-Marquardt least squares of the complex signal "
    "S0 exp(-TE R2*) exp(i(phi0 + 2 pi f TE)) on its real and imaginary parts (Gaussian "
    "noise, no noise floor), from phase-difference and weighted log-linear starts",
}


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


def echo_time_seconds(raw: Any) -> float:
    """One sidecar's ``EchoTime`` value in seconds; numeric strings ("0.02") accepted.

    Raises ValueError when it is not a number, not finite, not positive (BIDS requires
    EchoTime > 0; a 0 means the scanner header had none) or above ``MAX_ECHO_TIME``.
    """
    try:
        value = float(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"EchoTime {raw!r} is not a number") from err
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"EchoTime {raw!r} is not a positive number of seconds")
    if value > MAX_ECHO_TIME:
        raise ValueError(
            f"EchoTime {raw!r} is above {MAX_ECHO_TIME} s: it looks like milliseconds, "
            "BIDS requires seconds"
        )
    return value


def echo_time_of(path: Path, metadata: Mapping[str, Any]) -> float:
    """EchoTime in seconds from the sidecar metadata of the image ``path``.

    Raises BadDataError naming the file (see :func:`echo_time_seconds` for the rules)."""
    if "EchoTime" not in metadata:
        raise BadDataError(f"{path}: the sidecar has no EchoTime (required for MEGRE)")
    try:
        return echo_time_seconds(metadata["EchoTime"])
    except ValueError as err:
        raise BadDataError(f"{path}: {err}") from err


def check_distinct_echo_times(
    name: str, paths: Sequence[Path], echo_times: Sequence[float]
) -> list[int]:
    """The order that sorts one set's echoes by ascending echo time (ties by path).

    ``name`` names the set in messages; ``paths`` and ``echo_times`` (s) are per echo.
    Raises BadDataError when there are fewer than two echoes, or when two echo times differ by
    at most ``DUPLICATE_ECHO_TIME`` (the message names both files).
    """
    if len(paths) != len(echo_times):
        raise ValueError(f"{len(paths)} paths but {len(echo_times)} echo times")
    if len(paths) < 2:
        raise BadDataError(
            f"{paths[0] if paths else name}: only one echo in set {name}; "
            "a T2* fit needs at least 2"
        )
    order = sorted(range(len(paths)), key=lambda k: (echo_times[k], str(paths[k])))
    for a, b in itertools.pairwise(order):
        if echo_times[b] - echo_times[a] <= DUPLICATE_ECHO_TIME:
            raise BadDataError(
                f"{paths[a]} and {paths[b]}: two echoes of set {name} have the same EchoTime "
                f"({echo_times[a]:.9g} s and {echo_times[b]:.9g} s, within "
                f"{DUPLICATE_ECHO_TIME * 1e6:g} us); every echo needs its own echo time"
            )
    return order
