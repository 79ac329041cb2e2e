"""Pages from jinja2 templates (``report/templates/``, autoescaped), shipped with the package.

Pages are self-contained: styles inline, images as ``data:`` URIs, no fonts or other resources
from elsewhere; the only script is the group table's inline sorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from typing import Any

import jinja2

from t2starmap import __version__


@dataclass(frozen=True)
class Figure:
    """One embedded PNG with its alternative text and caption."""

    uri: str
    alt: str
    caption: str

    def __post_init__(self) -> None:
        if not self.uri.startswith("data:image/png;base64,"):
            raise ValueError("report images must be embedded PNG data URIs")


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("t2starmap", "report/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>``; every page also gets ``version`` and ``stamp``."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(template).render(version=__version__, stamp=stamp, **context)
