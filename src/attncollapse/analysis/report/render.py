"""The report's blocks, their number formats, and their two renderings: Markdown and HTML.

A report is a list of blocks (plain tuples, so sections are plain functions returning
lists): `("h", level, text)`, `("p", text)`, `("list", [text])`, `("table", head, rows)`,
`("fig", name)`, `("banner", text)`. `markdown` and `html_page` render the same list, so
report.md and report.html always say the same thing. Text may use three Markdown marks:
**bold**, *italic* and `code`. Both renderings pass the list through `contents` first: every
heading below the title gets a stable anchor and the title is followed by a linked table of
contents, so a section added or renamed anywhere gets its entry without further work.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

Block = tuple
"""("h", level, text) | ("p", text) | ("list", [text]) | ("table", head, rows) | ("fig", name) | ("banner", text);
`contents` adds ("h", level, text, anchor) and ("toc", [(level, text, anchor)])."""
TOC_TITLE, TOC_ANCHOR = "Contents", "contents"
SLUG_MAX = 40
"""Longest anchor made from one heading's words (a sub-heading's adds its section's)."""


# ----------------------------------------------------------------------------- contents and anchors

def slug(text: str) -> str:
    """A heading's anchor: lower-case ASCII words joined by "-", without the section number,
    so renumbering the sections leaves every anchor (and every link to it) unchanged."""
    t = re.sub(r"^\d+[a-z]?\.\s+", "", text)
    t = re.sub(r"[^a-z0-9]+", "-", t.lower().replace("δ", "delta ")).strip("-")
    if len(t) > SLUG_MAX:  # a long heading: its first words, cut at a word boundary
        t = t[:SLUG_MAX + 1].rsplit("-", 1)[0]
    return t or "section"


def contents(blocks: list[Block]) -> list[Block]:
    """Anchor every heading below the title and put a linked table of contents after the title.

    A level-3 heading's anchor is prefixed by its section's ("grand-comparison-entropy"), since
    several sections have sub-headings of the same name; a repeat still gets "-2", "-3".
    The table of contents follows the title and any banner, and lists every heading of level
    ≥ 2 nested by level. Applied by `markdown` and `html_page`; a list that already has its
    contents is returned unchanged.

    Returns:
        A new block list: headings as ("h", level, text, anchor), plus one ("toc", entries) block.
    """
    if any(b[0] == "toc" for b in blocks):
        return blocks
    out: list[Block] = []
    entries: list[tuple[int, str, str]] = []
    seen: set[str] = {TOC_ANCHOR}
    parent = ""
    for i, b in enumerate(blocks):
        if b[0] == "h" and not (b[1] == 1 and i == 0):
            a = slug(b[2])
            if b[1] == 2:
                parent = a
            elif b[1] > 2 and parent:
                a = f"{parent}-{a}"
            base, k = a, 2
            while a in seen:
                a, k = f"{base}-{k}", k + 1
            seen.add(a)
            entries.append((b[1], b[2], a))
            b = ("h", b[1], b[2], a)
        out.append(b)
    if not entries:
        return out
    at = 1 if out and out[0][0] == "h" and out[0][1] == 1 else 0
    while at < len(out) and out[at][0] == "banner":
        at += 1
    return out[:at] + [("toc", entries)] + out[at:]


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
    for b in contents(blocks):
        if b[0] == "h":  # the anchor (report.html's id) in a paragraph of its own: heading lines stay "## text"
            out.append((f'<a id="{b[3]}"></a>\n\n' if len(b) > 3 else "") + "#" * b[1] + " " + b[2])
        elif b[0] == "toc":
            out.append(f'<a id="{TOC_ANCHOR}"></a>\n\n## {TOC_TITLE}\n\n' + "\n".join(
                "  " * (lv - 2) + f"- [{text}](#{a})" for lv, text, a in b[1]))
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
padding:1em;font-size:1.25em;font-weight:bold}.skip{color:#777;font-style:italic}code{background:#f2f2f2;padding:0 3px}
.toc{border:1px solid #ccc;background:#fafafa;padding:.3em 1em;font-size:.9em}.toc h2{margin-top:.3em}
.toc>ul{columns:2;column-gap:2em}.toc ul{margin:.1em 0;padding-left:1.1em;list-style:none}
.toc li{break-inside:avoid}.up{font-size:.6em;text-decoration:none;color:#999}.toc ul ul{font-size:.9em}.toc ul ul li{display:inline;margin-right:.8em}"""


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


def _toc(entries: list[tuple[int, str, str]]) -> str:
    """The table of contents as nested lists (one level per heading level)."""
    out, depth = [f'<nav class="toc" id="{TOC_ANCHOR}"><h2>{TOC_TITLE}</h2><ul>'], 2
    for i, (lv, text, a) in enumerate(entries):
        lv = max(2, lv)
        if i:
            if lv > depth:
                out.append("<ul>" * (lv - depth))
            else:
                out.append("</li>" + "</ul></li>" * (depth - lv))
        out.append(f'<li><a href="#{a}">{inline(text)}</a>')
        depth = lv
    out.append("</li>" + "</ul></li>" * (depth - 2) + "</ul></nav>")
    return "".join(out)


def html_page(blocks: list[Block], figs: dict, root: Path) -> str:
    """The blocks as one self-contained HTML page (figures embedded as base64 PNG, no script)."""
    out = []
    blocks = contents(blocks)
    for b in blocks:
        if b[0] == "h":
            anchor = f' id="{b[3]}"' if len(b) > 3 else ""
            up = ' <a class="up" href="#contents" title="back to the contents">↑</a>' if b[1] == 2 and anchor else ""
            out.append(f"<h{b[1]}{anchor}>{inline(b[2])}{up}</h{b[1]}>")
        elif b[0] == "toc":
            out.append(_toc(b[1]))
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
