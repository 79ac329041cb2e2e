"""t2starmap: quantitative T2*, R2* and S0 maps from multi-echo gradient-echo MRI."""

from __future__ import annotations

#: The one place the version is written (pyproject.toml reads it from here): a literal, not
#: ``importlib.metadata.version``, whose import costs 0.035 s of a 0.6 s ``t2smap`` run.
__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from t2starmap.fit import FitResult, fit_t2star

__all__ = ["FitResult", "__version__", "fit_t2star"]


def __getattr__(name: str) -> object:
    """``fit_t2star`` and ``FitResult`` load torch on first use, not on import: ``t2starmap
    convert`` and ``--version`` never need it."""
    if name in ("fit_t2star", "FitResult"):
        from t2starmap import fit

        return getattr(fit, name)
    raise AttributeError(f"module 't2starmap' has no attribute {name!r}")
