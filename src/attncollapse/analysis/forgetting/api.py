"""The two entry points: `analyze` (a `design: forgetting` matrix directory) and `reanalyse`
(the authors' study2 folder, or any folder of their JSON records).

Both write stats.json, run_level.csv, figures/, report.md and report.html; `reanalyse` also
writes scorecard.csv when it finds the published summary.json.
"""

from __future__ import annotations

from pathlib import Path

from ... import _io
from . import figures, records, report, scorecard, summary


def _locate(records_dir: Path) -> tuple[list[Path], list[Path], Path | None]:
    """(run records, interpolation records, folder of the published summary) of a folder laid
    out as the authors' study2/ (results/, intervention/, analysis/) or a flat folder of JSONs."""
    d = Path(records_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such folder; give the study2 folder or a folder of S2_*.json records")
    runs = sorted((d / "results").glob("*.json")) if (d / "results").is_dir() else \
        sorted(p for p in d.glob("*.json") if p.name not in ("summary.json", "stats.json"))
    inter = sorted((d / "intervention").glob("*.json")) + sorted((d / "interpolation").glob("*.json"))
    published = next((p for p in (d / "analysis", d) if (p / "summary.json").is_file()), None)
    return runs, inter, published


def run(runs: list[Path], inter: list[Path], out: Path, published: Path | None = None,
        title: str = "Forgetting study", require_records: bool = False) -> dict:
    """Read, compute, and write every output into `out`; returns the stats dict.

    require_records: refuse (FileNotFoundError, one line, nothing written) when no run
    record is readable, instead of writing a report of nothing.
    """
    out = Path(out)
    rows, problems = records.read_runs(runs)
    if require_records and not rows:
        first = f" (first: {problems[0]})" if problems else ""
        raise FileNotFoundError(f"no readable run record among {len(runs)} JSON file(s){first}; give the "
                                "study2 folder (with results/) or a folder of S2_*.json records")
    out.mkdir(parents=True, exist_ok=True)
    sweeps, more = records.read_interpolations(inter)
    stats = summary.compute(rows, sweeps, problems + more)
    if not rows:
        stats["notes"].insert(0, f"no readable run record among {len(runs)} file(s)")
    records.write_csv(rows, out / "run_level.csv")
    card = []
    if published is not None:
        card = scorecard.compare(published, stats)
        scorecard.write(card, out / "scorecard.csv")
        stats["scorecard"] = scorecard.totals(card)
    _io.write_json(out / "stats.json", stats)
    figs = figures.render_all(rows, stats, out / "figures") if rows else {}
    report.write(stats, figs, card, out, title=title)
    return stats


def analyze(matrix_dir: str | Path) -> dict:
    """The analysis stage of a `design: forgetting` matrix: `<dir>/*/record.json` and
    `<dir>/interpolation/*.json` → stats.json, run_level.csv, figures/, report.md/html in `<dir>`."""
    d = Path(matrix_dir)
    return run(sorted(d.glob("*/record.json")), sorted((d / "interpolation").glob("*.json")), d,
               title=f"Forgetting study: {d.name}")


def reanalyse(records_dir: str | Path, out: str | Path, published: str | Path | None = None) -> dict:
    """The authors' records re-analysed by our code, with a scorecard against their summary.json
    (and digest.md) found in `published`, else in `<records_dir>/analysis` or `<records_dir>`."""
    runs, inter, found = _locate(Path(records_dir))
    pub = Path(published) if published is not None else found
    if pub is not None and not (pub / "summary.json").is_file():
        raise FileNotFoundError(f"{pub}: no summary.json there; give --published the folder holding the "
                                "authors' summary.json and digest.md")
    return run(runs, inter, Path(out), pub, title="Forgetting study: reanalysis of the authors' records",
               require_records=True)
