"""Checks shared by the report tests: self-contained HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.resources: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values.get("src", ""))
        if tag == "script":
            self.scripts += 1
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        for attribute in ("src", "srcset", "data", "poster", "action"):
            if attribute in values:
                self.resources.append((tag, attribute, values[attribute]))
        if tag == "link" and "href" in values:
            self.resources.append((tag, "href", values["href"]))


def parse(text: str) -> _Collector:
    collector = _Collector()
    collector.feed(text)
    return collector


def assert_self_contained(text: str) -> _Collector:
    """Every image a data URI, no resource fetched from anywhere (CSS included), no script;
    plain <a href> links may point anywhere (they are not fetched)."""
    found = parse(text)
    assert found.images, "a report without figures"
    assert all(src.startswith("data:image/png;base64,") for src in found.images)
    for tag, attribute, value in found.resources:
        assert value.startswith("data:"), f"<{tag} {attribute}={value[:60]!r}> loads something"
    assert found.scripts == 0
    assert not re.search(r"url\(|@import|@font-face", text), "CSS that fetches"
    return found
