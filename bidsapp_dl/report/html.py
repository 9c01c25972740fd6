"""Small HTML building blocks: escaped text, tables, embedded images, a page with its style.

Pages are self-contained (images embedded as base64 PNG, style inline, no JavaScript), so they
open offline, from a cluster's file system or an e-mail attachment.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from html import escape

import pandas as pd

STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1150px; padding: 1em 2em;
       color: #222; background: #fff; }
h1 { border-bottom: 3px solid #345; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
h3 { margin-top: 1.4em; color: #345; }
nav { background: #f2f4f7; padding: .5em 1em; border-radius: 4px; }
nav a { margin-right: 1.2em; color: #245; }
table { border-collapse: collapse; margin: .6em 0 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #eef1f5; }
td.text, th.text { text-align: left; }
.missing { color: #8a5a00; background: #fff6e0; border-left: 4px solid #e0a000; padding: .4em .8em; }
.problem { color: #8b0000; background: #fdecec; border-left: 4px solid #c00; padding: .4em .8em; }
.ok { color: #155724; background: #e9f6ec; border-left: 4px solid #2a8a3a; padding: .4em .8em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
figure { display: inline-block; margin: .4em 1em .8em 0; vertical-align: top; }
figcaption { font-size: 13px; color: #444; }
img { max-width: 100%; }
.grid { display: flex; flex-wrap: wrap; gap: 10px 24px; align-items: flex-start; }
.tile { border: 1px solid #ddd; padding: 4px; font-size: 12px; width: 300px; }
.tile img { image-rendering: pixelated; width: 290px; }
"""


def esc(value: object) -> str:
    """``value`` as HTML text: escaped, NaN and None as ``n/a``, floats with 4 significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else escape(f"{value:.4g}")
    return escape(str(value))


def paragraph(text: str, kind: str = "") -> str:
    cls = f' class="{kind}"' if kind else ""
    return f"<p{cls}>{esc(text)}</p>\n"


def missing(text: str) -> str:
    """A visible note that something is not in the MAPS (yet)."""
    return paragraph(text, "missing")


def table(frame: pd.DataFrame, text_columns: Iterable[str] = (), cls: str = "") -> str:
    """A DataFrame as an HTML table; every cell escaped."""
    text = set(text_columns) | {c for c in frame.columns if frame[c].dtype == object}
    head = "".join(f'<th class="{"text" if c in text else ""}">{esc(c)}</th>' for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = "".join(f'<td class="{"text" if c in text else ""}">{esc(_cell(v))}</td>'
                        for c, v in zip(frame.columns, values))
        rows.append(f"<tr>{cells}</tr>")
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n"


def _cell(value: object) -> object:
    if isinstance(value, float) and not math.isnan(value) and value == int(value) and abs(value) < 1e15:
        return int(value)
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def key_values(pairs: Sequence[tuple[str, object]], per_row: int = 1) -> str:
    """A table of names and values, ``per_row`` pairs on each row."""
    cells = [f'<th class="text">{esc(k)}</th><td class="text">{esc(v)}</td>' for k, v in pairs]
    rows = "".join(f"<tr>{''.join(cells[i:i + per_row])}</tr>" for i in range(0, len(cells), per_row))
    return f"<table>{rows}</table>\n"


def png(data: bytes, alt: str, caption: str = "", attrs: dict[str, object] | None = None) -> str:
    """A PNG embedded as a data URI in a figure; ``attrs`` become ``data-*`` attributes."""
    extra = "".join(f' data-{escape(k)}="{esc(v)}"' for k, v in (attrs or {}).items())
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure{extra}><img src="{src}" alt="{esc(alt)}">{cap}</figure>\n'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{escape(anchor)}">\n<h2>{esc(title)}</h2>\n{body}</section>\n'


def page(title: str, sections: list[tuple[str, str, str]], intro: str = "") -> str:
    """A whole page: title, a table of contents, and ``(anchor, title, body)`` sections."""
    nav = "".join(f'<a href="#{escape(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n{intro}<nav>{nav}</nav>\n{body}</body>\n</html>\n")
