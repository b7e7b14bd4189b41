"""Every number of the authors' summary.json (and the digest's numbers that summary.json lacks)
against ours: one row per number with the published value, ours, the rule, the verdict and
the stats.json key.

Both trees are flattened to dotted keys; a list item is named by its identifying fields
(`paired_method_tests[eurosat/cifar100_retention].t_p_value`), so a reordered list still
matches. Rules: integers, strings and booleans must be equal; a float agrees when
|ours − published| ≤ 1e-9 · max(1, |published|) (the same arithmetic in another order);
p-values get 1e-6 relative (scipy versions differ in the last digits of their
distributions); a digest number agrees within half a unit of its printed last digit.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

ID_FIELDS = ("model", "dataset", "method", "metric", "predictor", "lr")
FLOAT_TOL, P_TOL = 1e-9, 1e-6
SKIP = {"label"}
"""Keys not compared: the authors' LaTeX labels (ours are plain text)."""
METHOD_OF_LABEL = {"Full FT": "full_ft", "LoRA r=8": "lora_r8", "LoRA (frozen proj.)": "lora_r8_frozen_proj",
                   "Linear probe": "linear_probe", "Last block": "last_block"}


def _ident(item: dict) -> str:
    return "/".join(f"{item[k]:g}" if k == "lr" else str(item[k]) for k in ID_FIELDS if k in item)


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) for every leaf; list items named by their identifying fields."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k not in SKIP:
                yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, x in enumerate(node):
            yield from flatten(x, f"{prefix}[{_ident(x) or i}]")
    else:
        yield prefix, node


def _is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def agree(key: str, pub: Any, ours: Any) -> tuple[str, bool]:
    """(rule, verdict) for one number."""
    if isinstance(pub, (bool, str, list)):
        return "equal", pub == ours
    if _is_nan(pub) or _is_nan(ours):
        return "both undefined (NaN/None)", _is_nan(pub) and _is_nan(ours)
    if isinstance(pub, int) and isinstance(ours, int):
        return "equal", pub == ours
    tol = P_TOL if re.search(r"p_value|p_overall|t_p_", key) else FLOAT_TOL
    return f"rel {tol:g}", abs(float(ours) - float(pub)) <= tol * max(1.0, abs(float(pub)))


def compare(published: Path, stats: dict) -> list[dict]:
    """Scorecard rows for summary.json (and digest.md when present) in `published`."""
    ours = dict(flatten(stats))
    rows = []
    for key, pub in flatten(json.loads((published / "summary.json").read_text())):
        if key not in ours:
            rows.append({"key": key, "published": pub, "ours": "", "rule": "present", "verdict": "missing in ours"})
            continue
        rule, ok = agree(key, pub, ours[key])
        rows.append({"key": key, "published": pub, "ours": ours[key], "rule": rule,
                     "verdict": "match" if ok else "differs"})
    if (published / "digest.md").is_file():
        rows += digest_rows((published / "digest.md").read_text(), stats)
    return rows


_CELL = re.compile(r"^\| (\w+) \| ([^|]+) \| ([\d.e+-]+) \| (\d+) \| [^|]+ \| [^|]+ \| ([^|]+) \| [^|]+ \| [^|]+ \| "
                   r"[^|]+ \| ([^|]+) \| [^|]+ \| ([^|]+) \|$")


def _half_unit(text: str) -> float:
    return 0.5 * 10 ** -len(text.split(".")[1]) if "." in text else 0.5


def digest_rows(text: str, stats: dict) -> list[dict]:
    """The digest's cell columns absent from summary.json (ΔH12, embedding drift, corruption
    accuracy) and its Pareto lists, at their printed precision."""
    cells = {(c["dataset"], c["method"], f"{c['lr']:.0e}"): c for c in stats.get("cells", [])}
    out = []
    for line in text.splitlines():
        m = _CELL.match(line.strip())
        if not m or m.group(2).strip() not in METHOD_OF_LABEL:
            continue
        ds, method, lr = m.group(1), METHOD_OF_LABEL[m.group(2).strip()], m.group(3)
        cell = cells.get((ds, method, lr))
        for field, text_value in (("delta_entropy_last_layer_pct", m.group(5)), ("embedding_drift", m.group(6)),
                                  ("corruption_mean_acc", m.group(7))):
            key, text_value = f"digest.cells[{ds}/{method}/{lr}].{field}", text_value.strip()
            ours = cell.get(field) if cell else None
            if text_value == "--":
                out.append({"key": key, "published": "--", "ours": ours, "rule": "absent", "verdict":
                            "match" if ours is None else "differs"})
                continue
            tol = _half_unit(text_value)
            ok = ours is not None and abs(ours - float(text_value)) <= tol + 1e-12
            out.append({"key": key, "published": float(text_value), "ours": ours, "rule": f"abs {tol:g} (printed)",
                        "verdict": "match" if ok else "differs"})
    frontier = stats.get("frontier") or {}
    for ds, body in re.findall(r"^- \*\*(\w+)\*\*: (.+)$", text.split("### Pareto", 1)[-1], flags=re.M):
        pub = [f"{METHOD_OF_LABEL.get(lab.strip(), lab.strip())}@{float(lr):g}"
               for lab, lr in re.findall(r"([A-Za-z][^@;]*?) @([\d.e+-]+) \(", body)]
        ours = (frontier.get(ds) or {}).get("pareto")
        out.append({"key": f"digest.pareto[{ds}]", "published": ";".join(pub), "ours": ";".join(ours or []),
                    "rule": "same configurations", "verdict": "match" if ours == pub else "differs"})
    return out


def totals(rows: list[dict]) -> dict:
    """How many numbers match, differ, or are missing; the keys that do not match."""
    out = {"compared": len(rows)}
    for v in ("match", "differs", "missing in ours"):
        out[v.replace(" ", "_")] = sum(r["verdict"] == v for r in rows)
    out["not_matching"] = [r["key"] for r in rows if r["verdict"] != "match"]
    return out


def write(rows: list[dict], path: Path) -> None:
    """scorecard.csv: key, published, ours, rule, verdict."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stats_key", "published", "ours", "rule", "verdict"])
        for r in rows:
            w.writerow([r["key"], r["published"], r["ours"], r["rule"], r["verdict"]])
