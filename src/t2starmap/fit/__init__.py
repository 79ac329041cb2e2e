"""The fitting core: models plugged into one batched solver. Pure torch, no I/O.

Rooms, one concern each (``docs/architecture.md`` has the picture):

* :mod:`~t2starmap.fit.limits` (torch-free): T2* bounds, the fit methods, echo-time rules;
* :mod:`~t2starmap.fit.status` (torch-free): the Failure bits and the fit-status labels;
* :mod:`~t2starmap.fit.stats` (torch-free to import): null-distribution quantiles;
* :mod:`~t2starmap.fit.lm_policy` (torch-free): the numbers of that policy, shared by both
  engines of the Gaussian decay fit;
* :mod:`~t2starmap.fit.solver`: the one Levenberg-Marquardt loop and its tolerance policy;
* :mod:`~t2starmap.fit.decay_cpu` (torch-free): the same loop for the Gaussian decay in numpy,
  where importing torch would cost more than the fit (``t2smap --fittype curvefit`` on the CPU);
* :mod:`~t2starmap.fit.models`: the models it fits (magnitude decay, optionally noise-aware
  and times a known factor; the complex decay, optionally bipolar);
* :mod:`~t2starmap.fit.starts`: closed-form fits and starting points;
* :mod:`~t2starmap.fit.result`: :class:`FitResult` and the one derivation of the maps;
* :mod:`~t2starmap.fit.dispatch`: device, chunks and chunk workers;
* :mod:`~t2starmap.fit.magnitude`, :mod:`~t2starmap.fit.complex`,
  :mod:`~t2starmap.fit.corrected`: the entry points.

Importing this package loads no torch; the names below that need it load it on first use
(so the command line, the layout and the pages can read the torch-free rooms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from t2starmap.errors import EchoSpacingError
from t2starmap.fit.limits import (
    DEFAULT_METHOD,
    MAGNITUDE_METHODS,
    MAX_ECHO_TIME,
    METHODS,
    SPACING_RTOL,
    T2STAR_MAX,
    T2STAR_MIN,
    Method,
    NoiseModel,
    NoiseName,
    check_echo_times,
)
from t2starmap.fit.status import Failure

if TYPE_CHECKING:
    from t2starmap.fit.complex import fit_complex, frequency_limit
    from t2starmap.fit.corrected import CorrectedFit, fit_corrected
    from t2starmap.fit.dispatch import Compute, resolve_device
    from t2starmap.fit.magnitude import check_even_spacing, fit_t2star
    from t2starmap.fit.result import FitResult

__all__ = [
    "DEFAULT_METHOD",
    "MAGNITUDE_METHODS",
    "MAX_ECHO_TIME",
    "METHODS",
    "SPACING_RTOL",
    "T2STAR_MAX",
    "T2STAR_MIN",
    "Compute",
    "CorrectedFit",
    "EchoSpacingError",
    "Failure",
    "FitResult",
    "Method",
    "NoiseModel",
    "NoiseName",
    "check_echo_times",
    "check_even_spacing",
    "fit_complex",
    "fit_corrected",
    "fit_t2star",
    "frequency_limit",
    "resolve_device",
]

#: Name -> the module (needing torch) it lives in.
_LAZY = {
    "fit_complex": "complex",
    "frequency_limit": "complex",
    "resolve_device": "dispatch",
    "Compute": "dispatch",
    "CorrectedFit": "corrected",
    "check_even_spacing": "magnitude",
    "fit_corrected": "corrected",
    "fit_t2star": "magnitude",
    "FitResult": "result",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"t2starmap.fit.{_LAZY[name]}"), name)
    raise AttributeError(f"module 't2starmap.fit' has no attribute {name!r}")
