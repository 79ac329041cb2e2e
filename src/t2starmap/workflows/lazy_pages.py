"""The report's page module (:mod:`t2starmap.report.participant`), imported when first used:
matplotlib, jinja2 and PIL take most of a second, which the participant run hides by importing
it in a thread while its first set is fitted."""

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
