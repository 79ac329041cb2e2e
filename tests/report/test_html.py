"""The page templates: autoescaping, embedded images only, shipped with the package."""

from __future__ import annotations

from importlib import resources

import pytest

from t2starmap.report.html import Figure, render
from t2starmap.report.methods import Citation, SetMethods
from t2starmap.report.participant import FailedSet, Section

PNG = "data:image/png;base64,iVBORw0KGgo="


def test_templates_are_package_data() -> None:
    folder = resources.files("t2starmap") / "report" / "templates"
    names = {p.name for p in folder.iterdir()}
    assert {"base.html", "macros.html", "participant.html", "group.html", "citation.html"} <= names


def test_text_is_escaped_everywhere() -> None:
    figure = Figure(PNG, 'a "quoted" <alt>', "caption <b>&</b>")
    page = render(
        "participant.html",
        title="<title>",
        heading="sub-<x>",
        sections=[],
        failed=[],
        citation=None,
        citation_file="",
    )
    assert "<title>&lt;title&gt;</title>" in page
    assert "sub-&lt;x&gt;: T2* quality report" in page
    section = Section(
        name="sub-01",
        acquisition=[("Vendor", "<Acme & Co>")],
        fit=[("Method", "x")],
        warnings=["<script>alert(1)</script>"],
        where="here",
        montages=[figure],
        plots=[],
    )
    failed = FailedSet("sub-01_run-2", "<b>broken</b> & gone", "65", "now", False)
    cite = Citation((SetMethods("sub-01", ("<i>fitted</i> & done.",)),), ("<ref> & co",))
    page = render(
        "participant.html",
        title="t",
        heading="h",
        sections=[section],
        failed=[failed],
        citation=cite,
        citation_file="logs/<x>.md",
    )
    assert (
        "&lt;i&gt;fitted&lt;/i&gt; &amp; done." in page and "<li>&lt;ref&gt; &amp; co</li>" in page
    )
    assert "logs/&lt;x&gt;.md" in page
    assert "&lt;b&gt;broken&lt;/b&gt; &amp; gone" in page
    assert "&lt;Acme &amp; Co&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'alt="a &#34;quoted&#34; &lt;alt&gt;"' in page
    assert "caption &lt;b&gt;&amp;&lt;/b&gt;" in page


def test_a_missing_value_is_an_error_not_a_blank() -> None:
    with pytest.raises(Exception, match="heading"):
        render(
            "participant.html", title="t", sections=[], failed=[], citation=None, citation_file=""
        )


@pytest.mark.parametrize("uri", ["https://example.org/x.png", "data:image/svg+xml;base64,AA", ""])
def test_figures_must_be_embedded_pngs(uri: str) -> None:
    with pytest.raises(ValueError, match="embedded PNG"):
        Figure(uri, "alt", "caption")
