"""t2starmap: quantitative T2*, R2* and S0 maps from multi-echo gradient-echo MRI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("t2starmap")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from t2starmap.fit import FitResult, fit_t2star

__all__ = ["FitResult", "__version__", "fit_t2star"]
