"""Small HTML builders (stdlib only). Every piece of text passes through :func:`esc`.

Pages are self-contained: styles inline, images as ``data:`` URIs, no scripts, no fonts or
other resources from elsewhere.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from t2starmap import __version__

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f6f6f4; color: #222; line-height: 1.45; }
main { max-width: 1140px; margin: 0 auto; padding: 1rem 1.25rem 3rem; }
h1 { font-size: 1.55rem; margin: 0.6rem 0 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #ccc; padding-bottom: 0.2rem;
     margin-top: 2rem; }
h3 { font-size: 1.05rem; margin: 1.3rem 0 0.3rem; }
p.meta, figcaption, .note { color: #555; font-size: 0.9rem; }
figure { margin: 0.4rem 0 1rem; }
img { max-width: 100%; height: auto; display: block; }
.pair { display: flex; flex-wrap: wrap; gap: 1rem; }
.pair > * { flex: 1 1 420px; min-width: 0; }
table { border-collapse: collapse; margin: 0.4rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: left;
         vertical-align: top; }
th { background: #ebebe7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
.warn { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.4rem 0.7rem;
        margin: 0.3rem 0; }
.ok { color: #2d6a2d; }
tr.flag td { background: #fde4e4; }
nav a { margin-right: 0.8rem; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="t2starmap {esc(__version__)}">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )


def img(uri: str, alt: str) -> str:
    if not uri.startswith("data:image/png;base64,"):
        raise ValueError("report images must be embedded PNG data URIs")
    return f'<img src="{uri}" alt="{esc(alt)}">'


def figure(uri: str, alt: str, caption: str) -> str:
    return f"<figure>{img(uri, alt)}<figcaption>{esc(caption)}</figcaption></figure>"


def key_value_table(rows: Iterable[tuple[str, object]]) -> str:
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows)
    return f"<table>{body}</table>"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    numeric: Sequence[bool] | None = None,
    row_classes: Sequence[str] | None = None,
    raw_columns: Sequence[int] = (),
) -> str:
    """A table; cells are escaped except in ``raw_columns`` (already-built HTML)."""
    numeric = numeric or [False] * len(header)
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in header)
    lines = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            text = cell if j in raw_columns else esc(cell)
            cls = ' class="num"' if numeric[j] else ""
            cells.append(f"<td{cls}>{text}</td>")
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        lines.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(lines)}</table></div>'


def warnings_block(warnings: Sequence[str]) -> str:
    if not warnings:
        return '<p class="ok">No warnings were raised.</p>'
    return "".join(f'<div class="warn">{esc(w)}</div>' for w in warnings)
