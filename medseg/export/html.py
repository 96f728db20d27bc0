"""The small HTML kit of medseg's static pages (review pages, classification reports).

Escaping, relative links, one number-formatting policy (None, NaN, inf and non-numbers print as an en dash),
the page skeleton with the shared CSS, tables, pills, cards and figures. Pages stay static and offline: inline
CSS and scripts only, no network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medseg.io.atomic import write_atomically

__all__ = [
    "BASE_CSS",
    "MISSING",
    "card",
    "escape",
    "figure",
    "href",
    "interval",
    "is_number",
    "number",
    "page",
    "pill",
    "table",
    "write_page",
]

MISSING = "–"
"""What a number that is not there (None, NaN, inf, not a number) prints as."""

BASE_CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2430;
       margin: 0; background: #f3f4f6; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 28px 48px; }
a { color: #1f4e79; }
h1 { font-size: 24px; margin: 6px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid #d7dbe1; padding-bottom: 4px; }
code { background: #e7eaee; padding: 1px 5px; border-radius: 3px; font-size: 12.5px; word-break: break-all; }
.meta { color: #4a5568; margin: 3px 0; }
.muted { color: #6b7686; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0 6px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 8px 16px; min-width: 120px; }
.card .label { color: #5a6575; font-size: 11.5px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .note { color: #5a6575; font-size: 12px; font-variant-numeric: tabular-nums; }
.card.red .value { color: #a32121; } .card.amber .value { color: #8a5a00; }
.pill { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600;
        line-height: 19px; white-space: nowrap; border: 1px solid transparent; margin: 1px 2px 1px 0; }
.pill.ok { background: #e5f1e9; color: #1e6b3a; } .pill.muted { background: #eceef1; color: #4a5568; }
.pill.kind { background: #e6edf5; color: #1f4e79; }
.pill.red { background: #fde8e8; color: #8b1a1a; border-color: #eab0b0; }
.pill.amber { background: #fff3d1; color: #7a5300; border-color: #ebcd7d; }
.panel { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 10px 16px; margin: 14px 0; }
.panel.amber { background: #fffaeb; border-left: 5px solid #e0a800; }
.panel.red { background: #fff5f5; border-left: 5px solid #d64545; }
.panel.ok { border-left: 5px solid #3c8d5a; color: #1e6b3a; }
.panel h3 { margin: 0 0 6px; font-size: 14px; }
.tablewrap { overflow-x: auto; background: #fff; border: 1px solid #dde1e7; border-radius: 8px; }
.tablewrap.compact { display: inline-block; min-width: 480px; max-width: 100%; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; text-align: right; vertical-align: middle; white-space: nowrap; }
th { background: #eef0f3; font-size: 12px; color: #333d4b; font-weight: 600; }
th.l, td.l { text-align: left; }
tbody tr { border-top: 1px solid #eceef1; }
tbody tr.summary { background: #f4f6f9; font-weight: 600; }
figure { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; margin: 14px 0; padding: 12px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: #4a5568; font-size: 13px; margin-top: 6px; }
"""
"""Layout, headings, cards, pills, panels, tables and figures: the look every medseg page shares."""


def escape(text: Any) -> str:
    """`text` as HTML text or attribute value (quotes escaped too)."""
    return html.escape(str(text), quote=True)


def href(path: str | Path) -> str:
    """A relative URL for a relative file path (spaces, '#' and '%' escaped), ready for an attribute."""
    return escape(quote(Path(path).as_posix(), safe="/"))


def is_number(value: Any) -> bool:
    """A finite int or float (bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 1) -> str:
    """`value` with `digits` decimals; None, NaN, inf and non-numbers print as `MISSING`."""
    return f"{value:.{digits}f}" if is_number(value) else MISSING


def interval(low: Any, high: Any, digits: int = 3) -> str:
    """'[low, high]', or '' when either end is not a finite number."""
    return f"[{low:.{digits}f}, {high:.{digits}f}]" if is_number(low) and is_number(high) else ""


def pill(text: str, colour: str = "muted", *, kind: str = "pill", title: str | None = None) -> str:
    """A rounded label: `colour` one of ok, muted, kind, red, amber; `kind` the CSS class ('pill' or a
    page's own, e.g. 'flag'); text is escaped."""
    tip = f" title='{escape(title)}'" if title else ""
    return f"<span class='{kind} {colour}'{tip}>{escape(text)}</span>"


def card(label: str, value: str, *, note: str | None = None, colour: str = "") -> str:
    """A summary card: small upper-case label, large value (HTML), and an optional note line (HTML; an empty
    note keeps the line so that cards in a row stay the same height)."""
    extra = "" if note is None else f"<div class=note>{note or '&nbsp;'}</div>"
    return (f"<div class='card {colour}'><div class=label>{escape(label)}</div><div class=value>{value}</div>"
            f"{extra}</div>")


def table(head: Iterable[tuple[str, ...]], rows: Iterable[str], css: str = "", table_css: str = "") -> str:
    """A wrapped table. head: (label HTML, 'l' or 'r' alignment[, more <th> attributes]); rows: ready `<tr>`
    strings; `css` classes of the wrapper (e.g. 'compact'), `table_css` of the <table>."""
    cells = "".join(f"<th class={align}{' ' + attrs[0] if attrs else ''}>{label}</th>" for label, align, *attrs in head)
    klass = f" class='{table_css}'" if table_css else ""
    return (f"<div class='tablewrap {css}'><table{klass}><thead><tr>{cells}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def figure(src: str, alt: str, caption: str) -> str:
    """An image with its caption; `src` is used as given (an escaped relative URL or a data URI), `alt` and
    `caption` are escaped."""
    return f"<figure><img src='{src}' alt='{escape(alt)}'><figcaption>{escape(caption)}</figcaption></figure>"


def page(title: str, body: str, *, css: str = "", script: str = "") -> str:
    """A complete HTML document: the shared CSS plus the page's own `css`, `body` inside <main>, `script`
    (inline JS) at the end."""
    tail = f"<script>{script}</script>" if script else ""
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{BASE_CSS}{css}</style>"
            f"</head><body><main>{body}</main>{tail}</body></html>\n")


def write_page(path: str | Path, text: str) -> Path:
    """Write a page as UTF-8, atomically."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
