"""Per-image (and per-head) value files of `measure` and `compare`, for users' own breakdowns.

Long format, one row per image and layer (and head): `<stem>_images.csv` always,
`<stem>_heads.csv` with `--per-head`. Columns are those of docs/FORMATS.md; the image is
named as in the JSON's `images.names` and numbered by its position there (`index`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .. import _io
from ..measure import METRICS
from .per_image import HEAD_METRICS


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows of equal keys as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _io.write_text(path, buf.getvalue())
    return path


def measure_image_rows(names: list[str], values: np.ndarray) -> list[dict]:
    """(L, N, 4) per-image metrics → rows `index, image, layer, <metric>...`."""
    L, N, _ = values.shape
    return [{"index": n, "image": names[n], "layer": i + 1, **{m: float(values[i, n, k]) for k, m in enumerate(METRICS)}}
            for n in range(N) for i in range(L)]


def compare_image_rows(names: list[str], va: np.ndarray, vb: np.ndarray, js: np.ndarray) -> list[dict]:
    """(L, N, 4) values of A and B and (L, N) map drift → rows with `<metric>_a/_b/_delta`, `map_js`."""
    L, N, _ = va.shape
    rows = []
    for n in range(N):
        for i in range(L):
            row = {"index": n, "image": names[n], "layer": i + 1}
            for k, m in enumerate(METRICS):
                a, b = float(va[i, n, k]), float(vb[i, n, k])
                row.update({f"{m}_a": a, f"{m}_b": b, f"{m}_delta": b - a})
            rows.append({**row, "map_js": float(js[i, n])})
    return rows


def head_rows(names: list[str], heads: list[np.ndarray], tags: list[str]) -> list[dict]:
    """(L, N, H, 3) per-head values of one model (tags [""]) or two (tags ["a", "b"]) → rows."""
    L, N, H, _ = heads[0].shape
    rows = []
    for n in range(N):
        for i in range(L):
            for h in range(H):
                row = {"index": n, "image": names[n], "layer": i + 1, "head": h + 1}
                for k, m in enumerate(HEAD_METRICS):
                    for t, v in zip(tags, heads):
                        row[f"{m}_{t}" if t else m] = float(v[i, n, h, k])
                    if len(tags) == 2:
                        row[f"{m}_delta"] = row[f"{m}_b"] - row[f"{m}_a"]
                rows.append(row)
    return rows
