"""The report's blocks, their number formats, and their two renderings: Markdown and HTML.

A report is a list of blocks (plain tuples, so sections are plain functions returning
lists): `("h", level, text)`, `("p", text)`, `("list", [text])`, `("table", head, rows)`,
`("fig", name)`, `("banner", text)`. `markdown` and `html_page` render the same list, so
report.md and report.html always say the same thing. Text may use three Markdown marks:
**bold**, *italic* and `code`.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

Block = tuple
"""("h", level, text) | ("p", text) | ("list", [text]) | ("table", head, rows) | ("fig", name) | ("banner", text)."""


# ----------------------------------------------------------------------------- number formats

def num(x: Any, fmt: str = ".3f") -> str:
    """A number, "—" when absent, "n/a" when NaN (a statistic without variance to test)."""
    if x is None:
        return "—"
    return "n/a" if isinstance(x, float) and math.isnan(x) else format(x, fmt)


def pct(x: Any) -> str:
    """A fraction (0.993) as a percentage ("99.30%")."""
    return "—" if x is None else f"{100 * x:.2f}%"


def dpct(x: Any) -> str:
    """A Δ% already in percent, signed ("+0.58%")."""
    return num(x, "+.2f") + ("%" if x is not None and not (isinstance(x, float) and math.isnan(x)) else "")


def pval(x: Any) -> str:
    """A p-value: 3 decimals, or 2 significant digits below 0.001."""
    if x == 0:
        return "< 1e-16"  # below double precision
    return num(x, ".2g" if x is not None and x < 0.001 else ".3f")


def below(p: Any, alpha: float) -> bool:
    """p is a number (not NaN) under alpha."""
    return p is not None and not (isinstance(p, float) and math.isnan(p)) and p < alpha


def verdict(e: dict, alpha: float, key: str = "p_holm") -> str:
    """"significant at α = 0.05 after Holm correction", "not significant ...", or "not testable"."""
    p = e.get(key)
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "not testable (no variance)"
    return ("significant" if below(p, alpha) else "not significant") + f" at α = {alpha}" + (
        " after Holm correction" if key.endswith("holm") else "")


def ran(test: dict) -> list[dict]:
    """A family's entries that were run (not skipped)."""
    return [e for e in (test or {}).get("entries", []) if not e.get("skipped")]


def skipped_note(entries: list[dict], what: str = "entries") -> Block | None:
    """One line for every skipped entry of a family, grouped by reason (not one line per row)."""
    by: dict[str, list[str]] = {}
    for e in entries:
        if e.get("skipped"):
            by.setdefault(str(e.get("reason", "skipped")), []).append(str(e.get("label", "?")))
    if not by:
        return None
    return ("p", "*Skipped " + "; ".join(f"{len(v)} {what} ({', '.join(v)}): {k}" for k, v in by.items()) + ".*")


# ----------------------------------------------------------------------------- Markdown

def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown(blocks: list[Block], figs: dict) -> str:
    """The blocks as Markdown; figures link to `figures/<name>.png` (relative to the report)."""
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "banner":
            out.append(f"> **⚠ {b[1]}**")
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "list":
            out.append("\n".join(f"{i}. {x}" for i, x in enumerate(b[1], 1)))
        elif b[0] == "table":
            out.append("\n".join(["| " + " | ".join(map(_cell, b[1])) + " |", "|" + "---|" * len(b[1])]
                                 + ["| " + " | ".join(map(_cell, r)) + " |" for r in b[2]]))
        elif b[0] == "fig":
            f = figs.get(b[1], {})
            out.append(f"![{f.get('caption', b[1])}]({f['file']})\n\n*{b[1]}: {f.get('caption', '')}*" if f.get("file")
                       else f"*Figure {b[1]} not drawn: {f.get('skipped', 'not rendered')}.*")
    return "\n\n".join(out) + "\n"


# ----------------------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #0072B2}h2{margin-top:2em;color:#0072B2}
table{border-collapse:collapse;margin:1em 0;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;white-space:nowrap}th{background:#e8f1f8}
tr:nth-child(even) td{background:#f7f7f7}figure{margin:1.2em 0}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}.banner{border:4px solid #D55E00;background:#fff3e0;color:#7a2d00;
padding:1em;font-size:1.25em;font-weight:bold}.skip{color:#777;font-style:italic}code{background:#f2f2f2;padding:0 3px}"""


def inline(text: str) -> str:
    """Escape, then the three Markdown marks the blocks use: **bold**, *italic*, `code`."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![\w*])\*(?!\s)(.+?)\*(?!\w)", r"<em>\1</em>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _figure(name: str, f: dict, root: Path) -> str:
    if f.get("file") and (root / f["file"]).exists():
        data = base64.b64encode((root / f["file"]).read_bytes()).decode()
        return (f'<figure id="{name}"><img alt="{html.escape(f.get("caption", name))}" '
                f'src="data:image/png;base64,{data}"><figcaption><b>{name}</b>: '
                f"{html.escape(f.get('caption', ''))}</figcaption></figure>")
    return f'<p class="skip">Figure {name} not drawn: {html.escape(str(f.get("skipped", "not rendered")))}.</p>'


def _table(head: list, rows: list) -> str:
    return ("<table><thead><tr>" + "".join(f"<th>{inline(str(h))}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table>")


def html_page(blocks: list[Block], figs: dict, root: Path) -> str:
    """The blocks as one self-contained HTML page (figures embedded as base64 PNG, no script)."""
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{inline(b[2])}</h{b[1]}>")
        elif b[0] == "banner":
            out.append(f'<div class="banner" role="alert">⚠ {inline(b[1])}</div>')
        elif b[0] == "p":
            out.append(f"<p>{inline(b[1])}</p>")
        elif b[0] == "list":
            out.append("<ol>" + "".join(f"<li>{inline(x)}</li>" for x in b[1]) + "</ol>")
        elif b[0] == "table":
            out.append(_table(b[1], b[2]))
        elif b[0] == "fig":
            out.append(_figure(b[1], figs.get(b[1], {}), root))
    title = next((b[2] for b in blocks if b[0] == "h"), "report")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
