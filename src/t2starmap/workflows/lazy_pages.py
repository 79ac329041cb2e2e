"""The report's page module (:mod:`t2starmap.report.participant`), imported when first used:
matplotlib, jinja2 and PIL take 0.4 s, paid when the first page is drawn. Not in a thread while
the first set is read and fitted: the import holds the GIL nearly throughout, so the readers'
and the fit workers' Python waited for it, and the set's reading took 0.8 s instead of 0.4 s
with 1 worker or 2 (section 8 of benchmarks/RESULTS_PARTICIPANT.md)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from t2starmap.report import participant as pages
else:

    class _Pages:
        def __getattr__(self, name: str) -> Any:
            return getattr(importlib.import_module("t2starmap.report.participant"), name)

    pages = _Pages()

__all__ = ["pages"]
