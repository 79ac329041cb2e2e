"""The command lines: the BIDS-App (:mod:`~t2starmap.cli.run`), ``t2starmap convert``
(:mod:`~t2starmap.cli.convert`) and the parts of their parsers they share
(:mod:`~t2starmap.cli.parser`).

``main`` and ``build_parser`` are loaded on first use, so importing a parser module alone does
not load the whole app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from t2starmap.cli.run import build_parser, main

__all__ = ["build_parser", "main"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from t2starmap.cli import run as _run

        return getattr(_run, name)
    raise AttributeError(f"module 't2starmap.cli' has no attribute {name!r}")
